#include "storage/import_source.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>

#include "storage/entry_policy.h"
#include "storage/fs_util.h"

namespace paddock::storage {

namespace {

class DirSource : public ImportSource {
 public:
  explicit DirSource(std::string root) : root_(std::move(root)) {}

  Result<std::string> Resolve(const std::string& path) {
    PADDOCK_ASSIGN_OR_RETURN(std::string norm, NormalizeEntryPath(path));
    std::string full = root_ + "/" + norm;
    char real[PATH_MAX];
    if (!::realpath(full.c_str(), real)) return Error(Code::kNotFound, "'{}' is not in {}", path, root_);
    std::string r = real;
    if (r.compare(0, root_.size() + 1, root_ + "/") != 0)
      return Error(Code::kInvalidArgument, "'{}' in {} leads outside it", path, root_);
    return r;
  }
  bool Exists(const std::string& path) override {
    auto r = Resolve(path);
    struct stat st;
    return r.ok() && ::stat(r->c_str(), &st) == 0 && S_ISREG(st.st_mode);
  }
  Result<std::string> ReadSmall(const std::string& path, uint64_t max_bytes) override {
    PADDOCK_ASSIGN_OR_RETURN(std::string r, Resolve(path));
    return ReadFileLimited(r, max_bytes);
  }
  Status ForEach(const std::set<std::string>& paths,
                 const std::function<Status(const std::string&, const ByteSource&)>& fn) override {
    for (const auto& p : paths) {
      PADDOCK_ASSIGN_OR_RETURN(std::string r, Resolve(p));
      UniqueFd fd(::open(r.c_str(), O_RDONLY | O_CLOEXEC));
      if (!fd.valid()) return ErrnoError(fmt::format("opening {}", r));
      PADDOCK_RETURN_IF_ERROR(fn(p, SourceFromFd(fd.get())));
    }
    return Status::Ok();
  }

 private:
  std::string root_;
};

// Reads a tar twice at most: once to learn its names and keep small files, once
// more to stream the large files asked for.
class TarSource : public ImportSource {
 public:
  explicit TarSource(std::string path) : path_(std::move(path)) {}

  using ArchivePtr = std::unique_ptr<archive, decltype(&archive_read_free)>;
  Result<ArchivePtr> OpenArchive() {
    ArchivePtr a(archive_read_new(), &archive_read_free);
    archive_read_support_filter_all(a.get());
    archive_read_support_format_tar(a.get());
    if (archive_read_open_filename(a.get(), path_.c_str(), 1 << 20) != ARCHIVE_OK)
      return Error(Code::kInvalidArgument, "cannot read archive {}: {}", path_, archive_error_string(a.get()));
    return a;
  }

  Status Scan() {
    PADDOCK_ASSIGN_OR_RETURN(auto a, OpenArchive());
    std::string last = "(start)";
    for (;;) {
      archive_entry* e;
      int r = archive_read_next_header(a.get(), &e);
      if (r == ARCHIVE_EOF) break;
      if (r != ARCHIVE_OK && r != ARCHIVE_WARN)
        return Error(Code::kInvalidArgument, "archive {} is truncated or corrupt after '{}': {}", path_, last,
                     archive_error_string(a.get()));
      const char* raw = archive_entry_pathname(e);
      PADDOCK_ASSIGN_OR_RETURN(std::string name, NormalizeEntryPath(raw ? raw : ""));
      last = name;
      if (const char* hl = archive_entry_hardlink(e)) {
        PADDOCK_ASSIGN_OR_RETURN(links_[name], NormalizeEntryPath(hl));
      } else if (archive_entry_filetype(e) == AE_IFLNK) {
        std::string dir = name.find('/') == std::string::npos ? "" : name.substr(0, name.rfind('/') + 1);
        const char* t = archive_entry_symlink(e);
        if (!t || SymlinkEscapes(name, t) || t[0] == '/')
          return Error(Code::kInvalidArgument, "archive entry '{}' is a symlink leading outside the archive", name);
        PADDOCK_ASSIGN_OR_RETURN(links_[name], NormalizeEntryPath(dir + t));
      } else if (archive_entry_filetype(e) == AE_IFREG) {
        int64_t size = archive_entry_size(e);
        sizes_[name] = static_cast<uint64_t>(size);
        if (size <= kSmall && kept_ + static_cast<uint64_t>(size) <= kKeepBudget) {
          std::string data(static_cast<size_t>(size), '\0');
          la_ssize_t n = size ? archive_read_data(a.get(), data.data(), data.size()) : 0;
          if (n != size)
            return Error(Code::kInvalidArgument, "archive {}: entry '{}' is truncated", path_, name);
          kept_ += static_cast<uint64_t>(size);
          small_[name] = std::move(data);
          continue;
        }
      }
      if (archive_read_data_skip(a.get()) != ARCHIVE_OK)
        return Error(Code::kInvalidArgument, "archive {}: entry '{}' is truncated: {}", path_, name,
                     archive_error_string(a.get()));
    }
    return Status::Ok();
  }

