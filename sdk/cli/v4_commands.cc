// `paddock v4 encode | decode | tokenize`. decode and tokenize need the
// paddock_v4_decode / paddock_v4_tokenizer libraries; when this binary was
// built without one (PADDOCK_HAVE_V4_DECODE / PADDOCK_HAVE_V4_TOKENIZER
// unset), the command is still listed but answers that it is unavailable.
#include "v4_commands.h"

#include <cstdio>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "policy/v4/encode/encoder.h"
#include "sandbox/base/status.h"
#ifdef PADDOCK_HAVE_V4_DECODE
#include "policy/v4/decode/decoder.h"
#endif
#ifdef PADDOCK_HAVE_V4_TOKENIZER
#include "policy/v4/tokenizer/tokenizer.h"
#endif

namespace paddock::cli {
namespace {

using nlohmann::json;
using ojson = nlohmann::ordered_json;

std::string ReadStdin() {
  return std::string((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
}

// One JSON value on one line; invalid UTF-8 is replaced rather than fatal.
template <typename J>
void PrintLine(const J& j) {
  std::string s = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  s.push_back('\n');
  std::fwrite(s.data(), 1, s.size(), stdout);
}

int Fail(const Status& st) {
  std::fprintf(stderr, "paddock: %s\n", st.message().c_str());
  return 1;
}

ojson ErrorObject(const Status& st) { return ojson{{"code", CodeName(st.code())}, {"message", st.message()}}; }

// Calls `fn(line_number, line)` for each non-empty line of stdin.
template <typename F>
void ForEachLine(F&& fn) {
  std::string line;
  size_t n = 0;
  while (std::getline(std::cin, line)) {
    ++n;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    fn(n, line);
  }
}

// ---- encode -----------------------------------------------------------------
int RunEncode(bool jsonl) {
  if (!jsonl) {
    auto prompt = v4::EncodePromptText(ReadStdin());
    if (!prompt.ok()) return Fail(prompt.status());
    std::fwrite(prompt->data(), 1, prompt->size(), stdout);
    return 0;
  }
  ForEachLine([](size_t n, const std::string& line) {
    ojson out = ojson::object();
    ojson request;
    try {
      request = ojson::parse(line);
    } catch (const ojson::exception& e) {
      out["error"] = ErrorObject(Error(Code::kInvalidArgument, "line {}: not valid JSON: {}", n, e.what()));
      PrintLine(out);
      return;
    }
    if (request.is_object() && request.contains("id")) out["id"] = request["id"];
    auto prompt = v4::EncodePrompt(request);
    if (prompt.ok()) {
      out["prompt"] = *prompt;
    } else {
      out["error"] = ErrorObject(prompt.status().Prefix(fmt::format("line {}", n)));
    }
    PrintLine(out);
  });
  return 0;
}

// ---- decode -----------------------------------------------------------------
#ifdef PADDOCK_HAVE_V4_DECODE
json DecodeErrorObject(const v4::DecodeError& e) {
  return json{{"kind", v4::DecodeErrorKindName(e.kind)}, {"message", e.message}, {"offset", e.offset}};
}
#endif

int RunDecode(const std::string& mode, bool jsonl) {
#ifndef PADDOCK_HAVE_V4_DECODE
  (void)mode;
  (void)jsonl;
  return Fail(Status(Code::kUnimplemented,
                     "v4 decode is not available in this build (the paddock_v4_decode library was not built)"));
#else
  if (mode != "thinking" && mode != "chat")
    return Fail(Error(Code::kInvalidArgument, "--thinking-mode: must be thinking or chat, not \"{}\"", mode));
  if (!jsonl) {
    std::string completion = ReadStdin();
    auto r = v4::DecodeCompletion(completion, mode == "thinking");
    if (auto* err = std::get_if<v4::DecodeError>(&r)) {
      std::fprintf(stderr, "paddock: %s: %s (at byte %zu)\n", v4::DecodeErrorKindName(err->kind),
                   err->message.c_str(), err->offset);
      return 2;
    }
    PrintLine(std::get<json>(r));
    return 0;
  }
  ForEachLine([&](size_t n, const std::string& line) {
    json out = json::object();
    json in;
    try {
      in = json::parse(line);
    } catch (const json::exception& e) {
      out["error"] = {{"kind", "invalid_input"}, {"message", fmt::format("line {}: not valid JSON: {}", n, e.what())}};
      PrintLine(out);
      return;
    }
    std::string line_mode = mode;
    if (in.is_object() && in.contains("thinking_mode") && in["thinking_mode"].is_string())
      line_mode = in["thinking_mode"].get<std::string>();
    if (!in.is_object() || !in.contains("completion") || !in["completion"].is_string() ||
        (line_mode != "thinking" && line_mode != "chat")) {
      out["error"] = {{"kind", "invalid_input"},
                      {"message", fmt::format("line {}: expected {{\"completion\": string, \"thinking_mode\": "
                                              "\"thinking\"|\"chat\"}}",
                                              n)}};
      PrintLine(out);
      return;
    }
    if (in.contains("id")) out["id"] = in["id"];
    const json* tools = in.contains("tools") && in["tools"].is_array() ? &in["tools"] : nullptr;
    auto r = v4::DecodeCompletion(in["completion"].get_ref<const std::string&>(), line_mode == "thinking", tools);
    if (auto* err = std::get_if<v4::DecodeError>(&r)) {
      out["error"] = DecodeErrorObject(*err);
    } else {
      out["message"] = std::get<json>(r);
    }
    PrintLine(out);
  });
  return 0;
#endif
}

// ---- tokenize ---------------------------------------------------------------
int RunTokenize(const std::string& path_flag, bool jsonl) {
#ifndef PADDOCK_HAVE_V4_TOKENIZER
  (void)path_flag;
  (void)jsonl;
  return Fail(Status(Code::kUnimplemented,
                     "v4 tokenize is not available in this build (the paddock_v4_tokenizer library was not built)"));
#else
  const std::string path = path_flag.empty() ? v4::Tokenizer::DefaultPath() : path_flag;
  auto tok = v4::Tokenizer::Load(path);
  if (!tok.ok()) return Fail(tok.status().Prefix(fmt::format("loading tokenizer {}", path)));
  const auto& tokenizer = *tok.value();
  if (!jsonl) {
    PrintLine(json(tokenizer.Encode(ReadStdin())));
    return 0;
  }
  ForEachLine([&](size_t n, const std::string& line) {
    json out = json::object();
    json in;
    try {
      in = json::parse(line);
    } catch (const json::exception& e) {
      out["error"] = ErrorObject(Error(Code::kInvalidArgument, "line {}: not valid JSON: {}", n, e.what()));
      PrintLine(out);
      return;
    }
    if (!in.is_object() || !in.contains("text") || !in["text"].is_string()) {
      out["error"] = ErrorObject(Error(Code::kInvalidArgument, "line {}: expected {{\"text\": string}}", n));
    } else {
      out["ids"] = tokenizer.Encode(in["text"].get_ref<const std::string&>());
    }
    PrintLine(out);
  });
  return 0;
#endif
}

}  // namespace

void RegisterV4Commands(CLI::App& app, std::optional<int>& rc) {
  CLI::App* v4 = app.add_subcommand("v4", "DeepSeek-V4 chat codec and tokenizer, run locally (no daemon needed)");
  v4->require_subcommand(1);

  struct Args {
    bool jsonl = false;
    std::string thinking_mode = "thinking";
    std::string tokenizer;
  };
  auto args = std::make_shared<Args>();

  CLI::App* enc = v4->add_subcommand(
      "encode",
      "render a conversation as a V4 prompt: reads {messages, thinking_mode, drop_thinking, reasoning_effort} "
      "JSON on stdin, writes the prompt text to stdout");
  enc->add_flag("--jsonl", args->jsonl,
                "one request per stdin line; print one line per request: {\"prompt\": …} or {\"error\": …}");
  enc->callback([&rc, args] { rc = RunEncode(args->jsonl); });

  CLI::App* dec = v4->add_subcommand(
      "decode",
      "parse one assistant completion from stdin into message JSON; a malformed completion exits 2 with "
      "its error kind and message on stderr");
  dec->add_option("--thinking-mode", args->thinking_mode, "thinking | chat (default thinking)")
      ->check(CLI::IsMember({"thinking", "chat"}));
  dec->add_flag("--jsonl", args->jsonl,
                "lines {\"completion\": …, \"thinking_mode\": …} in; lines {\"message\": …} or "
                "{\"error\": {\"kind\", \"message\"}} out");
  dec->callback([&rc, args] { rc = RunDecode(args->thinking_mode, args->jsonl); });

  CLI::App* tok = v4->add_subcommand("tokenize", "print the token ids of stdin's text as a JSON array");
  tok->add_option("--tokenizer", args->tokenizer,
                  "tokenizer.json to load (default: $PADDOCK_TOKENIZER, else "
                  "/usr/local/share/paddock/deepseek-v3-tokenizer.json)");
  tok->add_flag("--jsonl", args->jsonl, "lines {\"text\": …} in; lines {\"ids\": […]} out");
  tok->callback([&rc, args] { rc = RunTokenize(args->tokenizer, args->jsonl); });
}

}  // namespace paddock::cli
