#!/usr/bin/env bash
# A Paddock fleet on one machine: N paddockd nodes on loopback TCP and a front
# (paddockd --nodes) placing sandboxes on them (docs/fleet.md).
#
#   scripts/fleet.sh start N [--build-dir build] [--dir /tmp/paddock-fleet]
#   scripts/fleet.sh stop    [--dir /tmp/paddock-fleet]
#   scripts/fleet.sh status  [--dir /tmp/paddock-fleet] [--build-dir build]
#
# Everything lives under DIR: the shared node token (mode 0600), one folder per
# node (node-K: state dir, socket, log, pid, port) and one for the front.
# PADDOCK_FLEET_NODE_ARGS and PADDOCK_FLEET_FRONT_ARGS add paddockd flags
# (word-split) to every node and to the front.
set -euo pipefail

prog=scripts/fleet.sh
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"

usage_main() {
  cat <<EOF
usage: $prog start N [--build-dir DIR] [--dir DIR]
       $prog stop [--dir DIR]
       $prog status [--dir DIR] [--build-dir DIR]

A Paddock fleet on this machine: N paddockd nodes, each with its own state dir,
unix socket and loopback TCP port, sharing one generated token, and a front
(paddockd --nodes) that places sandboxes on them. Every node gets the busybox
test image as busybox:1. Run '$prog COMMAND --help' for each command.
Nodes run sandboxes, so 'start' needs root (as paddockd does).
EOF
}
usage_start() {
  cat <<EOF
usage: $prog start N [--build-dir DIR] [--dir DIR]

Starts N paddockd nodes (1..64) and a front under DIR, imports the busybox
rootfs (scripts/make-busybox-rootfs.sh) as busybox:1 into every node, waits
until each answers, and prints how to reach the front.

  N                number of nodes
  --build-dir DIR  where paddockd, paddock and paddock-init were built
                   (DIR/rollout/paddockd, DIR/sdk/paddock, DIR/sandbox/paddock-init;
                   default: build in the repository)
  --dir DIR        the fleet's folder (default /tmp/paddock-fleet); refused if a
                   fleet started there still runs

Environment: PADDOCK_FLEET_NODE_ARGS, PADDOCK_FLEET_FRONT_ARGS: more paddockd
flags for every node / the front, e.g. PADDOCK_FLEET_NODE_ARGS='--warm-pool 0'.
EOF
}
usage_stop() {
  cat <<EOF
usage: $prog stop [--dir DIR]

Stops the fleet started in DIR (default /tmp/paddock-fleet): SIGTERM to the
front, then to every node, and waits for each to exit (SIGKILL after 30 s).
Sandboxes are destroyed by their daemons; the folder and its logs stay.
EOF
}
usage_status() {
  cat <<EOF
usage: $prog status [--dir DIR] [--build-dir DIR]

Says which of the fleet's daemons in DIR (default /tmp/paddock-fleet) run,
and, when the front does, prints 'paddock node ls'. Exits 0 when the front and
every node run, 1 otherwise.
EOF
}

die() { echo "fleet: $*" >&2; exit 1; }
usage_error() { echo "fleet: $1" >&2; echo "run '$prog ${2:-}${2:+ }--help' for usage" >&2; exit 2; }

cmd="${1:-}"
case "$cmd" in
  -h|--help|help) usage_main; exit 0 ;;
  start|stop|status) shift ;;
  "") usage_main >&2; exit 2 ;;
  *) usage_error "unknown command '$cmd'" ;;
esac

dir=/tmp/paddock-fleet
build_dir="$repo/build"
count=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) "usage_$cmd"; exit 0 ;;
    --dir) [ $# -ge 2 ] || usage_error "--dir needs a value" "$cmd"; dir="$2"; shift 2 ;;
    --dir=*) dir="${1#--dir=}"; shift ;;
    --build-dir)
      [ "$cmd" != stop ] || usage_error "stop takes no --build-dir" stop
      [ $# -ge 2 ] || usage_error "--build-dir needs a value" "$cmd"; build_dir="$2"; shift 2 ;;
    --build-dir=*) [ "$cmd" != stop ] || usage_error "stop takes no --build-dir" stop; build_dir="${1#--build-dir=}"; shift ;;
    -*) usage_error "unknown option '$1'" "$cmd" ;;
    *)
      if [ "$cmd" = start ] && [ -z "$count" ]; then count="$1"; shift
      else usage_error "unexpected argument '$1'" "$cmd"; fi ;;
  esac
