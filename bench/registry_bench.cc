// registry_bench: pulls of the Debian python3 test image (scripts/make-debian-
// image.sh: two gzip layers written by umoci) from Debian's docker-registry
// (distribution 2.8) on loopback, measured in the same run against the peers:
//
//   1. pull + materialize (every layer unpacked into the LayerCache while it
//      downloads; the pull given the cache, as paddockd's are) vs
//      `skopeo copy docker://… oci:DIR` + `umoci unpack` of the same image,
//      alternating which goes first; medians and their ratio (and, for
//      scale, the two-pass way pulls worked before: into the store alone with
//      the layers recompressed to zstd, then the cache unpacking the stored
//      blobs; and the streamed pull one layer at a time, to show what parallel
//      layers buy);
//   2. a re-pull with every layer present vs the first pull (target ≤ 1/20);
//   3. an image sharing its base layer with one already pulled: the bytes it
//      transfers vs its new layer's size;
//   4. the first exec (`python3 -c 'print(6*7)'`) in a container created by
//      naming the registry reference (pull on first use: pull, materialize,
//      create, exec) vs the transfer alone (manifest, config and layer blobs
//      read and dropped; and the same blobs fetched by curl, for scale).
//
// Usage: registry_bench [RUNS=5] [WORK_DIR=/var/tmp/paddock-registry-bench]
//                       [--link-mbit N] [--no-cache-sync]
// With --link-mbit the registry runs in its own network namespace behind a veth
// pair shaped to N Mbit/s each way (tc tbf), standing for a real network;
// without, it listens on loopback. --no-cache-sync opens the layer caches
// without syncfs, to show what durability costs. Needs root, docker-registry, skopeo, umoci
// (and iproute2 for --link-mbit). See bench/README.md.
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "policy/backends/tls.h"
#include "sandbox/container/container_substrate.h"
#include "sandbox/image_source.h"
#include "storage/store_image_resolver.h"
#include "sandbox/manager.h"
#include "storage/digest.h"
#include "storage/image_store.h"
#include "storage/layer_cache.h"
#include "storage/registry/on_demand_pull.h"
#include "storage/registry/pull.h"
#include "tests/support/daemon_process.h"
#include "tests/support/debian_image.h"
#include "tests/support/test_rootfs.h"

namespace fs = std::filesystem;
using namespace paddock;
using namespace paddock::storage;
using nlohmann::json;

