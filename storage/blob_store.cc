#include "storage/blob_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <filesystem>

#include "storage/fs_util.h"

namespace fs = std::filesystem;

namespace paddock::storage {

namespace {
constexpr size_t kWriteBuffer = 1 << 20;
constexpr uint64_t kWritebackChunk = 8 << 20;

Result<std::vector<std::string>> ListDir(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) {
    if (errno == ENOENT) return out;
    return ErrnoError(fmt::format("listing {}", dir));
  }
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") out.push_back(std::move(n));
  }
  ::closedir(d);
  return out;
}

bool OlderThan(const std::string& path, std::chrono::seconds grace) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return false;
  return ::time(nullptr) - st.st_mtime >= grace.count();
}
}  // namespace

// ---- BlobWriter ----

BlobWriter::BlobWriter(BlobStore* store, std::string path, UniqueFd fd)
    : store_(store), path_(std::move(path)), fd_(std::move(fd)) {
  buf_.reserve(kWriteBuffer);
}

BlobWriter::~BlobWriter() {
  if (!finished_) ::unlink(path_.c_str());
}

// Starts writeback of what has been written since the last call, without waiting,
// so that the disk works while the caller keeps producing and Finish()'s fsync
// finds little left to write (large layers otherwise wait for all of it at the end).
void BlobWriter::StartWriteback(bool force) {
  if (written_ - writeback_from_ < kWritebackChunk && !force) return;
  if (written_ > writeback_from_)
    ::sync_file_range(fd_.get(), static_cast<off_t>(writeback_from_), static_cast<off_t>(written_ - writeback_from_),
                      SYNC_FILE_RANGE_WRITE);  // best effort: fsync in Finish() is what guarantees durability
  writeback_from_ = written_;
}

Status BlobWriter::WriteOut(const char* data, size_t n) {
  if (!leave_reserved_) return WriteAll(fd_.get(), data, n, path_);
  return store_->WriteUnreserved(fd_.get(), data, n, path_);
}

Status BlobWriter::Write(const void* data, size_t n) {
  if (finished_) return Error(Code::kFailedPrecondition, "write to a finished blob writer");
  hash_.Update(data, n);
  size_ += n;
  const char* p = static_cast<const char*>(data);
  if (buf_.size() + n < kWriteBuffer) {
    buf_.append(p, n);
    return Status::Ok();
  }
  PADDOCK_RETURN_IF_ERROR(WriteOut(buf_.data(), buf_.size()));
  written_ += buf_.size();
  buf_.clear();
  if (n >= kWriteBuffer) {
    PADDOCK_RETURN_IF_ERROR(WriteOut(p, n));
    written_ += n;
  } else {
    buf_.append(p, n);
  }
  StartWriteback(false);
  return Status::Ok();
}

Result<StagedBlob> BlobWriter::Finish() {
  PADDOCK_RETURN_IF_ERROR(WriteOut(buf_.data(), buf_.size()));
  buf_.clear();
  if (::fsync(fd_.get()) != 0) return ErrnoError(fmt::format("fsync {}", path_));
  fd_.reset();
  finished_ = true;
  store_->stats_.bytes_staged += size_;
  return StagedBlob{hash_.Finish(), size_, path_};
}

// ---- StagingArea ----

StagingArea::~StagingArea() {
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

Result<std::unique_ptr<BlobWriter>> StagingArea::NewWriter() {
  std::string path = dir_ + "/" + UniqueTempName("blob-");
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444));
  if (!fd.valid()) return ErrnoError(fmt::format("creating staging file {}", path));
  return std::unique_ptr<BlobWriter>(new BlobWriter(store_, std::move(path), std::move(fd)));
}

// ---- BlobStore ----

Result<std::unique_ptr<BlobStore>> BlobStore::Open(const std::string& root) {
  PADDOCK_RETURN_IF_ERROR(MakePrivateDir(root).Prefix("opening blob store"));
  for (const char* sub : {"blobs/sha256", "staging", "blobrefs/sha256"})
    PADDOCK_RETURN_IF_ERROR(MakeDirs(root + "/" + sub).Prefix("opening blob store"));
  return std::unique_ptr<BlobStore>(new BlobStore(root));
}

std::string BlobStore::BlobPath(const Digest& d) const { return root_ + "/blobs/sha256/" + d.hex(); }
std::string BlobStore::RefDir(const Digest& d) const { return root_ + "/blobrefs/sha256/" + d.hex(); }

Result<std::unique_ptr<StagingArea>> BlobStore::NewStaging() {
  std::string dir = root_ + "/staging/" + UniqueTempName("txn-");
  if (::mkdir(dir.c_str(), 0700) != 0) return ErrnoError(fmt::format("creating {}", dir));
  return std::unique_ptr<StagingArea>(new StagingArea(this, std::move(dir)));
}

