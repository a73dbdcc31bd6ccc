// What a microVM boots: the guest kernel (Debian's linux-image-amd64,
// unpacked once from its bzImage into the ELF that QEMU's microvm machine
// enters directly through the PVH entry point) and the project's own
// initramfs (the static paddock-init as /paddock-init plus only the kernel
// modules the boot path needs), both cached under the state dir.
#pragma once

#include <string>
#include <vector>

#include "sandbox/base/status.h"

namespace paddock::microvm {

struct BootAssets {
  std::string kernel_version;  // e.g. 6.1.0-56-amd64
  std::string kernel;          // the uncompressed ELF kernel (PVH entry)
  std::string initramfs;       // newc cpio, uncompressed
  std::vector<std::string> modules;  // loaded by the guest, in this order
};

struct BootSource {
  std::string kernel;       // a bzImage or ELF; empty: the newest /boot/vmlinuz-*
  std::string modules_dir;  // empty: /lib/modules/<version from the kernel's file name>
  std::string fs_type = "erofs";  // the layer disks' filesystem: erofs or ext4
};

// Modules the boot path needs from `modules_dir`, dependencies first; each
// one either built in (left out) or found there. FAILED_PRECONDITION names a
// driver the kernel lacks.
Result<std::vector<std::string>> ResolveBootModules(const std::string& modules_dir,
                                                    const std::string& fs_type,
                                                    std::vector<std::string>* files);

// Builds (or finds in `cache_dir`) the kernel ELF and the initramfs.
Result<BootAssets> PrepareBootAssets(const BootSource& source, const std::string& init_path,
                                     const std::string& cache_dir);

// newc cpio archive writer (the initramfs format the kernel unpacks).
class CpioWriter {
 public:
  void Dir(const std::string& path, uint32_t mode = 0755);
  void File(const std::string& path, std::string_view data, uint32_t mode);
  void CharDev(const std::string& path, uint32_t mode, uint32_t major, uint32_t minor);
  std::string Finish();  // appends the trailer

 private:
  void Entry(const std::string& path, uint32_t mode, std::string_view data, uint32_t rmajor,
             uint32_t rminor);
  std::string out_;
  uint32_t ino_ = 1;
};

}  // namespace paddock::microvm
