#!/usr/bin/env bash
# Installs the Debian 12 packages Paddock needs to build, test and benchmark.
# Idempotent and quick when nothing is missing: only absent packages go to apt.
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential cmake ninja-build ccache pkg-config git
  # RPC and serialization
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  # logging, formatting, CLI, JSON
  libspdlog-dev libfmt-dev libcli11-dev nlohmann-json3-dev
  # sandboxing
  libseccomp-dev libcap-dev busybox-static
  # the V4 policy engine: tokenizer regexes, fuzzing the DSML parser (clang's libFuzzer)
  libpcre2-dev clang libclang-rt-14-dev
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev
  # peers measured by bench/
  bubblewrap crun
  # procps for ps/pgrep in tests, iproute2 for network checks
  procps iproute2
)

# --- optional: bench plotting (only with --bench, used by `make bench`) ---
if [ "${1:-}" = "--bench" ]; then
  PACKAGES+=(gnuplot-nox)  # renders bench/*.png from the data sandbox_bench writes
fi
# --- end optional ---

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}" >&2
  echo "install-deps: run as root (or: sudo $0)" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
