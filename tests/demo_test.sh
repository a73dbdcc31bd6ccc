#!/usr/bin/env bash
# ctest demo_test: runs the main job (scripts/demo.sh) in its reduced mode against
# the real binaries of BUILD_DIR and checks what it promises: the daemon was
# SIGKILLed mid-run and the rollout resumed, every episode finished, nothing ran
# twice (resume_check.py's verdict, written as JSON), the export is where the
# demo says and is one JSON object per episode, and nothing it started is left
# behind (no daemon, no policy server, no sandbox); before the rollout, every
# kind of task's verifier refused it unsolved and rewarded its scripted solution.
# Also --help and bad usage.
# usage: tests/demo_test.sh BUILD_DIR
set -euo pipefail
build=$(cd "${1:?usage: tests/demo_test.sh BUILD_DIR}" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
demo="$root/scripts/demo.sh"
work=$(mktemp -d /tmp/paddock-demo-test.XXXXXX)
chmod 755 "$work"  # the state dir below it must be searchable by sandbox users
trap 'rm -rf "$work" || true' EXIT
fail() { echo "demo_test FAILED: $*" >&2; exit 1; }

# --help and usage errors.
bash "$demo" --help | grep -q "SIGKILL" || fail "--help does not describe the kill"
set +e
out=$(bash "$demo" "$build" --episodes x 2>&1); rc=$?
[ "$rc" = 2 ] && grep -q "not a number" <<<"$out" || fail "--episodes x: exit $rc, '$out'"
out=$(bash "$demo" "$build" --episodes 2 2>&1); rc=$?
[ "$rc" = 2 ] && grep -q "at least 4" <<<"$out" || fail "--episodes 2: exit $rc, '$out'"
out=$(bash "$demo" "$build" --bogus 2>&1); rc=$?
[ "$rc" = 2 ] && grep -q "unknown option '--bogus'" <<<"$out" || fail "--bogus: exit $rc, '$out'"
out=$(bash "$demo" "$work/no-such-build" --episodes 8 2>&1); rc=$?
[ "$rc" = 1 ] && grep -q "is missing: build first" <<<"$out" || fail "missing build: exit $rc, '$out'"
set -e

# The reduced run. The Debian image comes from BUILD_DIR/test-images (built once by
# scripts/make-debian-image.sh, shared with debian_image_test).
log="$work/demo.out"
set +e
bash "$demo" "$build" --episodes 8 --concurrency 4 --quick --work "$work/demo" >"$log" 2>&1
rc=$?
set -e
cat "$log"
[ "$rc" = 0 ] || fail "scripts/demo.sh exited $rc"

grep -q "kinds of task checked: each verifier refuses the task unsolved and rewards its solution" "$log" ||
  fail "the tasks' scripted solutions were not checked"
grep -q "SIGKILL to paddockd" "$log" || fail "the daemon was not killed"
grep -q "resumed: 8 episodes" "$log" || fail "the rollout was not resumed"
check=$(ls "$work"/demo/runs/*/resume-check.json) || fail "no resume-check.json"
python3 - "$check" <<'EOF' || fail "resume-check.json does not hold the promises"
import json, sys
c = json.load(open(sys.argv[1]))
assert c["episodes"] == 8 and c["finished"] == 8, c
assert c["resumed"] >= 1, c                # the kill left work to resume
assert c["ran_twice"] == [] and c["problems"] == [], c
assert c["prefix_ok"] == c["resumed"], c
assert c["policy_generations"] >= c["turns"] - c["fast_forwarded"]["policy_calls"], c
EOF
# Under the tool constraint (where this build's paddock run has it) turns are
# tool calls that really ran.
if grep -q "tool-constrained decoding" "$log"; then
  python3 -c "import json,sys; c=json.load(open(sys.argv[1])); assert c['tool_calls'] > 0, c" "$check" ||
    fail "tool-constrained decoding, yet no tool call ran"
fi
# The check itself must catch a call that ran twice. The system does not do
# that, so the fault is injected into copies of the demo's own records (the one
# place this test doctors data): a resumed episode that answered fewer calls
# from the log than it held, and a policy server that generated once too often.
rc_py="$root/examples/demo/resume_check.py"
pre="$work/demo/before-resume.json"
exp="$(dirname "$check")/episodes.jsonl"
gens=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['policy_generations'])" "$check")
python3 "$rc_py" check --pre "$pre" --export "$exp" --policy-generations "$gens" >/dev/null ||
  fail "resume_check.py refuses the saved run it passed a moment ago"
python3 "$rc_py" check --pre "$pre" --export "$exp" --policy-generations $((gens + 1000)) >"$work/twice1" &&
  fail "resume_check.py accepted a policy server that generated 1000 times too often"
grep -q "RAN TWICE" "$work/twice1" || fail "no RAN TWICE for extra generations: $(cat "$work/twice1")"
python3 - "$pre" "$exp" "$work/doctored.jsonl" <<'EOF' || fail "could not doctor the export"
import json, sys
pre = json.load(open(sys.argv[1]))["episodes"]
lines = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
# An episode finished before the kill that ran again (its context changed), or
# else a resumed one that ran a logged turn again (answered none from the log).
done = [e for e in lines if pre.get(e["episode_id"], {}).get("state") == "finished"]
mid = [e for e in lines if pre.get(e["episode_id"], {}).get("policy_steps", 0) > 0
       and pre[e["episode_id"]]["state"] != "finished"]
assert done or mid, "the kill left neither a finished nor a resumed episode with logged turns"
if done:
    done[0]["token_ids"] = done[0]["token_ids"] + [1]
else:
    mid[0]["replayed"]["policy_calls"] = 0
with open(sys.argv[3], "w") as f:
    for e in lines:
        f.write(json.dumps(e) + "\n")
EOF
python3 "$rc_py" check --pre "$pre" --export "$work/doctored.jsonl" --policy-generations "$gens" >"$work/twice2" &&
  fail "resume_check.py accepted an episode that ran a logged turn again"
grep -q "RAN TWICE" "$work/twice2" || fail "no RAN TWICE for a re-run episode: $(cat "$work/twice2")"

export_file=$(sed -n 's/.*export: *\([^ ]*episodes.jsonl\).*/\1/p' "$log" | tail -n1)
[ -s "$export_file" ] || fail "the export the demo names ($export_file) is missing"
python3 - "$export_file" <<'EOF' || fail "the export is not one finished episode per line"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
assert len(lines) == 8, len(lines)
for e in lines:
    assert e["state"] == "finished" and len(e["token_ids"]) == len(e["loss_mask"]) > 0, e["episode_id"]
    assert e["policy"]["kind"] == "sglang", e["policy"]
EOF

# Nothing left behind: sandboxes destroyed, both servers stopped, no process
# still uses the demo's work directory, the policy server's port closed.
grep -q "cleanup: [0-9]* sandboxes destroyed, 0 left; paddockd stopped" "$log" || fail "no clean daemon stop"
grep -q "cleanup: paddock-policy stopped" "$log" || fail "paddock-policy was not stopped"
url=$(sed -n 's/.*running rollout .*policy \(http:[^ ]*\).*/\1/p' "$log" | head -n1)
[ -n "$url" ] || fail "the demo did not name its policy URL"
if python3 -c "import sys,urllib.request; urllib.request.urlopen(sys.argv[1] + '/health', timeout=2)" "$url" 2>/dev/null; then
  fail "paddock-policy still answers at $url"
fi
sleep 0.5
left=$(ps -eo pid=,args= | grep -F "$work/demo" | grep -v grep || true)
[ -z "$left" ] || fail "processes left running: $left"
echo "demo_test passed"
