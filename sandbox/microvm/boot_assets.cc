#include "sandbox/microvm/boot_assets.h"

#include <elf.h>
#include <fcntl.h>
#include <lzma.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>

#include "sandbox/linux/fs_util.h"

namespace fs = std::filesystem;

namespace paddock::microvm {

namespace {

Result<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return ErrnoError("reading " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Writes `data` to `path` atomically (a temp file renamed into place), so a
// concurrent reader never sees a partial file.
Status WriteAtomically(const std::string& path, std::string_view data, mode_t mode) {
  std::string tmp = fmt::format("{}.tmp.{}", path, getpid());
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return ErrnoError("creating " + tmp);
  size_t off = 0;
  while (off < data.size()) {
    ssize_t w = write(fd, data.data() + off, data.size() - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      Status st = ErrnoError("writing " + tmp);
      close(fd);
      unlink(tmp.c_str());
      return st;
    }
    off += static_cast<size_t>(w);
  }
  fchmod(fd, mode);
  close(fd);
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    Status st = ErrnoError("renaming " + tmp);
    unlink(tmp.c_str());
    return st;
  }
  return Status::Ok();
}

uint64_t Fnv1a(std::string_view data, uint64_t h = 1469598103934665603ull) {
  for (unsigned char c : data) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::string Normalize(std::string name) {
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

// "kernel/drivers/virtio/virtio_mmio.ko" -> "virtio_mmio"
std::string ModuleName(const std::string& rel) {
  std::string base = rel.substr(rel.rfind('/') + 1);
  size_t dot = base.find(".ko");
  return Normalize(base.substr(0, dot));
}

// Whether the ELF has a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY), which is
// how QEMU's microvm machine enters an uncompressed kernel.
bool HasPvhNote(const std::string& elf) {
  if (elf.size() < sizeof(Elf64_Ehdr)) return false;
  Elf64_Ehdr eh;
  std::memcpy(&eh, elf.data(), sizeof eh);
  for (int i = 0; i < eh.e_phnum; ++i) {
    size_t off = eh.e_phoff + static_cast<size_t>(i) * eh.e_phentsize;
    if (off + sizeof(Elf64_Phdr) > elf.size()) return false;
    Elf64_Phdr ph;
    std::memcpy(&ph, elf.data() + off, sizeof ph);
    if (ph.p_type != PT_NOTE || ph.p_offset + ph.p_filesz > elf.size()) continue;
    size_t p = ph.p_offset, end = ph.p_offset + ph.p_filesz;
    while (p + 12 <= end) {
      uint32_t namesz, descsz, type;
      std::memcpy(&namesz, elf.data() + p, 4);
      std::memcpy(&descsz, elf.data() + p + 4, 4);
      std::memcpy(&type, elf.data() + p + 8, 4);
      std::string_view name(elf.data() + p + 12, namesz ? namesz - 1 : 0);
      if (name == "Xen" && type == 18) return true;
      p += 12 + ((namesz + 3) & ~3u) + ((descsz + 3) & ~3u);
    }
  }
  return false;
}

Result<std::string> XzDecompress(std::string_view in, const std::string& what) {
  lzma_stream s = LZMA_STREAM_INIT;
  if (lzma_stream_decoder(&s, UINT64_MAX, 0) != LZMA_OK)
    return Error(Code::kInternal, "liblzma decoder init failed");
  std::string out;
  out.resize(in.size() * 6);
  s.next_in = reinterpret_cast<const uint8_t*>(in.data());
  s.avail_in = in.size();
  lzma_ret r = LZMA_OK;
  while (true) {
    if (s.total_out == out.size()) out.resize(out.size() * 2);
    s.next_out = reinterpret_cast<uint8_t*>(out.data()) + s.total_out;
    s.avail_out = out.size() - s.total_out;
    r = lzma_code(&s, LZMA_FINISH);
    if (r != LZMA_OK) break;
  }
  out.resize(s.total_out);
  lzma_end(&s);
  if (r != LZMA_STREAM_END) return Error(Code::kInvalidArgument, "{}: xz payload does not decompress", what);
  return out;
}

// The ELF inside a bzImage (x86 boot protocol: setup sectors, then the
// compressed payload at payload_offset).
Result<std::string> ElfFromBzImage(const std::string& image, const std::string& path) {
  if (image.size() > 4 && image.compare(0, 4, "\x7f" "ELF") == 0) return image;
  if (image.size() < 0x250 || image.compare(0x202, 4, "HdrS") != 0)
    return Error(Code::kInvalidArgument, "{} is neither an ELF kernel nor a bzImage", path);
  uint32_t setup_sects = static_cast<uint8_t>(image[0x1f1]);
  if (setup_sects == 0) setup_sects = 4;
  uint32_t payload_off, payload_len;
  std::memcpy(&payload_off, image.data() + 0x248, 4);
  std::memcpy(&payload_len, image.data() + 0x24c, 4);
  size_t start = (setup_sects + 1) * 512ull + payload_off;
  if (start + payload_len > image.size())
    return Error(Code::kInvalidArgument, "{}: payload outside the file", path);
  std::string_view payload(image.data() + start, payload_len);
  if (payload.size() > 6 && payload.compare(0, 6, std::string_view("\xfd" "7zXZ\0", 6)) == 0)
    return XzDecompress(payload, path);
  return Error(Code::kFailedPrecondition,
               "{}: the kernel payload is not xz-compressed (only xz is unpacked; pass an "
               "uncompressed vmlinux ELF instead)",
               path);
}

}  // namespace

void CpioWriter::Entry(const std::string& path, uint32_t mode, std::string_view data,
                       uint32_t rmajor, uint32_t rminor) {
  std::string name = path;  // relative, no leading slash
  out_ += fmt::format("070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
                      ino_++, mode, 0, 0, 1, 0, data.size(), 0, 0, rmajor, rminor,
                      name.size() + 1, 0);
  out_ += name;
  out_.push_back('\0');
  while (out_.size() % 4) out_.push_back('\0');
  out_.append(data);
  while (out_.size() % 4) out_.push_back('\0');
}

void CpioWriter::Dir(const std::string& path, uint32_t mode) { Entry(path, 040000 | mode, {}, 0, 0); }
void CpioWriter::File(const std::string& path, std::string_view data, uint32_t mode) {
  Entry(path, 0100000 | mode, data, 0, 0);
}
void CpioWriter::CharDev(const std::string& path, uint32_t mode, uint32_t major, uint32_t minor) {
  Entry(path, 020000 | mode, {}, major, minor);
}
std::string CpioWriter::Finish() {
  Entry("TRAILER!!!", 0, {}, 0, 0);
  while (out_.size() % 512) out_.push_back('\0');
  return std::move(out_);
}

Result<std::vector<std::string>> ResolveBootModules(const std::string& modules_dir,
                                                    const std::string& fs_type,
                                                    std::vector<std::string>* files) {
  auto dep_text = ReadSmallFile(modules_dir + "/modules.dep");
  if (!dep_text.ok())
    return Error(Code::kFailedPrecondition,
                 "no modules.dep in {} (install the kernel's modules: linux-image-amd64)", modules_dir);
  std::set<std::string> builtin;
  if (auto b = ReadSmallFile(modules_dir + "/modules.builtin"); b.ok()) {
    std::istringstream in(b.value());
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) builtin.insert(ModuleName(line));
  }
  std::map<std::string, std::pair<std::string, std::vector<std::string>>> dep;  // name -> (file, deps)
  {
    std::istringstream in(dep_text.value());
    for (std::string line; std::getline(in, line);) {
      size_t colon = line.find(':');
      if (colon == std::string::npos) continue;
      std::string file = line.substr(0, colon);
      std::vector<std::string> deps;
      std::istringstream rest(line.substr(colon + 1));
      for (std::string d; rest >> d;) deps.push_back(d);
      dep[ModuleName(file)] = {file, deps};
    }
  }
  // What the boot path uses: the virtio-mmio transport, the layer disks, the
  // channel, the layers' filesystem and overlayfs.
  std::vector<std::pair<std::string, std::string>> wanted = {
      {"virtio_mmio", "virtio-mmio transport (CONFIG_VIRTIO_MMIO)"},
      {"virtio_blk", "virtio block disks (CONFIG_VIRTIO_BLK)"},
      {"virtio_console", "virtio-serial channel (CONFIG_VIRTIO_CONSOLE)"},
      {fs_type, fs_type == "erofs" ? "erofs (CONFIG_EROFS_FS)" : "ext4 (CONFIG_EXT4_FS)"},
      {"overlay", "overlayfs (CONFIG_OVERLAY_FS)"}};
  std::vector<std::string> order;
  std::set<std::string> seen;
  auto add = [&](const std::string& file) {
    std::string name = ModuleName(file);
    if (seen.insert(name).second) {
      order.push_back(name);
      files->push_back(modules_dir + "/" + file);
    }
  };
  bool needs_crc32c = false;
  for (const auto& [name, what] : wanted) {
    if (builtin.count(name)) continue;
    auto it = dep.find(name);
    if (it == dep.end())
      return Error(Code::kFailedPrecondition,
                   "the guest kernel lacks {}: {} is neither built in nor a module in {}", what, name,
                   modules_dir);
    for (auto d = it->second.second.rbegin(); d != it->second.second.rend(); ++d) {
      if (ModuleName(*d) == "libcrc32c" || ModuleName(*d) == "jbd2") needs_crc32c = true;
    }
    if (needs_crc32c && !seen.count("crc32c_generic") && !builtin.count("crc32c_generic")) {
      // libcrc32c and jbd2 ask the crypto API for "crc32c" when they load;
      // without modprobe in the guest it must already be there.
      auto c = dep.find("crc32c_generic");
      if (c != dep.end()) add(c->second.first);
    }
    for (auto d = it->second.second.rbegin(); d != it->second.second.rend(); ++d) add(*d);
    add(it->second.first);
  }
  for (const auto& f : *files)
    if (f.size() < 3 || f.compare(f.size() - 3, 3, ".ko") != 0)
      return Error(Code::kFailedPrecondition,
                   "{} is compressed; the guest loads only uncompressed modules", f);
  return order;
}

Result<BootAssets> PrepareBootAssets(const BootSource& source, const std::string& init_path,
                                     const std::string& cache_dir) {
  BootAssets a;
  std::string kernel = source.kernel;
  if (kernel.empty()) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("/boot", ec)) {
      std::string n = e.path().filename();
      if (n.rfind("vmlinuz-", 0) == 0 && e.path().string() > kernel) kernel = e.path().string();
    }
    if (kernel.empty())
      return Error(Code::kFailedPrecondition,
                   "no guest kernel: /boot/vmlinuz-* is missing (install linux-image-amd64: "
                   "scripts/install-deps.sh)");
  }
  struct stat ks;
  if (stat(kernel.c_str(), &ks) != 0) return ErrnoError("guest kernel " + kernel);
  std::string base = fs::path(kernel).filename();
  a.kernel_version = base.rfind("vmlinuz-", 0) == 0 ? base.substr(8) : base;
  std::string modules_dir = source.modules_dir.empty() ? "/lib/modules/" + a.kernel_version : source.modules_dir;

