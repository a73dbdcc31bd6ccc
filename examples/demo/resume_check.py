#!/usr/bin/env python3
"""Checks what `make demo` promises about a rollout interrupted by SIGKILL and resumed,
from what the system itself reports (the CLI's export and log, the policy server's
counters), never from what the demo assumes.

  resume_check.py snapshot --paddock BIN --rollout ID --out FILE
      after paddockd was restarted and before `paddock resume`: records every
      episode as the log holds it (export --include-unfinished) and, for each
      unfinished one, the calls in doubt (intent logged, no result: they were
      running when the daemon died).

  resume_check.py check --pre FILE --export FILE --policy-url URL --policy-calls-before N [--json-out FILE]
      after the resume: compares the final export with the snapshot and with the
      policy server's count of generations, prints the summary, and exits 1 when a
      promise is broken (a call ran twice, an episode did not finish, a resumed
      prefix differs from the log).

Definitions (docs/tasks.md "Logging, resume and what never twice means"):
  fast-forwarded  a call answered from the log on resume (export: replayed.*)
  ran twice       a call whose result was logged before the kill and that ran
                  again: the episode's replayed count is below what the log held,
                  or the policy server generated more often than every logged turn
                  plus one call per episode unfinished at the kill (the policy
                  call it had in flight: its records are written without waiting
                  for a sync, so it may be in doubt or have left no trace at all;
                  docs/trajectory-log.md).
"""

import argparse
import json
import subprocess
import sys
import urllib.request


