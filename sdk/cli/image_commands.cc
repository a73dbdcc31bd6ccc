#include "image_commands.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>

#include "cli_format.h"
#include "storage/registry/credentials.h"

namespace paddock::cli {

namespace {

using nlohmann::json;

struct ImageArgs {
  std::string path, name, ref, dir, workdir, grace, platform, ca_file, creds_file, image, chunk_size;
  std::vector<std::string> env, insecure;
};

struct Ctx {
  std::function<Result<client::Client>()> connect;
  const bool* json;
};

int Fail(const Ctx& c, const Status& st) {
  std::fprintf(stderr, "paddock: %s\n", st.message().c_str());
  if (*c.json)
    std::printf("%s\n", Dump({{"error", {{"code", CodeName(st.code())}, {"message", st.message()}}}}).c_str());
  return 1;
}

void Print(const json& j) { std::printf("%s\n", Dump(j).c_str()); }

template <typename F>
int With(const Ctx& c, F&& body) {
  auto cl = c.connect();
  if (!cl.ok()) return Fail(c, cl.status());
  return body(*cl);
}

// The daemon resolves paths on its own host, so a relative path is made
// absolute here, where the user typed it.
std::string Absolute(const std::string& p) {
  if (p.empty() || p[0] == '/') return p;
  std::error_code ec;
  auto abs = std::filesystem::absolute(p, ec);
  return ec ? p : abs.lexically_normal().string();
}

std::string Join(const std::vector<std::string>& v, const char* sep = ", ") {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : sep) + s;
  return out;
}

json ImportJson(const client::ImageImportResult& r) {
  return {{"images", r.images},           {"names", r.names},
          {"layers_total", r.layers_total}, {"layers_new", r.layers_new},
          {"bytes_committed", r.bytes_committed}};
}

// The credentials for REF's registry, read here as the user who runs the CLI:
// --creds-file (which must exist), else the user's docker config when it
// exists. Only the one entry goes to the daemon.
Result<client::RegistryCredentials> CredentialsFor(const Ctx& c, const ImageArgs& a, const std::string& ref) {
  namespace reg = storage::registry;
  const std::string registry = reg::RegistryOfReference(ref);
  std::string path = a.creds_file;
  if (path.empty()) {
    path = reg::DefaultDockerConfigPath();
    if (path.empty() || access(path.c_str(), F_OK) != 0) return client::RegistryCredentials{};
  }
  auto found = reg::ReadCredentialsFile(path, registry);
  if (!found.ok()) return found.status();
  if (!found->note.empty() && !*c.json) std::fprintf(stderr, "paddock: note: %s\n", found->note.c_str());
  return client::RegistryCredentials{found->creds.username, found->creds.password};
}

// Progress on stderr: one line rewritten in place on a terminal, whole lines
// (phase changes only) otherwise, so logs stay short.
class ProgressLines {
 public:
  explicit ProgressLines(bool json) : json_(json), tty_(isatty(STDERR_FILENO) && !json) {}
  ~ProgressLines() {
    if (open_line_) std::fprintf(stderr, "\n");
  }
  void operator()(const client::ImagePullProgress& p) {
    if (json_) return;
    if (tty_) {
      std::fprintf(stderr, "\r\033[K%s", p.message.c_str());
      open_line_ = true;
    } else if (p.phase != last_phase_ || (p.phase != "layer" && p.phase != "blob")) {
      std::fprintf(stderr, "%s\n", p.message.c_str());
    }
    last_phase_ = p.phase;
  }
  void End() {
    if (open_line_) std::fprintf(stderr, "\n");
    open_line_ = false;
  }

