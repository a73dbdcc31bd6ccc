// image_bench: cold materialization of a layer by the LayerCache vs the shell
// pipeline `zstd -d -c BLOB | tar -x` on the same stored blob, in the same run
// (issue 3 target: ours >= 0.8x the pipeline's throughput). See bench/README.md.
//
// Usage: image_bench [RUNS=5] [WORKDIR=/var/tmp/paddock-image-bench]
// Sample: the busybox test rootfs + /usr/lib/python3.11, imported as one zstd layer.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <vector>

#include <fmt/format.h>

#include "storage/image_import.h"
#include "storage/image_store.h"
#include "storage/layer_cache.h"
#include "tests/support/test_rootfs.h"

namespace fs = std::filesystem;
using namespace paddock;
using namespace paddock::storage;

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
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

}  // namespace

int main(int argc, char** argv) {
  int runs = argc > 1 ? std::atoi(argv[1]) : 5;
  std::string work = argc > 2 ? argv[2] : "/var/tmp/paddock-image-bench";
  fs::remove_all(work);
  fs::create_directories(work);
  std::string rootfs = testing::EnsureBusyboxRootfs();
  std::string sample = work + "/sample";
  Sh(fmt::format("cp -a {} {} && mkdir -p {}/usr/lib && cp -a /usr/lib/python3.11 {}/usr/lib/", rootfs, sample,
                 sample, sample));

  auto store = ImageStore::Open(work + "/store");
  Die(store.status(), "opening store");
  auto imported = ImportDirectory(**store, sample, {}, {"bench:sample"});
  Die(imported.status(), "importing sample");
  auto image = (*store)->Get("bench:sample");
  Die(image.status(), "reading image");
  const StoredLayer layer = image->manifest.layers.at(0);
  std::string blob = (*store)->blobs().BlobPath(layer.blob);
  fmt::print("sample: busybox rootfs + /usr/lib/python3.11: tar {:.1f} MB, zstd blob {:.1f} MB, {} runs\n",
             layer.uncompressed_size / 1e6, layer.size / 1e6, runs);

  std::vector<double> ours, ours_sync, shell;
  for (int i = 0; i < runs; ++i) {
    for (bool sync : {false, true}) {
      std::string dir = work + "/cache";
      fs::remove_all(dir);
      Sh("sync");
      LayerCacheOptions o;
      o.sync = sync;
      double t0 = Now();
      auto cache = LayerCache::Open(dir, store->get(), o);
      Die(cache.status(), "opening cache");
      auto lease = (*cache)->Acquire(layer.diff_id);
      Die(lease.status(), "materializing");
      double dt = Now() - t0;
      (sync ? ours_sync : ours).push_back(dt);
    }
    std::string out = work + "/shell";
    fs::remove_all(out);
    fs::create_directories(out);
    Sh("sync");
    double t0 = Now();
    Sh(fmt::format("zstd -d -q -c {} | tar -x -C {}", blob, out));
    shell.push_back(Now() - t0);
  }
  double mb = layer.uncompressed_size / 1e6;
  double m_ours = Median(ours), m_sync = Median(ours_sync), m_shell = Median(shell);
  fmt::print("{:<44} {:>9} {:>10}\n", "cold materialization (median)", "seconds", "MB/s (tar)");
  fmt::print("{:<44} {:>9.3f} {:>10.0f}\n", "zstd -d -c BLOB | tar -x", m_shell, mb / m_shell);
  fmt::print("{:<44} {:>9.3f} {:>10.0f}\n", "LayerCache::Acquire (sync=false)", m_ours, mb / m_ours);
  fmt::print("{:<44} {:>9.3f} {:>10.0f}\n", "LayerCache::Acquire (sync=true, default)", m_sync, mb / m_sync);
  double ratio = m_shell / m_ours;
  fmt::print("ratio vs pipeline: {:.2f}x (sync=false), {:.2f}x (sync=true); target >= 0.80x: {}\n", ratio,
             m_shell / m_sync, ratio >= 0.8 ? "MET" : "NOT MET");
  fs::remove_all(work);
  return 0;
}
