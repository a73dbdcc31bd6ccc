#!/usr/bin/env bash
# The main job (`make demo`): a rollout of the demo tasks against the embedded
# policy server, paddockd SIGKILLed part-way through, restarted, the rollout
# resumed, and what was fast-forwarded and that nothing ran twice checked from
# what the system reports. See `scripts/demo.sh --help`.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/demo.sh [BUILD_DIR] [--episodes N] [--concurrency N] [--quick] [--no-debian]
                       [--work DIR] [--keep-work] [--untrained]

The main job, run by `make demo` after the build (BUILD_DIR defaults to build):
  1. starts its own paddockd (state and socket under WORK, default BUILD_DIR/demo),
  2. imports the demo images: busybox (scripts/make-busybox-rootfs.sh, then
     `paddock image import-dir`) and Debian python3 (scripts/make-debian-image.sh,
     cached in BUILD_DIR/test-images, then `paddock image import`),
  3. starts paddock-policy (embedded engine, tiny config) on a free loopback port,
     serving trained weights when there are some (docs/training.md): those of the
     last `make train-demo` (BUILD_DIR/train-demo/weights/demo.safetensors), else
     the shipped ones (examples/train/weights/demo-delta.safetensors, unpacked),
  4. writes N tasks (examples/demo/make_tasks.py) over both images on the function
     and container substrates, shows each kind's scripted solution rewarded by its
     verifier in a real sandbox (examples/demo/check_solutions.py), and runs them
     with `paddock run ... --policy URL`,
  5. SIGKILLs paddockd once about half the episodes are done, restarts it, and
     `paddock resume`s the rollout,
  6. checks from the export, the trajectory log and the policy server's counters
     how many calls were fast-forwarded and that none ran twice
     (examples/demo/resume_check.py), prints the summary and where the export is.
Everything it started is stopped on exit (sandboxes destroyed, daemons stopped).
Exits non-zero, saying which step failed, when a step fails or a call ran twice.

  --episodes N     episodes in the rollout (default 64)
  --concurrency N  episodes at once (default 16)
  --quick          shorter episodes (2-3 turns of 16-48 tokens); for tests
  --no-debian      busybox tasks only (no Debian image build); for machines
                   without the Debian mirror
  --work DIR       state, logs, tasks and runs (default BUILD_DIR/demo)
  --keep-work      keep WORK's earlier rollouts (default: a fresh log each run;
                   imported images stay either way)
  --untrained      serve the seeded (untrained) weights even where trained ones exist
  --help           this text
EOF
}

build=build episodes=64 concurrency=16 quick=0 debian=1 work="" keep=0 untrained=0
while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h) usage; exit 0 ;;
    --episodes) episodes="${2:?--episodes needs a value}"; shift 2 ;;
    --concurrency) concurrency="${2:?--concurrency needs a value}"; shift 2 ;;
    --quick) quick=1; shift ;;
    --no-debian) debian=0; shift ;;
    --work) work="${2:?--work needs a value}"; shift 2 ;;
    --keep-work) keep=1; shift ;;
    --untrained) untrained=1; shift ;;
    -*) echo "demo: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *) build="$1"; shift ;;
  esac
done
case "$episodes" in ''|*[!0-9]*) echo "demo: --episodes '$episodes' is not a number" >&2; exit 2 ;; esac
case "$concurrency" in ''|*[!0-9]*) echo "demo: --concurrency '$concurrency' is not a number" >&2; exit 2 ;; esac
[ "$episodes" -ge 4 ] || { echo "demo: --episodes must be at least 4 (half are done before the kill)" >&2; exit 2; }
[ "$concurrency" -ge 1 ] || { echo "demo: --concurrency must be at least 1" >&2; exit 2; }

