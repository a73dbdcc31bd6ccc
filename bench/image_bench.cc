// image_bench: cold materialization of a layer by the LayerCache vs the shell
// pipeline `zstd -d -c BLOB | tar -x` on the same stored blob, in the same run
// (issue 3 target: ours >= 0.8x the pipeline's throughput). See bench/README.md.
//
// Also import of the Debian 12 python3 test image (scripts/make-debian-image.sh,
// two layers written by umoci) vs `tar -x` of the same uncompressed layers, and the
// stored size vs `zstd -3` of those tars (issue 3 targets: >= 0.8x, <=).
//
// And warm container creation from a stored image (create → exec → destroy, the
// warm pool refilled between cycles): busybox vs the Debian python3 image, whose
// medians should be within 10% of each other (issue 3: independent of image size),
// judged with one static program stacked onto both images as the same top layer.
//
// Usage: image_bench [RUNS=5] [WORKDIR=/var/tmp/paddock-image-bench] [all|materialize|import|warm]
// Sample: the busybox test rootfs + /usr/lib/python3.11, imported as one zstd layer.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "storage/digest.h"
#include "storage/image_import.h"
#include "storage/image_store.h"
#include "storage/layer_cache.h"
#include "sandbox/container/container_substrate.h"
#include "sandbox/image_source.h"
#include "storage/store_image_resolver.h"
#include "sandbox/linux/mounts.h"
#include "sandbox/manager.h"
#include "tests/support/debian_image.h"
#include "tests/support/test_rootfs.h"

namespace fs = std::filesystem;
using namespace paddock;
using namespace paddock::storage;

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// CPU seconds (user + system) used so far by this process, or by its waited-for children.
double CpuSeconds(int who) {
  struct rusage u;
  ::getrusage(who, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void Die(const Status& st, const char* what) {
  if (st.ok()) return;
  fmt::print(stderr, "image_bench: {}: {}\n", what, st.ToString());
  std::exit(1);
}

void Sh(const std::string& cmd) {
  if (std::system(cmd.c_str()) != 0) {
    fmt::print(stderr, "image_bench: failed: {}\n", cmd);
    std::exit(1);
  }
}

std::string Capture(const std::string& cmd) {
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) std::exit(1);
  std::string out;
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  if (::pclose(p) != 0) {
    fmt::print(stderr, "image_bench: failed: {}\n", cmd);
    std::exit(1);
  }
  return out;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    fmt::print(stderr, "image_bench: cannot read {}\n", path);
    std::exit(1);
  }
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void WriteAll(const std::string& path, const std::string& data) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(data.data(), 1, data.size(), f) != data.size() || std::fclose(f) != 0) {
    fmt::print(stderr, "image_bench: cannot write {}\n", path);
    std::exit(1);
  }
}

