// paddock: the command-line client of paddockd. Every command connects,
// makes one or a few calls through paddock::client::Client and prints the
// answer, as text or (with --json) as one JSON object.
//
// Exit codes: 0 success; 1 an error (printed as "paddock: <message>"); 2 a
// usage error. `sandbox exec` exits with the command's own status instead:
// its exit code, 128+N when killed by signal N, 124 when it timed out.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>

#include <CLI/CLI.hpp>

#include "cli_format.h"
#include "paddock/client.h"
#include "image_commands.h"
#include "node_commands.h"
#include "v4_commands.h"
#include "rollout_commands.h"

namespace paddock::cli {
namespace {

using nlohmann::json;

struct Globals {
  bool json = false;
  std::string socket;
  std::string tcp;
  std::string token_file;
};

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Prints an error the one way every command does; returns exit status 1.
int Fail(const Globals& g, const Status& st) {
  std::fprintf(stderr, "paddock: %s\n", st.message().c_str());
  if (g.json)
    std::printf("%s\n", Dump({{"error", {{"code", CodeName(st.code())}, {"message", st.message()}}}}).c_str());
  return 1;
}

void PrintJson(const json& j) { std::printf("%s\n", Dump(j).c_str()); }

std::string ReadAllStdin() {
  std::string data((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  return data;
}

Result<client::Client> ConnectFrom(const Globals& g) {
  client::ClientOptions opts;
  if (!g.socket.empty()) opts.socket_path = g.socket;
  opts.tcp_target = g.tcp;
  if (!g.token_file.empty()) {
    std::ifstream in(g.token_file);
    if (!in) return ErrnoError(fmt::format("cannot read token file {}", g.token_file));
    std::string token((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) token.pop_back();
    opts.token = token;
  }
  return client::Client::Connect(opts);
}

// Runs `body` with a connected client, turning every failure into exit 1.
template <typename F>
int WithClient(const Globals& g, F&& body) {
  auto c = ConnectFrom(g);
  if (!c.ok()) return Fail(g, c.status());
  return body(*c);
}

// ---- sandbox create -------------------------------------------------------
struct CreateArgs {
  std::string substrate, image, memory, disk, workdir, episode;
  uint32_t pids = 0, cpu = 0, ttl = 0;
  std::vector<std::string> env, labels, allow;
};

int RunCreate(const Globals& g, const CreateArgs& a) {
  SandboxSpec spec;
  spec.substrate = a.substrate;
  spec.image = a.image;
  spec.workdir = a.workdir;
  spec.ttl_seconds = a.ttl;
  spec.network_allow = a.allow;
  spec.limits.pids = a.pids;
  spec.limits.cpu_millicores = a.cpu;
  if (!a.memory.empty()) {
    auto m = ParseSize(a.memory);
    if (!m.ok()) return Fail(g, m.status().Prefix("--memory"));
    spec.limits.memory_bytes = *m;
  }
  if (!a.disk.empty()) {
    auto d = ParseSize(a.disk);
    if (!d.ok()) return Fail(g, d.status().Prefix("--disk"));
    spec.limits.disk_bytes = *d;
  }
  auto env = ParseKeyValues(a.env, "--env");
  if (!env.ok()) return Fail(g, env.status());
  spec.env = *env;
  auto labels = ParseKeyValues(a.labels, "--label");
  if (!labels.ok()) return Fail(g, labels.status());
  spec.labels = *labels;
  return WithClient(g, [&](client::Client& c) {
    if (!a.episode.empty()) {
      auto bound = c.CreateForEpisode(spec, a.episode);
      if (!bound.ok()) return Fail(g, bound.status());
      if (g.json) {
        json j = ToJson(bound->sandbox);
        j["episode"] = a.episode;
        j["reused"] = bound->reused;
        j["rebuilt"] = bound->rebuilt;
        j["previous_sandbox_id"] = bound->previous_sandbox_id;
        PrintJson(j);
      } else {
        std::printf("%s\n", bound->sandbox.id.c_str());
        if (bound->rebuilt)
          std::fprintf(stderr,
                       "paddock: episode %s's sandbox %s is gone (daemon restarted?); rebuilt as "
                       "%s from the image\n",
                       a.episode.c_str(), bound->previous_sandbox_id.c_str(),
                       bound->sandbox.id.c_str());
      }
      return 0;
    }
    auto info = c.Create(spec);
    if (!info.ok()) return Fail(g, info.status());
    if (g.json) PrintJson(ToJson(*info));
    else std::printf("%s\n", info->id.c_str());
    return 0;
  });
}

// ---- sandbox exec ---------------------------------------------------------
struct ExecArgs {
  std::string id, cwd, output_cap, shell, key;
  bool idempotent = false;
  uint32_t timeout_ms = 0;
  std::vector<std::string> env, argv;
  bool stream = false, stdin_ = false;
};

int ExecExitStatus(const ExecResult& r) {
  if (r.timed_out) return 124;
  if (r.signal > 0) return 128 + r.signal;
  return r.exit_code;
}

int RunExec(const Globals& g, const ExecArgs& a) {
  ExecRequest req;
  req.argv = a.argv;
  req.shell = a.shell;
  req.cwd = a.cwd;
  req.timeout_ms = a.timeout_ms;
  if (req.argv.empty() == req.shell.empty())
    return Fail(g, Error(Code::kInvalidArgument,
                         "give the command after `--` (paddock sandbox exec ID -- ls -l) or with "
                         "--shell, not both"));
  if (!a.output_cap.empty()) {
    auto cap = ParseSize(a.output_cap);
    if (!cap.ok()) return Fail(g, cap.status().Prefix("--output-cap"));
    req.output_cap = *cap;
  }
  auto env = ParseKeyValues(a.env, "--env");
  if (!env.ok()) return Fail(g, env.status());
  req.env = *env;
  std::optional<client::CallKey> key;
  if (!a.key.empty()) {
    auto k = client::ParseCallKey(a.key);
    if (!k.ok()) return Fail(g, k.status().Prefix("--key"));
    k->idempotent = a.idempotent;
    key = *k;
  } else if (a.idempotent) {
    return Fail(g, Error(Code::kInvalidArgument, "--idempotent goes with --key EPISODE:STEP:CALL"));
  }
  if (a.stdin_) req.stdin_data = ReadAllStdin();
  return WithClient(g, [&](client::Client& c) {
    Result<client::KeyedExecResult> r = Status();
    auto print_chunk = [](int stream, std::string_view chunk) {
      FILE* out = stream == 2 ? stderr : stdout;
      std::fwrite(chunk.data(), 1, chunk.size(), out);
      std::fflush(out);
    };
    auto plain = [](Result<ExecResult> x) mutable -> Result<client::KeyedExecResult> {
      if (!x.ok()) return x.status();
      return client::KeyedExecResult{std::move(x).value(), false};
    };
    if (a.stream && !g.json) {
      r = key ? c.ExecStream(a.id, req, *key, print_chunk) : plain(c.ExecStream(a.id, req, print_chunk));
    } else {
      r = key ? c.Exec(a.id, req, *key) : plain(c.Exec(a.id, req));
    }
    if (!r.ok()) return Fail(g, r.status());
    if (g.json) {
      json j = ToJson(r->result);
      j["replayed"] = r->replayed;
      PrintJson(j);
      return ExecExitStatus(r->result);
    }
    {
      const ExecResult& x = r->result;
      std::fwrite(x.stdout_data.data(), 1, x.stdout_data.size(), stdout);
      std::fflush(stdout);
      std::fwrite(x.stderr_data.data(), 1, x.stderr_data.size(), stderr);
      if (x.stdout_truncated || x.stderr_truncated)
        std::fprintf(stderr, "paddock: output truncated at the output cap; raise --output-cap\n");
      if (x.timed_out) std::fprintf(stderr, "paddock: command timed out; raise --timeout-ms\n");
      if (x.oom_killed) std::fprintf(stderr, "paddock: command ran out of memory (sandbox --memory)\n");
    }
    return ExecExitStatus(r->result);
  });
}

// ---- files ----------------------------------------------------------------
int RunWrite(const Globals& g, const std::string& id, const std::string& path,
             const std::string& mode_text, const std::string& key_text, bool idempotent) {
  uint32_t mode = 0;
  if (!mode_text.empty()) {
    size_t used = 0;
    try {
      mode = static_cast<uint32_t>(std::stoul(mode_text, &used, 8));
    } catch (...) {
    }
    if (used != mode_text.size() || mode > 07777)
      return Fail(g, Error(Code::kInvalidArgument, "--mode '{}': expected octal permissions such as 0755",
                           mode_text));
  }
  std::optional<client::CallKey> key;
  if (!key_text.empty()) {
    auto k = client::ParseCallKey(key_text);
    if (!k.ok()) return Fail(g, k.status().Prefix("--key"));
    k->idempotent = idempotent;
    key = *k;
  } else if (idempotent) {
    return Fail(g, Error(Code::kInvalidArgument, "--idempotent goes with --key EPISODE:STEP:CALL"));
  }
  std::string content = ReadAllStdin();
  return WithClient(g, [&](client::Client& c) {
    Result<client::KeyedWriteResult> w = Status();
    if (key) {
      w = c.WriteFile(id, path, content, mode, /*make_parents=*/true, *key);
    } else {
      auto n = c.WriteFile(id, path, content, mode, /*make_parents=*/true);
      if (n.ok()) w = client::KeyedWriteResult{*n, false};
      else w = n.status();
    }
    if (!w.ok()) return Fail(g, w.status());
    if (g.json) PrintJson({{"path", path}, {"bytes_written", w->bytes_written}, {"replayed", w->replayed}});
    return 0;
  });
}

int RunRead(const Globals& g, const std::string& id, const std::string& path, const std::string& max) {
  uint64_t max_bytes = 0;
  if (!max.empty()) {
    auto m = ParseSize(max);
    if (!m.ok()) return Fail(g, m.status().Prefix("--max-bytes"));
    max_bytes = *m;
  }
  return WithClient(g, [&](client::Client& c) {
    auto content = c.ReadFile(id, path, max_bytes);
    if (!content.ok()) return Fail(g, content.status());
    if (g.json) PrintJson({{"path", path}, {"content", *content}});
    else std::fwrite(content->data(), 1, content->size(), stdout);
    return 0;
  });
}

std::string MtimeText(int64_t ms) {
  time_t t = ms / 1000;
  char buf[32];
  struct tm tm {};
  localtime_r(&t, &tm);
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

int RunStat(const Globals& g, const std::string& id, const std::string& path) {
  return WithClient(g, [&](client::Client& c) {
    auto f = c.Stat(id, path);
    if (!f.ok()) return Fail(g, f.status());
    if (g.json) {
      PrintJson(ToJson(*f));
    } else {
      std::printf("name:  %s\ntype:  %s\nsize:  %llu\nmode:  %04o\nmtime: %s\n", f->name.c_str(),
                  FileTypeName(f->type), static_cast<unsigned long long>(f->size), f->mode,
                  MtimeText(f->mtime_unix_ms).c_str());
    }
    return 0;
  });
}

int RunListDir(const Globals& g, const std::string& id, const std::string& path) {
  return WithClient(g, [&](client::Client& c) {
    auto entries = c.ListDir(id, path);
    if (!entries.ok()) return Fail(g, entries.status());
    if (g.json) {
      json arr = json::array();
      for (const auto& e : *entries) arr.push_back(ToJson(e));
      PrintJson({{"path", path}, {"entries", arr}});
      return 0;
    }
    std::vector<std::vector<std::string>> rows{{"TYPE", "MODE", "SIZE", "MTIME", "NAME"}};
    for (const auto& e : *entries)
      rows.push_back({FileTypeName(e.type), fmt::format("{:04o}", e.mode), std::to_string(e.size),
                      MtimeText(e.mtime_unix_ms), e.name});
    std::fputs(FormatTable(rows).c_str(), stdout);
    return 0;
  });
}

// ---- lifecycle and daemon -------------------------------------------------
int RunList(const Globals& g) {
  return WithClient(g, [&](client::Client& c) {
    auto list = c.List();
    if (!list.ok()) return Fail(g, list.status());
    if (g.json) {
      json arr = json::array();
      for (const auto& s : *list) arr.push_back(ToJson(s));
      PrintJson({{"sandboxes", arr}});
      return 0;
    }
    std::vector<std::vector<std::string>> rows{{"ID", "SUBSTRATE", "IMAGE", "AGE", "STATE"}};
    int64_t now = NowMs();
    for (const auto& s : *list)
      rows.push_back({s.id, s.substrate, s.image, FormatAge(s.created_unix_ms, now), s.state});
    std::fputs(FormatTable(rows).c_str(), stdout);
    return 0;
  });
}

int RunDestroy(const Globals& g, const std::vector<std::string>& ids) {
  return WithClient(g, [&](client::Client& c) {
    int rc = 0;
    json destroyed = json::array(), failed = json::object();
    for (const auto& id : ids) {
      Status st = c.Destroy(id);
      if (st.ok()) {
        destroyed.push_back(id);
        if (!g.json) std::printf("%s\n", id.c_str());
      } else {
        std::fprintf(stderr, "paddock: %s\n", st.message().c_str());
        failed[id] = st.message();
        rc = 1;
      }
    }
    if (g.json) PrintJson({{"destroyed", destroyed}, {"failed", failed}});
    return rc;
  });
}

int RunStats(const Globals& g, const std::string& id) {
  return WithClient(g, [&](client::Client& c) {
    auto s = c.Stats(id);
    if (!s.ok()) return Fail(g, s.status());
    if (g.json) {
      PrintJson(ToJson(*s));
      return 0;
    }
    std::printf("live sandboxes:  %u / %u\n", s->live_sandboxes, s->max_sandboxes);
    for (const auto& [name, n] : s->by_substrate) std::printf("  %-14s %u\n", name.c_str(), n);
    std::printf("execs total:     %llu\n", static_cast<unsigned long long>(s->execs_total));
    std::printf("daemon rss:      %llu bytes\n", static_cast<unsigned long long>(s->daemon_rss_bytes));
    std::printf("queued episodes: %u\n", s->queued_episodes);
    if (s->has_usage)
      std::printf("sandbox %s:\n  memory:   %llu bytes\n  cpu time: %llu us\n  pids:     %u\n",
                  id.c_str(), static_cast<unsigned long long>(s->usage.memory_bytes),
                  static_cast<unsigned long long>(s->usage.cpu_time_us), s->usage.pids);
    return 0;
  });
}

int RunSnapshot(const Globals& g, const std::string& id, const std::string& name) {
  return WithClient(g, [&](client::Client& c) {
    auto snap = c.SnapshotImage(id, name);
    if (!snap.ok()) return Fail(g, snap.status());
    if (g.json)
      PrintJson({{"image", snap->image}, {"name", snap->name}, {"layer", snap->layer},
                 {"layer_bytes", snap->layer_bytes}});
    else std::printf("%s\n", snap->image.c_str());
    return 0;
  });
}

int RunPause(const Globals& g, const std::string& id) {
  return WithClient(g, [&](client::Client& c) {
    auto bytes = c.Pause(id);
    if (!bytes.ok()) return Fail(g, bytes.status());
    if (g.json) PrintJson({{"sandbox_id", id}, {"state", "paused"}, {"state_bytes", *bytes}});
    else std::printf("%s paused (%.1f MiB of memory and device state saved)\n", id.c_str(), *bytes / 1048576.0);
    return 0;
  });
}

int RunResume(const Globals& g, const std::string& id) {
  return WithClient(g, [&](client::Client& c) {
    Status st = c.Resume(id);
    if (!st.ok()) return Fail(g, st);
    if (g.json) PrintJson({{"sandbox_id", id}, {"state", "running"}});
    else std::printf("%s resumed\n", id.c_str());
    return 0;
  });
}

int RunFork(const Globals& g, const std::string& id, uint32_t count) {
  return WithClient(g, [&](client::Client& c) {
    auto forks = c.Fork(id, count);
    if (!forks.ok()) return Fail(g, forks.status());
    json ids = json::array();
    for (const auto& f : *forks) {
      ids.push_back(f.id);
      if (!g.json) std::printf("%s\n", f.id.c_str());
    }
    if (g.json) PrintJson({{"parent", id}, {"sandboxes", ids}});
    return 0;
  });
}

// ---- log ------------------------------------------------------------------
struct LogArgs {
  std::string episode, dir, format = "jsonl", older_than;
  std::vector<std::string> episodes;
};

json ToJson(const client::LogEpisode& e) {
  return {{"episode_id", e.episode_id},     {"state", e.state},
          {"created_unix_ms", e.created_unix_ms}, {"updated_unix_ms", e.updated_unix_ms},
          {"sandbox_id", e.sandbox_id},     {"model", e.model},
          {"task", e.task},                 {"stop_reason", e.stop_reason},
          {"failure_reason", e.failure_reason}, {"rebuild_note", e.rebuild_note},
          {"total_reward", e.total_reward}, {"labels", e.labels}};
}

json ToJson(const client::InDoubtCall& c) {
  return {{"key", c.key}, {"request_summary", c.request_summary}, {"idempotent", c.idempotent},
          {"intent_unix_ms", c.intent_unix_ms}};
}

// "45s", "90m", "12h", "30d" (a bare number is seconds).
Result<std::chrono::seconds> ParseAge(const std::string& text) {
  size_t used = 0;
  uint64_t n = 0;
  try {
    n = std::stoull(text, &used);
  } catch (...) {
    used = 0;
  }
  std::string unit = used ? text.substr(used) : "";
  uint64_t mult = unit.empty() || unit == "s" ? 1 : unit == "m" ? 60 : unit == "h" ? 3600 : unit == "d" ? 86400 : 0;
  if (!used || !mult || n == 0)
    return Error(Code::kInvalidArgument, "'{}': expected an age such as 45s, 90m, 12h or 30d", text);
  return std::chrono::seconds(n * mult);
}

std::string OneLine(std::string s) {
  for (auto& c : s)
    if (c == '\n') c = ' ';
  return s;
}

int RunLogLs(const Globals& g) {
  return WithClient(g, [&](client::Client& c) {
    auto list = c.LogListEpisodes();
    if (!list.ok()) return Fail(g, list.status());
    if (g.json) {
      json arr = json::array();
      for (const auto& e : *list) arr.push_back(ToJson(e));
      PrintJson({{"episodes", arr}});
      return 0;
    }
    std::vector<std::vector<std::string>> rows{{"EPISODE", "STATE", "SANDBOX", "UPDATED", "REWARD"}};
    int64_t now = NowMs();
    for (const auto& e : *list)
      rows.push_back({e.episode_id, e.state, e.sandbox_id,
                      e.updated_unix_ms ? FormatAge(e.updated_unix_ms, now) + " ago" : "",
                      fmt::format("{:g}", e.total_reward)});
    std::fputs(FormatTable(rows).c_str(), stdout);
    return 0;
  });
}

int RunLogShow(const Globals& g, const std::string& episode) {
  return WithClient(g, [&](client::Client& c) {
    auto d = c.LogShowEpisode(episode);
    if (!d.ok()) return Fail(g, d.status());
    if (g.json) {
      json steps = json::array(), doubt = json::array();
      for (const auto& s : d->steps) steps.push_back(json::parse(s.json, nullptr, false));
      for (const auto& x : d->in_doubt) doubt.push_back(ToJson(x));
      PrintJson({{"episode", d->has_record ? ToJson(d->episode) : json(nullptr)},
                 {"steps", steps},
                 {"in_doubt", doubt}});
      return 0;
    }
    if (d->has_record) {
      const auto& e = d->episode;
      std::printf("episode:  %s\nstate:    %s\nsandbox:  %s\n", e.episode_id.c_str(), e.state.c_str(),
                  e.sandbox_id.empty() ? "-" : e.sandbox_id.c_str());
      if (e.created_unix_ms) std::printf("created:  %s\n", MtimeText(e.created_unix_ms).c_str());
      if (e.updated_unix_ms) std::printf("updated:  %s\n", MtimeText(e.updated_unix_ms).c_str());
      if (!e.model.empty()) std::printf("model:    %s\n", e.model.c_str());
      if (!e.task.empty()) std::printf("task:     %s\n", e.task.c_str());
      if (!e.stop_reason.empty()) std::printf("stop:     %s\n", e.stop_reason.c_str());
      if (!e.failure_reason.empty()) std::printf("failure:  %s\n", e.failure_reason.c_str());
      if (!e.rebuild_note.empty()) std::printf("rebuilt:  %s\n", e.rebuild_note.c_str());
      std::printf("reward:   %g\n", e.total_reward);
    } else {
      std::printf("episode:  %s (no episode record)\n", episode.c_str());
    }
    std::printf("steps:    %zu\n", d->steps.size());
    if (!d->steps.empty()) {
      std::vector<std::vector<std::string>> rows{{"STEP", "TOOL CALLS", "REWARD", "STOP"}};
      for (const auto& s : d->steps)
        rows.push_back({std::to_string(s.step), std::to_string(s.tool_calls), fmt::format("{:g}", s.reward),
                        s.stop_reason});
      std::fputs(FormatTable(rows).c_str(), stdout);
    }
    std::printf("in doubt: %zu\n", d->in_doubt.size());
    for (const auto& x : d->in_doubt)
      std::printf("  %s  intent at %s%s  %s\n", x.key.c_str(), MtimeText(x.intent_unix_ms).c_str(),
                  x.idempotent ? " (idempotent)" : "", OneLine(x.request_summary).c_str());
    return 0;
  });
}

int RunLogExport(const Globals& g, const LogArgs& a) {
  if (a.format != "jsonl")
    return Fail(g, Error(Code::kInvalidArgument, "--format '{}': the one format is jsonl", a.format));
  return WithClient(g, [&](client::Client& c) {
    Status st = c.LogExport(a.episodes, a.format, [](std::string_view chunk) {
      std::fwrite(chunk.data(), 1, chunk.size(), stdout);
    });
    std::fflush(stdout);
    if (!st.ok()) return Fail(g, st);
    return 0;
  });
}

int RunLogVerify(const Globals& g) {
  return WithClient(g, [&](client::Client& c) {
    auto r = c.LogVerify();
    if (!r.ok()) return Fail(g, r.status());
    if (g.json) {
      json doubt = json::array();
      for (const auto& x : r->in_doubt) doubt.push_back(ToJson(x));
      PrintJson({{"ok", r->ok},
                 {"checksums_ok", r->checksums_ok},
                 {"checksum_error", r->checksum_error},
                 {"corrupt_files", r->corrupt_files},
                 {"format_version", r->format_version},
                 {"format_ok", r->format_ok},
                 {"format_error", r->format_error},
                 {"episodes", r->episodes},
                 {"steps", r->steps},
                 {"intents", r->intents},
                 {"results", r->results},
                 {"in_doubt", doubt},
                 {"results_without_intent", r->results_without_intent},
                 {"undecodable_records", r->undecodable_records},
                 {"problems", r->problems}});
    } else {
      std::fputs(r->report.c_str(), stdout);
      if (!r->report.empty() && r->report.back() != '\n') std::fputc('\n', stdout);
      std::printf("%s\n", r->ok ? "log OK" : "log has PROBLEMS");
    }
    return r->ok ? 0 : 1;
  });
}

int RunLogBackup(const Globals& g, const std::string& dir) {
  std::error_code ec;
  std::string abs = std::filesystem::absolute(dir, ec).lexically_normal().string();
  return WithClient(g, [&](client::Client& c) {
    auto id = c.LogBackup(abs);
    if (!id.ok()) return Fail(g, id.status());
    if (g.json) PrintJson({{"dir", abs}, {"backup_id", *id}});
    else std::printf("backup %u in %s\n", *id, abs.c_str());
    return 0;
  });
}

int RunLogRestore(const Globals& g, const std::string& dir) {
  std::error_code ec;
  std::string abs = std::filesystem::absolute(dir, ec).lexically_normal().string();
  return WithClient(g, [&](client::Client& c) {
    Status st = c.LogRestore(abs);
    if (!st.ok()) return Fail(g, st);
    return 0;
  });
}

int RunLogCompact(const Globals& g) {
  return WithClient(g, [&](client::Client& c) {
    Status st = c.LogCompact();
    if (!st.ok()) return Fail(g, st);
    if (g.json) PrintJson({{"compacted", true}});
    return 0;
  });
}

int RunLogPrune(const Globals& g, const std::string& older_than) {
  auto age = ParseAge(older_than);
  if (!age.ok()) return Fail(g, age.status().Prefix("--older-than"));
  return WithClient(g, [&](client::Client& c) {
    auto n = c.LogPrune(*age);
    if (!n.ok()) return Fail(g, n.status());
    if (g.json) PrintJson({{"episodes_deleted", *n}});
    else std::printf("deleted %llu episodes\n", static_cast<unsigned long long>(*n));
    return 0;
  });
}

void RegisterLogCommands(CLI::App& app, const Globals& g, LogArgs& a, std::optional<int>& rc) {
  CLI::App* log = app.add_subcommand("log", "inspect and maintain paddockd's trajectory log");
  log->require_subcommand(1);
  log->fallthrough();
  auto leaf = [&](const std::string& name, const std::string& help) {
    CLI::App* s = log->add_subcommand(name, help);
    s->fallthrough();
    return s;
  };
  leaf("ls", "list the episodes in the log")->callback([&] { rc = RunLogLs(g); });
  CLI::App* show = leaf("show", "one episode: its record, steps and in-doubt calls");
  show->add_option("episode", a.episode, "episode id")->required();
  show->callback([&] { rc = RunLogShow(g, a.episode); });
  CLI::App* ex = leaf("export", "print episodes (all, or the named ones) as JSON lines");
  ex->add_option("episodes", a.episodes, "episode ids (default: every episode)");
  ex->add_option("--format", a.format, "output format: jsonl")->capture_default_str();
  ex->callback([&] { rc = RunLogExport(g, a); });
  leaf("verify", "check checksums, records and in-doubt calls; exits 1 on corruption")
      ->callback([&] { rc = RunLogVerify(g); });
  CLI::App* bk = leaf("backup", "back up the live log into DIR (RocksDB BackupEngine)");
  bk->add_option("dir", a.dir, "backup directory, on the daemon's host")->required();
  bk->callback([&] { rc = RunLogBackup(g, a.dir); });
  CLI::App* rs = leaf("restore",
                      "refused while paddockd runs; restore offline with `paddockd --restore-log DIR`");
  rs->add_option("dir", a.dir, "backup directory")->required();
  rs->callback([&] { rc = RunLogRestore(g, a.dir); });
  leaf("compact", "full manual compaction of the log")->callback([&] { rc = RunLogCompact(g); });
  CLI::App* pr = leaf("prune", "delete episodes not updated for a while (retention)");
  pr->add_option("--older-than", a.older_than, "age, e.g. 30d, 12h, 90m")->required();
  pr->callback([&] { rc = RunLogPrune(g, a.older_than); });
}

int Main(int argc, char** argv) {
  Globals g;
  CLI::App app{"paddock: command-line client of the Paddock daemon (paddockd)"};
  app.require_subcommand(1);
  app.add_flag("--json", g.json, "print one JSON object per command (machine output)");
  app.add_option("--socket", g.socket, "paddockd's unix socket (default: $PADDOCK_SOCKET or /run/paddock/paddockd.sock)");
  app.add_option("--tcp", g.tcp, "reach paddockd over TCP at HOST:PORT instead of the socket");
  app.add_option("--token-file", g.token_file, "file holding the bearer token for --tcp");
  // TLS settings travel through the environment the client library reads
  // (PADDOCK_TLS_*), so every command's connection picks them up.
  auto tls_env = [](const char* var) { return [var](const std::string& v) { setenv(var, v.c_str(), 1); }; };
  app.add_option("--tls-ca", "--tcp over TLS: PEM CA bundle that signed paddockd's --tls-cert ($PADDOCK_TLS_CA)")
      ->each(tls_env("PADDOCK_TLS_CA"));
  app.add_option("--tls-cert", "client certificate (PEM) for a paddockd with --tls-client-ca ($PADDOCK_TLS_CERT)")
      ->each(tls_env("PADDOCK_TLS_CERT"));
  app.add_option("--tls-key", "private key of --tls-cert ($PADDOCK_TLS_KEY)")->each(tls_env("PADDOCK_TLS_KEY"));

  CLI::App* sandbox = app.add_subcommand("sandbox", "create, drive and destroy sandboxes");
  sandbox->require_subcommand(1);
  sandbox->fallthrough();
  std::optional<int> rc;  // set by the chosen command's callback
  auto leaf = [&](const std::string& name, const std::string& help) {
    CLI::App* s = sandbox->add_subcommand(name, help);
    s->fallthrough();  // global flags may also come after the command
    return s;
  };

  CreateArgs create;
  CLI::App* c = leaf("create", "create a sandbox and print its id");
  c->add_option("--substrate", create.substrate, "function | container")->required();
  c->add_option("--image", create.image, "image: name[:tag], digest or digest prefix from `paddock image ls` (an absolute root filesystem directory only on a daemon started with --allow-dir-images)")->required();
  c->add_option("--memory", create.memory, "memory limit, e.g. 256M (0/omitted: 512M)");
  c->add_option("--pids", create.pids, "maximum processes (0/omitted: 256)");
  c->add_option("--cpu", create.cpu, "CPU limit in millicores (1000 = one core; omitted: none)");
  c->add_option("--disk", create.disk, "maximum bytes written, e.g. 1G (omitted: 1G)");
  c->add_option("--env", create.env, "KEY=VALUE for every exec (repeatable)")->allow_extra_args(false);
  c->add_option("--workdir", create.workdir, "default working directory (default /work in a container, /tmp in a function sandbox)");
  c->add_option("--ttl", create.ttl, "destroy after this many seconds (0: daemon default)");
  c->add_option("--label", create.labels, "KEY=VALUE label (repeatable)")->allow_extra_args(false);
  c->add_option("--network-allow", create.allow,
                "egress allow-list entry: HOST[:PORT], *.DOMAIN[:PORT], IP[:PORT] or CIDR[:PORT] (repeatable; "
                "every substrate; reached through HTTP_PROXY/HTTPS_PROXY, never the host or 169.254.0.0/16)")
      ->allow_extra_args(false);
  c->add_option("--episode", create.episode,
                "bind the sandbox to this episode of the trajectory log: a second create for it "
                "returns the bound sandbox while it lives, a new (rebuilt) one after a restart");
  c->callback([&] { rc = RunCreate(g, create); });

  ExecArgs exec;
  CLI::App* e = leaf("exec", "run a command in a sandbox; exits with its status");
  e->add_option("id", exec.id, "sandbox id")->required();
  e->add_option("argv", exec.argv, "the command and its arguments, after --");
  e->add_option("--shell", exec.shell, "run this string with /bin/sh -c instead of argv");
  e->add_option("--timeout-ms", exec.timeout_ms, "kill the command after this long (default 60000)");
  e->add_option("--cwd", exec.cwd, "working directory (default: the sandbox workdir)");
  e->add_option("--env", exec.env, "KEY=VALUE added to the environment (repeatable)")->allow_extra_args(false);
  e->add_option("--output-cap", exec.output_cap, "keep at most this much of each stream, e.g. 4M (default 1M)");
  e->add_flag("--stream", exec.stream, "print output as it is produced");
  e->add_flag("--stdin", exec.stdin_, "read this CLI's stdin to its end and pass it as the command's stdin");
  e->add_option("--key", exec.key,
                "idempotency key EPISODE:STEP:CALL: logged write-ahead; a repeat is answered from "
                "the log without running (--json: \"replayed\": true)");
  e->add_flag("--idempotent", exec.idempotent,
              "with --key: the command may run again if a crash left it in doubt");
  e->callback([&] { rc = RunExec(g, exec); });

  std::string id, path, mode, max_bytes, snap_name, write_key;
  bool write_idempotent = false;
  CLI::App* w = leaf("write", "write stdin to a file in a sandbox (creates parent directories)");
  w->add_option("id", id, "sandbox id")->required();
  w->add_option("path", path, "file path inside the sandbox")->required();
  w->add_option("--mode", mode, "octal permissions (default 0644)");
  w->add_option("--key", write_key,
                "idempotency key EPISODE:STEP:CALL: a repeat is answered from the log");
  w->add_flag("--idempotent", write_idempotent,
              "with --key: the write may run again if a crash left it in doubt");
  w->callback([&] { rc = RunWrite(g, id, path, mode, write_key, write_idempotent); });

  CLI::App* r = leaf("read", "print a file of a sandbox to stdout");
  r->add_option("id", id, "sandbox id")->required();
  r->add_option("path", path, "file path inside the sandbox")->required();
  r->add_option("--max-bytes", max_bytes, "refuse files larger than this (default 16M, at most 64M)");
  r->callback([&] { rc = RunRead(g, id, path, max_bytes); });

  CLI::App* st = leaf("stat", "show type, size, mode and mtime of a path in a sandbox");
  st->add_option("id", id, "sandbox id")->required();
  st->add_option("path", path, "path inside the sandbox")->required();
  st->callback([&] { rc = RunStat(g, id, path); });

  CLI::App* ld = leaf("listdir", "list a directory of a sandbox");
  ld->add_option("id", id, "sandbox id")->required();
  ld->add_option("path", path, "directory inside the sandbox")->required();
  ld->callback([&] { rc = RunListDir(g, id, path); });

  CLI::App* ls = leaf("ls", "list live sandboxes");
  ls->callback([&] { rc = RunList(g); });

  std::vector<std::string> ids;
  CLI::App* d = leaf("destroy", "destroy sandboxes, leaving nothing behind");
  d->add_option("ids", ids, "sandbox ids")->required();
  d->callback([&] { rc = RunDestroy(g, ids); });

  CLI::App* ss = leaf("stats", "daemon-wide numbers; with an id, that sandbox's usage too");
  ss->add_option("id", id, "sandbox id (optional)");
  ss->callback([&] { rc = RunStats(g, id); });

  CLI::App* sn = leaf("snapshot", "turn a container's changes into a new image on top of its own");
  sn->add_option("id", id, "sandbox id")->required();
  sn->add_option("--name", snap_name, "name of the new image")->required();
  sn->callback([&] { rc = RunSnapshot(g, id, snap_name); });

  CLI::App* pa = leaf("pause", "pause a microVM with its memory (saved to disk, host memory released)");
  pa->add_option("id", id, "sandbox id")->required();
  pa->callback([&] { rc = RunPause(g, id); });

  CLI::App* re = leaf("resume", "resume a paused microVM: processes and files as they were");
  re->add_option("id", id, "sandbox id")->required();
  re->callback([&] { rc = RunResume(g, id); });

  uint32_t fork_count = 1;
  CLI::App* fk = leaf("fork", "copy a running microVM into new running sandboxes (memory included)");
  fk->add_option("id", id, "sandbox id")->required();
  fk->add_option("--count", fork_count, "how many copies (1..64, default 1)")->check(CLI::Range(1, 64));
  fk->callback([&] { rc = RunFork(g, id, fork_count); });

  LogArgs log_args;
  RegisterLogCommands(app, g, log_args, rc);

  RegisterV4Commands(app, rc);
  RegisterRolloutCommands(app, g.socket, g.tcp, g.token_file, g.json, rc);
  RegisterImageCommands(app, [&g] { return ConnectFrom(g); }, g.json, rc);
  RegisterNodeCommands(app, [&g] { return ConnectFrom(g); }, g.json, rc);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& err) {
    int code = app.exit(err);  // prints help or the usage error
    return code == 0 ? 0 : 2;
  }
  return rc.value_or(0);
}

}  // namespace
}  // namespace paddock::cli

int main(int argc, char** argv) { return paddock::cli::Main(argc, argv); }
