// ImportDirectory: a plain directory packed into one layer by a writer thread,
// streamed through a socketpair into the same ingest path archives take (so the
// same EntryPolicy applies).
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <thread>

#include "storage/fs_util.h"
#include "storage/image_import.h"

namespace paddock::storage {

namespace {

struct Packer {
  archive* a = nullptr;
  std::string root;
  uint64_t skipped = 0;
  Status err;
  int fd = -1;               // the socket the ingest reads
  bool reader_gone = false;  // a write failed because the ingest stopped reading

  static la_ssize_t WriteCb(archive*, void* cd, const void* buf, size_t n) {
    auto* self = static_cast<Packer*>(cd);
    int fd = self->fd;
    const char* p = static_cast<const char*>(buf);
    size_t left = n;
    while (left > 0) {
      ssize_t w = ::send(fd, p, left, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) {
        self->reader_gone = errno == EPIPE || errno == ECONNRESET;
        return -1;
      }
      p += w;
      left -= static_cast<size_t>(w);
    }
    return static_cast<la_ssize_t>(n);
  }

  Status Fail(const std::string& what) {
    return Error(Code::kInternal, "packing {}: {}", what, archive_error_string(a) ? archive_error_string(a) : "");
  }

  Status Add(const std::string& rel) {
    std::string full = rel.empty() ? root : root + "/" + rel;
    struct stat st;
    if (::lstat(full.c_str(), &st) != 0) return ErrnoError(fmt::format("stat {}", full));
    if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) || S_ISSOCK(st.st_mode)) {
      skipped++;
      return Status::Ok();
    }
    std::unique_ptr<archive_entry, decltype(&archive_entry_free)> e(archive_entry_new(), &archive_entry_free);
    archive_entry_copy_stat(e.get(), &st);
    archive_entry_set_nlink(e.get(), 1);
    archive_entry_set_atime(e.get(), 0, 0);
    archive_entry_unset_atime(e.get());
    archive_entry_unset_ctime(e.get());
    archive_entry_set_ino64(e.get(), 0);
    archive_entry_set_dev(e.get(), 0);
    archive_entry_set_pathname(e.get(), rel.empty() ? "./" : (S_ISDIR(st.st_mode) ? rel + "/" : rel).c_str());
    if (S_ISLNK(st.st_mode)) {
      std::string target(PATH_MAX, '\0');
      ssize_t n = ::readlink(full.c_str(), target.data(), target.size());
      if (n < 0) return ErrnoError(fmt::format("readlink {}", full));
      target.resize(static_cast<size_t>(n));
      archive_entry_set_symlink(e.get(), target.c_str());
    }
    if (!S_ISREG(st.st_mode)) archive_entry_set_size(e.get(), 0);
    if (archive_write_header(a, e.get()) != ARCHIVE_OK) return Fail(full);
    if (S_ISREG(st.st_mode)) {
      UniqueFd fd(::open(full.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
      if (!fd.valid()) return ErrnoError(fmt::format("opening {}", full));
      std::string buf(1 << 20, '\0');
      for (;;) {
        ssize_t r = ::read(fd.get(), buf.data(), buf.size());
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return ErrnoError(fmt::format("reading {}", full));
        if (r == 0) break;
        if (archive_write_data(a, buf.data(), static_cast<size_t>(r)) < 0) return Fail(full);
      }
    }
    if (S_ISDIR(st.st_mode)) {
      std::vector<std::string> kids;
      DIR* d = ::opendir(full.c_str());
      if (!d) return ErrnoError(fmt::format("listing {}", full));
      while (dirent* de = ::readdir(d)) {
        std::string n = de->d_name;
        if (n != "." && n != "..") kids.push_back(n);
      }
      ::closedir(d);
      std::sort(kids.begin(), kids.end());
      for (const auto& k : kids) PADDOCK_RETURN_IF_ERROR(Add(rel.empty() ? k : rel + "/" + k));
    }
    return Status::Ok();
  }
};

}  // namespace

Result<DirectoryImportResult> ImportDirectory(ImageStore& store, const std::string& dir, const ImageConfig& config,
                                              const std::vector<std::string>& names) {
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return Error(Code::kInvalidArgument, "{} is not a directory", dir);
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return ErrnoError("socketpair");
  UniqueFd reader(sv[0]);
  int writer_fd = sv[1];

  Packer packer;
  packer.root = dir;
  packer.fd = writer_fd;
  std::thread producer([&] {
    packer.a = archive_write_new();
    archive_write_set_format_pax_restricted(packer.a);
    archive_write_set_bytes_per_block(packer.a, 10240);
    if (archive_write_open(packer.a, &packer, nullptr, &Packer::WriteCb, nullptr) != ARCHIVE_OK) {
      packer.err = packer.Fail(dir);
    } else {
      packer.err = packer.Add("");
      if (archive_write_close(packer.a) != ARCHIVE_OK && packer.err.ok()) packer.err = packer.Fail(dir);
    }
    archive_write_free(packer.a);
    ::close(writer_fd);
  });

  DirectoryImportResult out;
  Status st2;
  auto tx = store.Begin();
  if (!tx.ok()) {
    st2 = tx.status();
  } else {
    auto layer = (*tx)->AddLayer(SourceFromFd(reader.get()), LayerHint{"directory " + dir, std::nullopt, std::nullopt});
    reader.reset();  // unblocks the producer if ingest stopped early
    producer.join();
    // When the ingest stopped first (out of space, a bad entry), the packer's failed
    // write is only its echo: the ingest's error is the reason.
    if (!packer.err.ok() && !packer.reader_gone) return packer.err;
    if (!layer.ok()) return layer.status();
    if (!packer.err.ok()) return packer.err;
    std::vector<StoredLayer> layers{layer.value()};
    PADDOCK_ASSIGN_OR_RETURN(out.image, (*tx)->AddImage(MakeOciConfig(config, {layer->diff_id}), layers, names));
    PADDOCK_RETURN_IF_ERROR((*tx)->Commit());
    out.skipped_special = packer.skipped;
    return out;
  }
  reader.reset();
  producer.join();
  return st2;
}

}  // namespace paddock::storage