namespace {

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void Die(const Status& st, const char* what) {
  if (st.ok()) return;
  fmt::print(stderr, "registry_bench: {}: {}\n", what, st.ToString());
  std::exit(1);
}

void Sh(const std::string& cmd) {
  if (std::system(cmd.c_str()) != 0) {
    fmt::print(stderr, "registry_bench: failed: {}\n", cmd);
    std::exit(1);
  }
}

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void WriteBlob(const std::string& layout, const std::string& data, json* desc) {
  Digest d = Sha256::Of(data);
  std::ofstream(layout + "/blobs/sha256/" + d.hex(), std::ios::binary) << data;
  (*desc)["digest"] = d.str();
  (*desc)["size"] = data.size();
}

// A copy of `layout` whose image has only the bottom layer (minbase): the same
// layer blob, a config listing one diff_id. Returns the layer digests of the
// full image, bottom first.
std::vector<std::pair<std::string, uint64_t>> CutBaseImage(const std::string& layout, const std::string& out) {
  Sh(fmt::format("rm -rf '{}' && cp -a '{}' '{}'", out, layout, out));
  json index = json::parse(ReadAll(layout + "/index.json"));
  auto blob = [&](const std::string& digest) { return ReadAll(layout + "/blobs/sha256/" + digest.substr(7)); };
  json manifest = json::parse(blob(index["manifests"][0]["digest"]));
  json config = json::parse(blob(manifest["config"]["digest"]));
  std::vector<std::pair<std::string, uint64_t>> layers;
  for (const auto& l : manifest["layers"]) layers.emplace_back(l["digest"], l["size"]);
  config["rootfs"]["diff_ids"] = json::array({config["rootfs"]["diff_ids"][0]});
  if (config.contains("history")) config.erase("history");
  manifest["layers"] = json::array({manifest["layers"][0]});
  WriteBlob(out, config.dump(), &manifest["config"]);
  json& m = index["manifests"][0];
  WriteBlob(out, manifest.dump(), &m);
  std::ofstream(out + "/index.json") << index.dump();
  return layers;
}

// A shaped link to a registry in its own network namespace: a veth pair, the
// far end at 10.213.<k>.2, each end's egress limited by a token bucket.
struct ShapedLink {
  std::string ns, host_if, addr;
  ~ShapedLink() {
    if (ns.empty()) return;
    std::system(fmt::format("ip link del {} 2>/dev/null; ip netns del {} 2>/dev/null", host_if, ns).c_str());
  }
};

void SetUpLink(int mbit, ShapedLink* l) {
  const int k = 100 + getpid() % 100;
  l->ns = fmt::format("paddock-rb-{}", getpid());
  l->host_if = fmt::format("prb{}a", getpid() % 100000);
  const std::string peer = fmt::format("prb{}b", getpid() % 100000);
  l->addr = fmt::format("10.213.{}.2", k);
  // burst: 256 KiB, about 10 ms at 200 Mbit/s; latency bounds the queue.
  const std::string tbf = fmt::format("tbf rate {}mbit burst 256kb latency 50ms", mbit);
  Sh(fmt::format("ip netns add {0} && ip link add {1} type veth peer name {2} && ip link set {2} netns {0} && "
                 "ip addr add 10.213.{3}.1/24 dev {1} && ip link set {1} up && "
                 "ip netns exec {0} ip addr add {4}/24 dev {2} && ip netns exec {0} ip link set {2} up && "
                 "ip netns exec {0} ip link set lo up && tc qdisc add dev {1} root {5} && "
                 "ip netns exec {0} tc qdisc add dev {2} root {5}",
                 l->ns, l->host_if, peer, k, l->addr, tbf));
}

struct Registry {
  pid_t pid = 0;
  std::string addr = "127.0.0.1";
  int port = 0;
  ~Registry() {
    if (pid > 0) {
      kill(pid, SIGTERM);
      waitpid(pid, nullptr, 0);
    }
  }
};

// On loopback, or inside `link`'s namespace when it has one.
void StartRegistry(const std::string& work, const ShapedLink& link, Registry* r) {
  r->port = link.ns.empty() ? testing::FreeLoopbackPort() : 5000;
  if (!link.ns.empty()) r->addr = link.addr;
  std::string cfg = work + "/registry.yml";
  std::ofstream(cfg) << fmt::format(
      "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}/registry\nhttp:\n  addr: "
      "{}:{}\n",
      work, r->addr, r->port);
  std::vector<std::string> argv = {"/usr/bin/docker-registry", "serve", cfg};
  if (!link.ns.empty()) argv.insert(argv.begin(), {"/usr/bin/ip", "netns", "exec", link.ns});
  r->pid = testing::SpawnProgram(argv, work + "/registry.log");
  for (int i = 0; i < 100; ++i) {
    if (testing::RunProgram({"/bin/bash", "-c", fmt::format("exec 3<>/dev/tcp/{}/{}", r->addr, r->port)}).code == 0)
      return;
    usleep(100 * 1000);
  }
  fmt::print(stderr, "registry_bench: docker-registry did not start: {}\n", ReadAll(work + "/registry.log"));
  std::exit(1);
}

// The registry's host:port when it is not on loopback (plain HTTP allowed to it,
// as paddockd's --insecure-registry does); set before the first PullOpts().
std::string g_insecure_host;

// Made once, as the daemon does for pulls on first use: loading the system CA
// store is not part of a pull's time.
registry::PullOptions PullOpts(LayerCache* cache = nullptr) {
  static const registry::PullOptions o = [] {
    registry::PullOptions p;
    auto tls = policy::MakeTlsClientContext({});
    Die(tls.status(), "TLS context");
    p.registry.http.tls = *tls;
    if (!g_insecure_host.empty()) p.registry.http.insecure_hosts.insert(g_insecure_host);
    return p;
  }();
  registry::PullOptions with = o;
  with.layer_cache = cache;
  return with;
}

registry::Reference Ref(const std::string& text) {
  auto r = registry::ParseReference(text);
  Die(r.status(), "parsing the reference");
  return *r;
}

// LayerCacheOptions::sync for every cache of the run (--no-cache-sync: to see what
// the durability of the unpacked trees costs; paddockd always syncs).
bool g_cache_sync = true;
// --first-exec-only: only the transfer alone, curl and the one-pass first exec
// (with its pull), for a quick look at that target on a loaded machine.
bool g_first_exec_only = false;

struct Fresh {
  std::unique_ptr<ImageStore> store;
  std::unique_ptr<LayerCache> cache;
};
Fresh FreshStore(const std::string& dir) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  Fresh f;
  auto s = ImageStore::Open(dir + "/store");
  Die(s.status(), "opening a store");
  f.store = std::move(*s);
  auto c = LayerCache::Open(dir + "/cache", f.store.get(), LayerCacheOptions{.sync = g_cache_sync});
  Die(c.status(), "opening a layer cache");
  f.cache = std::move(*c);
  return f;
}

