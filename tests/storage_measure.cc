// Measures the layer format candidates on a sample directory: compression ratio,
// compress speed, and unpack speed (decompress + tar -x to a temp dir through
// libarchive) for plain tar, gzip -6, lz4, zstd -1/-3/-9. Numbers go into
// docs/image-store.md. Usage: storage_measure [DIR...]
#include <archive.h>
#include <archive_entry.h>
#include <lz4frame.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "storage/image_import.h"
#include "storage/layer_codec.h"
#include "tests/support/test_rootfs.h"

using namespace paddock::storage;
namespace fs = std::filesystem;

static double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

static void AddTree(archive* a, const std::string& root, const std::string& rel) {
  std::string full = rel.empty() ? root : root + "/" + rel;
  struct stat st;
  if (::lstat(full.c_str(), &st) != 0) return;
  if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode) && !S_ISLNK(st.st_mode)) return;
  archive_entry* e = archive_entry_new();
  archive_entry_copy_stat(e, &st);
  archive_entry_set_pathname(e, rel.empty() ? "./" : rel.c_str());
  if (S_ISLNK(st.st_mode)) archive_entry_set_symlink(e, fs::read_symlink(full).c_str());
  if (!S_ISREG(st.st_mode)) archive_entry_set_size(e, 0);
  archive_write_header(a, e);
  archive_entry_free(e);
  if (S_ISREG(st.st_mode)) {
    FILE* f = fopen(full.c_str(), "rb");
    if (f) {
      char buf[1 << 16];
      size_t n;
      while ((n = fread(buf, 1, sizeof buf, f)) > 0) archive_write_data(a, buf, n);
      fclose(f);
    }
  }
  if (S_ISDIR(st.st_mode)) {
    std::vector<std::string> kids;
    for (auto& d : fs::directory_iterator(full)) kids.push_back(d.path().filename());
    std::sort(kids.begin(), kids.end());
    for (auto& k : kids) AddTree(a, root, rel.empty() ? k : rel + "/" + k);
  }
}

static la_ssize_t AppendCb(archive*, void* cd, const void* buf, size_t n) {
  static_cast<std::string*>(cd)->append(static_cast<const char*>(buf), n);
  return static_cast<la_ssize_t>(n);
}

static std::string Tar(const std::vector<std::string>& dirs, const char* gzip_filter = nullptr) {
  std::string out;
  archive* a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  if (gzip_filter) archive_write_add_filter_gzip(a);
  archive_write_open(a, &out, nullptr, AppendCb, nullptr);
  for (auto& d : dirs) AddTree(a, d, "");
  archive_write_close(a);
  archive_write_free(a);
  return out;
}

// Decompress (libarchive filters) + extract to a fresh dir; returns seconds.
static double Unpack(const std::string& blob, const std::string& dest) {
  fs::remove_all(dest);
  fs::create_directories(dest);
  double t0 = Now();
  archive* a = archive_read_new();
  archive_read_support_filter_all(a);
  archive_read_support_format_tar(a);
  archive_read_open_memory(a, blob.data(), blob.size());
  archive* w = archive_write_disk_new();
  archive_write_disk_set_options(w, ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_TIME | ARCHIVE_EXTRACT_SECURE_NODOTDOT |
                                        ARCHIVE_EXTRACT_SECURE_SYMLINKS);
  archive_entry* e;
  while (archive_read_next_header(a, &e) == ARCHIVE_OK) {
    std::string p = dest + "/" + archive_entry_pathname(e);
    archive_entry_set_pathname(e, p.c_str());
    if (archive_write_header(w, e) == ARCHIVE_OK) {
      const void* buf;
      size_t n;
      la_int64_t off;
      while (archive_read_data_block(a, &buf, &n, &off) == ARCHIVE_OK) archive_write_data_block(w, buf, n, off);
    }
  }
  archive_write_free(w);
  archive_read_free(a);
  double t = Now() - t0;
  fs::remove_all(dest);
  return t;
}

int main(int argc, char** argv) {
  std::vector<std::string> dirs;
  for (int i = 1; i < argc; ++i) dirs.push_back(argv[i]);
  if (dirs.empty()) dirs.push_back(paddock::testing::EnsureBusyboxRootfs());
  std::string tar = Tar(dirs);
  std::printf("sample: %s ... (%zu dirs), tar %.1f MiB\n", dirs[0].c_str(), dirs.size(), tar.size() / 1048576.0);
  std::string dest = "/tmp/paddock-measure-" + std::to_string(getpid());
  auto best_unpack = [&](const std::string& blob) {
    double best = 1e9;
    for (int i = 0; i < 3; ++i) best = std::min(best, Unpack(blob, dest));
    return best;
  };
  double base = best_unpack(tar);
  std::printf("%-10s %10s %8s %12s %12s %10s\n", "format", "bytes", "ratio", "compress", "unpack", "vs tar-x");
  std::printf("%-10s %10zu %8.2f %12s %9.0f MB/s %9.2fx\n", "tar", tar.size(), 1.0, "-", tar.size() / base / 1e6, 1.0);
  struct C {
    const char* name;
    Compression c;
    int level;
  };
  for (C c : {C{"lz4", Compression::kLz4, 0}, C{"zstd-1", Compression::kZstd, 1}, C{"zstd-3", Compression::kZstd, 3},
              C{"zstd-9", Compression::kZstd, 9}}) {
    std::string out;
    double t0 = Now();
    auto comp = Compressor::Create(c.c, c.level, [&](const void* p, size_t n) {
                  out.append(static_cast<const char*>(p), n);
                  return paddock::Status::Ok();
                }).value();
    (void)comp->Write(tar.data(), tar.size());
    (void)comp->Finish();
    double ct = Now() - t0;
    double ut = best_unpack(out);
    std::printf("%-10s %10zu %8.2f %7.0f MB/s %9.0f MB/s %9.2fx\n", c.name, out.size(), double(tar.size()) / out.size(),
                tar.size() / ct / 1e6, tar.size() / ut / 1e6, base / ut);
  }
  double t0 = Now();
  std::string gz = Tar(dirs, "gzip");
  double gt = Now() - t0;
  double ut = best_unpack(gz);
  std::printf("%-10s %10zu %8.2f %7.0f MB/s %9.0f MB/s %9.2fx\n", "gzip-6", gz.size(), double(tar.size()) / gz.size(),
              tar.size() / gt / 1e6, tar.size() / ut / 1e6, base / ut);
  return 0;
}