 private:
  bool json_, tty_, open_line_ = false;
  std::string last_phase_;
};

int RunPull(const Ctx& c, const ImageArgs& a) {
  auto creds = CredentialsFor(c, a, a.ref);
  if (!creds.ok()) return Fail(c, creds.status());
  return With(c, [&](client::Client& cl) {
    ProgressLines lines(*c.json);
    client::ImagePullOptions opts{a.name, a.insecure, a.platform, Absolute(a.ca_file), *creds};
    auto r = cl.ImagePull(a.ref, opts, [&](const client::ImagePullProgress& p) { lines(p); });
    lines.End();
    if (!r.ok()) return Fail(c, r.status());
    if (*c.json) {
      json j = ImportJson(*r);
      j["image"] = r->images.at(0);
      j["manifest_digest"] = r->manifest_digest;
      j["bytes_fetched"] = r->bytes_fetched;
      Print(j);
    } else {
      std::printf("%s%s\n", r->images.at(0).c_str(), r->names.empty() ? "" : ("  " + Join(r->names)).c_str());
    }
    return 0;
  });
}

int RunPush(const Ctx& c, const ImageArgs& a) {
  auto creds = CredentialsFor(c, a, a.ref);
  if (!creds.ok()) return Fail(c, creds.status());
  return With(c, [&](client::Client& cl) {
    ProgressLines lines(*c.json);
    client::ImagePushOptions opts{a.insecure, Absolute(a.ca_file), *creds};
    if (!a.chunk_size.empty()) {
      auto size = ParseSize(a.chunk_size);
      if (!size.ok()) return Fail(c, size.status().Prefix("--chunk-size"));
      if (*size != 0 && *size < (64 << 10))
        return Fail(c, Error(Code::kInvalidArgument, "--chunk-size {}: at least 64K (or 0: no chunks)", a.chunk_size));
      if (*size > (1ull << 30)) return Fail(c, Error(Code::kInvalidArgument, "--chunk-size {}: at most 1G", a.chunk_size));
      opts.chunk_size = *size == 0 ? -1 : static_cast<int64_t>(*size);
    }
    auto r = cl.ImagePush(a.image, a.ref, opts, [&](const client::ImagePullProgress& p) { lines(p); });
    lines.End();
    if (!r.ok()) return Fail(c, r.status());
    if (*c.json) {
      Print({{"image", r->image},
             {"ref", r->ref},
             {"manifest_digest", r->manifest_digest},
             {"blobs_total", r->blobs_total},
             {"blobs_present", r->blobs_present},
             {"blobs_mounted", r->blobs_mounted},
             {"blobs_uploaded", r->blobs_uploaded},
             {"bytes_uploaded", r->bytes_uploaded},
             {"blobs_chunked", r->blobs_chunked},
             {"chunk_resumes", r->chunk_resumes}});
    } else {
      std::printf("%s@%s\n", r->ref.substr(0, r->ref.find('@')).c_str(), r->manifest_digest.c_str());
    }
    return 0;
  });
}

int RunImport(const Ctx& c, const ImageArgs& a) {
  return With(c, [&](client::Client& cl) {
    auto r = cl.ImageImport(Absolute(a.path), a.name, [&](const std::string& line) {
      if (!*c.json) std::fprintf(stderr, "%s\n", line.c_str());
    });
    if (!r.ok()) return Fail(c, r.status());
    if (*c.json) Print(ImportJson(*r));
    else
      for (size_t i = 0; i < r->images.size(); ++i)
        std::printf("%s%s\n", r->images[i].c_str(),
                    r->names.empty() ? "" : ("  " + Join(r->names)).c_str());
    return 0;
  });
}

int RunImportDir(const Ctx& c, const ImageArgs& a) {
  for (const auto& e : a.env)
    if (e.find('=') == std::string::npos || e[0] == '=')
      return Fail(c, Error(Code::kInvalidArgument, "--env '{}': expected KEY=VALUE", e));
  return With(c, [&](client::Client& cl) {
    auto r = cl.ImageImportDir(Absolute(a.dir), a.name, a.env, a.workdir);
    if (!r.ok()) return Fail(c, r.status());
    if (*c.json) Print({{"image", r->images.at(0)}, {"names", r->names}});
    else std::printf("%s%s\n", r->images.at(0).c_str(), r->names.empty() ? "" : ("  " + Join(r->names)).c_str());
    return 0;
  });
}

int RunLs(const Ctx& c) {
  return With(c, [&](client::Client& cl) {
    auto r = cl.ImageList();
    if (!r.ok()) return Fail(c, r.status());
    if (*c.json) {
      json arr = json::array();
      for (const auto& i : *r)
        arr.push_back({{"digest", i.digest}, {"names", i.names}, {"layers", i.layers},
                       {"stored_bytes", i.stored_bytes}});
      Print({{"images", arr}});
      return 0;
    }
    std::vector<std::vector<std::string>> rows{{"NAMES", "DIGEST", "LAYERS", "STORED"}};
    for (const auto& i : *r)
      rows.push_back({i.names.empty() ? "<none>" : Join(i.names), i.digest.substr(0, 19),
                      std::to_string(i.layers), FormatBytes(i.stored_bytes)});
    std::printf("%s", FormatTable(rows).c_str());
    return 0;
  });
}

int RunInspect(const Ctx& c, const ImageArgs& a) {
  return With(c, [&](client::Client& cl) {
    auto r = cl.ImageInspect(a.ref);
    if (!r.ok()) return Fail(c, r.status());
    json layers = json::array();
    for (const auto& l : r->layers)
      layers.push_back({{"diff_id", l.diff_id}, {"blob", l.blob}, {"compression", l.compression},
                        {"size", l.size}, {"uncompressed_size", l.uncompressed_size},
                        {"materialized", l.materialized}});
    json j = {{"digest", r->digest}, {"names", r->names},   {"config", r->config_digest},
              {"env", r->env},       {"workdir", r->workdir}, {"entrypoint", r->entrypoint},
              {"cmd", r->cmd},       {"user", r->user},       {"layers", layers}};
    if (*c.json) {
      Print(j);
      return 0;
    }
    std::printf("digest:     %s\nnames:      %s\nconfig:     %s\n", r->digest.c_str(), Join(r->names).c_str(),
                r->config_digest.c_str());
    if (!r->env.empty()) std::printf("env:        %s\n", Join(r->env, " ").c_str());
    if (!r->workdir.empty()) std::printf("workdir:    %s\n", r->workdir.c_str());
    if (!r->entrypoint.empty()) std::printf("entrypoint: %s\n", Join(r->entrypoint, " ").c_str());
    if (!r->cmd.empty()) std::printf("cmd:        %s\n", Join(r->cmd, " ").c_str());
    if (!r->user.empty()) std::printf("user:       %s\n", r->user.c_str());
    std::printf("layers (bottom first):\n");
    for (const auto& l : r->layers)
      std::printf("  %s  %s %s (%s unpacked)%s\n", l.diff_id.c_str(), FormatBytes(l.size).c_str(),
                  l.compression.c_str(), FormatBytes(l.uncompressed_size).c_str(),
                  l.materialized ? "  materialized" : "");
    return 0;
  });
}

int RunRm(const Ctx& c, const std::vector<std::string>& refs) {
  return With(c, [&](client::Client& cl) {
    json removed = json::array();
    for (const auto& ref : refs) {
      auto r = cl.ImageRemove(ref);
      if (!r.ok()) return Fail(c, r.status());
      removed.push_back({{"ref", ref}, {"image", *r}});
      if (!*c.json) std::printf("removed %s (%s)\n", ref.c_str(), r->c_str());
    }
    if (*c.json) Print({{"removed", removed}});
    return 0;
  });
}

int RunGc(const Ctx& c, const ImageArgs& a) {
  std::chrono::seconds grace(-1);
  if (!a.grace.empty()) {
    const std::string& g = a.grace;
    size_t n = 0;
    uint64_t v = 0;
    try {
      v = std::stoull(g, &n);
    } catch (...) {
      n = 0;
    }
    std::string unit = n ? g.substr(n) : "";
    uint64_t mult = unit == "s" || unit.empty() ? 1 : unit == "m" ? 60 : unit == "h" ? 3600 : unit == "d" ? 86400 : 0;
    if (n == 0 || mult == 0)
      return Fail(c, Error(Code::kInvalidArgument, "--grace '{}': expected a duration like 0, 90s, 30m, 1h", g));
    grace = std::chrono::seconds(v * mult);
  }
  return With(c, [&](client::Client& cl) {
    auto r = cl.ImageGc(grace);
    if (!r.ok()) return Fail(c, r.status());
    if (*c.json)
      Print({{"blobs_removed", r->blobs_removed}, {"bytes_freed", r->bytes_freed},
             {"staging_removed", r->staging_removed}});
    else
      std::printf("removed %llu blobs, freed %s\n", static_cast<unsigned long long>(r->blobs_removed),
                  FormatBytes(r->bytes_freed).c_str());
    return 0;
  });
}

int RunExport(const Ctx& c, const ImageArgs& a) {
  return With(c, [&](client::Client& cl) {
    std::string dir = Absolute(a.dir);
    auto r = cl.ImageExport(a.ref, dir);
    if (!r.ok()) return Fail(c, r.status());
    if (*c.json) Print({{"image", *r}, {"dir", dir}});
    else std::printf("exported %s to %s (OCI image layout)\n", r->c_str(), dir.c_str());
    return 0;
  });
}

}  // namespace