// Import of the Debian python3 image vs `tar -x` of its uncompressed layers.
void BenchDebianImport(int runs, const std::string& work) {
  auto archive = testing::EnsureDebianImage();
  Die(archive.status(), "building the Debian python3 image");
  // The umoci archive's gzip layers, decompressed: the peer's input, and (as an OCI
  // layout directory with uncompressed layers, same config) ours.
  std::string oci = work + "/debian-oci", plain = work + "/debian-plain";
  fs::create_directories(oci);
  fs::create_directories(plain + "/blobs/sha256");
  Sh(fmt::format("tar -xf '{}' -C '{}'", *archive, oci));
  using nlohmann::json;
  json index = json::parse(ReadAll(oci + "/index.json"));
  std::string mdig = index["manifests"][0]["digest"];
  json manifest = json::parse(ReadAll(oci + "/blobs/sha256/" + mdig.substr(7)));
  std::string cdig = manifest["config"]["digest"];
  std::string config = ReadAll(oci + "/blobs/sha256/" + cdig.substr(7));
  json cfg = json::parse(config);
  std::vector<std::string> tars;
  uint64_t tar_bytes = 0, gz_bytes = 0;
  json layers = json::array();
  for (size_t i = 0; i < manifest["layers"].size(); ++i) {
    std::string ldig = manifest["layers"][i]["digest"];
    std::string diff = cfg["rootfs"]["diff_ids"][i];
    std::string tar = plain + "/blobs/sha256/" + diff.substr(7);
    Sh(fmt::format("gzip -dc '{}/blobs/sha256/{}' > '{}'", oci, ldig.substr(7), tar));
    tars.push_back(tar);
    uint64_t n = fs::file_size(tar);
    tar_bytes += n;
    gz_bytes += fs::file_size(oci + "/blobs/sha256/" + ldig.substr(7));
    layers.push_back({{"mediaType", "application/vnd.oci.image.layer.v1.tar"}, {"digest", diff}, {"size", n}});
  }
  WriteAll(plain + "/blobs/sha256/" + cdig.substr(7), config);
  json m2 = {{"schemaVersion", 2},
             {"mediaType", "application/vnd.oci.image.manifest.v1+json"},
             {"config", manifest["config"]},
             {"layers", layers}};
  std::string m2s = m2.dump();
  Digest m2d = Sha256::Of(m2s);
  WriteAll(plain + "/blobs/sha256/" + m2d.hex(), m2s);
  json idx = {{"schemaVersion", 2},
              {"manifests", json::array({{{"mediaType", "application/vnd.oci.image.manifest.v1+json"},
                                          {"digest", m2d.str()},
                                          {"size", m2s.size()}}})}};
  WriteAll(plain + "/index.json", idx.dump());
  WriteAll(plain + "/oci-layout", R"({"imageLayoutVersion":"1.0.0"})");

  // zstd -3 of the same tars (the CLI, default settings): the size target's peer.
  uint64_t zstd_bytes = 0;
  for (const auto& t : tars) zstd_bytes += std::stoull(Capture(fmt::format("zstd -3 -q -c '{}' | wc -c", t)));
  fmt::print("\nDebian python3 image ({}): {} layers, tar {:.1f} MB, gzip (umoci) {:.1f} MB, zstd -3 {:.1f} MB\n",
             *archive, tars.size(), tar_bytes / 1e6, gz_bytes / 1e6, zstd_bytes / 1e6);

  std::vector<double> t_tar, t_plain, t_gzip, cpu_tar, cpu_plain;
  uint64_t stored_layers = 0, stored_all = 0;
  for (int i = 0; i < runs; ++i) {
    std::string out = work + "/tar-x";
    fs::remove_all(out);
    fs::create_directories(out);
    Sh("sync");
    double c0 = CpuSeconds(RUSAGE_CHILDREN);
    double t0 = Now();
    for (const auto& t : tars) Sh(fmt::format("tar -x -f '{}' -C '{}'", t, out));
    t_tar.push_back(Now() - t0);
    cpu_tar.push_back(CpuSeconds(RUSAGE_CHILDREN) - c0);
    fs::remove_all(out);

    for (bool gz : {false, true}) {
      std::string root = work + "/import-store";
      fs::remove_all(root);
      Sh("sync");
      double c1 = CpuSeconds(RUSAGE_SELF);
      t0 = Now();
      auto store = ImageStore::Open(root);
      Die(store.status(), "opening store");
      auto r = ImportImage(**store, gz ? *archive : plain);
      Die(r.status(), "importing the Debian image");
      (gz ? t_gzip : t_plain).push_back(Now() - t0);
      if (!gz) cpu_plain.push_back(CpuSeconds(RUSAGE_SELF) - c1);
      if (!gz) {
        Image img = (*store)->Get(r->images[0].str()).value();
        stored_layers = 0;
        for (const auto& l : img.manifest.layers) stored_layers += l.size;
        stored_all = r->bytes_committed;
      }
    }
  }
  fs::remove_all(work + "/import-store");
  double mb = tar_bytes / 1e6;
  double m_tar = Median(t_tar), m_plain = Median(t_plain), m_gzip = Median(t_gzip);
  fmt::print("{:<52} {:>9} {:>10}\n", "import (median)", "seconds", "MB/s (tar)");
  fmt::print("{:<52} {:>9.3f} {:>10.0f}\n", "tar -x of the uncompressed layers", m_tar, mb / m_tar);
  fmt::print("{:<52} {:>9.3f} {:>10.0f}\n", "ImportImage, OCI layout with uncompressed layers", m_plain, mb / m_plain);
  fmt::print("{:<52} {:>9.3f} {:>10.0f}\n", "ImportImage, the umoci archive (gzip layers)", m_gzip, mb / m_gzip);
  fmt::print("CPU seconds (median): tar -x {:.3f}, ImportImage of uncompressed layers {:.3f}\n", Median(cpu_tar),
             Median(cpu_plain));
  double ratio = m_tar / m_plain;
  fmt::print("throughput vs tar -x: {:.2f}x (uncompressed layers), {:.2f}x (gzip archive); target >= 0.80x: {}\n",
             ratio, m_tar / m_gzip, ratio >= 0.8 ? "MET" : "NOT MET");
  fmt::print("stored: layer blobs {:.2f} MB ({:.3f}x of zstd -3 {:.2f} MB), with indexes, config and manifest "
             "{:.2f} MB ({:.3f}x); target <= 1.0x: {}\n",
             stored_layers / 1e6, double(stored_layers) / zstd_bytes, zstd_bytes / 1e6, stored_all / 1e6,
             double(stored_all) / zstd_bytes, stored_layers <= zstd_bytes ? "MET" : "NOT MET");
}

