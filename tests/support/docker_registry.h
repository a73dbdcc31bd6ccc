// Debian's docker-registry (the reference registry, distribution 2.8) for the
// registry tests: started on a free loopback port with a config written under
// `work`, waited for, and stopped.
#pragma once

#include <sys/types.h>

#include <string>

namespace paddock::testing {

// Starts `docker-registry serve` storing under WORK/registry-TAG, its config
// ending in `yaml` (lines under http: such as tls:, then top-level sections
// such as auth:; line breaks may be written as the two characters \n).
// Returns its port and sets *pid, or 0 (its log printed to stderr).
int StartDockerRegistry(const std::string& work, const std::string& tag, const std::string& yaml, pid_t* pid);
// SIGTERM and reap; nothing when pid <= 0.
void StopDockerRegistry(pid_t pid);

}  // namespace paddock::testing