Status BlobStore::Commit(const StagedBlob& blob) {
  std::string dest = BlobPath(blob.digest);
  if (::access(dest.c_str(), F_OK) == 0) {
    ::unlink(blob.path.c_str());
    ::utimensat(AT_FDCWD, dest.c_str(), nullptr, 0);  // restart gc's grace period
    stats_.blobs_deduplicated++;
    return Status::Ok();
  }
  // rename() replaces atomically; a concurrent writer of the same digest wrote
  // identical bytes, so whichever rename lands last is equally correct.
  if (::rename(blob.path.c_str(), dest.c_str()) != 0)
    return ErrnoError(fmt::format("committing blob {}", blob.digest.str()));
  stats_.bytes_committed += blob.size;
  stats_.blobs_committed++;
  return FsyncDir(root_ + "/blobs/sha256");
}

Result<Digest> BlobStore::Put(std::string_view data) {
  PADDOCK_ASSIGN_OR_RETURN(auto staging, NewStaging());
  PADDOCK_ASSIGN_OR_RETURN(auto writer, staging->NewWriter());
  writer->leave_reserved_ = false;  // small blobs of a commit: inside its reservation
  PADDOCK_RETURN_IF_ERROR(writer->Write(data));
  PADDOCK_ASSIGN_OR_RETURN(StagedBlob staged, writer->Finish());
  PADDOCK_RETURN_IF_ERROR(Commit(staged));
  return staged.digest;
}

// ---- space reservations ----

SpaceReservation::SpaceReservation(SpaceReservation&& o) noexcept
    : store_(std::exchange(o.store_, nullptr)), bytes_(o.bytes_), inodes_(o.inodes_) {}

SpaceReservation& SpaceReservation::operator=(SpaceReservation&& o) noexcept {
  if (this != &o) {
    Release();
    store_ = std::exchange(o.store_, nullptr);
    bytes_ = o.bytes_;
    inodes_ = o.inodes_;
  }
  return *this;
}

void SpaceReservation::Release() {
  if (!store_) return;
  std::lock_guard<std::mutex> l(store_->space_mu_);
  store_->reserved_bytes_ -= bytes_;
  store_->reserved_inodes_ -= inodes_;
  store_ = nullptr;
}

Result<SpaceReservation> BlobStore::Reserve(uint64_t bytes, uint64_t inodes, std::string_view what) {
  // Staging writes under way land before the free space is read, and later ones
  // see this reservation.
  std::unique_lock<std::shared_mutex> no_writes(staging_writes_mu_);
  std::lock_guard<std::mutex> l(space_mu_);
  struct statvfs vfs;
  if (::statvfs(root_.c_str(), &vfs) != 0) return ErrnoError(fmt::format("statvfs {}", root_));
  const uint64_t avail = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
  const uint64_t held = reserved_bytes_.load();
  if (avail < held || avail - held < bytes)
    return Error(Code::kResourceExhausted,
                 "not enough space left in {} to {}: {} bytes free, {} of them held by other commits in progress, "
                 "{} needed; nothing was committed",
                 root_, what, avail, held, bytes);
  const uint64_t favail = static_cast<uint64_t>(vfs.f_favail);
  if (vfs.f_files > 0 && (favail < reserved_inodes_ || favail - reserved_inodes_ < inodes))
    return Error(Code::kResourceExhausted,
                 "no inodes left in {} to {}: {} free, {} of them held by other commits in progress, {} needed; "
                 "nothing was committed",
                 root_, what, favail, reserved_inodes_, inodes);
  reserved_bytes_ += bytes;
  reserved_inodes_ += inodes;
  return SpaceReservation(this, bytes, inodes);
}

Status BlobStore::WriteUnreserved(int fd, const char* data, size_t n, const std::string& path) {
  std::shared_lock<std::shared_mutex> writing(staging_writes_mu_);
  const uint64_t held = reserved_bytes_.load();
  if (held != 0) {  // nothing reserved: no statvfs per write
    struct statvfs vfs;
    if (::statvfs(root_.c_str(), &vfs) == 0) {  // else the write itself will say
      const uint64_t avail = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
      if (avail < held || avail - held < n)
        return Error(Code::kResourceExhausted,
                     "no space left in {} for {}: {} bytes free, {} of them held by commits in progress", root_, path,
                     avail, held);
    }
  }
  return WriteAll(fd, data, n, path);
}

bool BlobStore::Has(const Digest& d) const { return ::access(BlobPath(d).c_str(), F_OK) == 0; }

Result<uint64_t> BlobStore::Size(const Digest& d) const {
  struct stat st;
  if (::stat(BlobPath(d).c_str(), &st) != 0) {
    if (errno == ENOENT) return Error(Code::kNotFound, "blob {} not found", d.str());
    return ErrnoError(fmt::format("stat blob {}", d.str()));
  }
  return static_cast<uint64_t>(st.st_size);
}

Status BlobStore::Stream(const Digest& d, const std::function<Status(const void*, size_t)>& sink) const {
  UniqueFd fd(::open(BlobPath(d).c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT) return Error(Code::kNotFound, "blob {} not found", d.str());
    return ErrnoError(fmt::format("opening blob {}", d.str()));
  }
  Sha256 h;
  std::string buf(1 << 20, '\0');
  for (;;) {
    ssize_t r = ::read(fd.get(), buf.data(), buf.size());
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return ErrnoError(fmt::format("reading blob {}", d.str()));
    if (r == 0) break;
    h.Update(buf.data(), static_cast<size_t>(r));
    if (sink) PADDOCK_RETURN_IF_ERROR(sink(buf.data(), static_cast<size_t>(r)));
  }
  Digest got = h.Finish();
  if (!(got == d))
    return Error(Code::kDataLoss, "blob {} is corrupt: its content hashes to {}", d.str(), got.str());
  return Status::Ok();
}