// Cold materialization of one stored layer: LayerCache::Acquire (sync=false and the
// durable default) vs `zstd -d -q -c BLOB | tar -x` of the same blob, same disk.
// Every run unpacks into a new directory and nothing is deleted until all runs of
// all samples are done: the root filesystem here is ext4 without a journal, whose
// inode allocator skips inodes freed in the last minute (recently_deleted()), so
// deleting earlier trees made every create of the next runs scan past them (up to
// 0.2 ms per file, more for whichever side ran later). The order of the three
// alternates between runs. The blob is read into the page cache and `sync` run
// before each timed unpack.
struct MatSample {
  std::string what;
  StoredLayer layer;
};

void BenchMaterializeOne(int runs, const std::string& work, ImageStore& store, const MatSample& s, int* n) {
  std::string blob = store.blobs().BlobPath(s.layer.blob);
  fmt::print("\n{}: tar {:.1f} MB, zstd blob {:.1f} MB, {} runs\n", s.what, s.layer.uncompressed_size / 1e6,
             s.layer.size / 1e6, runs);
  std::vector<double> ours, ours_sync, shell, cpu_ours, cpu_shell;
  auto prepare = [&] {
    Sh(fmt::format("cat '{}' > /dev/null && sync", blob));
    return fmt::format("{}/runs/{}", work, (*n)++);
  };
  auto run_ours = [&](bool sync) {
    std::string dir = prepare();
    LayerCacheOptions o;
    o.sync = sync;
    double c0 = CpuSeconds(RUSAGE_SELF);
    double t0 = Now();
    auto cache = LayerCache::Open(dir, &store, o);
    Die(cache.status(), "opening cache");
    auto lease = (*cache)->Acquire(s.layer.diff_id);
    Die(lease.status(), "materializing");
    (sync ? ours_sync : ours).push_back(Now() - t0);
    if (!sync) cpu_ours.push_back(CpuSeconds(RUSAGE_SELF) - c0);
  };
  auto run_shell = [&] {
    std::string out = prepare();
    fs::create_directories(out);
    double c0 = CpuSeconds(RUSAGE_CHILDREN);
    double t0 = Now();
    Sh(fmt::format("zstd -d -q -c {} | tar -x -C {}", blob, out));
    shell.push_back(Now() - t0);
    cpu_shell.push_back(CpuSeconds(RUSAGE_CHILDREN) - c0);
  };
  for (int i = 0; i < runs; ++i) {
    if (i % 2 == 0) {
      run_ours(false);
      run_ours(true);
      run_shell();
    } else {
      run_shell();
      run_ours(true);
      run_ours(false);
    }
  }
  double mb = s.layer.uncompressed_size / 1e6;
  double m_ours = Median(ours), m_sync = Median(ours_sync), m_shell = Median(shell);
  fmt::print("{:<44} {:>9} {:>10}\n", "cold materialization (median)", "seconds", "MB/s (tar)");
  fmt::print("{:<44} {:>9.3f} {:>10.0f}\n", "zstd -d -c BLOB | tar -x", m_shell, mb / m_shell);
  fmt::print("{:<44} {:>9.3f} {:>10.0f}\n", "LayerCache::Acquire (sync=false)", m_ours, mb / m_ours);
  fmt::print("{:<44} {:>9.3f} {:>10.0f}\n", "LayerCache::Acquire (sync=true, default)", m_sync, mb / m_sync);
  fmt::print("CPU seconds (median): pipeline {:.3f} (zstd + tar + sh), Acquire sync=false {:.3f} (both threads)\n",
             Median(cpu_shell), Median(cpu_ours));
  // Judged like for like: the pipeline makes nothing durable, so neither does
  // sync=false; the durable default is reported against the same bar.
  fmt::print("ratio vs pipeline: {:.2f}x (sync=false), {:.2f}x (sync=true, default); target >= 0.80x: {} "
             "(sync=false, like the pipeline); durable default {}\n",
             m_shell / m_ours, m_shell / m_sync, m_shell / m_ours >= 0.8 ? "MET" : "NOT MET",
             m_shell / m_sync >= 0.8 ? "above it too" : "below it");
}