done
[ -n "$dir" ] || usage_error "--dir is empty" "$cmd"
dir="$(realpath -m "$dir")"

paddockd="$build_dir/rollout/paddockd"
paddock="$build_dir/sdk/paddock"
init="$build_dir/sandbox/paddock-init"

# pid_alive FILE: the pid in FILE is a running paddockd (not a reused pid).
pid_alive() {
  local f=$1 pid
  [ -f "$f" ] || return 1
  pid="$(cat "$f" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q paddockd
}

members() {  # front first, then the nodes in order
  [ -d "$dir/front" ] && echo front
  local d
  for d in "$dir"/node-*; do [ -d "$d" ] && basename "$d"; done | sort -t- -k2 -n
  return 0
}

# stop_one NAME: SIGTERM, wait up to 30 s, then SIGKILL.
stop_one() {
  local name=$1 pidf="$dir/$1/pid" pid i
  if ! pid_alive "$pidf"; then rm -f "$pidf"; return 0; fi
  pid="$(cat "$pidf")"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do
    [ -e "/proc/$pid" ] || break
    # a zombie whose parent is gone is reaped by init soon; count it as stopped
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] && break
    sleep 0.1
  done
  if [ -e "/proc/$pid" ] && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; then
    echo "fleet: $name (pid $pid) still running 30 s after SIGTERM; SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$pidf"
  echo "fleet: stopped $name (pid $pid)"
}