Result<std::string> BlobStore::Read(const Digest& d, uint64_t max_bytes) const {
  PADDOCK_ASSIGN_OR_RETURN(uint64_t size, Size(d));
  if (size > max_bytes)
    return Error(Code::kResourceExhausted, "blob {} is {} bytes, over the {} byte read limit", d.str(), size, max_bytes);
  std::string out;
  out.reserve(size);
  PADDOCK_RETURN_IF_ERROR(Stream(d, [&](const void* p, size_t n) {
    out.append(static_cast<const char*>(p), n);
    return Status::Ok();
  }));
  return out;
}

Status BlobStore::Verify(const Digest& d) const { return Stream(d, nullptr); }

Result<std::vector<Digest>> BlobStore::List() const {
  PADDOCK_ASSIGN_OR_RETURN(auto names, ListDir(root_ + "/blobs/sha256"));
  std::vector<Digest> out;
  for (auto& n : names)
    if (IsHex64(n)) out.push_back(Digest::FromHex(n));
  std::sort(out.begin(), out.end());
  return out;
}

Status BlobStore::AddRef(const Digest& d, std::string_view holder) {
  std::string dir = RefDir(d);
  std::string file = dir + "/" + EscapeComponent(holder);
  // A concurrent RemoveRef may rmdir the (empty) directory between our mkdir and
  // create; retry a few times.
  for (int attempt = 0; attempt < 5; ++attempt) {
    if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) return ErrnoError(fmt::format("creating {}", dir));
    UniqueFd fd(::open(file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (fd.valid() || errno == EEXIST) return FsyncDir(dir);
    if (errno != ENOENT) return ErrnoError(fmt::format("adding reference {}", file));
  }
  return Error(Code::kAborted, "adding reference {}: directory kept disappearing", file);
}

Status BlobStore::RemoveRef(const Digest& d, std::string_view holder) {
  std::string dir = RefDir(d);
  std::string file = dir + "/" + EscapeComponent(holder);
  if (::unlink(file.c_str()) != 0 && errno != ENOENT) return ErrnoError(fmt::format("removing reference {}", file));
  ::rmdir(dir.c_str());  // fails harmlessly when other holders remain
  return Status::Ok();
}

Result<std::vector<std::string>> BlobStore::Holders(const Digest& d) const {
  PADDOCK_ASSIGN_OR_RETURN(auto names, ListDir(RefDir(d)));
  std::vector<std::string> out;
  for (auto& n : names)
    if (n.rfind(".tmp-", 0) != 0) out.push_back(UnescapeComponent(n));
  std::sort(out.begin(), out.end());
  return out;
}

Result<size_t> BlobStore::RefCount(const Digest& d) const {
  PADDOCK_ASSIGN_OR_RETURN(auto holders, Holders(d));
  return holders.size();
}

Result<GcReport> BlobStore::Gc(const GcOptions& options) {
  GcReport report;
  PADDOCK_ASSIGN_OR_RETURN(auto blobs, List());
  for (const Digest& d : blobs) {
    PADDOCK_ASSIGN_OR_RETURN(size_t refs, RefCount(d));
    std::string path = BlobPath(d);
    if (refs > 0 || !OlderThan(path, options.grace)) continue;
    uint64_t size = Size(d).ok() ? Size(d).value() : 0;
    if (!options.dry_run && ::unlink(path.c_str()) != 0 && errno != ENOENT)
      return ErrnoError(fmt::format("removing blob {}", d.str()));
    report.blobs_removed++;
    report.bytes_freed += size;
    report.removed.push_back(d);
  }
  // Reference directories of blobs that no longer exist.
  PADDOCK_ASSIGN_OR_RETURN(auto refdirs, ListDir(root_ + "/blobrefs/sha256"));
  for (auto& n : refdirs) {
    if (!IsHex64(n) || Has(Digest::FromHex(n)) || options.dry_run) continue;
    std::error_code ec;
    fs::remove_all(root_ + "/blobrefs/sha256/" + n, ec);
  }
  // Staging left by crashed writers (on any node).
  PADDOCK_ASSIGN_OR_RETURN(auto staged, ListDir(root_ + "/staging"));
  for (auto& n : staged) {
    std::string p = root_ + "/staging/" + n;
    if (!OlderThan(p, options.grace)) continue;
    if (!options.dry_run) {
      std::error_code ec;
      fs::remove_all(p, ec);
    }
    report.staging_removed++;
  }
  if (report.blobs_removed > 0 && !options.dry_run) PADDOCK_RETURN_IF_ERROR(FsyncDir(root_ + "/blobs/sha256"));
  return report;
}

}  // namespace paddock::storage