void BenchMaterialize(int runs, const std::string& work) {
  std::string rootfs = testing::EnsureBusyboxRootfs();
  std::string sample = work + "/sample";
  Sh(fmt::format("cp -a {} {} && mkdir -p {}/usr/lib && cp -a /usr/lib/python3.11 {}/usr/lib/", rootfs, sample,
                 sample, sample));
  auto store = ImageStore::Open(work + "/store");
  Die(store.status(), "opening store");
  Die(ImportDirectory(**store, sample, {}, {"bench:sample"}).status(), "importing sample");
  auto archive = testing::EnsureDebianImage();
  Die(archive.status(), "building the Debian python3 image");
  ImportOptions io;
  io.names = {"bench:debian"};
  Die(ImportImage(**store, *archive, io).status(), "importing the Debian image");
  auto image = (*store)->Get("bench:sample");
  Die(image.status(), "reading image");
  auto debian = (*store)->Get("bench:debian");
  Die(debian.status(), "reading image");
  std::vector<MatSample> samples = {
      {"busybox rootfs + /usr/lib/python3.11 (one layer)", image->manifest.layers.at(0)},
      {"Debian 12 minbase layer (layer 1 of the python3 image)", debian->manifest.layers.at(0)},
  };
  int n = 0;
  for (const auto& s : samples) BenchMaterializeOne(runs, work, **store, s, &n);
  fs::remove_all(work + "/runs");
}

}  // namespace

// Warm container creation from stored images of very different sizes, through
// the real container substrate with its warm pool (refilled between runs).
namespace {

// A one-file layer holding /paddock-bench/true: a copy of the static busybox
// binary (run as "true" it is busybox's true applet). Committed through the
// store on top of each base image, so both derived images hold the very same
// layer (one diff_id, materialized once) and their exec costs the same.
std::string WriteStaticTrueLayer(const std::string& work) {
  std::string dir = work + "/static-true", tar = work + "/static-true.tar";
  fs::create_directories(dir + "/paddock-bench");
  fs::copy_file("/bin/busybox", dir + "/paddock-bench/true", fs::copy_options::overwrite_existing);
  fs::permissions(dir + "/paddock-bench/true", fs::perms(0755));
  Sh(fmt::format("tar --numeric-owner --owner=0 --group=0 --mtime=@0 -C '{}' -cf '{}' paddock-bench", dir, tar));
  return tar;
}

void CommitOnTop(storage::StoreImageResolver& resolver, const std::string& base, const std::string& tar,
                 const std::string& name) {
  auto image = resolver.Resolve(base, {.host_dir_ok = true});
  Die(image.status(), "resolving a base image");
  std::string bytes = ReadAll(tar);
  TarProducer produce = [&bytes](const TarSink& sink) { return sink(bytes.data(), bytes.size()); };
  Die(resolver.CommitLayer(*image, produce, name).status(), "committing the static true layer");
}

}  // namespace

