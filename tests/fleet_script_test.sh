#!/usr/bin/env bash
# scripts/fleet.sh end to end: `start 2` brings up two nodes and a front,
# `paddock node ls` shows both ready within 20 s, a sandbox created through the
# front runs `echo ok`, `status` says all run, `stop` leaves nothing running;
# and its --help and usage errors.
# Usage: tests/fleet_script_test.sh BUILD_DIR   (needs root, as paddockd does)
set -uo pipefail
build="${1:?usage: fleet_script_test.sh BUILD_DIR}"
build="$(realpath "$build")"
repo="$(cd "$(dirname "$0")/.." && pwd)"
fleet="$repo/scripts/fleet.sh"
paddock="$build/sdk/paddock"
work="$(mktemp -d /tmp/fleet-script-test.XXXXXX)"
chmod 0711 "$work"  # the nodes' state dirs are below it; sandbox users must search it
dir="$work/fleet"
failures=0 passes=0
ok() { passes=$((passes + 1)); echo "ok    $*"; }
fail() { failures=$((failures + 1)); echo "FAIL  $*"; }
cleanup() {
  "$fleet" stop --dir "$dir" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

if [ "$(id -u)" -ne 0 ]; then
  echo "fleet_script_test: skipped: needs root (nodes run sandboxes)"
  echo "0 passed, 0 failed, 1 skipped"
  exit 0
fi

# --help and usage errors.
for c in "" start stop status; do
  out="$("$fleet" $c --help 2>&1)" && [[ "$out" == usage:* ]] && ok "fleet.sh $c --help" || fail "fleet.sh $c --help: $out"
done
"$fleet" >/dev/null 2>&1; [ $? -eq 2 ] && ok "no command: exit 2" || fail "no command: not exit 2"
"$fleet" start --dir "$dir" >/dev/null 2>&1; [ $? -eq 2 ] && ok "start without N: exit 2" || fail "start without N: not exit 2"
"$fleet" start zero --dir "$dir" >/dev/null 2>&1; [ $? -eq 2 ] && ok "start zero: exit 2" || fail "start zero: not exit 2"
"$fleet" bogus >/dev/null 2>&1; [ $? -eq 2 ] && ok "unknown command: exit 2" || fail "unknown command: not exit 2"
out="$("$fleet" start 1 --dir "$dir" --build-dir "$work/no-build" 2>&1)"
[ $? -ne 0 ] && [[ "$out" == *"not found"* ]] && ok "start with a build dir without binaries says so" || fail "missing binaries: $out"

# start 2
if "$fleet" start 2 --dir "$dir" --build-dir "$build" > "$work/start.out" 2>&1; then
  ok "fleet.sh start 2"
else
  fail "fleet.sh start 2:"; cat "$work/start.out"
  for f in "$dir"/*/log; do echo "--- $f"; tail -n 20 "$f"; done
  echo "$passes passed, $failures failed"; exit 1
fi
grep -q "PADDOCK_SOCKET=$dir/front/paddockd.sock" "$work/start.out" && ok "start prints how to reach the front" ||
  fail "start output lacks PADDOCK_SOCKET"
[ "$(stat -c %a "$dir/token")" = 600 ] && ok "token file mode 0600" || fail "token file mode $(stat -c %a "$dir/token")"
"$fleet" start 2 --dir "$dir" --build-dir "$build" >/dev/null 2>&1 && fail "a second start in a running fleet's dir was not refused" ||
  ok "a second start in the same dir is refused"

export PADDOCK_SOCKET="$dir/front/paddockd.sock"
ready=0
for ((i = 0; i < 200; i++)); do
  ready="$("$paddock" --json node ls 2>/dev/null | grep -o '"state":"ready"' | wc -l)"
  [ "$ready" -eq 2 ] && break
  sleep 0.1
done
[ "$ready" -eq 2 ] && ok "paddock node ls: 2 nodes ready within 20 s" || { fail "nodes ready: $ready of 2"; "$paddock" node ls; }

id="$("$paddock" sandbox create --substrate container --image busybox:1 2>"$work/create.err")"
if [ -n "$id" ]; then
  ok "sandbox create through the front ($id)"
  out="$("$paddock" sandbox exec "$id" -- echo ok 2>&1)"
  [ "$out" = ok ] && ok "exec echo ok on a node" || fail "exec echo ok: '$out'"
  "$paddock" sandbox destroy "$id" >/dev/null 2>&1 && ok "sandbox destroy" || fail "sandbox destroy"
else
  fail "sandbox create: $(cat "$work/create.err")"
fi

"$fleet" status --dir "$dir" --build-dir "$build" > "$work/status.out" 2>&1 && grep -q "node-2: running" "$work/status.out" &&
  grep -q "front: running" "$work/status.out" && ok "status: all running" || { fail "status:"; cat "$work/status.out"; }

pids="$(cat "$dir"/front/pid "$dir"/node-*/pid 2>/dev/null)"
[ "$(echo "$pids" | wc -w)" -eq 3 ] && ok "three pid files" || fail "pid files: $pids"
"$fleet" stop --dir "$dir" > "$work/stop.out" 2>&1 && ok "fleet.sh stop" || { fail "fleet.sh stop"; cat "$work/stop.out"; }
left=""
for p in $pids; do
  [ -e "/proc/$p" ] && [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ] && left="$left $p"
done
[ -z "$left" ] && ok "nothing left running after stop" || fail "still running after stop:$left"
pgrep -f "$dir/" >/dev/null && fail "a process still names $dir: $(pgrep -af "$dir/")" || ok "no process names the fleet dir"
"$fleet" status --dir "$dir" >/dev/null 2>&1 && fail "status exits 0 after stop" || ok "status after stop: not running"

echo "$passes passed, $failures failed"
[ "$failures" -eq 0 ]