// Every layer of `image` unpacked in the cache (leases dropped at once).
void Materialize(Fresh& f, const std::string& image) {
  auto img = f.store->Get(image);
  Die(img.status(), "reading the pulled image");
  for (const auto& l : img->manifest.layers) Die(f.cache->Acquire(l.diff_id).status(), "materializing a layer");
}

// The image's config and layer blobs, as its manifest lists them.
std::vector<std::pair<Digest, uint64_t>> Blobs(const std::string& ref_text) {
  registry::RegistryClient client(Ref(ref_text), PullOpts().registry);
  auto m = client.GetManifest(Ref(ref_text).ManifestRef());
  Die(m.status(), "manifest");
  json doc = json::parse(m->bytes);
  std::vector<json> descs = {doc["config"]};
  for (const auto& l : doc["layers"]) descs.push_back(l);
  std::vector<std::pair<Digest, uint64_t>> out;
  for (const auto& b : descs) {
    auto d = Digest::Parse(b["digest"].get<std::string>());
    Die(d.status(), "digest");
    out.emplace_back(*d, b["size"].get<uint64_t>());
  }
  return out;
}

// The image's manifest, config and layer blobs read from the registry by our
// HTTP client and dropped: the transfer alone.
uint64_t TransferOnly(const std::string& ref_text) {
  auto blobs = Blobs(ref_text);  // includes the manifest GET
  registry::RegistryClient client(Ref(ref_text), PullOpts().registry);
  uint64_t n = 0;
  static char buf[1 << 20];
  for (const auto& [d, size] : blobs) {
    auto body = client.OpenBlob(d, size);
    Die(body.status(), "blob");
    for (;;) {
      auto r = (*body)->Read(buf, sizeof buf);
      Die(r.status(), "reading a blob");
      if (*r == 0) break;
      n += *r;
    }
  }
  return n;
}

std::string Mib(uint64_t b) { return fmt::format("{:.1f} MiB", static_cast<double>(b) / (1 << 20)); }

