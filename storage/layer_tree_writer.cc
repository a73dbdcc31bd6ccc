#include "storage/layer_tree_writer.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <unordered_map>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

#include "sandbox/base/unique_fd.h"
#include "storage/overlay_whiteout.h"

namespace paddock::storage {
namespace {

// "a/b/c" → ("a/b", "c"); "c" → (".", "c").
std::pair<std::string, std::string> SplitPath(const std::string& rel) {
  size_t k = rel.rfind('/');
  if (k == std::string::npos) return {".", rel};
  return {rel.substr(0, k), rel.substr(k + 1)};
}

// Opens directory `name` (one component) beneath `dir`; no symlink is followed.
int OpenDirAt(int dir, const char* name) {
  open_how how{};
  how.flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  for (;;) {
    int fd = static_cast<int>(::syscall(SYS_openat2, dir, name, &how, sizeof(how)));
    if (fd >= 0 || errno != EAGAIN) return fd;
  }
}

// Files from this size on get their writeback started when closed (durable mode);
// smaller ones are left to the final sync, which writes them in one sweep.
constexpr uint64_t kWritebackMin = 256 << 10;

timespec EntryTime(bool set, int64_t sec, long nsec) {
  timespec t{};
  if (!set) {
    t.tv_nsec = UTIME_OMIT;
    return t;
  }
  t.tv_sec = sec;
  t.tv_nsec = nsec;
  return t;
}

// Writes the entries of one layer under a root directory, every path relative to
// a directory fd: parents are opened with openat2(RESOLVE_BENEATH |
// RESOLVE_NO_SYMLINKS) one component at a time from an already
// open parent, and cached by path, so an entry costs no path walk; leaves are
// created with *at() calls that never follow a symlink (O_CREAT | O_EXCL |
// O_NOFOLLOW, mkdirat, symlinkat, linkat without AT_SYMLINK_FOLLOW, mknodat).
// Nothing can be created through a symlink or outside the root, whatever the
// entries say, independently of EntryPolicy's checks.
//
// Restores what a root filesystem needs: numeric owners, permissions incl.
// setuid/setgid (chmod after chown, which clears them), mtimes (atimes when the
// archive has them), and xattrs except trusted.*. Directory modes and times are
// set at the end, deepest first (entries created inside would change the mtime,
// and a read-only mode would not stop root anyway but is the archive's last word).
class TreeWriter {
 public:
  TreeWriter(int root_fd, std::string what, bool start_writeback)
      : root_fd_(root_fd), what_(std::move(what)), start_writeback_(start_writeback) {
    struct stat st {};
    // New files get the creator's group unless their directory is setgid; directory
    // modes are applied at the end, so only the root's own bit matters meanwhile.
    if (::fstat(root_fd, &st) == 0) root_setgid_ = (st.st_mode & S_ISGID) != 0;
    euid_ = ::geteuid();
    egid_ = ::getegid();
  }

  // Creates the entry's object (data is written by the caller through WriteData).
  // For a regular file, `file_fd` receives the open descriptor.
  Status Create(archive_entry* e, const LayerEntry& le, UniqueFd* file_fd);
  Status WriteData(int fd, const void* buf, size_t size, int64_t offset, const std::string& path);
  // Owner, mode, xattrs and times of a regular file after its data (which ended at
  // `written_end`); closes it.
  Status FinishFile(UniqueFd fd, uint64_t written_end, archive_entry* e, const LayerEntry& le);
  // Directory modes and times, deepest first.
  Status Finish();
  uint64_t xattrs_dropped() const { return xattrs_dropped_; }

 private:
  struct DirFixup {
    std::string path;
    mode_t mode;
    timespec times[2];
  };

  Result<int> Dir(const std::string& rel, bool create);
  void ForgetDir(const std::string& rel);
  // Removes what is at parent/name so that an entry can take its place.
  Status Replace(int parent, const std::string& name, const std::string& rel);
  // `fresh`: created by this unpack just now, so owned by our uid/gid already when
  // the directory above is not setgid (then the chown is skipped).
  Status Chown(int fd, const char* name, const LayerEntry& le, mode_t* mode, bool fresh = true);
  void SetXattrs(archive_entry* e, int fd, int parent, const std::string& name);
  Status Err(const std::string& rel, const char* what) const {
    return ErrnoError(fmt::format("{}: entry '{}': {}", what_, rel, what));
  }