void RegisterImageCommands(CLI::App& app, std::function<Result<client::Client>()> connect,
                           const bool& json, std::optional<int>& rc) {
  // Owned for the process's life: the callbacks run after this returns.
  static ImageArgs a;
  static std::vector<std::string> refs;
  static Ctx ctx;
  ctx = Ctx{std::move(connect), &json};
  CLI::App* image = app.add_subcommand("image", "pull, push, import, list, inspect, remove and export images");
  image->require_subcommand(1);
  image->fallthrough();
  auto leaf = [&](const std::string& name, const std::string& help) {
    CLI::App* s = image->add_subcommand(name, help);
    s->fallthrough();
    return s;
  };
  CLI::App* im = leaf("import", "import an OCI image layout or `docker save` archive (tar or directory)");
  im->add_option("path", a.path, "the archive or layout directory (read by the daemon)")->required();
  im->add_option("--name", a.name, "name:tag for the image (default: the archive's own names)");
  im->callback([&rc] { rc = RunImport(ctx, a); });

  CLI::App* pl = leaf("pull", "pull an image from a registry into the store (OCI and Docker schema 2; anonymous, basic or token auth)");
  pl->add_option("ref", a.ref, "[HOST[:PORT]/]REPOSITORY[:TAG][@sha256:HEX], e.g. 127.0.0.1:5000/test/busybox:1")
      ->required();
  pl->add_option("--name", a.name, "name:tag for the image (default: the reference itself; none for @digest)");
  pl->add_option("--insecure-registry", a.insecure,
                 "HOST or HOST:PORT to speak plain HTTP to (repeatable; loopback hosts always are)")
      ->allow_extra_args(false);
  pl->add_option("--platform", a.platform, "os/arch[/variant] to pick from a multi-platform image (default linux/amd64)");
  pl->add_option("--ca-file", a.ca_file,
                 "PEM CA certificates to verify the registry with instead of the system store (read by the daemon; "
                 "also makes loopback registries speak TLS)");
  pl->add_option("--creds-file", a.creds_file,
                 "registry credentials in docker's config.json format, read by the CLI (default: "
                 "$DOCKER_CONFIG/config.json or ~/.docker/config.json when it exists); only the entry for REF's "
                 "registry is sent to the daemon");
  pl->callback([&rc] { rc = RunPull(ctx, a); });

  CLI::App* ps = leaf("push", "push an image of the store to a registry (OCI manifest; blobs it has are not sent)");
  ps->add_option("image", a.image, "the image in the store: name[:tag], digest or digest prefix")->required();
  ps->add_option("ref", a.ref, "HOST[:PORT]/REPOSITORY[:TAG] to push to, e.g. 127.0.0.1:5000/test/busybox:1")
      ->required();
  ps->add_option("--insecure-registry", a.insecure,
                 "HOST or HOST:PORT to speak plain HTTP to (repeatable; loopback hosts always are; credentials "
                 "are never sent over plain HTTP to a non-loopback host)")
      ->allow_extra_args(false);
  ps->add_option("--ca-file", a.ca_file,
                 "PEM CA certificates to verify the registry with instead of the system store (read by the daemon; "
                 "also makes loopback registries speak TLS)");
  ps->add_option("--creds-file", a.creds_file,
                 "registry credentials in docker's config.json format, read by the CLI (default: "
                 "$DOCKER_CONFIG/config.json or ~/.docker/config.json when it exists); only the entry for REF's "
                 "registry is sent to the daemon");
  ps->add_option("--chunk-size", a.chunk_size,
                 "blobs larger than this are uploaded in chunks of this size (PATCH; a failed chunk is resumed "
                 "where the registry's upload stands), e.g. 16M (the default) or 64M; 0: every blob in one PUT");
  ps->callback([&rc] { rc = RunPush(ctx, a); });

  CLI::App* id = leaf("import-dir", "import a plain root filesystem directory as a one-layer image");
  id->add_option("dir", a.dir, "the directory (read by the daemon)")->required();
  id->add_option("--name", a.name, "name:tag for the image")->required();
  id->add_option("--env", a.env, "KEY=VALUE for the image config (repeatable)")->allow_extra_args(false);
  id->add_option("--workdir", a.workdir, "default working directory in the image config");
  id->callback([&rc] { rc = RunImportDir(ctx, a); });

  leaf("ls", "list images")->callback([&rc] { rc = RunLs(ctx); });

  CLI::App* in = leaf("inspect", "show an image's names, config and layers");
  in->add_option("image", a.ref, "name[:tag], digest or digest prefix")->required();
  in->callback([&rc] { rc = RunInspect(ctx, a); });

  CLI::App* rm = leaf("rm", "remove image names (by digest: the image and all its names)");
  rm->add_option("images", refs, "name[:tag], digest or digest prefix")->required();
  rm->callback([&rc] { rc = RunRm(ctx, refs); });

  CLI::App* gc = leaf("gc", "free stored blobs that no image uses any more");
  gc->add_option("--grace", a.grace,
                 "only free blobs unused for this long, e.g. 0, 30m (default 1h: imports running "
                 "on other nodes of a shared store are safe for that long)");
  gc->callback([&rc] { rc = RunGc(ctx, a); });

  CLI::App* ex = leaf("export", "write an image as an OCI image layout directory");
  ex->add_option("image", a.ref, "name[:tag], digest or digest prefix")->required();
  ex->add_option("dir", a.dir, "output directory (written by the daemon)")->required();
  ex->callback([&rc] { rc = RunExport(ctx, a); });
}

}  // namespace paddock::cli
