// `paddock v4 …` run as a user would: the built binary, stdin from a file,
// stdout/stderr captured. No daemon is started; the commands must not need one.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/support/test_rootfs.h"

extern char** environ;

namespace {

using ojson = nlohmann::ordered_json;
namespace fs = std::filesystem;

struct RunResult {
  int code = -1;
  std::string out, err;
};

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs paddock with `args`, feeding `input` on stdin.
RunResult Paddock(const std::vector<std::string>& args, const std::string& input) {
  static int counter = 0;
  fs::path dir = fs::temp_directory_path() / ("paddock-v4-cli-" + std::to_string(getpid()));
  fs::create_directories(dir);
  std::string base = (dir / std::to_string(counter++)).string();
  std::ofstream(base + ".in", std::ios::binary) << input;

  std::vector<std::string> argv = {paddock::testing::BuiltBinary("paddock")};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  // No daemon socket exists at this path: the v4 commands must not try one.
  std::vector<std::string> env = {"PADDOCK_SOCKET=/nonexistent/paddockd.sock", "PATH=/usr/bin:/bin"};
  if (const char* t = std::getenv("PADDOCK_TOKENIZER")) env.push_back(std::string("PADDOCK_TOKENIZER=") + t);
  std::vector<char*> cenv;
  for (auto& e : env) cenv.push_back(e.data());
  cenv.push_back(nullptr);

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, (base + ".in").c_str(), O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, (base + ".out").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, (base + ".err").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = -1;
  RunResult r;
  if (posix_spawn(&pid, cargv[0], &fa, nullptr, cargv.data(), cenv.data()) != 0) {
    posix_spawn_file_actions_destroy(&fa);
    r.err = "posix_spawn failed";
    return r;
  }
  posix_spawn_file_actions_destroy(&fa);
  int status = 0;
  waitpid(pid, &status, 0);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = ReadFile(base + ".out");
  r.err = ReadFile(base + ".err");
  return r;
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

// The first public encoding vector, as a JSON line.
std::string FirstEncodingCase() {
  std::ifstream in(std::string(PADDOCK_TEST_DATA) + "/v4/encoding_public.jsonl");
  std::string line;
  std::getline(in, line);
  return line;
}

TEST(V4Cli, HelpForEveryCommand) {
  for (std::vector<std::string> args : {std::vector<std::string>{"v4", "--help"},
                                        {"v4", "encode", "--help"},
                                        {"v4", "decode", "--help"},
                                        {"v4", "tokenize", "--help"}}) {
    RunResult r = Paddock(args, "");
    EXPECT_EQ(r.code, 0) << args[1] << ": " << r.err;
    EXPECT_NE(r.out.find("Usage"), std::string::npos) << r.out;
  }
}

TEST(V4Cli, EncodePrintsThePromptExactly) {
  ojson c = ojson::parse(FirstEncodingCase());
  ojson request = {{"messages", c["messages"]},
                   {"thinking_mode", c["thinking_mode"]},
                   {"drop_thinking", c["drop_thinking"]},
                   {"reasoning_effort", c["reasoning_effort"]}};
  RunResult r = Paddock({"v4", "encode"}, request.dump());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, c["expected_prompt"].get<std::string>());
}

TEST(V4Cli, EncodeRejectsAnUnknownRole) {
  RunResult r = Paddock({"v4", "encode"}, R"({"messages": [{"role": "robot", "content": "hi"}]})");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(r.out.empty());
  EXPECT_NE(r.err.find("messages[0].role"), std::string::npos) << r.err;
}

TEST(V4Cli, EncodeJsonlOneGoodOneBadLine) {
  ojson c = ojson::parse(FirstEncodingCase());
  std::string input = FirstEncodingCase() + "\n" +
                      R"({"id": "bad", "messages": [{"role": "user", "content": 5}], "thinking_mode": "chat"})" + "\n";
  RunResult r = Paddock({"v4", "encode", "--jsonl"}, input);
  ASSERT_EQ(r.code, 0) << r.err;
  std::vector<std::string> lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 2u) << r.out;
  ojson good = ojson::parse(lines[0]);
  EXPECT_EQ(good["prompt"], c["expected_prompt"]);
  EXPECT_FALSE(good.contains("error"));
  ojson bad = ojson::parse(lines[1]);
  EXPECT_FALSE(bad.contains("prompt"));
  ASSERT_TRUE(bad.contains("error")) << lines[1];
  EXPECT_EQ(bad["error"]["code"], "INVALID_ARGUMENT");
  EXPECT_NE(bad["error"]["message"].get<std::string>().find("messages[0].content"), std::string::npos);
  EXPECT_EQ(bad["id"], "bad");
}