void BenchWarmCreate(int runs, const std::string& work) {
  auto archive = testing::EnsureDebianImage();
  Die(archive.status(), "building the Debian python3 image");
  std::string state = work + "/warm-state";
  fs::create_directories(state);
  fs::permissions(work, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                            fs::perms::others_read | fs::perms::others_exec);
  auto store = ImageStore::Open(work + "/warm-store");
  Die(store.status(), "opening store");
  Die(ImportDirectory(**store, testing::EnsureBusyboxRootfs(), {}, {"bench:busybox"}).status(),
      "importing busybox");
  ImportOptions io;
  io.names = {"bench:debian"};
  Die(ImportImage(**store, *archive, io).status(), "importing the Debian image");
  auto cache = LayerCache::Open(state + "/layer-cache", store->get());
  Die(cache.status(), "opening the layer cache");
  storage::StoreImageResolver resolver(store->get(), cache->get(), /*allow_directories=*/true);
  std::string tar = WriteStaticTrueLayer(work);
  CommitOnTop(resolver, "bench:busybox", tar, "bench:busybox-true");
  CommitOnTop(resolver, "bench:debian", tar, "bench:debian-true");

  SubstrateEnv env;
  env.state_dir = state;
  env.init_path = testing::BuiltBinary("paddock-init");
  env.warm_pool_size = 2;
  env.images = &resolver;
  SandboxManager manager(ManagerOptions{});
  manager.RegisterSubstrate(MakeContainerSubstrate(env));

  // One timed cycle: create -> (exec `program`) -> destroy; "" means no exec.
  // Seconds per phase: {create, exec, destroy, total, the exec as its sandbox's
  // init timed it (fork to reap)}.
  using Phases = std::array<double, 5>;
  auto create = [&](const std::string& image) -> std::pair<std::string, std::shared_ptr<Sandbox>> {
    SandboxSpec spec;
    spec.substrate = "container";
    spec.image = image;
    auto info = manager.Create(spec);
    Die(info.status(), "creating");
    auto sb = manager.Get(info->id);
    Die(sb.status(), "getting");
    return {info->id, *sb};
  };
  auto cycle = [&](const std::string& image, const std::string& program) -> Phases {
    double t0 = Now();
    auto [id, sb] = create(image);
    double t1 = Now(), inner = 0;
    if (!program.empty()) {
      ExecRequest req;
      req.argv = {program};
      auto r = sb->Exec(req, nullptr);
      Die(r.status(), "exec");
      if (r->exit_code != 0) {
        fmt::print(stderr, "image_bench: {} in {} exited {}: {}\n", program, image, r->exit_code, r->stderr_data);
        std::exit(1);
      }
      inner = r->wall_time_us / 1e6;
    }
    double t2 = Now();
    Die(manager.Destroy(id), "destroying");
    double t3 = Now();
    return {t1 - t0, t2 - t1, t3 - t2, t3 - t0, inner};
  };
  struct Row {
    std::string label, program;
    std::string busybox, debian;  // image refs
    std::vector<Phases> t_busybox, t_debian;
  };
  std::vector<Row> rows = {
      {"create -> exec the image's /bin/true -> destroy", "/bin/true", "bench:busybox", "bench:debian"},
      {"create -> exec one static true -> destroy (target)", "/paddock-bench/true", "bench:busybox-true",
       "bench:debian-true"},
      {"create -> destroy", "", "bench:busybox", "bench:debian"},
  };
  // Not timed: waits until the pool has refilled (two ready containers per
  // recipe, none still being built: a build mounts under containers/ in our
  // namespace until its init has pivoted), so that every timed create is a
  // hand-over. The refill a timed create starts runs during its exec and
  // destroy, as it does for a user.
  const size_t pooled = 2 * 4;  // per recipe, 4 recipes
  int unsettled = 0;              // waits that gave up after 10 s
  auto pause = [&] {
    std::string dir = state + "/containers";
    for (int i = 0;; ++i) {
      size_t n = 0;
      for (const auto& e : fs::directory_iterator(dir)) n += e.is_directory();
      if (n == pooled && MountsUnder(dir).empty()) break;
      if (i == 1000) {
        ++unsettled;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  };
  for (const auto& row : rows)  // materializes layers, asks for the pools
    for (const auto& image : {row.busybox, row.debian}) cycle(image, row.program);
  pause();
  // Alternating which image goes first, so a pool refill still running from one
  // image's cycle does not always land on the other's.
  for (int i = 0; i < runs; ++i)
    for (auto& row : rows)
      for (int k = 0; k < 2; ++k) {
        bool debian = (i + k) % 2 == 1;
        (debian ? row.t_debian : row.t_busybox).push_back(cycle(debian ? row.debian : row.busybox, row.program));
        pause();
      }
  // Where an exec's time goes, as the sandbox's init times it (fork to reap):
  // the first exec in a handed-over sandbox (its overlay mount new, nothing
  // looked up through it yet) vs the median of its next 10 (all cached).
  std::map<std::string, std::pair<std::vector<double>, std::vector<double>>> execs;
  for (int i = 0; i < std::max(3, runs / 2); ++i)
    for (const auto& row : rows)
      for (int k = 0; k < 2 && !row.program.empty(); ++k) {
        const std::string& image = (i + k) % 2 ? row.debian : row.busybox;
        auto [id, sb] = create(image);
        auto& [first, later] = execs[image + " " + row.program];
        std::vector<double> rest;
        for (int j = 0; j < 11; ++j) {
          ExecRequest req;
          req.argv = {row.program};
          auto r = sb->Exec(req, nullptr);
          Die(r.status(), "exec");
          (j == 0 ? first : rest).push_back(r->wall_time_us / 1e3);
        }
        later.push_back(Median(rest));
        Die(manager.Destroy(id), "destroying");
        pause();
      }
  manager.Shutdown();

  auto median = [](const std::vector<Phases>& v, int phase) {
    std::vector<double> x;
    for (const auto& p : v) x.push_back(p[phase] * 1e3);
    return Median(x);
  };
  fmt::print("\nwarm container creation, median of {} cycles per image (ms)\n", runs);
  fmt::print("{:<52} {:>9} {:>9} {:>7}   {}\n", "", "busybox", "Debian", "ratio",
             "create / exec / destroy, busybox | Debian");
  for (const auto& row : rows) {
    double bb = median(row.t_busybox, 3), deb = median(row.t_debian, 3);
    fmt::print("{:<52} {:>9.2f} {:>9.2f} {:>7.3f}   {:.2f} / {:.2f} / {:.2f} | {:.2f} / {:.2f} / {:.2f}\n",
               row.label, bb, deb, deb / bb, median(row.t_busybox, 0), median(row.t_busybox, 1),
               median(row.t_busybox, 2), median(row.t_debian, 0), median(row.t_debian, 1),
               median(row.t_debian, 2));
    if (!row.program.empty())
      fmt::print("{:<52} {:>9.2f} {:>9.2f}\n", "  its exec as timed by the sandbox's init", median(row.t_busybox, 4),
                 median(row.t_debian, 4));
  }
  double target = median(rows[1].t_debian, 3) / median(rows[1].t_busybox, 3);
  fmt::print("target (the static true row) within 10%: {}\n",
             target <= 1.10 && target >= 0.90 ? "MET" : "NOT MET");
  if (unsettled) fmt::print("warning: the pool had not refilled after 10 s before {} cycles\n", unsettled);
  fmt::print("exec as timed by the sandbox's init (median ms): first in a handed-over sandbox / later ones\n");
  for (const auto& [what, t] : execs)
    fmt::print("  {:<50} {:>7.3f} / {:.3f}\n", what, Median(t.first), Median(t.second));
}

int main(int argc, char** argv) {
  const char* usage =
      "usage: image_bench [RUNS] [WORK_DIR] [all|materialize|import|warm]\n"
      "  RUNS      runs per scenario, medians reported (default 5)\n"
      "  WORK_DIR  scratch directory, removed first and after (default /var/tmp/paddock-image-bench)\n"
      "  all       cold materialization vs zstd -d | tar -x, then import (default)\n"
      "  materialize  cold materialization only\n"
      "  import    import of the Debian python3 image vs tar -x; stored size vs zstd -3\n"
      "  warm      warm container create(->exec)->destroy, busybox vs Debian python3\n"
      "Needs root. See bench/README.md (image_bench).\n";
  if (argc > 1 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h")) {
    fmt::print("{}", usage);
    return 0;
  }
  int runs = argc > 1 ? std::atoi(argv[1]) : 5;
  if (runs < 1 || argc > 4 ||
      (argc > 3 && std::string(argv[3]) != "all" && std::string(argv[3]) != "materialize" &&
       std::string(argv[3]) != "import" && std::string(argv[3]) != "warm")) {
    fmt::print(stderr, "{}", usage);
    return 2;
  }
  std::string work = argc > 2 ? argv[2] : "/var/tmp/paddock-image-bench";
  std::string which = argc > 3 ? argv[3] : "all";
  fs::remove_all(work);
  fs::create_directories(work);
  if (which == "warm") {
    BenchWarmCreate(runs, work);
    fs::remove_all(work);
    return 0;
  }
  if (which == "import") {
    BenchDebianImport(runs, work);
    fs::remove_all(work);
    return 0;
  }
  BenchMaterialize(runs, work);
  if (which == "all") BenchDebianImport(runs, work);
  fs::remove_all(work);
  return 0;
}
