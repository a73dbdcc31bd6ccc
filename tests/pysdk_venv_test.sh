#!/usr/bin/env bash
# `pip install ./sdk/python` into a fresh virtual environment, offline, then the
# installed SDK (and only it: no source tree, no build tree on sys.path) drives a real
# paddockd: tests/pysdk_venv_smoke.py. ctest python_sdk_venv (tests/pysdk_tests.cmake).
#
# The venv has --system-site-packages: grpcio and protobuf come from Debian's
# python3-grpcio and python3-protobuf, the only ones reachable offline. --no-index keeps
# pip off the network; --no-build-isolation builds with the setuptools and wheel the
# environment has (python3-setuptools, python3-wheel) instead of fetching them.
#
# Env: PADDOCKD, PADDOCK_INIT (binaries), PADDOCK_TEST_ROOTFS (busybox rootfs),
# PADDOCK_SOURCE_DIR, PYTHON3 (the interpreter to make the venv with; default /usr/bin/python3).
set -euo pipefail
src=${PADDOCK_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
py=${PYTHON3:-/usr/bin/python3}
rootfs=${PADDOCK_TEST_ROOTFS:-/var/tmp/paddock-test-rootfs/busybox}
: "${PADDOCKD:?set PADDOCKD to the paddockd binary}" "${PADDOCK_INIT:?set PADDOCK_INIT to the paddock-init binary}"

tmp=$(mktemp -d /tmp/pysdk-venv-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
chmod 711 "$tmp"  # sandbox users search down to the daemon's state dir under it

if [ ! -e "$rootfs/.complete" ]; then
  "$src/scripts/make-busybox-rootfs.sh" "$rootfs"
fi

if ! "$py" -m venv --system-site-packages "$tmp/venv"; then
  echo "pysdk_venv_test: '$py -m venv' failed; install python3-venv (scripts/install-deps.sh)" >&2
  exit 1
fi
# A copy of sdk/python alone: the package must not need anything else of the tree, and
# setuptools' in-tree build directories (build/, *.egg-info) stay out of the checkout.
cp -r "$src/sdk/python" "$tmp/pkg"
rm -rf "$tmp/pkg/build" "$tmp/pkg"/*.egg-info
env -u PYTHONPATH PIP_CONFIG_FILE=/dev/null "$tmp/venv/bin/pip" install --no-index --no-build-isolation \
  --no-cache-dir --disable-pip-version-check --quiet "$tmp/pkg"
rm -rf "$tmp/pkg"

# From a directory outside the source tree with a clean PYTHONPATH: only the venv's copy
# of paddock can be imported.
mkdir "$tmp/run"
cp "$src/tests/pysdk_venv_smoke.py" "$tmp/run/"
cd "$tmp/run"
env -u PYTHONPATH -u PADDOCK_SOCKET PYTHONDONTWRITEBYTECODE=1 \
  PADDOCKD="$PADDOCKD" PADDOCK_INIT="$PADDOCK_INIT" PADDOCK_TEST_ROOTFS="$rootfs" \
  "$tmp/venv/bin/python" pysdk_venv_smoke.py "$tmp/venv" "$src"