def run_cli(paddock, args):
    p = subprocess.run([paddock] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise SystemExit("resume_check: `paddock %s` failed (exit %d): %s"
                         % (" ".join(args), p.returncode, p.stderr.strip()))
    return p.stdout


def read_jsonl(text):
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError as e:
                raise SystemExit("resume_check: export line %d is not JSON: %s" % (n, e))
    return out


def counts(ep):
    msgs = ep.get("messages", [])
    return {
        "policy_steps": sum(1 for m in msgs if m.get("role") == "assistant"),
        # Tool results answer a call by id; a tool-role message without one is the
        # engine's note on a completion it could not read (no call ran).
        "tool_results": sum(1 for m in msgs if m.get("role") == "tool" and m.get("tool_call_id")),
    }


def snapshot(a):
    eps = read_jsonl(run_cli(a.paddock, ["export", a.rollout, "--include-unfinished"]))
    snap = {"rollout": a.rollout, "episodes": {}}
    for ep in eps:
        rec = {"state": ep["state"], "turns": ep.get("turns", 0), "tool_calls": ep.get("tool_calls", 0),
               "messages": ep.get("messages", []), "token_ids": ep.get("token_ids", []),
               "reward": ep.get("reward", 0), "in_doubt_policy": 0, "in_doubt_tools": 0}
        rec.update(counts(ep))
        if ep["state"] != "finished":
            shown = json.loads(run_cli(a.paddock, ["--json", "log", "show", ep["episode_id"]]))
            for d in shown.get("in_doubt", []):
                # Keys are EPISODE:STEP:CALL; call 0 of a step is its policy call.
                call = d["key"].rsplit(":", 1)[-1]
                if call == "0":
                    rec["in_doubt_policy"] += 1
                else:
                    rec["in_doubt_tools"] += 1
        snap["episodes"][ep["episode_id"]] = rec
    with open(a.out, "w") as f:
        json.dump(snap, f)
    unfinished = [e for e in snap["episodes"].values() if e["state"] != "finished"]
    print("log after the kill: %d episodes finished, %d unfinished holding %d policy and %d tool results, "
          "%d policy and %d tool calls in doubt"
          % (len(snap["episodes"]) - len(unfinished), len(unfinished),
             sum(e["policy_steps"] for e in unfinished), sum(e["tool_results"] for e in unfinished),
             sum(e["in_doubt_policy"] for e in unfinished), sum(e["in_doubt_tools"] for e in unfinished)))
    return 0


def policy_generations(url):
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError as e:
        raise SystemExit("resume_check: cannot read %s/metrics: %s" % (url, e))
    for line in text.splitlines():
        if line.startswith("paddock_policy_generate_calls_total "):
            return int(float(line.split()[1]))
    raise SystemExit("resume_check: %s/metrics has no paddock_policy_generate_calls_total" % url)


def check(a):
    with open(a.pre) as f:
        pre = json.load(f)["episodes"]
    with open(a.export) as f:
        post = {e["episode_id"]: e for e in read_jsonl(f.read())}
    problems = []
    # Episodes the log did not hold yet had not started before the kill: nothing of
    # theirs can be answered from the log.
    for eid in set(post) - set(pre):
        e = post[eid]
        if e.get("replayed", {}).get("policy_calls", 0) or e.get("replayed", {}).get("tool_calls", 0):
            problems.append("%s: had not started before the kill, yet calls were answered from the log" % eid)
    lost = set(pre) - set(post)
    if lost:
        problems.append("%d episodes the log held are missing from the export: %s"
                        % (len(lost), ", ".join(sorted(lost)[:5])))
    not_finished = [i for i, e in post.items() if e["state"] != "finished"]
    if not_finished:
        problems.append("%d episodes did not finish: %s" % (len(not_finished), ", ".join(sorted(not_finished)[:5])))

    ff_policy = ff_tools = resumed = rebuilt = prefix_ok = 0
    ran_twice = []
    for eid, p in pre.items():
        e = post.get(eid)
        if e is None:
            continue
        rp = e.get("replayed", {}).get("policy_calls", 0)
        rt = e.get("replayed", {}).get("tool_calls", 0)
        if p["state"] == "finished":
            # Kept as it was: nothing of it may run again.
            if rp or rt or e.get("token_ids") != p["token_ids"] or e.get("turns") != p["turns"]:
                ran_twice.append("%s (finished before the kill, changed by the resume)" % eid)
            continue
        resumed += 1
        ff_policy += rp
        ff_tools += rt
        rebuilt += bool(e.get("rebuilt"))
        # Every result the log held must have been answered from the log.
        if rp < p["policy_steps"]:
            ran_twice.append("%s (%d policy results logged, %d fast-forwarded)" % (eid, p["policy_steps"], rp))
        if rt < p["tool_results"]:
            ran_twice.append("%s (%d tool results logged, %d fast-forwarded)" % (eid, p["tool_results"], rt))
        # The resumed prefix equals the log.
        n = len(p["messages"])
        same = e.get("messages", [])[:n] == p["messages"]
        if p["token_ids"]:
            same = same and e.get("token_ids", [])[:len(p["token_ids"])] == p["token_ids"]
        if same:
            prefix_ok += 1
        else:
            problems.append("%s: the resumed prefix differs from the log" % eid)

    # The policy server's own count: each turn of each episode generated once, plus
    # at most one call per episode unfinished at the kill: the one it had in flight
    # (an episode asks one at a time). Policy records wait for no sync of their own
    # (docs/trajectory-log.md), so that call is in doubt or, if the kill came
    # before the next synced write, left no trace; either way it may have reached
    # the server and is asked again.
    turns = sum(e.get("turns", 0) for e in post.values())
    in_doubt = sum(p["in_doubt_policy"] for p in pre.values())
    in_flight = sum(1 for p in pre.values() if p["state"] != "finished")
    # A request retried after a transient error may have reached the server too.
    retries = sum(e.get("policy_retries", 0) for e in post.values())
    if a.policy_generations is not None:
        generations = a.policy_generations
    else:
        generations = policy_generations(a.policy_url) - a.policy_calls_before
    if generations > turns + in_flight + retries:
        ran_twice.append("the policy server generated %d times for %d logged turns, %d episodes unfinished at "
                         "the kill and %d retries" % (generations, turns, in_flight, retries))
    live = turns - sum(e.get("replayed", {}).get("policy_calls", 0) for e in post.values())
    if generations < live:
        problems.append("the policy server generated %d times, fewer than the %d turns that ran live"
                        % (generations, live))
    tool_calls = sum(e.get("tool_calls", 0) for e in post.values())

    print("episodes:         %d finished of %d (%d done before the kill, %d resumed mid-way, %d not started; "
          "%d sandboxes rebuilt)" % (len(post) - len(not_finished), len(post),
                                     sum(1 for p in pre.values() if p["state"] == "finished"), resumed,
                                     len(set(post) - set(pre)), rebuilt))
    print("fast-forwarded:   %d policy calls and %d tool calls answered from the log, not run again"
          % (ff_policy, ff_tools))
    print("policy server:    %d generations for %d turns in the log (%d episodes unfinished at the kill, "
          "%d of their policy calls in doubt, each allowed to run again; %d retried requests)"
          % (generations, turns, in_flight, in_doubt, retries))
    if tool_calls:
        print("tool calls:       %d in all" % tool_calls)
    else:
        print("tool calls:       none: no completion parsed as a tool call (expected of an untrained model "
              "whose output is not constrained), so only policy calls could be fast-forwarded")
    print("resumed prefixes: %d of %d equal the log" % (prefix_ok, resumed))
    if ran_twice:
        print("RAN TWICE:        %d -- %s" % (len(ran_twice), "; ".join(ran_twice[:5])))
    else:
        print("ran twice:        none (every logged result was fast-forwarded; the server's count agrees)")
    for p in problems:
        print("PROBLEM:          %s" % p)
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"episodes": len(post), "finished": len(post) - len(not_finished), "resumed": resumed,
                       "rebuilt": rebuilt, "fast_forwarded": {"policy_calls": ff_policy, "tool_calls": ff_tools},
                       "policy_generations": generations, "turns": turns, "in_doubt_policy": in_doubt,
                       "unfinished_at_kill": in_flight,
                       "tool_calls": tool_calls, "prefix_ok": prefix_ok, "ran_twice": ran_twice,
                       "problems": problems}, f, indent=2)
    return 1 if ran_twice or problems else 0


def main(argv):
    p = argparse.ArgumentParser(description="Check a killed-and-resumed rollout from what paddock reports.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("snapshot", help="record the log's view after the restart, before the resume")
    s.add_argument("--paddock", required=True)
    s.add_argument("--rollout", required=True)
    s.add_argument("--out", required=True)
    c = sub.add_parser("check", help="compare the final export with the snapshot and the policy server")
    c.add_argument("--pre", required=True)
    c.add_argument("--export", required=True)
    g = c.add_mutually_exclusive_group(required=True)
    g.add_argument("--policy-url", help="the policy server, whose /metrics count its generations")
    g.add_argument("--policy-generations", type=int,
                   help="the generations for this rollout, counted elsewhere (re-checking a saved run)")
    c.add_argument("--policy-calls-before", type=int, default=0)
    c.add_argument("--json-out")
    a = p.parse_args(argv)
    return snapshot(a) if a.cmd == "snapshot" else check(a)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
