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
#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>

#include <CLI/CLI.hpp>

#include "cli_format.h"
#include "paddock/client.h"
#include "v4_commands.h"

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
  std::string substrate, image, memory, disk, workdir;
  uint32_t pids = 0, cpu = 0, ttl = 0;
  std::vector<std::string> env, labels;
};

int RunCreate(const Globals& g, const CreateArgs& a) {
  SandboxSpec spec;
  spec.substrate = a.substrate;
  spec.image = a.image;
  spec.workdir = a.workdir;
  spec.ttl_seconds = a.ttl;
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
    auto info = c.Create(spec);
    if (!info.ok()) return Fail(g, info.status());
    if (g.json) PrintJson(ToJson(*info));
    else std::printf("%s\n", info->id.c_str());
    return 0;
  });
}

// ---- sandbox exec ---------------------------------------------------------
struct ExecArgs {
  std::string id, cwd, output_cap, shell;
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
  if (a.stdin_) req.stdin_data = ReadAllStdin();
  return WithClient(g, [&](client::Client& c) {
    Result<ExecResult> r = Status();
    if (a.stream && !g.json) {
      r = c.ExecStream(a.id, req, [](int stream, std::string_view chunk) {
        FILE* out = stream == 2 ? stderr : stdout;
        std::fwrite(chunk.data(), 1, chunk.size(), out);
        std::fflush(out);
      });
    } else {
      r = c.Exec(a.id, req);
    }
    if (!r.ok()) return Fail(g, r.status());
    if (g.json) {
      PrintJson(ToJson(*r));
    } else {
      std::fwrite(r->stdout_data.data(), 1, r->stdout_data.size(), stdout);
      std::fflush(stdout);
      std::fwrite(r->stderr_data.data(), 1, r->stderr_data.size(), stderr);
      if (r->stdout_truncated || r->stderr_truncated)
        std::fprintf(stderr, "paddock: output truncated at the output cap; raise --output-cap\n");
      if (r->timed_out) std::fprintf(stderr, "paddock: command timed out; raise --timeout-ms\n");
      if (r->oom_killed) std::fprintf(stderr, "paddock: command ran out of memory (sandbox --memory)\n");
    }
    return ExecExitStatus(*r);
  });
}

// ---- files ----------------------------------------------------------------
int RunWrite(const Globals& g, const std::string& id, const std::string& path,
             const std::string& mode_text) {
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
  std::string content = ReadAllStdin();
  return WithClient(g, [&](client::Client& c) {
    auto n = c.WriteFile(id, path, content, mode, /*make_parents=*/true);
    if (!n.ok()) return Fail(g, n.status());
    if (g.json) PrintJson({{"path", path}, {"bytes_written", *n}});
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
    if (s->has_usage)
      std::printf("sandbox %s:\n  memory:   %llu bytes\n  cpu time: %llu us\n  pids:     %u\n",
                  id.c_str(), static_cast<unsigned long long>(s->usage.memory_bytes),
                  static_cast<unsigned long long>(s->usage.cpu_time_us), s->usage.pids);
    return 0;
  });
}

int RunSnapshot(const Globals& g, const std::string& id, const std::string& name) {
  return WithClient(g, [&](client::Client& c) {
    auto image = c.Snapshot(id, name);
    if (!image.ok()) return Fail(g, image.status());
    if (g.json) PrintJson({{"image", *image}});
    else std::printf("%s\n", image->c_str());
    return 0;
  });
}

int Main(int argc, char** argv) {
  Globals g;
  CLI::App app{"paddock: command-line client of the Paddock daemon (paddockd)"};
  app.require_subcommand(1);
  app.add_flag("--json", g.json, "print one JSON object per command (machine output)");
  app.add_option("--socket", g.socket, "paddockd's unix socket (default: $PADDOCK_SOCKET or /run/paddock/paddockd.sock)");
  app.add_option("--tcp", g.tcp, "reach paddockd over TCP at HOST:PORT instead of the socket");
  app.add_option("--token-file", g.token_file, "file holding the bearer token for --tcp");

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
  c->add_option("--image", create.image, "root filesystem directory to run in")->required();
  c->add_option("--memory", create.memory, "memory limit, e.g. 256M (0/omitted: 512M)");
  c->add_option("--pids", create.pids, "maximum processes (0/omitted: 256)");
  c->add_option("--cpu", create.cpu, "CPU limit in millicores (1000 = one core; omitted: none)");
  c->add_option("--disk", create.disk, "maximum bytes written, e.g. 1G (omitted: 1G)");
  c->add_option("--env", create.env, "KEY=VALUE for every exec (repeatable)")->allow_extra_args(false);
  c->add_option("--workdir", create.workdir, "default working directory (default /work in a container, /tmp in a function sandbox)");
  c->add_option("--ttl", create.ttl, "destroy after this many seconds (0: daemon default)");
  c->add_option("--label", create.labels, "KEY=VALUE label (repeatable)")->allow_extra_args(false);
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
  e->callback([&] { rc = RunExec(g, exec); });

  std::string id, path, mode, max_bytes, snap_name;
  CLI::App* w = leaf("write", "write stdin to a file in a sandbox (creates parent directories)");
  w->add_option("id", id, "sandbox id")->required();
  w->add_option("path", path, "file path inside the sandbox")->required();
  w->add_option("--mode", mode, "octal permissions (default 0644)");
  w->callback([&] { rc = RunWrite(g, id, path, mode); });

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

  CLI::App* sn = leaf("snapshot", "turn a sandbox's changes into a new image (not available yet)");
  sn->add_option("id", id, "sandbox id")->required();
  sn->add_option("--name", snap_name, "name of the new image")->required();
  sn->callback([&] { rc = RunSnapshot(g, id, snap_name); });

  RegisterV4Commands(app, rc);
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