// Every case of a conformance file through `paddock v4 encode --jsonl`: one
// output line per case, in order, with its id and the exact prompt.
void ExpectJsonlEncodesFile(const std::string& file, size_t cases) {
  std::string input = ReadFile(fs::path(PADDOCK_TEST_DATA) / "v4" / file);
  std::vector<std::string> want = Lines(input);
  ASSERT_EQ(want.size(), cases) << file << " missing or truncated";
  RunResult r = Paddock({"v4", "encode", "--jsonl"}, input);
  ASSERT_EQ(r.code, 0) << r.err;
  std::vector<std::string> lines = Lines(r.out);
  ASSERT_EQ(lines.size(), want.size()) << r.out;
  size_t exact = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    ojson c = ojson::parse(want[i]);
    ojson got = ojson::parse(lines[i]);
    EXPECT_EQ(got["id"], c["id"]);
    ASSERT_TRUE(got.contains("prompt")) << c["id"] << ": " << lines[i];
    if (got["prompt"] == c["expected_prompt"]) {
      ++exact;
    } else {
      ADD_FAILURE() << c["id"] << ": prompt differs from expected_prompt";
    }
  }
  std::printf("paddock v4 encode --jsonl: %zu/%zu of %s byte-exact\n", exact, want.size(), file.c_str());
}

TEST(V4Cli, EncodeJsonlEveryPublicVector) { ExpectJsonlEncodesFile("encoding_public.jsonl", 150); }

TEST(V4Cli, EncodeJsonlEveryTaskVector) { ExpectJsonlEncodesFile("encoding_tasks_public.jsonl", 80); }

#ifdef PADDOCK_HAVE_V4_DECODE
// The first accepted and the first rejected case of decoding_public.jsonl.
void DecodingCases(ojson* good, ojson* bad) {
  std::ifstream in(std::string(PADDOCK_TEST_DATA) + "/v4/decoding_public.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    ojson c = ojson::parse(line);
    if (c.contains("expected") && good->is_null()) *good = c;
    if (c.contains("expected_error") && bad->is_null()) *bad = c;
  }
}
#endif

TEST(V4Cli, Decode) {
#ifndef PADDOCK_HAVE_V4_DECODE
  GTEST_SKIP() << "paddock_v4_decode is not built yet (no policy/v4/decode/*.cc): paddock v4 decode is unavailable";
#else
  ojson good, bad;
  DecodingCases(&good, &bad);
  ASSERT_FALSE(good.is_null());
  ASSERT_FALSE(bad.is_null());
  RunResult r = Paddock({"v4", "decode", "--thinking-mode", good["thinking_mode"].get<std::string>()},
                        good["completion"].get<std::string>());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out), nlohmann::json::parse(good["expected"].dump()));

  r = Paddock({"v4", "decode", "--thinking-mode", bad["thinking_mode"].get<std::string>()},
              bad["completion"].get<std::string>());
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_FALSE(r.err.empty());

  std::string input = ojson{{"completion", good["completion"]}, {"thinking_mode", good["thinking_mode"]}}.dump() +
                      "\n" + ojson{{"completion", bad["completion"]}, {"thinking_mode", bad["thinking_mode"]}}.dump() +
                      "\n";
  r = Paddock({"v4", "decode", "--jsonl"}, input);
  ASSERT_EQ(r.code, 0) << r.err;
  std::vector<std::string> lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 2u) << r.out;
  EXPECT_TRUE(nlohmann::json::parse(lines[0]).contains("message")) << lines[0];
  nlohmann::json e = nlohmann::json::parse(lines[1]);
  ASSERT_TRUE(e.contains("error")) << lines[1];
  EXPECT_TRUE(e["error"]["kind"].is_string());
  EXPECT_TRUE(e["error"]["message"].is_string());
#endif
}

TEST(V4Cli, Tokenize) {
#ifndef PADDOCK_HAVE_V4_TOKENIZER
  GTEST_SKIP() << "paddock_v4_tokenizer is not built yet: paddock v4 tokenize is unavailable";
#else
  const char* env = std::getenv("PADDOCK_TOKENIZER");
  std::string path = env ? env : "/usr/local/share/paddock/deepseek-v3-tokenizer.json";
  if (!fs::exists(path))
    GTEST_SKIP() << "no tokenizer.json at " << path << " (scripts/install-deps.sh fetches it)";
  std::ifstream in(std::string(PADDOCK_TEST_DATA) + "/v4/tokenizer_public.jsonl");
  std::string line;
  ASSERT_TRUE(std::getline(in, line));
  ojson c = ojson::parse(line);
  RunResult r = Paddock({"v4", "tokenize", "--tokenizer", path}, c["text"].get<std::string>());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(ojson::parse(r.out), c["ids"]);

  r = Paddock({"v4", "tokenize", "--jsonl", "--tokenizer", path}, ojson{{"text", c["text"]}}.dump() + "\n");
  ASSERT_EQ(r.code, 0) << r.err;
  std::vector<std::string> lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 1u) << r.out;
  EXPECT_EQ(ojson::parse(lines[0])["ids"], c["ids"]);

  r = Paddock({"v4", "tokenize", "--tokenizer", "/nonexistent/tokenizer.json"}, "x");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("/nonexistent/tokenizer.json"), std::string::npos) << r.err;
#endif
}

}  // namespace