root=$(cd "$(dirname "$0")/.." && pwd)
case "$build" in /*) ;; *) build="$root/$build" ;; esac
work=${work:-$build/demo}
case "$work" in /*) ;; *) work="$PWD/$work" ;; esac
paddockd="$build/rollout/paddockd"
paddock="$build/sdk/paddock"
policy_bin="$build/policy/paddock-policy"
init_bin="$build/sandbox/paddock-init"

started=$(date +%s)
step_no=0
step() { step_no=$((step_no + 1)); printf '\n\033[1m== %d. %s\033[0m\n' "$step_no" "$*"; }
note() { printf '   %s\n' "$*"; }
die() { printf '\n\033[1;31mdemo FAILED at step %d: %s\033[0m\n' "$step_no" "$*" >&2; exit 1; }

for b in "$paddockd" "$paddock" "$policy_bin" "$init_bin"; do
  [ -x "$b" ] || die "$b is missing: build first (\`make build\`, or \`make demo\` which builds)"
done
[ "$(id -u)" = 0 ] || die "the demo needs root (namespaces, cgroups, overlayfs): run it as root"

mkdir -p "$work"
state="$work/state" runs="$work/runs"
export PADDOCK_SOCKET="$work/paddockd.sock"
if [ "$keep" = 0 ]; then rm -rf "$state/log" "$runs"; fi
mkdir -p "$state" "$runs"

daemon_pid="" policy_pid="" run_pid=""
start_daemon() {
  "$paddockd" --state-dir "$state" --socket "$PADDOCK_SOCKET" --init-path "$init_bin" \
    --log-level warn >>"$work/paddockd.log" 2>&1 &
  daemon_pid=$!
  for _ in $(seq 200); do
    "$paddock" sandbox ls >/dev/null 2>&1 && return 0
    kill -0 "$daemon_pid" 2>/dev/null || die "paddockd exited during start-up; see $work/paddockd.log"
    sleep 0.1
  done
  die "paddockd did not answer on $PADDOCK_SOCKET within 20 s; see $work/paddockd.log"
}
live_sandboxes() {
  "$paddock" --json sandbox ls 2>/dev/null |
    python3 -c 'import json,sys; print(" ".join(s["id"] for s in json.load(sys.stdin)["sandboxes"]))' 2>/dev/null || true
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e  # stop everything even when one stop fails
  [ -n "$run_pid" ] && kill -TERM "$run_pid" 2>/dev/null && wait "$run_pid" 2>/dev/null
  if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
    # Sandboxes first (a cancelled rollout's are destroyed by the daemon; anything
    # left over is destroyed here), then the daemon itself.
    "$paddock" rollout cancel "$rollout" >/dev/null 2>&1 || true
    local ids left
    ids=$(live_sandboxes)
    [ -n "$ids" ] && "$paddock" sandbox destroy $ids >/dev/null 2>&1
    left=$(live_sandboxes)
    [ -z "$left" ] || echo "demo: sandboxes still listed after destroy: $left" >&2
    kill -TERM "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
    echo "cleanup: $(wc -w <<<"$ids") sandboxes destroyed, $(wc -w <<<"$left") left; paddockd stopped"
  fi
  [ -n "$policy_pid" ] && kill -TERM "$policy_pid" 2>/dev/null && wait "$policy_pid" 2>/dev/null &&
    echo "cleanup: paddock-policy stopped"
  [ "$rc" = 0 ] || echo "(demo: stopped everything it started; logs are in $work)" >&2
  exit "$rc"
}
rollout="demo-$(date +%Y%m%d-%H%M%S)"
trap cleanup EXIT
trap 'exit 130' INT TERM

step "starting paddockd (state $state, socket $PADDOCK_SOCKET)"
start_daemon
note "paddockd pid $daemon_pid"

step "importing the demo images"
bash "$root/scripts/make-busybox-rootfs.sh" "$work/busybox-rootfs" || die "make-busybox-rootfs.sh failed"
"$paddock" image import-dir "$work/busybox-rootfs" --name busybox:demo || die "importing the busybox rootfs failed"
python_image=""
if [ "$debian" = 1 ]; then
  note "Debian python3 image (debootstrap + umoci on the first run, then cached; a few minutes the first time)"
  archive=$(bash "$root/scripts/make-debian-image.sh" --out "$build/test-images/debian-python3.oci.tar") ||
    die "scripts/make-debian-image.sh failed (needs the Debian mirror; --no-debian runs busybox tasks only)"
  "$paddock" image import "$archive" --name debian-python3:demo || die "importing $archive failed"
  python_image=debian-python3:demo
else
  note "--no-debian: the python3 tasks are left out"
fi
"$paddock" image ls

step "starting paddock-policy (embedded V4 engine, tiny config) on a free loopback port"
weights_args=()
if [ "$untrained" = 0 ]; then
  if [ -s "$build/train-demo/weights/demo.safetensors" ]; then
    weights_args=(--weights "$build/train-demo/weights/demo.safetensors")
    note "trained weights from the last \`make train-demo\`: ${weights_args[1]}"
  elif [ -s "$root/examples/train/weights/demo-delta.safetensors" ]; then
    python3 "$root/examples/train/weights_pack.py" unpack "$root/examples/train/weights/demo-delta.safetensors" \
      "$work/trained.safetensors" --policy-bin "$policy_bin" || die "unpacking the shipped trained weights failed"
    weights_args=(--weights "$work/trained.safetensors")
    note "the shipped trained weights (examples/train/weights/demo-delta.safetensors, unpacked to ${weights_args[1]})"
  fi
fi
[ ${#weights_args[@]} -gt 0 ] || note "seeded (untrained) weights: rewards stay near 0 (\`make train-demo\` trains some)"
"$policy_bin" --listen 127.0.0.1:0 --config tiny "${weights_args[@]}" >"$work/paddock-policy.log" 2>&1 &
policy_pid=$!
policy_url=""
for _ in $(seq 600); do
  policy_url=$(sed -n 's/.* on \(http:\/\/127\.0\.0\.1:[0-9]*\).*/\1/p' "$work/paddock-policy.log" | head -n1)
  [ -n "$policy_url" ] && break
  kill -0 "$policy_pid" 2>/dev/null || die "paddock-policy exited during start-up; see $work/paddock-policy.log"
  sleep 0.1
