#!/usr/bin/env bash
# The main job until the rollout engine lands: start paddockd, create a
# function and a container sandbox, run commands in them, show the results,
# and shut everything down again. Usage: scripts/demo.sh [BUILD_DIR]
set -euo pipefail
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
  echo "usage: scripts/demo.sh [BUILD_DIR]   (run by \`make demo\`)"
  echo "Starts paddockd on /run/paddock/demo.sock (state /var/lib/paddock-demo), drives a function"
  echo "and a container sandbox through the paddock CLI, shows the results, and shuts down."
  exit 0
fi
build=${1:-build}
root=$(cd "$(dirname "$0")/.." && pwd)
paddockd="$root/$build/rollout/paddockd"
paddock="$root/$build/sdk/paddock"
state=/var/lib/paddock-demo
export PADDOCK_SOCKET=/run/paddock/demo.sock
rootfs=/var/lib/paddock-demo-images/busybox

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*" >&2; "$@"; }

step "building a busybox root filesystem at $rootfs"
bash "$root/scripts/make-busybox-rootfs.sh" "$rootfs"

step "starting paddockd (state $state, socket $PADDOCK_SOCKET)"
"$paddockd" --state-dir "$state" --log-level warn &
daemon=$!
cleanup() { kill -TERM "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$PADDOCK_SOCKET" ] && break; sleep 0.05; done

step "a function sandbox: stateless, every exec a fresh process"
fn=$(run "$paddock" sandbox create --substrate function --image "$rootfs")
echo "created $fn"
run "$paddock" sandbox exec "$fn" -- sh -c 'echo "hello from $(hostname), pid $$"; ls /'
run "$paddock" sandbox exec "$fn" -- sh -c 'echo scratch > /tmp/x; cat /tmp/x'
run "$paddock" sandbox exec "$fn" -- sh -c 'cat /tmp/x 2>&1 || echo "(gone: nothing persists between execs)"'

step "a container sandbox: stateful, paddock-init as PID 1"
ct=$(run "$paddock" sandbox create --substrate container --image "$rootfs" --memory 128M --pids 64)
echo "created $ct"
run "$paddock" sandbox exec "$ct" -- sh -c 'echo hi; exit 3' || echo "(exit status $?)"
echo "print('written from the host')" | run "$paddock" sandbox write "$ct" /work/hello.txt
run "$paddock" sandbox read "$ct" /work/hello.txt
run "$paddock" sandbox exec "$ct" -- sh -c 'ps; cat /proc/net/dev | tail -n +3 | cut -d: -f1'
run "$paddock" sandbox exec "$ct" --timeout-ms 300 -- sh -c 'sleep 100 & sleep 100' || echo "(exit status $?: timed out, whole tree killed)"
run "$paddock" --json sandbox exec "$ct" -- tail /dev/zero || echo "(exit status $?: out of memory, reported as oom_killed)"

step "what is running"
run "$paddock" sandbox ls
run "$paddock" sandbox stats

step "destroying both"
run "$paddock" sandbox destroy "$fn" "$ct"
run "$paddock" sandbox ls
echo
echo "demo finished: paddockd shuts down on exit"