// A container created by naming the registry reference (pull on first use,
// materialize, create) and `python3 -c 'print(6*7)'` in it: seconds to the
// exec's answer, in a fresh store, cache and state. *pulled: seconds from the
// create's start to the end of its pull on first use.
//
// Each run has directories of its own (`run`), all removed at the end, not
// before the next run: this disk's ext4 has no journal, and such an ext4's
// inode allocator passes over every inode freed in the last ~30 s, reading
// its inode table block, so a run creating 5,500 files right after the
// previous run deleted its 5,500 measured that deletion (2.8-4.4 s pulls
// against 2.2 s on a quiet filesystem), not a node's first pull.
double FirstExec(const std::string& work, const std::string& full, bool one_pass, int run, double* pulled) {
  const std::string state = fmt::format("{}/sandbox-state-{}", work, run);
  Fresh f = FreshStore(fmt::format("{}/exec-{}", work, run));
  auto opts = PullOpts(one_pass ? f.cache.get() : nullptr);
  opts.keep_registry_blobs = one_pass;
  fs::remove_all(state);
  fs::create_directories(state);
  registry::OnDemandPuller puller(*f.store, opts);
  double t_pulled = 0;
  storage::StoreImageResolver resolver(
      f.store.get(), f.cache.get(), false,
      storage::RegistryFetcher{[](const std::string& r) { return registry::NamesRegistryImage(r); },
                      [&](const std::string& r, bool local) {
                        auto e = puller.Ensure(r, local);
                        t_pulled = Now();
                        return e;
                      }});
  SubstrateEnv env;
  env.state_dir = state;
  env.init_path = testing::BuiltBinary("paddock-init");
  env.warm_pool_size = 0;
  env.images = &resolver;
  SandboxManager manager(ManagerOptions{});
  manager.RegisterSubstrate(MakeContainerSubstrate(env));
  SandboxSpec spec;
  spec.substrate = "container";
  spec.image = full;
  spec.local_client = true;
  // Each run starts on a quiet disk, as a node's first pull would: the previous
  // run's background syncfs and the removal of its trees are written out first
  // (without this, run N's pull shared the disk with run N-1's writeback).
  ::sync();
  double t1 = Now();
  auto info = manager.Create(spec);
  Die(info.status(), "creating a container from the registry reference");
  auto sb = manager.Get(info->id);
  Die(sb.status(), "getting the sandbox");
  ExecRequest req;
  req.argv = {"/usr/bin/python3", "-c", "print(6*7)"};
  auto r = (*sb)->Exec(req, nullptr);
  Die(r.status(), "exec");
  double t2 = Now();
  *pulled = t_pulled - t1;
  if (r->exit_code != 0 || r->stdout_data != "42\n") {
    fmt::print(stderr, "registry_bench: python3 printed '{}' (exit {}): {}\n", r->stdout_data, r->exit_code,
               r->stderr_data);
    std::exit(1);
  }
  Die(manager.Destroy(info->id), "destroying");
  manager.Shutdown();
  return t2 - t1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h")) {
    fmt::print("usage: registry_bench [RUNS=5] [WORK_DIR=/var/tmp/paddock-registry-bench] [--link-mbit N]\n"
               "--link-mbit N: the registry in its own network namespace behind a veth pair shaped to N Mbit/s.\n"
               "--no-cache-sync: layer caches without syncfs (what durability costs; paddockd always syncs).\n"
               "--first-exec-only: only the transfer alone and the one-pass first exec (with its pull).\n"
               "--fresh-ext4: run in a newly made ext4 (8 GiB sparse file in WORK_DIR, loop-mounted).\n"
               "Needs root, docker-registry, skopeo, umoci. See bench/README.md (registry_bench).\n");
    return 0;
  }
  std::vector<std::string> args;
  int link_mbit = 0;
  bool fresh_ext4 = false;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--link-mbit" && i + 1 < argc)
      link_mbit = std::atoi(argv[++i]);
    else if (std::string(argv[i]) == "--no-cache-sync")
      g_cache_sync = false;
    else if (std::string(argv[i]) == "--first-exec-only")
      g_first_exec_only = true;
    else if (std::string(argv[i]) == "--fresh-ext4")
      fresh_ext4 = true;
    else
      args.push_back(argv[i]);
  }
  const int runs = args.size() > 0 ? std::max(1, std::atoi(args[0].c_str())) : 5;
  std::string work = args.size() > 1 ? args[1] : "/var/tmp/paddock-registry-bench";
  for (const char* t : {"/usr/bin/docker-registry", "/usr/bin/skopeo", "/usr/bin/umoci"})
    if (access(t, X_OK) != 0) {
      fmt::print(stderr, "registry_bench: {} is not installed (scripts/install-deps.sh)\n", t);
      return 1;
    }
  fs::remove_all(work);
  fs::create_directories(work);
  // --fresh-ext4: the work dir is a newly made ext4 (mkfs defaults, journal
  // on) in a sparse file on the same disk, loop-mounted: a node's disk as
  // formatted, with no other run's freed inodes (see FirstExec).
  struct LoopFs {
    std::string mnt, img;
    ~LoopFs() {
      if (mnt.empty()) return;
      ::sync();
      if (umount2(mnt.c_str(), MNT_DETACH) != 0) fmt::print(stderr, "registry_bench: umount {} failed\n", mnt);
      fs::remove(img);
    }
  } loop_fs;
  if (fresh_ext4) {
    loop_fs.img = work + "/ext4.img";
    loop_fs.mnt = work + "/fs";
    fs::create_directories(loop_fs.mnt);
    Sh(fmt::format("truncate -s 8G '{0}' && mkfs.ext4 -q -F '{0}' && mount -o loop '{0}' '{1}'", loop_fs.img,
                   loop_fs.mnt));
    work = loop_fs.mnt + "/work";
    fs::create_directories(work);
  }
  auto archive = testing::EnsureDebianImage();
  Die(archive.status(), "building the Debian python3 image");
  const std::string layout = work + "/layout";
  fs::create_directories(layout);
  Sh(fmt::format("tar -xf '{}' -C '{}'", *archive, layout));
  auto layers = CutBaseImage(layout, work + "/layout-base");

  static ShapedLink link;  // static: removed on exit, std::exit included
  if (link_mbit > 0) SetUpLink(link_mbit, &link);
  Registry reg;
  StartRegistry(work, link, &reg);
  const std::string host = fmt::format("{}:{}", reg.addr, reg.port);
  if (link_mbit > 0) g_insecure_host = host;
  fmt::print("registry: {} ({})\n", host,
             link_mbit > 0 ? fmt::format("own network namespace, veth shaped to {} Mbit/s each way", link_mbit)
                           : "loopback");
  const std::string full = host + "/bench/python3:12", base = host + "/bench/minbase:12";
  Sh(fmt::format("skopeo copy -q --dest-tls-verify=false oci:{}:debian-python3 docker://{}", layout, full));
  Sh(fmt::format("skopeo copy -q --dest-tls-verify=false oci:{}/layout-base:debian-python3 docker://{}", work, base));
  uint64_t image_bytes = 0;
  for (const auto& l : layers) image_bytes += l.second;
  fmt::print("image: {} ({} layers, {} compressed: minbase {}, python3 {})\n", full, layers.size(), Mib(image_bytes),
             Mib(layers[0].second), Mib(layers.back().second));

  // 1 + 2: pull + materialize vs skopeo + umoci; re-pull vs first pull.
  std::vector<double> ours, ours_pull, serial_pull, peer, peer_copy, repull, two_pass, two_pass_pull;
  for (int i = 0; i < (g_first_exec_only ? 0 : runs); ++i) {
    for (int k = 0; k < 2; ++k) {
      if ((i + k) % 2 == 0) {
        Fresh f = FreshStore(work + "/ours");
        double t0 = Now();
        auto r = registry::PullImage(*f.store, Ref(full), PullOpts(f.cache.get()));
        Die(r.status(), "pulling");
        double t1 = Now();
        Materialize(f, r->image.str());
        double t2 = Now();
        ours_pull.push_back(t1 - t0);
        ours.push_back(t2 - t0);
        double t3 = Now();
        auto again = registry::PullImage(*f.store, Ref(full), PullOpts());
        Die(again.status(), "pulling again");
        repull.push_back(Now() - t3);
        if (again->bytes_fetched != 0) fmt::print("warning: the re-pull fetched {} bytes\n", again->bytes_fetched);
        if (r->layers_unpacked != r->layers_new)
          fmt::print("warning: {} of {} new layers unpacked while downloading\n", r->layers_unpacked, r->layers_new);
        // The same pull one layer at a time (PullOptions::parallel_layers = 1).
        Fresh g = FreshStore(work + "/serial");
        auto one = PullOpts(g.cache.get());
        one.parallel_layers = 1;
        double t5 = Now();
        Die(registry::PullImage(*g.store, Ref(full), one).status(), "pulling one layer at a time");
        serial_pull.push_back(Now() - t5);
        // The way before one-pass pulls: into the store only, layers recompressed
        // to zstd, then the cache unpacks the stored blobs.
        Fresh h = FreshStore(work + "/two-pass");
        auto old_way = PullOpts();
        old_way.keep_registry_blobs = false;
        double t6 = Now();
        auto r2 = registry::PullImage(*h.store, Ref(full), old_way);
        Die(r2.status(), "pulling into the store only");
        double t7 = Now();
        Materialize(h, r2->image.str());
        two_pass_pull.push_back(t7 - t6);
        two_pass.push_back(Now() - t6);
      } else {
        Sh(fmt::format("rm -rf '{0}/peer-oci' '{0}/peer-bundle'", work));
        double t0 = Now();
        Sh(fmt::format("skopeo copy -q --src-tls-verify=false docker://{} oci:{}/peer-oci:x", full, work));
        double t1 = Now();
        Sh(fmt::format("umoci unpack --image {0}/peer-oci:x {0}/peer-bundle >/dev/null", work));
        double t2 = Now();
        peer_copy.push_back(t1 - t0);
        peer.push_back(t2 - t0);
      }
    }
  }
  Sh(fmt::format("rm -rf '{0}/peer-oci' '{0}/peer-bundle'", work));

  // 3: the base first, then the full image: only the python3 layer travels.
  registry::PullResult b, s;
  if (!g_first_exec_only) {
    Fresh shared = FreshStore(work + "/shared");
    auto rb = registry::PullImage(*shared.store, Ref(base), PullOpts());
    Die(rb.status(), "pulling the base image");
    auto rs = registry::PullImage(*shared.store, Ref(full), PullOpts());
    Die(rs.status(), "pulling the image on the shared base");
    b = *rb;
    s = *rs;
  }

  // 4: first exec in a container named by the registry reference vs the transfer alone.
  std::vector<double> first_exec, first_exec_before, first_exec_pull, transfer, curl;
  std::string curl_cmd = "curl -sf";
  for (const auto& [d, size] : Blobs(full))
    curl_cmd += fmt::format(" -o /dev/null http://{}/v2/bench/python3/blobs/{}", host, d.str());
  for (int i = 0; i < runs; ++i) {
    double t0 = Now();
    uint64_t n = TransferOnly(full);
    transfer.push_back(Now() - t0);
    if (n < image_bytes) fmt::print("warning: the transfer read {} of {} bytes\n", n, image_bytes);
    double tc = Now();
    Sh(curl_cmd);
    curl.push_back(Now() - tc);

    // Alternating which goes first: one-pass pulls (the layer cache given to
    // the puller, as paddockd does) and the way before (no cache: the pull
    // stores zstd, the resolver's Acquire then unpacks the stored blobs).
    for (int k = 0; k < (g_first_exec_only ? 1 : 2); ++k) {
      const bool one_pass = g_first_exec_only || (i + k) % 2 == 0;
      double pulled = 0;
      double t = FirstExec(work, full, one_pass, 2 * i + k, &pulled);
      (one_pass ? first_exec : first_exec_before).push_back(t);
      if (one_pass) first_exec_pull.push_back(pulled);
    }
  }

  if (g_first_exec_only) {
    fmt::print("\nfirst exec only, median of {} runs (ms)\n", runs);
    fmt::print("{:<62} {:>9.1f}\n", "transfer alone (manifest, config, layers read and dropped)", Median(transfer) * 1e3);
    fmt::print("{:<62} {:>9.1f}\n", "  the same blobs by curl (one process, keep-alive)", Median(curl) * 1e3);
    fmt::print("{:<62} {:>9.1f}\n", "first exec from the reference (pull, unpack, create, exec)",
               Median(first_exec) * 1e3);
    fmt::print("{:<62} {:>9.1f}\n", "  of which the pull on first use (create's start to its end)",
               Median(first_exec_pull) * 1e3);
    fmt::print("{:<62} {:>9.2f}x\n", "first exec / transfer alone", Median(first_exec) / Median(transfer));
    fs::remove_all(work);
    return 0;
  }
  const double o = Median(ours), p = Median(peer);
  fmt::print("\nregistry pulls, median of {} runs (ms)\n", runs);
  fmt::print("{:<62} {:>9.1f}\n", "pull + materialize (ours)", o * 1e3);
  fmt::print("{:<62} {:>9.1f}\n", "  of which the pull (fetch, verify, unpack, store, commit)", Median(ours_pull) * 1e3);
  fmt::print("{:<62} {:>9.1f}\n", "  the pull one layer at a time (parallel_layers = 1)", Median(serial_pull) * 1e3);
  fmt::print("{:<62} {:>9.1f}\n", "two passes (before): pull, recompress to zstd, then materialize",
             Median(two_pass) * 1e3);
  fmt::print("{:<62} {:>9.1f}\n", "  of which the pull into the store alone", Median(two_pass_pull) * 1e3);
  fmt::print("{:<62} {:>9.1f}\n", "skopeo copy docker:// oci: + umoci unpack (peer)", p * 1e3);
  fmt::print("{:<62} {:>9.1f}\n", "  of which skopeo copy", Median(peer_copy) * 1e3);
  fmt::print("{:<62} {:>9.3f}x  {}\n", "ours / peer", o / p, o <= p ? "faster" : "slower");
  fmt::print("{:<62} {:>9.1f}\n", "re-pull, every layer present", Median(repull) * 1e3);
  fmt::print("{:<62} {:>9.4f}  target <= 0.05: {}\n", "re-pull / first pull", Median(repull) / Median(ours_pull),
             Median(repull) / Median(ours_pull) <= 0.05 ? "MET" : "NOT MET");
  fmt::print("{:<62} {}\n", "shared base: base pull fetched", Mib(b.bytes_fetched));
  fmt::print("{:<62} {} ({} bytes; new layer {} bytes; {} of {} layers new)\n",
             "shared base: full image pull then fetched", Mib(s.bytes_fetched), s.bytes_fetched,
             layers.back().second, s.layers_new, s.layers_total);
  fmt::print("{:<62} {:>9.1f}\n", "transfer alone (manifest, config, layers read and dropped)",
             Median(transfer) * 1e3);
  fmt::print("{:<62} {:>9.1f}\n", "  the same blobs by curl (one process, keep-alive)", Median(curl) * 1e3);
  fmt::print("{:<62} {:>9.1f}\n", "first exec from the reference (pull, unpack, create, exec)", Median(first_exec) * 1e3);
  fmt::print("{:<62} {:>9.1f}\n", "  of which the pull on first use (create's start to its end)",
             Median(first_exec_pull) * 1e3);
  fmt::print("{:<62} {:>9.2f}x\n", "first exec / transfer alone", Median(first_exec) / Median(transfer));
  fmt::print("{:<62} {:>9.1f}\n", "first exec, the way before (store zstd, then unpack)", Median(first_exec_before) * 1e3);
  fmt::print("{:<62} {:>9.2f}x\n", "  / transfer alone", Median(first_exec_before) / Median(transfer));
  fs::remove_all(work);
  return 0;
}