  int root_fd_;
  std::string what_;
  bool start_writeback_;
  bool root_setgid_ = false;
  uid_t euid_;
  gid_t egid_;
  std::unordered_map<std::string, UniqueFd> dirs_;  // open directories by path
  std::vector<DirFixup> fixups_;
  uint64_t xattrs_dropped_ = 0;
};

Result<int> TreeWriter::Dir(const std::string& rel, bool create) {
  if (rel == ".") return root_fd_;
  auto it = dirs_.find(rel);
  if (it != dirs_.end()) return it->second.get();
  auto [parent, name] = SplitPath(rel);
  PADDOCK_ASSIGN_OR_RETURN(int pfd, Dir(parent, create));
  UniqueFd fd(OpenDirAt(pfd, name.c_str()));
  if (!fd.valid() && errno == ENOENT && create) {  // a parent the tar does not list
    if (::mkdirat(pfd, name.c_str(), 0755) != 0 && errno != EEXIST) return Err(rel, "creating directory");
    fd.reset(OpenDirAt(pfd, name.c_str()));
  }
  if (!fd.valid()) {
    if (errno == ELOOP || errno == ENOTDIR || errno == EXDEV)
      return Error(Code::kInvalidArgument, "{}: '{}' is a symlink or not a directory; refusing to write through it",
                   what_, rel);
    return Err(rel, "opening directory");
  }
  int raw = fd.get();
  dirs_.emplace(rel, std::move(fd));
  return raw;
}

void TreeWriter::ForgetDir(const std::string& rel) {
  for (auto it = dirs_.begin(); it != dirs_.end();) {
    const std::string& k = it->first;
    if (k == rel || (k.size() > rel.size() && k.compare(0, rel.size(), rel) == 0 && k[rel.size()] == '/'))
      it = dirs_.erase(it);
    else
      ++it;
  }
}

Status TreeWriter::Replace(int parent, const std::string& name, const std::string& rel) {
  struct stat st;
  if (::fstatat(parent, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return Err(rel, "inspecting an existing entry");
  if (S_ISDIR(st.st_mode)) {
    if (::unlinkat(parent, name.c_str(), AT_REMOVEDIR) != 0) return Err(rel, "replacing a directory");
    ForgetDir(rel);
  } else if (::unlinkat(parent, name.c_str(), 0) != 0) {
    return Err(rel, "replacing an existing entry");
  }
  return Status::Ok();
}

Status TreeWriter::Chown(int fd, const char* name, const LayerEntry& le, mode_t* mode, bool fresh) {
  if (fresh && le.uid == euid_ && le.gid == egid_ && !root_setgid_) return Status::Ok();  // already so
  int r = name ? ::fchownat(fd, name, le.uid, le.gid, AT_SYMLINK_NOFOLLOW) : ::fchown(fd, le.uid, le.gid);
  if (r == 0) return Status::Ok();
  // Not root: keep the file, but never hand out setuid/setgid bits under our own id.
  if (errno == EPERM) {
    if (mode) *mode &= ~(S_ISUID | S_ISGID);
    return Status::Ok();
  }
  return Err(le.path, "setting the owner");
}

void TreeWriter::SetXattrs(archive_entry* e, int fd, int parent, const std::string& name) {
  if (archive_entry_xattr_reset(e) == 0) return;
  const char* key;
  const void* value;
  size_t size;
  while (archive_entry_xattr_next(e, &key, &value, &size) == ARCHIVE_OK) {
    // overlayfs metadata (trusted.overlay.*) must come from us, never from a layer.
    if (std::string_view(key).substr(0, 8) == "trusted.") continue;
    int r;
    if (fd >= 0) {
      r = ::fsetxattr(fd, key, value, size, 0);
    } else {  // a symlink: by its parent's fd, the last component not followed
      std::string p = fmt::format("/proc/self/fd/{}/{}", parent, name);
      r = ::lsetxattr(p.c_str(), key, value, size, 0);
    }
    if (r != 0) ++xattrs_dropped_;  // as tar does: a filesystem without the namespace
  }
}

Status TreeWriter::Create(archive_entry* e, const LayerEntry& le, UniqueFd* file_fd) {
  const std::string& rel = le.path;
  // Bounded: a tar lists a directory's entries together, so dropping the open
  // directories now and then costs a few re-opens. (Only here: the fds Dir()
  // returns stay valid until the next Create.)
  if (dirs_.size() >= 512) dirs_.clear();
  const timespec times[2] = {
      EntryTime(archive_entry_atime_is_set(e), archive_entry_atime(e), archive_entry_atime_nsec(e)),
      EntryTime(archive_entry_mtime_is_set(e), archive_entry_mtime(e), archive_entry_mtime_nsec(e))};
  mode_t mode = archive_entry_perm(e) & 07777;

  if (le.type == EntryType::kDir) {
    int fd;
    bool fresh = false;  // the root, or a directory an earlier entry made
    if (rel == ".") {
      fd = root_fd_;
    } else {
      auto [parent, name] = SplitPath(rel);
      PADDOCK_ASSIGN_OR_RETURN(int pfd, Dir(parent, true));
      fresh = ::mkdirat(pfd, name.c_str(), 0700) == 0;
      if (!fresh) {
        if (errno != EEXIST) return Err(rel, "creating directory");
        struct stat st;
        if (::fstatat(pfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return Err(rel, "inspecting");
        if (!S_ISDIR(st.st_mode)) {  // a later entry wins: the earlier non-directory goes
          PADDOCK_RETURN_IF_ERROR(Replace(pfd, name, rel));
          if (::mkdirat(pfd, name.c_str(), 0700) != 0) return Err(rel, "creating directory");
        }
      }
      PADDOCK_ASSIGN_OR_RETURN(fd, Dir(rel, false));
    }
    PADDOCK_RETURN_IF_ERROR(Chown(fd, nullptr, le, &mode, fresh));
    SetXattrs(e, fd, -1, "");
    fixups_.push_back({rel, mode, {times[0], times[1]}});
    return Status::Ok();
  }

  auto [parent, name] = SplitPath(rel);
  PADDOCK_ASSIGN_OR_RETURN(int pfd, Dir(parent, true));
  // Creates the leaf; on EEXIST the earlier entry is replaced once (a later entry
  // of a tar wins), as tar does.
  auto make = [&](auto&& create_fn) -> Status {
    for (int attempt = 0;; ++attempt) {
      if (create_fn()) return Status::Ok();
      if (errno != EEXIST || attempt > 0) return Err(rel, "creating");
      PADDOCK_RETURN_IF_ERROR(Replace(pfd, name, rel));
    }
  };
  switch (le.type) {
    case EntryType::kFile: {
      UniqueFd fd;
      PADDOCK_RETURN_IF_ERROR(make([&] {
        fd.reset(::openat(pfd, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
        return fd.valid();
      }));
      *file_fd = std::move(fd);
      return Status::Ok();
    }
    case EntryType::kSymlink: {
      PADDOCK_RETURN_IF_ERROR(make([&] { return ::symlinkat(le.link.c_str(), pfd, name.c_str()) == 0; }));
      PADDOCK_RETURN_IF_ERROR(Chown(pfd, name.c_str(), le, nullptr));
      SetXattrs(e, -1, pfd, name);
      if (::utimensat(pfd, name.c_str(), times, AT_SYMLINK_NOFOLLOW) != 0) return Err(rel, "setting times");
      return Status::Ok();
    }
    case EntryType::kHardlink: {
      // The target is an earlier entry (EntryPolicy); its parent is resolved beneath
      // the root like any other, and linkat() does not follow a symlink target.
      auto [tparent, tname] = SplitPath(le.link);
      PADDOCK_ASSIGN_OR_RETURN(int tfd, Dir(tparent, false));
      return make([&] { return ::linkat(tfd, tname.c_str(), pfd, name.c_str(), 0) == 0; });
    }
    case EntryType::kFifo: {
      PADDOCK_RETURN_IF_ERROR(make([&] { return ::mknodat(pfd, name.c_str(), S_IFIFO | 0600, 0) == 0; }));
      PADDOCK_RETURN_IF_ERROR(Chown(pfd, name.c_str(), le, &mode));
      if (::fchmodat(pfd, name.c_str(), mode, 0) != 0) return Err(rel, "setting the mode");
      if (::utimensat(pfd, name.c_str(), times, AT_SYMLINK_NOFOLLOW) != 0) return Err(rel, "setting times");
      return Status::Ok();
    }
    default:
      return Error(Code::kInvalidArgument, "{}: entry '{}': not a type the unpacker writes", what_, rel);
  }
}

Status TreeWriter::WriteData(int fd, const void* buf, size_t size, int64_t offset, const std::string& path) {
  const char* p = static_cast<const char*>(buf);
  while (size > 0) {
    ssize_t n = ::pwrite(fd, p, size, offset);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Err(path, "writing");
    }
    p += n;
    size -= static_cast<size_t>(n);
    offset += n;
  }
  return Status::Ok();
}

Status TreeWriter::FinishFile(UniqueFd fd, uint64_t written_end, archive_entry* e, const LayerEntry& le) {
  // A sparse entry's last hole: the file is as long as the header says.
  if (written_end < le.size && ::ftruncate(fd.get(), static_cast<off_t>(le.size)) != 0)
    return Err(le.path, "extending a sparse file");
  mode_t mode = archive_entry_perm(e) & 07777;
  PADDOCK_RETURN_IF_ERROR(Chown(fd.get(), nullptr, le, &mode));
  if (::fchmod(fd.get(), mode) != 0) return Err(le.path, "setting the mode");
  SetXattrs(e, fd.get(), -1, "");
  const timespec times[2] = {
      EntryTime(archive_entry_atime_is_set(e), archive_entry_atime(e), archive_entry_atime_nsec(e)),
      EntryTime(archive_entry_mtime_is_set(e), archive_entry_mtime(e), archive_entry_mtime_nsec(e))};
  if (::futimens(fd.get(), times) != 0) return Err(le.path, "setting times");
  // Best effort: the caller's syncfs is what guarantees durability.
  if (start_writeback_ && written_end >= kWritebackMin) ::sync_file_range(fd.get(), 0, 0, SYNC_FILE_RANGE_WRITE);
  if (::close(fd.release()) != 0) return Err(le.path, "closing");
  return Status::Ok();
}

Status TreeWriter::Finish() {
  std::stable_sort(fixups_.begin(), fixups_.end(), [](const DirFixup& a, const DirFixup& b) {
    return std::count(a.path.begin(), a.path.end(), '/') > std::count(b.path.begin(), b.path.end(), '/');
  });
  for (const auto& f : fixups_) {
    int fd = root_fd_;
    if (f.path != ".") {
      auto d = Dir(f.path, false);
      if (!d.ok() && d.status().code() == Code::kInvalidArgument) continue;  // replaced by a non-directory
      PADDOCK_RETURN_IF_ERROR(d.status());
      fd = *d;
    }
    if (::fchmod(fd, f.mode) != 0) return Err(f.path, "setting the mode");
    if (::futimens(fd, f.times) != 0) return Err(f.path, "setting times");
  }
  dirs_.clear();
  return Status::Ok();
}

}  // namespace

struct LayerTreeWriter::Impl {
  UniqueFd root;
  std::string what;
  TreeWriter out;
  UnpackStats stats;
  std::vector<std::string> whiteouts, opaques;
  Impl(UniqueFd fd, std::string w, bool writeback)
      : root(std::move(fd)), what(std::move(w)), out(root.get(), what, writeback) {}
};

LayerTreeWriter::LayerTreeWriter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LayerTreeWriter::~LayerTreeWriter() = default;

Result<std::unique_ptr<LayerTreeWriter>> LayerTreeWriter::Open(const std::string& dest, std::string what,
                                                               bool start_writeback) {
  UniqueFd root_fd(::open(dest.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!root_fd.valid()) return ErrnoError(fmt::format("opening {}", dest));
  return std::unique_ptr<LayerTreeWriter>(
      new LayerTreeWriter(std::make_unique<Impl>(std::move(root_fd), std::move(what), start_writeback)));
}

Status LayerTreeWriter::Add(archive* tar, archive_entry* e, const LayerEntry& le) {
  Impl& m = *impl_;
  ++m.stats.entries;
  if (le.type == EntryType::kWhiteout) {
    m.whiteouts.push_back(le.path);
    return Status::Ok();
  }
  if (le.type == EntryType::kOpaque) {
    m.opaques.push_back(le.path);
    return Status::Ok();
  }
  UniqueFd fd;
  PADDOCK_RETURN_IF_ERROR(m.out.Create(e, le, &fd));
  if (!fd.valid()) return Status::Ok();
  uint64_t end = 0;
  if (le.size > 0) {
    const void* buf;
    size_t size;
    la_int64_t off;
    for (;;) {
      int r = archive_read_data_block(tar, &buf, &size, &off);
      if (r == ARCHIVE_EOF) break;
      if (r != ARCHIVE_OK && r != ARCHIVE_WARN)
        return Error(Code::kDataLoss, "{}: entry '{}': {}", m.what, le.path,
                     archive_error_string(tar) ? archive_error_string(tar) : "read error");
      PADDOCK_RETURN_IF_ERROR(m.out.WriteData(fd.get(), buf, size, off, le.path));
      end = std::max<uint64_t>(end, static_cast<uint64_t>(off) + size);
    }
  }
  return m.out.FinishFile(std::move(fd), end, e, le);
}

Result<UnpackStats> LayerTreeWriter::Finish() {
  Impl& m = *impl_;
  // Whiteouts go in after every entry (a same-layer entry wins over a whiteout) and
  // before the directory fixups, which then restore directory mtimes and modes.
  for (const auto& w : m.whiteouts) PADDOCK_RETURN_IF_ERROR(MakeOverlayWhiteout(m.root.get(), w).Prefix(m.what));
  for (const auto& o : m.opaques) PADDOCK_RETURN_IF_ERROR(MakeOverlayOpaque(m.root.get(), o).Prefix(m.what));
  m.stats.whiteouts = m.whiteouts.size();
  m.stats.opaque_dirs = m.opaques.size();
  PADDOCK_RETURN_IF_ERROR(m.out.Finish());
  if (m.out.xattrs_dropped() > 0)
    spdlog::warn("{}: {} extended attributes could not be set here and were left out", m.what,
                 m.out.xattrs_dropped());
  return m.stats;
}

}  // namespace paddock::storage
