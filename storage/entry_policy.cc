#include "storage/entry_policy.h"

#include <archive_entry.h>
#include <sys/stat.h>

#include <vector>

namespace paddock::storage {

namespace {
std::vector<std::string_view> Split(std::string_view s) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i <= s.size()) {
    size_t j = s.find('/', i);
    if (j == std::string_view::npos) j = s.size();
    if (j > i) out.push_back(s.substr(i, j - i));
    i = j + 1;
  }
  return out;
}

std::string_view Basename(std::string_view p) {
  size_t k = p.rfind('/');
  return k == std::string_view::npos ? p : p.substr(k + 1);
}

std::string Parent(std::string_view p) {
  size_t k = p.rfind('/');
  return k == std::string_view::npos ? "." : std::string(p.substr(0, k));
}
}  // namespace

Result<std::string> NormalizeEntryPath(std::string_view raw) {
  if (raw.empty()) return Error(Code::kInvalidArgument, "entry with an empty name");
  if (raw.front() == '/') return Error(Code::kInvalidArgument, "entry '{}' has an absolute path", raw);
  std::string out;
  for (std::string_view part : Split(raw)) {
    if (part == ".") continue;
    if (part == "..") return Error(Code::kInvalidArgument, "entry '{}' climbs out of the root with '..'", raw);
    if (!out.empty()) out.push_back('/');
    out.append(part);
  }
  if (out.empty()) return std::string(".");
  return out;
}

bool SymlinkEscapes(std::string_view link_path, std::string_view target) {
  if (!target.empty() && target.front() == '/') return false;
  int depth = 0;
  std::string parent = Parent(link_path);
  if (parent != ".") depth = static_cast<int>(Split(parent).size());
  for (std::string_view part : Split(target)) {
    if (part == ".") continue;
    if (part == "..") {
      if (--depth < 0) return true;
    } else {
      ++depth;
    }
  }
  return false;
}

Status CheckNotThroughSymlink(const std::string& path, const std::set<std::string>& symlinks,
                              std::string_view where) {
  if (symlinks.empty()) return Status::Ok();
  for (size_t k = path.find('/'); k != std::string::npos; k = path.find('/', k + 1)) {
    std::string prefix = path.substr(0, k);
    if (symlinks.count(prefix))
      return Error(Code::kInvalidArgument, "entry '{}' is written through symlink '{}'{}", path, prefix, where);
  }
  return Status::Ok();
}

Status EntryPolicy::Check(archive_entry* entry, LayerEntry* out) {
  const char* name = archive_entry_pathname(entry);
  if (!name) name = archive_entry_pathname_utf8(entry);
  if (!name) return Error(Code::kInvalidArgument, "entry with an unreadable name");
  if (++entries_ > limits_.max_entries)
    return Error(Code::kInvalidArgument, "entry '{}': layer has more than {} entries (the entry limit)", name,
                 limits_.max_entries);
  PADDOCK_ASSIGN_OR_RETURN(std::string path, NormalizeEntryPath(name));
  PADDOCK_RETURN_IF_ERROR(CheckNotThroughSymlink(path, symlinks_, ""));

  out->path = path;
  out->mode = archive_entry_perm(entry);
  out->uid = static_cast<uint32_t>(archive_entry_uid(entry));
  out->gid = static_cast<uint32_t>(archive_entry_gid(entry));
  out->mtime = archive_entry_mtime(entry);
  out->size = 0;
  out->link.clear();

  if (const char* hl = archive_entry_hardlink(entry)) {
    auto target = NormalizeEntryPath(hl);
    if (!target.ok())
      return Error(Code::kInvalidArgument, "entry '{}' is a hard link to outside the root ('{}')", name, hl);
    if (!linkable_.count(target.value()))
      return Error(Code::kInvalidArgument,
                   "entry '{}' is a hard link to '{}', which is not an earlier file of this layer", name, hl);
    out->type = EntryType::kHardlink;
    out->link = target.value();
    linkable_.insert(path);
    // A hard link to a symlink is that symlink under a second name: nothing may be
    // written through it either.
    if (symlinks_.count(target.value())) symlinks_.insert(path);
    return Status::Ok();
  }

  mode_t ft = archive_entry_filetype(entry);
  switch (ft) {
    case AE_IFDIR:
      out->type = EntryType::kDir;
      break;
    case AE_IFLNK: {
      const char* t = archive_entry_symlink(entry);
      if (!t || !*t) return Error(Code::kInvalidArgument, "entry '{}' is a symlink with no target", name);
      if (SymlinkEscapes(path, t))
        return Error(Code::kInvalidArgument, "entry '{}' is a symlink escaping the root (-> '{}')", name, t);
      out->type = EntryType::kSymlink;
      out->link = t;
      symlinks_.insert(path);
      linkable_.insert(path);
      break;
    }
    case AE_IFREG: {
      int64_t size = archive_entry_size(entry);
      if (size < 0) size = 0;
      uint64_t usize = static_cast<uint64_t>(size);
      if (usize > limits_.max_unpacked_bytes || bytes_ + usize > limits_.max_unpacked_bytes)
        return Error(Code::kInvalidArgument,
                     "entry '{}' ({} bytes) takes the layer past the unpacked size limit of {} bytes", name, usize,
                     limits_.max_unpacked_bytes);
      bytes_ += usize;
      out->type = EntryType::kFile;
      out->size = usize;
      linkable_.insert(path);
      break;
    }
    case AE_IFIFO:
      out->type = EntryType::kFifo;
      linkable_.insert(path);
      break;
    case AE_IFCHR:
    case AE_IFBLK:
      return Error(Code::kInvalidArgument, "entry '{}' is a device node; images may not carry devices", name);
    default:
      return Error(Code::kInvalidArgument, "entry '{}' has an unsupported file type (0{:o})", name, ft);
  }
  if (path == "." && out->type != EntryType::kDir)
    return Error(Code::kInvalidArgument, "entry '{}' replaces the root with a non-directory", name);

  std::string_view base = Basename(path);
  if (base.substr(0, 4) == ".wh.") {
    if (out->type != EntryType::kFile)
      return Error(Code::kInvalidArgument, "whiteout '{}' is not a regular file", name);
    std::string parent = Parent(path);
    if (base == ".wh..wh..opq") {
      out->type = EntryType::kOpaque;
      out->path = parent;
    } else {
      std::string_view victim = base.substr(4);
      if (victim.empty() || victim == "." || victim == ".." || victim.substr(0, 4) == ".wh.")
        return Error(Code::kInvalidArgument, "whiteout '{}' names no valid entry", name);
      out->type = EntryType::kWhiteout;
      out->path = parent == "." ? std::string(victim) : parent + "/" + std::string(victim);
    }
  }
  return Status::Ok();
}

}  // namespace paddock::storage
