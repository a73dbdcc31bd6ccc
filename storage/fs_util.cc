#include "storage/fs_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <random>

namespace paddock::storage {

Status WriteAll(int fd, const void* data, size_t n, std::string_view what) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(fmt::format("writing {}", what));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return Status::Ok();
}

Status FsyncDir(const std::string& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoError(fmt::format("opening directory {}", dir));
  if (::fsync(fd.get()) != 0 && errno != EINVAL) return ErrnoError(fmt::format("fsync {}", dir));
  return Status::Ok();
}

Status MakeDirs(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return ErrnoError(fmt::format("creating {}", dir), ec.value());
  return Status::Ok();
}

Status MakePrivateDir(const std::string& dir) {
  PADDOCK_RETURN_IF_ERROR(MakeDirs(dir));
  if (::chmod(dir.c_str(), 0700) != 0) return ErrnoError(fmt::format("making {} private (mode 0700)", dir));
  return Status::Ok();
}

Status AtomicWriteFile(const std::string& path, std::string_view data) {
  std::string dir = std::filesystem::path(path).parent_path();
  std::string tmp = dir + "/" + UniqueTempName(".tmp-");
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (!fd.valid()) return ErrnoError(fmt::format("creating {}", tmp));
  Status st = WriteAll(fd.get(), data.data(), data.size(), tmp);
  if (st.ok() && ::fsync(fd.get()) != 0) st = ErrnoError(fmt::format("fsync {}", tmp));
  fd.reset();
  if (st.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) st = ErrnoError(fmt::format("renaming to {}", path));
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    return st;
  }
  return FsyncDir(dir);
}

Result<std::string> ReadFileLimited(const std::string& path, uint64_t max_bytes) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoError(fmt::format("opening {}", path));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoError(fmt::format("stat {}", path));
  if (static_cast<uint64_t>(st.st_size) > max_bytes)
    return Error(Code::kResourceExhausted, "{} is {} bytes, over the {} byte limit", path, st.st_size, max_bytes);
  std::string out(static_cast<size_t>(st.st_size), '\0');
  size_t off = 0;
  while (off < out.size()) {
    ssize_t r = ::read(fd.get(), out.data() + off, out.size() - off);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return ErrnoError(fmt::format("reading {}", path));
    if (r == 0) break;
    off += static_cast<size_t>(r);
  }
  out.resize(off);
  return out;
}

std::string UniqueTempName(std::string_view prefix) {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  char host[64] = {0};
  ::gethostname(host, sizeof host - 1);
  return fmt::format("{}{}-{}-{:016x}", prefix, EscapeComponent(host), ::getpid(), rng());
}

std::string EscapeComponent(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '.' || c == '_' || c == '-') {
      out.push_back(static_cast<char>(c));
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  if (out == "." || out == "..") out = fmt::format("%2E{}", out.substr(1));
  return out;
}

std::string UnescapeComponent(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      out.push_back(static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

}  // namespace paddock::storage