  std::string Real(std::string p) {
    for (int i = 0; i < 16 && links_.count(p); ++i) p = links_[p];
    return p;
  }
  bool Exists(const std::string& path) override { return sizes_.count(Real(path)) > 0; }
  std::string Canonical(const std::string& path) override { return Real(path); }

  Result<std::string> ReadSmall(const std::string& path, uint64_t max_bytes) override {
    std::string real = Real(path);
    auto it = sizes_.find(real);
    if (it == sizes_.end()) return Error(Code::kNotFound, "'{}' is not in archive {}", path, path_);
    if (it->second > max_bytes)
      return Error(Code::kInvalidArgument, "'{}' in {} is {} bytes, over the {} byte limit", path, path_, it->second,
                   max_bytes);
    if (auto s = small_.find(real); s != small_.end()) return s->second;
    std::string out;
    PADDOCK_RETURN_IF_ERROR(ForEach({path}, [&](const std::string&, const ByteSource& src) -> Status {
      char buf[65536];
      for (;;) {
        PADDOCK_ASSIGN_OR_RETURN(size_t n, src(buf, sizeof buf));
        if (n == 0) return Status::Ok();
        out.append(buf, n);
      }
    }));
    return out;
  }

  Status ForEach(const std::set<std::string>& paths,
                 const std::function<Status(const std::string&, const ByteSource&)>& fn) override {
    std::map<std::string, std::vector<std::string>> wanted;  // real name → requested names
    for (const auto& p : paths) {
      std::string real = Real(p);
      if (!sizes_.count(real)) return Error(Code::kNotFound, "'{}' is not in archive {}", p, path_);
      if (auto s = small_.find(real); s != small_.end()) {
        PADDOCK_RETURN_IF_ERROR(fn(p, SourceFromString(s->second)));
      } else {
        wanted[real].push_back(p);
      }
    }
    if (wanted.empty()) return Status::Ok();
    PADDOCK_ASSIGN_OR_RETURN(auto a, OpenArchive());
    for (;;) {
      archive_entry* e;
      int r = archive_read_next_header(a.get(), &e);
      if (r == ARCHIVE_EOF) break;
      if (r != ARCHIVE_OK && r != ARCHIVE_WARN)
        return Error(Code::kInvalidArgument, "archive {} is corrupt: {}", path_, archive_error_string(a.get()));
      auto name = NormalizeEntryPath(archive_entry_pathname(e) ? archive_entry_pathname(e) : "");
      auto it = name.ok() ? wanted.find(name.value()) : wanted.end();
      if (it == wanted.end() || archive_entry_filetype(e) != AE_IFREG || archive_entry_hardlink(e)) continue;
      archive* ap = a.get();
      std::string entry_name = it->first;
      ByteSource src = [ap, entry_name, this](void* buf, size_t n) -> Result<size_t> {
        la_ssize_t got = archive_read_data(ap, buf, n);
        if (got < 0)
          return Error(Code::kInvalidArgument, "archive {}: entry '{}' is truncated: {}", path_, entry_name,
                       archive_error_string(ap));
        return static_cast<size_t>(got);
      };
      PADDOCK_RETURN_IF_ERROR(fn(it->second.front(), src));  // callers pass Canonical() names
      wanted.erase(it);
      if (wanted.empty()) break;
    }
    if (!wanted.empty()) return Error(Code::kInvalidArgument, "'{}' vanished from archive {}", wanted.begin()->first, path_);
    return Status::Ok();
  }

 private:
  static constexpr int64_t kSmall = 1 << 20;
  static constexpr uint64_t kKeepBudget = 256ull << 20;
  std::string path_;
  std::map<std::string, uint64_t> sizes_;
  std::map<std::string, std::string> small_;
  std::map<std::string, std::string> links_;
  uint64_t kept_ = 0;
};

}  // namespace

Result<std::unique_ptr<ImportSource>> ImportSource::Open(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return ErrnoError(fmt::format("opening {}", path));
  if (S_ISDIR(st.st_mode)) {
    char real[PATH_MAX];
    if (!::realpath(path.c_str(), real)) return ErrnoError(fmt::format("resolving {}", path));
    return std::unique_ptr<ImportSource>(new DirSource(real));
  }
  auto src = std::make_unique<TarSource>(path);
  PADDOCK_RETURN_IF_ERROR(src->Scan());
  return std::unique_ptr<ImportSource>(std::move(src));
}

}  // namespace paddock::storage
