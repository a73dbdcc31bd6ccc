#include "rollout_commands.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <numeric>
#include <optional>
#include <sstream>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "paddock/client.h"
#include "paddock/rollouts.h"

extern char** environ;

namespace paddock::cli {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct Conn {
  const std::string* socket;
  const std::string* tcp;
  const std::string* token_file;
  const bool* json;
};

int Fail(const Conn& c, const Status& st) {
  std::fprintf(stderr, "paddock: %s\n", st.message().c_str());
  if (*c.json)
    std::printf("%s\n", json({{"error", {{"code", CodeName(st.code())}, {"message", st.message()}}}}).dump().c_str());
  return 1;
}

Result<client::RolloutsClient> Connect(const Conn& c) {
  client::ClientOptions o;
  if (!c.socket->empty()) o.socket_path = *c.socket;
  o.tcp_target = *c.tcp;
  if (!c.token_file->empty()) {
    std::ifstream in(*c.token_file);
    if (!in) return ErrnoError(fmt::format("cannot read token file {}", *c.token_file));
    std::string token((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) token.pop_back();
    o.token = token;
  }
  return client::RolloutsClient::Connect(o);
}

Result<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return ErrnoError(fmt::format("cannot read {}", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// ---- the embedded policy server ------------------------------------------
std::string FindPolicyServer() {
  std::error_code ec;
  fs::path dir = fs::read_symlink("/proc/self/exe", ec).parent_path();
  for (const fs::path& p : {dir / ".." / "policy" / "paddock-policy", dir / "paddock-policy",
                            fs::path("/usr/local/bin/paddock-policy")})
    if (fs::exists(p, ec)) return fs::weakly_canonical(p, ec).string();
  return "";
}

int FreeLoopbackPort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = 0;
  if (fd >= 0 && bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  if (fd >= 0) close(fd);
  return port;
}

bool PortAccepts(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  close(fd);
  return ok;
}

// `paddock-policy` as a child on a free loopback port; killed when this ends.
class EmbeddedPolicy {
 public:
  ~EmbeddedPolicy() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      int st;
      waitpid(pid_, &st, 0);
    }
  }
  Result<std::string> Start(const std::string& log_path) {
    std::string bin = FindPolicyServer();
    if (bin.empty())
      return Error(Code::kNotFound,
                   "--policy embedded needs the paddock-policy binary (built as build/policy/paddock-policy, "
                   "or installed in /usr/local/bin); pass --policy http://HOST:PORT to use a running server");
    int port = FreeLoopbackPort();
    if (!port) return Error(Code::kUnavailable, "no free loopback port for paddock-policy");
    std::string listen = fmt::format("127.0.0.1:{}", port);
    pid_ = fork();
    if (pid_ < 0) return ErrnoError("fork");
    if (pid_ == 0) {
      int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
      }
      execl(bin.c_str(), bin.c_str(), "--listen", listen.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    auto until = std::chrono::steady_clock::now() + std::chrono::minutes(5);
    while (std::chrono::steady_clock::now() < until) {
      if (PortAccepts(port)) return fmt::format("http://{}", listen);
      int st;
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = 0;
        return Error(Code::kUnavailable, "paddock-policy exited during start-up; its output is in {}", log_path);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return Error(Code::kDeadlineExceeded, "paddock-policy did not listen on {} within 5 minutes", listen);
  }

 private:
  pid_t pid_ = 0;
};

// With --policy embedded: starts `paddock-policy` (its log in OUT, or /tmp)
// and points `policy`/`kind` at it. Whether it started one.
Result<bool> StartEmbeddedIfAsked(const Conn& c, EmbeddedPolicy& embedded, const std::string& out,
                                  std::string& policy, std::string& kind) {
  if (policy != "embedded") return false;
  std::string log = (out.empty() ? fs::temp_directory_path() : fs::path(out)) / "paddock-policy.log";
  if (!out.empty()) fs::create_directories(out);
  PADDOCK_ASSIGN_OR_RETURN(std::string url, embedded.Start(log));
  if (!*c.json) std::printf("embedded policy: paddock-policy at %s (log %s)\n", url.c_str(), log.c_str());
  policy = url;
  kind = "sglang";
  return true;
}

// ---- progress and summary -------------------------------------------------

std::string ProgressLine(const v1::RolloutProgress& p) {
  return fmt::format("{} {}: {}/{} done, {} running{}, {} failed{}, {} pending{}{} | tool calls {:.1f}/s, tokens {:.0f}/s | "
                     "sandbox start {:.1f} ms | {:.1f} s",
                     p.rollout_id(), p.state(), p.done() + p.failed(), p.episodes_total(), p.running(),
                     p.waiting_for_sandbox() ? fmt::format(" ({} waiting for a sandbox)", p.waiting_for_sandbox()) : "",
                     p.failed(), p.infra() ? fmt::format(" ({} infra)", p.infra()) : "", p.pending(),
                     p.queued() ? fmt::format(" ({} queued: the daemon is full)", p.queued()) : "",
                     p.groups_total() > 0 && p.groups_total() < p.episodes_total()
                         ? fmt::format(" | groups {}/{}", p.groups_done(), p.groups_total())
                         : "", p.tool_calls_per_s(), p.tokens_per_s(), p.sandbox_start_ms_median(),
                     p.elapsed_ms() / 1000.0);
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

json Summary(const std::vector<v1::EpisodeSummary>& eps, const v1::RolloutProgress& last) {
  std::vector<double> rewards, turns, tokens;
  std::map<std::string, int> stops;
  std::map<std::string, double> phase_s;
  uint64_t replayed_policy = 0, replayed_tools = 0, tool_calls = 0;
  int rebuilt = 0, failed = 0, infra = 0, retried = 0;
  std::map<std::string, int> infra_reasons;
  for (const auto& e : eps) {
    if (e.outcome_class() == "infra") {
      ++infra;
      infra_reasons[e.outcome_reason()]++;
    }
    retried += e.infra_retries() > 0;
    rewards.push_back(e.reward());
    turns.push_back(e.turns());
    tokens.push_back(static_cast<double>(e.generated_tokens()));
    stops[e.stop_reason().empty() ? "?" : e.stop_reason()]++;
    const auto& t = e.timings();
    phase_s["sandbox_start"] += t.sandbox_start_us() / 1e6;
    phase_s["setup"] += t.setup_us() / 1e6;
    phase_s["policy"] += t.policy_us() / 1e6;
    phase_s["policy_wait"] += t.policy_wait_us() / 1e6;
    phase_s["tools"] += t.tools_us() / 1e6;
    phase_s["verifier"] += t.verifier_us() / 1e6;
    phase_s["total"] += t.total_us() / 1e6;
    replayed_policy += e.replayed_policy_calls();
    replayed_tools += e.replayed_tool_calls();
    tool_calls += e.tool_calls();
    rebuilt += e.rebuilt();
    failed += e.state() == "failed";
  }
  double mean = 0;
  for (double r : rewards) mean += r;
  if (!rewards.empty()) mean /= rewards.size();
  json s = {{"rollout_id", last.rollout_id()},
            {"state", last.state()},
            {"episodes", eps.size()},
            {"episodes_total", last.episodes_total()},
            {"failed", failed},
            {"infra", {{"episodes", infra}, {"reasons", infra_reasons}, {"retried", retried}}},
            {"reward", {{"mean", mean},
                        {"min", rewards.empty() ? 0 : *std::min_element(rewards.begin(), rewards.end())},
                        {"max", rewards.empty() ? 0 : *std::max_element(rewards.begin(), rewards.end())},
                        {"positive", std::count_if(rewards.begin(), rewards.end(), [](double r) { return r > 0; })}}},
            {"stop_reasons", stops},
            {"turns", {{"median", Median(turns)}, {"max", turns.empty() ? 0 : *std::max_element(turns.begin(), turns.end())}}},
            {"generated_tokens", {{"total", std::accumulate(tokens.begin(), tokens.end(), 0.0)}, {"median", Median(tokens)}}},
            {"tool_calls", tool_calls},
            {"replayed", {{"policy_calls", replayed_policy}, {"tool_calls", replayed_tools}}},
            {"rebuilt_sandboxes", rebuilt},
            {"phase_seconds", phase_s},
            {"elapsed_s", last.elapsed_ms() / 1000.0}};
  return s;
}

void PrintSummary(const json& s) {
  std::printf("\nrollout %s: %s, %d of %d episodes reported, %d failed, %.1f s\n",
              s["rollout_id"].get<std::string>().c_str(), s["state"].get<std::string>().c_str(),
              s["episodes"].get<int>(), s["episodes_total"].get<int>(), s["failed"].get<int>(),
              s["elapsed_s"].get<double>());
  std::printf("  %-22s mean %.3f  min %.3f  max %.3f  positive %d\n", "reward", s["reward"]["mean"].get<double>(),
              s["reward"]["min"].get<double>(), s["reward"]["max"].get<double>(), s["reward"]["positive"].get<int>());
  std::string stops;
  for (auto& [k, v] : s["stop_reasons"].items()) stops += fmt::format("{} {}  ", k, v.get<int>());
  std::printf("  %-22s %s\n", "stop reasons", stops.c_str());
  std::string infra;
  for (auto& [k, v] : s["infra"]["reasons"].items()) infra += fmt::format("{} {}  ", k, v.get<int>());
  std::printf("  %-22s %d masked from training%s%s; %d retried\n", "infra outcomes", s["infra"]["episodes"].get<int>(),
              infra.empty() ? "" : ": ", infra.c_str(), s["infra"]["retried"].get<int>());
  std::printf("  %-22s median %.0f  max %.0f\n", "turns", s["turns"]["median"].get<double>(),
              s["turns"]["max"].get<double>());
  std::printf("  %-22s total %.0f  median %.0f per episode\n", "generated tokens",
              s["generated_tokens"]["total"].get<double>(), s["generated_tokens"]["median"].get<double>());
  std::printf("  %-22s %llu (replayed from the log: %llu tool, %llu policy calls; %d sandboxes rebuilt)\n",
              "tool calls", static_cast<unsigned long long>(s["tool_calls"].get<uint64_t>()),
              static_cast<unsigned long long>(s["replayed"]["tool_calls"].get<uint64_t>()),
              static_cast<unsigned long long>(s["replayed"]["policy_calls"].get<uint64_t>()),
              s["rebuilt_sandboxes"].get<int>());
  std::printf("  time per phase (episode-seconds, summed):\n");
  for (const char* k : {"sandbox_start", "setup", "policy", "policy_wait", "tools", "verifier", "total"})
    std::printf("    %-20s %10.2f s\n", k, s["phase_seconds"].value(k, 0.0));
}

// Watches until the rollout stops; prints progress; writes --out files.
int WatchAndReport(const Conn& c, client::RolloutsClient& rc, const std::string& id, const std::string& out_dir,
                   uint32_t interval_ms) {
  bool tty = isatty(STDOUT_FILENO) && !*c.json;
  std::vector<v1::EpisodeSummary> eps;
  v1::RolloutProgress last;
  std::string prev;
  Status st = rc.Watch(id, interval_ms, true, [&](const v1::RolloutEvent& ev) {
    if (ev.has_episode()) {
      eps.push_back(ev.episode());
      return true;
    }
    last = ev.progress();
    if (*c.json) return true;
    std::string line = ProgressLine(last);
    if (tty) {
      std::printf("\r\033[K%s", line.c_str());
      std::fflush(stdout);
    } else if (line != prev) {
      std::printf("%s\n", line.c_str());
      std::fflush(stdout);
    }
    prev = line;
    return true;
  });
  if (tty) std::printf("\n");
  if (!st.ok()) return Fail(c, st);
  if (last.rollout_id().empty()) {
    auto p = rc.Get(id);
    if (p.ok()) last = *p;
  }
  json summary = Summary(eps, last);
  if (!out_dir.empty()) {
    fs::path dir = fs::path(out_dir) / id;
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) return Fail(c, Error(Code::kInvalidArgument, "cannot create {}: {}", dir.string(), ec.message()));
    std::ofstream ex(dir / "episodes.jsonl", std::ios::binary | std::ios::trunc);
    Status est = rc.Export(id, false, [&](const std::string& data) {
      ex << data;
      return static_cast<bool>(ex);
    });
    if (!est.ok()) return Fail(c, est);
    std::ofstream(dir / "summary.json") << summary.dump(2) << "\n";
    summary["export"] = (dir / "episodes.jsonl").string();
  }
  if (*c.json) {
    std::printf("%s\n", summary.dump().c_str());
  } else {
    PrintSummary(summary);
    if (summary.contains("export")) std::printf("  export: %s\n", summary["export"].get<std::string>().c_str());
    if (last.state() != "finished") std::printf("  resume with: paddock resume %s\n", id.c_str());
  }
  if (last.state() != "finished" || summary["failed"].get<int>() > 0) return 3;
  return 0;
}

struct RunArgs {
  std::string tasks;
  std::string policy = "embedded";
  std::string policy_kind = "sglang";
  std::string policy_script;
  std::string model;
  uint32_t concurrency = 64;
  uint32_t max_in_flight = 0;
  uint32_t samples = 1;
  std::string out;
  std::string rollout_id;
  double temperature = -1;
  std::optional<uint64_t> seed;
  uint32_t max_new_tokens = 0;
  uint32_t deadline_s = 0;
  uint32_t unavailable_wait_s = 0;
  uint32_t interval_ms = 1000;
  bool thinking = false;
  bool detach = false;
  bool constrain_tools = false;  // set for --policy embedded
  std::string tool_choice;       // "" (auto) | auto | required
  uint32_t retry_infra = 0;
  uint32_t max_policy_lag = 0;
  std::string policy_version;
  bool abort_on_update = false;
  uint32_t weight = 1;
  int32_t priority = 0;
};

// --policy-kind as PolicySpec.kind.
Result<std::string> PolicyKind(const std::string& flag) {
  std::string kind = flag == "openai" ? "openai-completions" : flag;
  if (kind != "sglang" && kind != "openai-completions" && kind != "openai-chat")
    return Error(Code::kInvalidArgument, "--policy-kind '{}': expected sglang, openai or openai-chat", flag);
  return kind;
}

// --tool-choice, and the tool constraint only where the server can apply it.
Status CheckToolConstraint(const std::string& kind, bool constrain, const std::string& tool_choice) {
  if (!tool_choice.empty() && tool_choice != "auto" && tool_choice != "required")
    return Error(Code::kInvalidArgument, "--tool-choice '{}': expected auto or required", tool_choice);
  if ((constrain || !tool_choice.empty()) && !kind.empty() && kind != "sglang")
    return Error(Code::kInvalidArgument, "--constrain-tools/--tool-choice need --policy-kind sglang (a paddock-policy server)");
  return Status::Ok();
}

Result<v1::PolicySpec> PolicyFrom(const RunArgs& a) {
  v1::PolicySpec p;
  p.set_model(a.model);
  p.set_max_in_flight(a.max_in_flight);
  p.set_unavailable_wait_s(a.unavailable_wait_s);
  if (a.policy == "scripted") {
    if (a.policy_script.empty())
      return Error(Code::kInvalidArgument, "--policy scripted needs --policy-script FILE (a JSON array of completions)");
    PADDOCK_ASSIGN_OR_RETURN(std::string script, ReadFile(a.policy_script));
    p.set_kind("scripted");
    p.set_script(script);
    return p;
  }
  PADDOCK_ASSIGN_OR_RETURN(std::string kind, PolicyKind(a.policy_kind));
  p.set_kind(kind);
  p.set_url(a.policy);
  PADDOCK_RETURN_IF_ERROR(CheckToolConstraint(kind, a.constrain_tools, a.tool_choice));
  p.set_constrain_tools(a.constrain_tools || !a.tool_choice.empty());
  p.set_tool_choice(a.tool_choice);
  return p;
}

// What `paddock resume --policy ...` sends: only the fields the user gave, so
// the daemon keeps every other field of the stored PolicySpec (the tool
// constraint, the model, the limits).
struct ResumeArgs {
  std::string rollout_id;
  std::string policy, policy_kind, model, tool_choice, out;
  uint32_t concurrency = 0, max_in_flight = 0, unavailable_wait_s = 0, interval_ms = 1000;
  uint32_t weight = 0;
  int32_t priority = 0;
  bool has_priority = false;  // --priority given (0 is a priority)
  bool constrain_tools = false, no_constrain_tools = false, detach = false;
};

Result<std::optional<v1::PolicySpec>> ResumePolicyFrom(const ResumeArgs& a) {
  if (a.constrain_tools && a.no_constrain_tools)
    return Error(Code::kInvalidArgument, "--constrain-tools and --no-constrain-tools contradict each other");
  if (a.policy.empty() && !a.policy_kind.empty())
    return Error(Code::kInvalidArgument, "--policy-kind needs --policy (the new server's URL)");
  v1::PolicySpec p;
  if (!a.policy_kind.empty()) {
    PADDOCK_ASSIGN_OR_RETURN(std::string kind, PolicyKind(a.policy_kind));
    p.set_kind(kind);
  }
  PADDOCK_RETURN_IF_ERROR(CheckToolConstraint(p.kind(), a.constrain_tools, a.tool_choice));
  p.set_url(a.policy);
  p.set_model(a.model);
  p.set_max_in_flight(a.max_in_flight);
  p.set_unavailable_wait_s(a.unavailable_wait_s);
  p.set_tool_choice(a.tool_choice);
  if (a.constrain_tools || !a.tool_choice.empty()) p.set_constrain_tools(true);
  if (a.no_constrain_tools) p.set_constrain_tools(false);
  if (p.ByteSizeLong() == 0) return std::optional<v1::PolicySpec>();
  return std::optional<v1::PolicySpec>(std::move(p));
}

int RunResume(const Conn& c, ResumeArgs a) {
  auto rc = Connect(c);
  if (!rc.ok()) return Fail(c, rc.status());
  EmbeddedPolicy embedded;
  auto started = StartEmbeddedIfAsked(c, embedded, a.out, a.policy, a.policy_kind);
  if (!started.ok()) return Fail(c, started.status());
  if (*started && !a.no_constrain_tools) a.constrain_tools = true;  // as `paddock run --policy embedded`
  auto policy = ResumePolicyFrom(a);
  if (!policy.ok()) return Fail(c, policy.status());
  v1::ResumeRolloutRequest req;
  req.set_rollout_id(a.rollout_id);
  req.set_concurrency(a.concurrency);
  req.set_weight(a.weight);
  if (a.has_priority) req.set_priority(a.priority);
  if (*policy) *req.mutable_policy() = **policy;
  auto resp = rc->Resume(req);
  if (!resp.ok()) return Fail(c, resp.status());
  if (!*c.json)
    std::printf("rollout %s resumed: %u episodes, %u done before, %u to run\n", resp->rollout_id().c_str(),
                resp->episodes_total(), resp->already_done(), resp->to_run());
  if (a.detach) {
    if (*c.json) std::printf("%s\n", json({{"rollout_id", resp->rollout_id()}, {"to_run", resp->to_run()}}).dump().c_str());
    return 0;
  }
  return WatchAndReport(c, *rc, a.rollout_id, a.out, a.interval_ms);
}

int RunRun(const Conn& c, RunArgs a) {
  auto text = ReadFile(a.tasks);
  if (!text.ok()) return Fail(c, text.status());
  auto rc = Connect(c);
  if (!rc.ok()) return Fail(c, rc.status());
  EmbeddedPolicy embedded;
  auto embedded_started = StartEmbeddedIfAsked(c, embedded, a.out, a.policy, a.policy_kind);
  if (!embedded_started.ok()) return Fail(c, embedded_started.status());
  if (*embedded_started) a.constrain_tools = true;  // the untrained embedded model needs the tool constraint
  auto policy = PolicyFrom(a);
  if (!policy.ok()) return Fail(c, policy.status());
  v1::StartRolloutRequest req;
  req.set_tasks_jsonl(*text);
  *req.mutable_policy() = *policy;
  req.set_concurrency(a.concurrency);
  req.set_samples_per_task(a.samples);
  req.set_rollout_id(a.rollout_id);
  req.set_episode_deadline_s(a.deadline_s);
  req.set_thinking(a.thinking);
  req.set_retry_infra(a.retry_infra);
  req.set_max_policy_lag(a.max_policy_lag);
  req.set_policy_version(a.policy_version);
  req.set_abort_on_update(a.abort_on_update);
  req.set_weight(a.weight);
  req.set_priority(a.priority);
  req.set_source(fs::absolute(a.tasks).string());
  if (a.temperature >= 0) req.mutable_sampling()->set_temperature(a.temperature);
  if (a.seed) req.mutable_sampling()->set_seed(*a.seed);
  req.mutable_sampling()->set_max_new_tokens(a.max_new_tokens);
  auto started = rc->Start(req);
  if (!started.ok()) return Fail(c, started.status().Prefix(a.tasks));
  if (!*c.json) std::printf("rollout %s: %u episodes\n", started->rollout_id().c_str(), started->episodes());
  if (a.detach) {
    if (*c.json) std::printf("%s\n", json({{"rollout_id", started->rollout_id()}, {"episodes", started->episodes()}}).dump().c_str());
    return 0;
  }
  return WatchAndReport(c, *rc, started->rollout_id(), a.out, a.interval_ms);
}

}  // namespace

void RegisterRolloutCommands(CLI::App& app, const std::string& socket, const std::string& tcp,
                             const std::string& token_file, const bool& json_flag, std::optional<int>& rc) {
  static Conn conn;
  conn = Conn{&socket, &tcp, &token_file, &json_flag};
  static RunArgs run_args;
  static ResumeArgs resume_args;
  static std::string export_id, export_format = "jsonl", export_out, id_arg, episode_arg;
  static bool export_unfinished = false;

  CLI::App* run = app.add_subcommand("run", "run a rollout: every task of a JSONL file against a policy, in paddockd");
  run->add_option("tasks", run_args.tasks, "tasks file (JSON lines; docs/tasks.md)")->required();
  run->add_option("--policy", run_args.policy,
                  "embedded (start paddock-policy), http://HOST:PORT of an inference server, or scripted")
      ->capture_default_str();
  run->add_option("--policy-kind", run_args.policy_kind, "sglang | openai (completions) | openai-chat")
      ->capture_default_str();
  run->add_option("--policy-script", run_args.policy_script,
                  "with --policy scripted: JSON array of completions, turn N answered with element N (tests)");
  run->add_option("--model", run_args.model, "model name sent to OpenAI-compatible servers");
  run->add_option("--concurrency,-c", run_args.concurrency, "episodes running at once")->capture_default_str();
  run->add_option("--max-in-flight", run_args.max_in_flight, "policy requests in flight (0: the concurrency)");
  run->add_option("--weight", run_args.weight,
                  "share of the daemon's episode slots among rollouts of equal priority, by sandbox-time, when "
                  "the daemon is full")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1000000u));
  run->add_option("--priority", run_args.priority,
                  "rollouts of a higher priority start their episodes first when the daemon is full")
      ->capture_default_str();
  run->add_option("--samples", run_args.samples, "episodes per task")->capture_default_str();
  run->add_option("--out", run_args.out, "write DIR/ROLLOUT_ID/episodes.jsonl and summary.json at the end");
  run->add_option("--id", run_args.rollout_id, "rollout id (default: generated)");
  run->add_option("--temperature", run_args.temperature, "sampling temperature (default: the server's)");
  run->add_option("--seed", run_args.seed,
                  "sampling seed: episode i asks with seed + i, so a run is repeatable and a task's samples differ "
                  "(default: none sent; the server draws its own)");
  run->add_option("--max-new-tokens", run_args.max_new_tokens, "per turn (default: the task's)");
  run->add_option("--episode-deadline", run_args.deadline_s, "seconds per episode (default 3600)");
  run->add_option("--unavailable-wait", run_args.unavailable_wait_s,
                  "seconds an episode retries an unreachable policy server (default 600)");
  run->add_option("--interval-ms", run_args.interval_ms, "progress period")->capture_default_str();
  run->add_flag("--thinking", run_args.thinking, "V4 thinking mode");
  run->add_option("--retry-infra", run_args.retry_infra,
                  "run an episode again from the log, up to N times, when it ends for an infra reason "
                  "(sandbox lost, verifier crash, policy server down, deadline)")
      ->capture_default_str();
  run->add_option("--policy-version", run_args.policy_version,
                  "the version (weights id) the rollout starts under (default: the server's, else v0)");
  run->add_option("--max-policy-lag", run_args.max_policy_lag,
                  "mark a sample stale when its turns span more than N policy versions (0: no bound)");
  run->add_flag("--abort-on-update", run_args.abort_on_update,
                "on `rollout update-policy`, abort generations in flight and ask them again (default: they finish)");
  run->add_flag("--constrain-tools", run_args.constrain_tools,
                "send the task's tools with /generate so a paddock-policy server constrains decoding to valid "
                "tool calls (on with --policy embedded; SGLang itself does not know it)");
  run->add_option("--tool-choice", run_args.tool_choice,
                  "with the tool constraint: auto (the model may answer without a tool) or required (a tool call "
                  "every turn); implies --constrain-tools");
  run->add_flag("--detach", run_args.detach, "print the rollout id and return; `paddock rollout watch ID` later");
  run->callback([&rc] { rc = RunRun(conn, run_args); });

  CLI::App* resume = app.add_subcommand(
      "resume", "continue an interrupted rollout from the trajectory log (with its stored policy, sampling and "
                "tool constraint unless overridden here)");
  resume->add_option("rollout_id", resume_args.rollout_id, "rollout id (`paddock rollout ls`)")->required();
  resume->add_option("--policy", resume_args.policy,
                     "a new policy URL, or embedded (start paddock-policy); the stored policy's other settings are "
                     "kept (default: the stored policy)");
  resume->add_option("--policy-kind", resume_args.policy_kind,
                     "with --policy: sglang | openai | openai-chat (default: the stored kind)");
  resume->add_option("--model", resume_args.model, "model name (default: the stored one)");
  resume->add_option("--max-in-flight", resume_args.max_in_flight, "policy requests in flight (default: stored)");
  resume->add_option("--unavailable-wait", resume_args.unavailable_wait_s,
                     "seconds an episode retries an unreachable policy server (default: stored)");
  resume->add_flag("--constrain-tools", resume_args.constrain_tools, "turn the tool constraint on (default: stored)");
  resume->add_flag("--no-constrain-tools", resume_args.no_constrain_tools, "turn the tool constraint off");
  resume->add_option("--tool-choice", resume_args.tool_choice,
                     "auto | required, with the tool constraint (default: stored)");
  resume->add_option("--concurrency,-c", resume_args.concurrency, "episodes at once (default: the stored value)");
  resume->add_option("--weight", resume_args.weight, "share when the daemon is full (default: the stored value)")
      ->check(CLI::Range(1u, 1000000u));
  CLI::Option* resume_priority =
      resume->add_option("--priority", resume_args.priority, "higher starts first (default: the stored value)");
  resume->add_option("--out", resume_args.out, "write DIR/ROLLOUT_ID/episodes.jsonl and summary.json at the end");
  resume->add_option("--interval-ms", resume_args.interval_ms, "progress period")->capture_default_str();
  resume->add_flag("--detach", resume_args.detach, "return once resumed");
  resume->callback([&rc, resume_priority] {
    resume_args.has_priority = resume_priority->count() > 0;
    rc = RunResume(conn, resume_args);
  });

  CLI::App* ex = app.add_subcommand("export", "a rollout's episodes as training data (JSON lines; docs/export.schema.json)");
  ex->add_option("rollout_id", export_id, "rollout id")->required();
  ex->add_option("--format", export_format, "jsonl (the only format)")->capture_default_str();
  ex->add_option("--out,-o", export_out, "write to this file instead of stdout");
  ex->add_flag("--include-unfinished", export_unfinished, "also episodes that have not finished");
  ex->callback([&rc] {
    rc = [&]() -> int {
      if (export_format != "jsonl")
        return Fail(conn, Error(Code::kInvalidArgument, "--format '{}': only jsonl is supported", export_format));
      auto r = Connect(conn);
      if (!r.ok()) return Fail(conn, r.status());
      std::ofstream file;
      if (!export_out.empty()) {
        file.open(export_out, std::ios::binary | std::ios::trunc);
        if (!file) return Fail(conn, ErrnoError(fmt::format("cannot write {}", export_out)));
      }
      Status st = r->Export(export_id, export_unfinished, [&](const std::string& data) {
        if (file.is_open()) {
          file << data;
          return static_cast<bool>(file);
        }
        return std::fwrite(data.data(), 1, data.size(), stdout) == data.size();
      });
      if (!st.ok()) return Fail(conn, st);
      return 0;
    }();
  });

  CLI::App* ro = app.add_subcommand("rollout", "list, watch, inspect and cancel rollouts");
  ro->require_subcommand(1);
  CLI::App* ls = ro->add_subcommand("ls", "rollouts in the trajectory log, newest first");
  ls->callback([&rc] {
    rc = [&]() -> int {
      auto r = Connect(conn);
      if (!r.ok()) return Fail(conn, r.status());
      auto list = r->List();
      if (!list.ok()) return Fail(conn, list.status());
      if (*conn.json) {
        json a = json::array();
        for (auto& p : list->rollouts())
          a.push_back({{"rollout_id", p.rollout_id()}, {"state", p.state()}, {"episodes", p.episodes_total()},
                       {"done", p.done()}, {"failed", p.failed()}, {"running", p.running()}, {"queued", p.queued()},
                       {"policy", p.policy()}, {"source", p.source()}});
        std::printf("%s\n", a.dump().c_str());
      } else {
        std::printf("%-20s %-12s %8s %8s %8s  %s\n", "ROLLOUT", "STATE", "EPISODES", "DONE", "FAILED", "POLICY");
        for (auto& p : list->rollouts())
          std::printf("%-20s %-12s %8u %8u %8u  %s\n", p.rollout_id().c_str(), p.state().c_str(), p.episodes_total(),
                      p.done(), p.failed(), p.policy().c_str());
      }
      return 0;
    }();
  });
  CLI::App* watch = ro->add_subcommand("watch", "follow a running rollout to its end, then print its summary");
  watch->add_option("rollout_id", id_arg, "rollout id")->required();
  watch->callback([&rc] {
    rc = [&]() -> int {
      auto r = Connect(conn);
      if (!r.ok()) return Fail(conn, r.status());
      return WatchAndReport(conn, *r, id_arg, "", 1000);
    }();
  });
  CLI::App* show = ro->add_subcommand("show", "one episode: its summary and steps (JSON)");
  show->add_option("episode_id", episode_arg, "episode id, ROLLOUT/TASK#SAMPLE")->required();
  show->callback([&rc] {
    rc = [&]() -> int {
      auto r = Connect(conn);
      if (!r.ok()) return Fail(conn, r.status());
      auto d = r->GetEpisode(episode_arg);
      if (!d.ok()) return Fail(conn, d.status());
      json steps = json::array();
      for (auto& s : d->steps()) {
        json calls = json::array();
        for (auto& tc : s.tool_calls()) calls.push_back({{"name", tc.name()}, {"arguments", tc.arguments_json()}});
        json obs = json::array();
        for (auto& o : s.observations()) obs.push_back({{"exit_code", o.exit_code()}, {"content", o.content()}});
        steps.push_back({{"step", s.step()}, {"text", s.policy_response().text()}, {"tool_calls", calls},
                         {"observations", obs}, {"stop_reason", s.stop_reason()}});
      }
      const auto& e = d->summary();
      json j = {{"episode_id", e.episode_id()}, {"state", e.state()},       {"reward", e.reward()},
                {"stop_reason", e.stop_reason()}, {"turns", e.turns()},     {"failure_reason", e.failure_reason()},
                {"rebuild_note", e.rebuild_note()}, {"steps", steps}};
      std::printf("%s\n", j.dump(*conn.json ? -1 : 2, ' ', false, json::error_handler_t::replace).c_str());
      return 0;
    }();
  });
  static std::string consumer_arg;
  static bool follow_arg = false, ack_arg = false, summaries_only_arg = false;
  CLI::App* groups = ro->add_subcommand(
      "groups", "a rollout's groups (the samples of one task) as each completes, with reward mean/std");
  groups->add_option("rollout_id", id_arg, "rollout id")->required();
  groups->add_flag("--follow,-f", follow_arg, "wait for groups still running, until the rollout stops");
  groups->add_option("--consumer", consumer_arg,
                     "consumer name: only groups it has not acknowledged (offsets kept in the trajectory log)");
  groups->add_flag("--ack", ack_arg, "acknowledge each group once printed (needs --consumer)");
  groups->add_flag("--summaries-only", summaries_only_arg, "leave out the samples' export lines (with --json)");
  groups->callback([&rc] {
    rc = [&]() -> int {
      if (ack_arg && consumer_arg.empty())
        return Fail(conn, Error(Code::kInvalidArgument, "--ack needs --consumer NAME"));
      auto r = Connect(conn);
      if (!r.ok()) return Fail(conn, r.status());
      v1::StreamGroupsRequest req;
      req.set_rollout_id(id_arg);
      req.set_consumer(consumer_arg);
      req.set_follow(follow_arg);
      req.set_summaries_only(summaries_only_arg || !*conn.json);
      Status ack_error = Status::Ok();
      Status st = r->StreamGroups(req, [&](const v1::EpisodeGroup& g) {
        if (*conn.json) {
          json eps = json::array();
          for (const auto& e : g.episodes())
            eps.push_back({{"episode_id", e.episode_id()}, {"sample", e.sample()}, {"state", e.state()},
                           {"reward", e.reward()}, {"stop_reason", e.stop_reason()},
                           {"outcome", {{"class", e.outcome_class()}, {"reason", e.outcome_reason()}}},
                           {"train", e.train()}});
          json samples = json::array();
          for (const auto& line : g.samples_jsonl()) samples.push_back(json::parse(line, nullptr, false));
          json j = {{"group_id", g.group_id()},       {"task_id", g.task_id()},
                    {"sequence", g.sequence()},       {"reward_mean", g.reward_mean()},
                    {"reward_std", g.reward_std()},   {"trainable", g.trainable()},
                    {"completed_unix_ms", g.completed_unix_ms()}, {"episodes", eps}};
          if (!summaries_only_arg) j["samples"] = samples;
          std::printf("%s\n", j.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
        } else {
          std::printf("%4llu  %-40s %2d samples  reward mean %.3f std %.3f  trainable %u\n",
                      static_cast<unsigned long long>(g.sequence()), g.group_id().c_str(), g.episodes_size(),
                      g.reward_mean(), g.reward_std(), g.trainable());
        }
        std::fflush(stdout);
        if (ack_arg) {
          auto a = r->AckGroups(id_arg, consumer_arg, {g.group_id()});
          if (!a.ok()) {
            ack_error = a.status();
            return false;
          }
        }
        return true;
      });
      if (!st.ok()) return Fail(conn, st);
      if (!ack_error.ok()) return Fail(conn, ack_error);
      return 0;
    }();
  });
  static std::string weights_arg, version_arg;
  static bool abort_arg = false, no_abort_arg = false;
  static uint32_t load_timeout_s = 600;
  CLI::App* upd = ro->add_subcommand(
      "update-policy", "new policy weights for a running rollout: pause, load (SGLang /update_weights_from_disk), resume");
  upd->add_option("rollout_id", id_arg, "rollout id")->required();
  upd->add_option("--weights", weights_arg, "weights file for the inference server to load (a path on its machine)");
  upd->add_option("--version", version_arg, "the new version's name (default: v<epoch>); alone: only relabel");
  upd->add_flag("--abort-in-flight", abort_arg, "abort generations in flight and ask them again under the new weights");
  upd->add_flag("--finish-in-flight", no_abort_arg, "let generations in flight finish under the old weights");
  upd->add_option("--timeout", load_timeout_s, "seconds the server may take to load")->capture_default_str();
  upd->callback([&rc] {
    rc = [&]() -> int {
      if (weights_arg.empty() && version_arg.empty())
        return Fail(conn, Error(Code::kInvalidArgument, "give --weights FILE, --version V, or both"));
      if (abort_arg && no_abort_arg)
        return Fail(conn, Error(Code::kInvalidArgument, "--abort-in-flight and --finish-in-flight contradict each other"));
      auto r = Connect(conn);
      if (!r.ok()) return Fail(conn, r.status());
      v1::UpdatePolicyRequest req;
      req.set_rollout_id(id_arg);
      req.set_weights_path(weights_arg);
      req.set_version(version_arg);
      if (abort_arg) req.set_abort_in_flight(true);
      if (no_abort_arg) req.set_abort_in_flight(false);
      req.set_timeout_ms(load_timeout_s * 1000);
      auto u = r->UpdatePolicy(req);
      if (!u.ok()) return Fail(conn, u.status());
      if (*conn.json)
        std::printf("%s\n", json({{"rollout_id", u->rollout_id()}, {"previous_version", u->previous_version()},
                                  {"version", u->version()}, {"epoch", u->epoch()}, {"paused_ms", u->paused_ms()},
                                  {"drain_ms", u->drain_ms()}, {"load_ms", u->load_ms()}, {"aborted", u->aborted()}})
                                .dump()
                                .c_str());
      else
        std::printf("rollout %s: policy %s -> %s (epoch %llu); paused %lld ms (drain %lld, load %lld), %u aborted\n",
                    u->rollout_id().c_str(), u->previous_version().c_str(), u->version().c_str(),
                    static_cast<unsigned long long>(u->epoch()), static_cast<long long>(u->paused_ms()),
                    static_cast<long long>(u->drain_ms()), static_cast<long long>(u->load_ms()), u->aborted());
      return 0;
    }();
  });
  static uint64_t fork_step = 0;
  static uint32_t fork_samples = 1, fork_concurrency = 0, fork_interval_ms = 1000;
  static std::string fork_id, fork_out;
  static bool fork_detach = false;
  CLI::App* fork = ro->add_subcommand(
      "fork", "G new episodes that share an episode's first K turns (replayed from the log) and sample on their own");
  fork->add_option("episode_id", episode_arg, "episode id, ROLLOUT/TASK#SAMPLE")->required();
  fork->add_option("--at-step", fork_step, "the turn to fork after (1..its turns)")->required();
  fork->add_option("--samples,-g", fork_samples, "forks")->capture_default_str();
  fork->add_option("--id", fork_id, "the new rollout's id (default: generated)");
  fork->add_option("--concurrency,-c", fork_concurrency, "forks running at once (default: all)");
  fork->add_option("--out", fork_out, "write DIR/ROLLOUT_ID/episodes.jsonl and summary.json at the end");
  fork->add_option("--interval-ms", fork_interval_ms, "progress period")->capture_default_str();
  fork->add_flag("--detach", fork_detach, "print the new rollout id and return");
  fork->callback([&rc] {
    rc = [&]() -> int {
      auto r = Connect(conn);
      if (!r.ok()) return Fail(conn, r.status());
      v1::ForkEpisodeRequest req;
      req.set_episode_id(episode_arg);
      req.set_at_step(fork_step);
      req.set_samples(fork_samples);
      req.set_rollout_id(fork_id);
      req.set_concurrency(fork_concurrency);
      auto f = r->Fork(req);
      if (!f.ok()) return Fail(conn, f.status());
      if (!*conn.json)
        std::printf("rollout %s: %u forks of %s at turn %llu\n", f->rollout_id().c_str(), f->episodes(),
                    episode_arg.c_str(), static_cast<unsigned long long>(fork_step));
      if (fork_detach) {
        if (*conn.json)
          std::printf("%s\n", json({{"rollout_id", f->rollout_id()}, {"episodes", f->episodes()}}).dump().c_str());
        return 0;
      }
      return WatchAndReport(conn, *r, f->rollout_id(), fork_out, fork_interval_ms);
    }();
  });
  static std::vector<std::string> ack_ids;
  CLI::App* ack = ro->add_subcommand("ack", "acknowledge groups for a consumer (kept in the trajectory log)");
  ack->add_option("rollout_id", id_arg, "rollout id")->required();
  ack->add_option("--consumer", consumer_arg, "consumer name")->required();
  ack->add_option("group_ids", ack_ids, "group ids (ROLLOUT/TASK)")->required();
  ack->callback([&rc] {
    rc = [&]() -> int {
      auto r = Connect(conn);
      if (!r.ok()) return Fail(conn, r.status());
      auto a = r->AckGroups(id_arg, consumer_arg, ack_ids);
      if (!a.ok()) return Fail(conn, a.status());
      if (*conn.json)
        std::printf("%s\n", json({{"acknowledged", a->acknowledged()}, {"total", a->total()}}).dump().c_str());
      else
        std::printf("%u newly acknowledged, %u in all for consumer %s\n", a->acknowledged(), a->total(),
                    consumer_arg.c_str());
      return 0;
    }();
  });
  CLI::App* cancel = ro->add_subcommand("cancel", "cancel a running rollout (its log stays; resume continues it)");
  cancel->add_option("rollout_id", id_arg, "rollout id")->required();
  cancel->add_option("--episode", episode_arg, "only this episode");
  cancel->callback([&rc] {
    rc = [&]() -> int {
      auto r = Connect(conn);
      if (!r.ok()) return Fail(conn, r.status());
      auto n = r->Cancel(id_arg, episode_arg);
      if (!n.ok()) return Fail(conn, n.status());
      if (*conn.json) std::printf("%s\n", json({{"cancelled", *n}}).dump().c_str());
      else std::printf("cancelled %u episodes\n", *n);
      return 0;
    }();
  });
}

}  // namespace paddock::cli