  PADDOCK_RETURN_IF_ERROR(MkdirAll(cache_dir, 0755));
  // The kernel ELF, keyed by the source file's identity.
  a.kernel = fmt::format("{}/vmlinux-{}-{:x}-{:x}", cache_dir, a.kernel_version,
                         static_cast<uint64_t>(ks.st_size), static_cast<uint64_t>(ks.st_mtime));
  if (access(a.kernel.c_str(), R_OK) != 0) {
    PADDOCK_ASSIGN_OR_RETURN(std::string image, ReadWholeFile(kernel));
    PADDOCK_ASSIGN_OR_RETURN(std::string elf, ElfFromBzImage(image, kernel));
    if (!HasPvhNote(elf))
      return Error(Code::kFailedPrecondition,
                   "guest kernel {} has no PVH entry point (CONFIG_PVH); QEMU's microvm machine "
                   "cannot boot it directly",
                   kernel);
    PADDOCK_RETURN_IF_ERROR(WriteAtomically(a.kernel, elf, 0644));
  }

  std::vector<std::string> files;
  PADDOCK_ASSIGN_OR_RETURN(a.modules, ResolveBootModules(modules_dir, source.fs_type, &files));
  PADDOCK_ASSIGN_OR_RETURN(std::string init, ReadWholeFile(init_path));
  uint64_t h = Fnv1a(init);
  for (const auto& f : files) {
    struct stat ms;
    if (stat(f.c_str(), &ms) != 0) return ErrnoError("kernel module " + f);
    h = Fnv1a(fmt::format("{}:{}:{}", f, ms.st_size, ms.st_mtime), h);
  }
  a.initramfs = fmt::format("{}/initramfs-{}-{}-{:016x}.cpio", cache_dir, a.kernel_version,
                            source.fs_type, h);
  if (access(a.initramfs.c_str(), R_OK) != 0) {
    CpioWriter w;
    for (const char* d : {"dev", "proc", "sys", "newroot", "modules"}) w.Dir(d);
    // The kernel opens /dev/console for PID 1's stdio before devtmpfs exists.
    w.CharDev("dev/console", 0600, 5, 1);
    w.File("paddock-init", init, 0755);
    std::string order;
    for (size_t i = 0; i < files.size(); ++i) {
      PADDOCK_ASSIGN_OR_RETURN(std::string ko, ReadWholeFile(files[i]));
      w.File("modules/" + a.modules[i] + ".ko", ko, 0644);
      order += a.modules[i] + "\n";
    }
    w.File("modules/order", order, 0644);
    PADDOCK_RETURN_IF_ERROR(WriteAtomically(a.initramfs, w.Finish(), 0644));
  }
  return a;
}

}  // namespace paddock::microvm
