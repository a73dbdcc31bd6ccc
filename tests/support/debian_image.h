// The Debian 12 minbase + python3 test image (issue 3, part 8): an OCI image
// layout tar with two layers (minbase, then python3) written by umoci from a
// debootstrap root (scripts/make-debian-image.sh), so that import is tested on
// an archive no code of ours wrote.
#pragma once

#include <string>

#include "sandbox/base/status.h"

namespace paddock::testing {

// Returns the path of BUILD/test-images/debian-python3.oci.tar, building it first
// when the cache is missing or incomplete (minutes; needs root and the Debian
// mirror named in /etc/apt/sources.list*; progress goes to stderr). A concurrent
// caller waits on the builder's lock. An unreachable mirror or a missing tool is
// an error whose message says so (callers fail the test with it, never skip).
Result<std::string> EnsureDebianImage();

}  // namespace paddock::testing