done
[ -n "$policy_url" ] || die "paddock-policy did not start within 60 s; see $work/paddock-policy.log"
python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1] + '/health', timeout=10)" "$policy_url" ||
  die "paddock-policy at $policy_url does not answer /health"
note "$(head -n1 "$work/paddock-policy.log")"

# The tool constraint on /generate: paddock-policy keeps each turn a well-formed
# tool call (the untrained model's free text would not parse), asked for with
# `paddock run --constrain-tools` where this build's CLI has it.
constrain_args=()
if "$paddock" run --help 2>/dev/null | grep -q -- "--constrain-tools"; then
  constrain_args=(--constrain-tools --tool-choice required)
  # Room for a whole tool call within a turn's budget. The constraint keeps a reserve
  # of the turn's budget for closing the call, so trained weights (whose commands are
  # real) need a larger one; untrained weights fill whatever they get with noise.
  if [ "$quick" = 1 ]; then turns=2 tokens=160; else turns=3 tokens=160; fi
  [ ${#weights_args[@]} -gt 0 ] && tokens=512
else
  if [ "$quick" = 1 ]; then turns=2 tokens=16; else turns=3 tokens=48; fi
fi

step "writing $episodes demo tasks"
tasks="$work/tasks.jsonl"
task_args=(--episodes "$episodes" --busybox busybox:demo --python "$python_image" --max-turns "$turns"
           --max-new-tokens "$tokens" --out "$tasks")
python3 "$root/examples/demo/make_tasks.py" "${task_args[@]}" || die "examples/demo/make_tasks.py failed"
python3 - "$tasks" <<'EOF'
import collections, json, sys
c = collections.Counter()
for line in open(sys.argv[1]):
    t = json.loads(line)
    c[(t["image"], t["substrate"])] += 1
for (image, substrate), n in sorted(c.items()):
    print("   %3d on %-22s %s" % (n, image, substrate))
EOF

step "the tasks are solvable: each kind's scripted solution in a real sandbox, verifier before and after"
python3 "$root/examples/demo/check_solutions.py" --paddock "$paddock" --tasks "$tasks" | sed 's/^/   /' ||
  die "a demo task's verifier does not tell its scripted solution from no solution (above)"

policy_port=${policy_url##*:}
gens() {  # generations the policy server has started (its /metrics), read without a new process
  local line
  exec 7<>"/dev/tcp/127.0.0.1/$policy_port" || return 1
  printf 'GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&7
  while IFS= read -r line <&7; do
    case "$line" in paddock_policy_generate_calls_total\ *) exec 7<&-; echo "${line#* }"; return 0 ;; esac
  done
  exec 7<&-
  return 1
}
done_count() {
  "$paddock" --json rollout ls 2>/dev/null | python3 -c "
import json, sys
for r in json.load(sys.stdin):
    if r['rollout_id'] == sys.argv[1]: print(r['done'], r['failed'], r['state'])" "$rollout"
}
failures() {  # the first failure reasons of the rollout, from its export
  "$paddock" export "$rollout" --include-unfinished 2>/dev/null | python3 -c "
import collections, json, sys
c = collections.Counter()
for l in sys.stdin:
    e = json.loads(l)
    if e['state'] == 'failed': c[e.get('failure_reason') or e.get('stop_reason') or '?'] += 1
for reason, n in c.most_common(3): print('   %d failed: %s' % (n, reason[:300]))"
}

step "running rollout $rollout: $episodes episodes, $concurrency at once, policy $policy_url"
gens_before=$(gens) || die "cannot read $policy_url/metrics"
if [ ${#constrain_args[@]} -gt 0 ]; then
  note "tool-constrained decoding: ${constrain_args[*]} (every turn a well-formed tool call)"
else
  note "this paddock has no --constrain-tools: the untrained model's turns are free text, not tool calls"
fi
"$paddock" run "$tasks" --policy "$policy_url" --policy-kind sglang --id "$rollout" "${constrain_args[@]}" \
  --concurrency "$concurrency" --out "$runs" --interval-ms 1000 > >(sed 's/^/   /') 2>"$work/run1.err" &
run_pid=$!
# When to kill: once about half the episodes are done (the daemon's count), or,
# whichever comes first, once the policy server has generated a third of the
# most turns the tasks allow (a bound the rollout cannot pass; a third, not a
# half, because generations can come in bursts between two polls and the kill
# must land before the end). Then a few more generations: an episode's next
# turn starts only after its previous one is logged, so the kill leaves
# episodes with logged turns to fast-forward.
half=$((episodes / 2))
max_turns_total=$(python3 -c "import json,sys; print(sum(min(json.loads(l)['max_turns'], 3) for l in open(sys.argv[1])))" "$tasks")
g_target=$((gens_before + max_turns_total / 3))
more=$(( concurrency / 4 > 0 ? concurrency / 4 : 1 ))
g_half="" polls=0 n=0
killed=0
while kill -0 "$run_pid" 2>/dev/null; do
  g=$(gens) || die "cannot read $policy_url/metrics"
  if [ $((polls % 10)) = 0 ]; then  # the daemon's count, once a second
    read -r n nfail st < <(done_count) || true
    if [ "${nfail:-0}" -ge "$half" ]; then
      failures
      die "$nfail episodes failed before the kill (reasons above; daemon log $work/paddockd.log)"
    fi
  fi
  polls=$((polls + 1))
  if [ -z "$g_half" ] && { [ "${n:-0}" -ge "$half" ] || [ "$g" -ge "$g_target" ]; }; then
    g_half=$g
    if [ "${n:-0}" -ge "$half" ]; then why="$n of $episodes episodes done"
    else why="$((g - gens_before)) policy calls started, a third of the most the tasks allow; $n of $episodes episodes done"; fi
    note "under way ($why): SIGKILL after $more more policy calls start"
  fi
  if [ -n "$g_half" ] && [ "$g" -ge $((g_half + more)) ]; then
    printf '\n\033[1m   SIGKILL to paddockd (pid %s), %s policy calls into the rollout\033[0m\n' "$daemon_pid" "$((g - gens_before))"
    kill -KILL "$daemon_pid"
    wait "$daemon_pid" 2>/dev/null || true
    daemon_pid=""
    killed=1
    break
  fi
  sleep 0.1
done
wait "$run_pid" 2>/dev/null && run_rc=0 || run_rc=$?
run_pid=""
[ "$killed" = 1 ] || die "the rollout ended (exit $run_rc) before the kill, so there was nothing to resume; see $work/run1.err"
note "paddock run lost the daemon, as it should: $(tail -n1 "$work/run1.err")"

step "restarting paddockd on the same state"
start_daemon
note "paddockd pid $daemon_pid; sandboxes left from before the kill: $("$paddock" --json sandbox ls | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["sandboxes"]))')"
"$paddock" rollout ls | sed 's/^/   /'
python3 "$root/examples/demo/resume_check.py" snapshot --paddock "$paddock" --rollout "$rollout" \
  --out "$work/before-resume.json" | sed 's/^/   /' || die "reading the log after the restart failed"

step "paddock resume $rollout"
set +e
"$paddock" resume "$rollout" --out "$runs" --interval-ms 1000 2>"$work/resume.err" | sed 's/^/   /'
resume_rc=${PIPESTATUS[0]}
set -e
if [ "$resume_rc" != 0 ]; then
  failures
  die "paddock resume exited $resume_rc (3: some episodes failed, reasons above): $(tail -n2 "$work/resume.err")"
fi

step "checking: fast-forwarded calls, nothing ran twice (from the export, the log and the policy server)"
export_file="$runs/$rollout/episodes.jsonl"
[ -s "$export_file" ] || die "the export $export_file is missing or empty"
"$paddock" log verify >/dev/null || die "paddock log verify reports a corrupt trajectory log"
set +e
python3 "$root/examples/demo/resume_check.py" check --pre "$work/before-resume.json" --export "$export_file" \
  --policy-url "$policy_url" --policy-calls-before "$gens_before" --json-out "$runs/$rollout/resume-check.json" |
  sed 's/^/   /'
check_rc=${PIPESTATUS[0]}
set -e
[ "$check_rc" = 0 ] || die "the resume check failed (above); details in $runs/$rollout/resume-check.json"

step "done in $(( $(date +%s) - started )) s"
note "export:   $export_file ($(wc -l <"$export_file") episodes; docs/export.schema.json)"
note "summary:  $runs/$rollout/summary.json"
note "check:    $runs/$rollout/resume-check.json"
note "again:    PADDOCK_SOCKET=$PADDOCK_SOCKET $paddock export $rollout --format jsonl   (while a daemon runs on it)"