do_stop() {
  [ -d "$dir" ] || { echo "fleet: no fleet in $dir"; return 0; }
  local m
  for m in $(members); do stop_one "$m"; done
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_socket NAME: until `paddock sandbox stats` answers on NAME's socket (30 s).
wait_socket() {
  local name=$1 i pid
  for ((i = 0; i < 300; i++)); do
    if ! pid_alive "$dir/$name/pid"; then
      # Just spawned, the pid may still be the shell on its way to exec setsid
      # and paddockd (its cmdline not paddockd's yet): wait while it exists.
      pid="$(cat "$dir/$name/pid" 2>/dev/null)" || pid=""
      if [[ "$pid" =~ ^[0-9]+$ ]] && [ -e "/proc/$pid" ] &&
        [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; then
        sleep 0.1
        continue
      fi
      echo "fleet: $name exited while starting; the end of $dir/$name/log:" >&2
      tail -n 20 "$dir/$name/log" >&2 || true
      return 1
    fi
    if PADDOCK_SOCKET="$dir/$name/paddockd.sock" "$paddock" sandbox stats >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "fleet: $name did not answer on $dir/$name/paddockd.sock within 30 s; the end of $dir/$name/log:" >&2
  tail -n 20 "$dir/$name/log" >&2 || true
  return 1
}

# spawn NAME ARGS...: paddockd in the background, its own session, output to NAME/log.
spawn() {
  local name=$1; shift
  mkdir -p "$dir/$name"
  setsid "$paddockd" --state-dir "$dir/$name/state" --socket "$dir/$name/paddockd.sock" "$@" \
    </dev/null >"$dir/$name/log" 2>&1 &
  echo $! > "$dir/$name/pid"
}

do_start() {
  [ -n "$count" ] || usage_error "start needs N, the number of nodes" start
  if ! [[ "$count" =~ ^[0-9]+$ ]] || [ "$count" -lt 1 ] || [ "$count" -gt 64 ]; then
    usage_error "N must be a number from 1 to 64, not '$count'" start
  fi
  local b
  for b in "$paddockd" "$paddock" "$init"; do
    [ -x "$b" ] || die "$b not found; build it: cmake --build $build_dir --target paddockd paddock paddock-init (or pass --build-dir)"
  done
  [ "$(id -u)" -eq 0 ] || die "nodes run sandboxes (namespaces, cgroups, overlayfs): run as root"
  local m
  if [ -d "$dir" ]; then
    for m in $(members); do
      pid_alive "$dir/$m/pid" && die "a fleet runs in $dir ($m, pid $(cat "$dir/$m/pid")); '$prog stop --dir $dir' first"
    done
    rm -rf "$dir/front" "$dir"/node-*
  fi
  mkdir -p "$dir"
  # Searchable (not listable) by the sandboxes' unprivileged users: the nodes'
  # state dirs, where sandbox roots are mounted, are below it.
  chmod 0711 "$dir"
  # Stop whatever was started if anything below fails (die, set -e).
  fleet_started=0
  trap '[ "$fleet_started" = 1 ] || { echo "fleet: start failed; stopping what was started" >&2; do_stop >&2; }' EXIT

  # The token the front sends and every node checks.
  (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/token"; echo >> "$dir/token")
  chmod 0600 "$dir/token"

  "$repo/scripts/make-busybox-rootfs.sh" "$dir/busybox-rootfs"

  local k port nodes="" node_args=() front_args=()
  # shellcheck disable=SC2206
  node_args=(${PADDOCK_FLEET_NODE_ARGS:-})
  # shellcheck disable=SC2206
  front_args=(${PADDOCK_FLEET_FRONT_ARGS:-})
  for ((k = 1; k <= count; k++)); do
    port="$(free_port)"
    mkdir -p "$dir/node-$k"
    echo "$port" > "$dir/node-$k/port"
    spawn "node-$k" --listen-tcp "127.0.0.1:$port" --token-file "$dir/token" "${node_args[@]}"
    nodes="$nodes${nodes:+,}127.0.0.1:$port"
  done
  for ((k = 1; k <= count; k++)); do
    wait_socket "node-$k"
    PADDOCK_SOCKET="$dir/node-$k/paddockd.sock" "$paddock" image import-dir "$dir/busybox-rootfs" \
      --name busybox:1 >"$dir/node-$k/import.log" 2>&1 ||
      { cat "$dir/node-$k/import.log" >&2; die "importing busybox:1 into node-$k failed"; }
    echo "fleet: node-$k ready on 127.0.0.1:$(cat "$dir/node-$k/port") (pid $(cat "$dir/node-$k/pid"))"
  done
  echo "$nodes" > "$dir/nodes"
  spawn front --nodes "$nodes" --node-token-file "$dir/token" "${front_args[@]}"
  wait_socket front
  fleet_started=1
  echo "fleet: front ready (pid $(cat "$dir/front/pid")), nodes $nodes"
  cat <<EOF

Use it (as root):
  export PADDOCK_SOCKET=$dir/front/paddockd.sock
  $paddock node ls
  id=\$($paddock sandbox create --substrate container --image busybox:1)
  $paddock sandbox exec "\$id" -- echo ok
Logs: $dir/front/log, $dir/node-K/log.  Stop: $prog stop --dir $dir
EOF
}

do_status() {
  [ -d "$dir" ] || { echo "fleet: no fleet in $dir"; return 1; }
  local m all=0 any=0
  for m in $(members); do
    any=1
    if pid_alive "$dir/$m/pid"; then
      if [ "$m" = front ]; then
        echo "front: running (pid $(cat "$dir/$m/pid")), socket $dir/front/paddockd.sock"
      else
        echo "$m: running (pid $(cat "$dir/$m/pid")), 127.0.0.1:$(cat "$dir/$m/port" 2>/dev/null || echo '?')"
      fi
    else
      echo "$m: not running"; all=1
    fi
  done
  [ "$any" -eq 1 ] || { echo "fleet: no fleet in $dir"; return 1; }
  if pid_alive "$dir/front/pid" && [ -x "$paddock" ]; then
    echo
    PADDOCK_SOCKET="$dir/front/paddockd.sock" "$paddock" node ls || all=1
  fi
  return "$all"
}

case "$cmd" in
  start) do_start ;;
  stop) do_stop ;;
  status) do_status ;;
esac
