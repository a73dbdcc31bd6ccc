// Fresh network namespaces made ahead of time for a function zygote's exec
// stubs. Creating a network namespace is most of what a stub costs (about
// 0.9 ms of a 1.4 ms clone here: the kernel registers the namespace's
// devices, sysctl tables and protocol state), and the zygote's loop waited
// for it in every clone. A helper process, a child of the zygote at idle
// priority, makes them instead, with loopback up, and passes each one over a
// socket; a stub joins one (setns) in place of CLONE_NEWNET.
//
// Isolation is unchanged: each namespace is new, handed out once, and the
// helper keeps no reference to it, so the exec's processes hold its only
// references and it dies with them. With no namespace ready (the helper is
// behind, or gone), a stub makes its own as before.
#pragma once

#include <sys/types.h>

#include <cstddef>

namespace paddock::init {

class NetnsPool {
 public:
  NetnsPool() = default;
  NetnsPool(const NetnsPool&) = delete;
  NetnsPool& operator=(const NetnsPool&) = delete;
  ~NetnsPool();

  // Forks the helper (in the caller's namespaces, which must let it make
  // network namespaces) and asks it for `depth` namespaces. False if it
  // could not be started; Take then always answers -1.
  bool Start(size_t depth);
  // A ready namespace (an O_CLOEXEC fd of it: the caller closes it once a
  // process has joined), or -1 when none is ready yet. Never blocks; asks
  // the helper for the next one.
  int Take();
  // The helper's pid (the zygote reaps it like any child), or -1.
  pid_t helper() const { return pid_; }

 private:
  int sock_ = -1;
  pid_t pid_ = -1;
};

}  // namespace paddock::init
