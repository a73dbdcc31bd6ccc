#!/usr/bin/env python3
"""Runs a rollout through paddockd's Rollouts service with the Python SDK: the daemon
runs every episode (sandbox, policy, tools, verifier); this script starts it, shows
progress and finished episodes as they come, and writes the export.

    examples/python/rollout.py tasks.jsonl --policy http://127.0.0.1:30000 --concurrency 256 --out out.jsonl
    examples/python/rollout.py tasks.jsonl --scripted script.json          # an in-process scripted policy
    examples/python/rollout.py --resume r-0123456789ab --out out.jsonl      # after a daemon restart

The task format is docs/tasks.md. Needs the SDK: pip install ./sdk/python, or PYTHONPATH=sdk/python.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

try:
    import paddock
except ImportError as e:  # pragma: no cover
    sys.exit(f"rollout: {e}; install the SDK (pip install ./sdk/python) or run with PYTHONPATH=sdk/python")


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Start (or resume) a rollout, watch it, export its episodes.")
    ap.add_argument("tasks", nargs="?", help="tasks file, JSON lines (docs/tasks.md)")
    ap.add_argument("--policy", help="inference server URL, e.g. http://127.0.0.1:30000 (SGLang)")
    ap.add_argument("--policy-kind", default="", help="sglang (default), openai-completions, openai-chat")
    ap.add_argument("--model", default="", help="model name sent to the server")
    ap.add_argument("--scripted", metavar="FILE",
                    help="use the daemon's scripted policy: FILE holds a JSON array of completions")
    ap.add_argument("--concurrency", type=int, default=0, help="episodes at once (default: the daemon's, 64)")
    ap.add_argument("--samples", type=int, default=0, help="episodes per task (default 1)")
    ap.add_argument("--resume", metavar="ROLLOUT_ID", help="resume this rollout instead of starting one")
    ap.add_argument("--out", help="write the export (JSON lines, one per episode) here")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between progress lines")
    ap.add_argument("--quiet", action="store_true", help="no progress lines, only the summary")
    ap.add_argument("--socket", help="paddockd's unix socket (default $PADDOCK_SOCKET or /run/paddock/paddockd.sock)")
    ap.add_argument("--tcp", metavar="HOST:PORT", help="reach paddockd over TCP (needs --token-file)")
    ap.add_argument("--token-file", help="file holding the bearer token for --tcp")
    args = ap.parse_args(argv)
    if not args.resume:
        if not args.tasks:
            ap.error("a tasks file is required (or --resume ROLLOUT_ID)")
        if bool(args.policy) == bool(args.scripted):
            ap.error("give exactly one of --policy URL and --scripted FILE")
    return args


def main(args: argparse.Namespace) -> int:
    kw = {"address": args.tcp, "token_file": args.token_file} if args.tcp else {"socket_path": args.socket}
    c = paddock.Client(**kw)
    policy = None
    if args.scripted:
        with open(args.scripted, encoding="utf-8") as f:
            policy = paddock.PolicySpec(kind="scripted", script=json.load(f))
    elif args.policy:
        policy = paddock.PolicySpec(url=args.policy, kind=args.policy_kind, model=args.model)

    if args.resume:
        ro = c.rollouts.get(args.resume)
        r = ro.resume(policy=policy, concurrency=args.concurrency)
        print(f"resumed {r.rollout_id}: {r.already_done} of {r.episodes_total} episodes done, {r.to_run} to run",
              flush=True)
    else:
        ro = c.rollouts.start(args.tasks, policy=policy, concurrency=args.concurrency,
                              samples_per_task=args.samples)
        print(f"started {ro.id}: {ro.episodes} episodes", flush=True)

    stops: collections.Counter[str] = collections.Counter()
    for ev in ro.watch(interval=args.interval):
        if isinstance(ev, paddock.EpisodeSummary):
            stops[ev.stop_reason] += 1
            if not args.quiet:
                print(f"  {ev.episode_id:<40} {ev.state:<9} reward {ev.reward:<5g} {ev.stop_reason:<13} "
                      f"turns {ev.turns} tools {ev.tool_calls}", flush=True)
        elif not args.quiet:
            print(f"[{ev.elapsed_ms / 1000:6.1f}s] {ev.done}/{ev.episodes_total} done, {ev.running} running, "
                  f"{ev.failed} failed, {ev.tool_calls_per_s:.0f} tool calls/s, {ev.tokens_per_s:.0f} tok/s",
                  flush=True)
    p = ro.progress()
    print(f"rollout {p.rollout_id} {p.state}: {p.done}/{p.episodes_total} done, {p.failed} failed, "
          f"mean reward {p.mean_reward:.3f}, {p.tool_calls} tool calls "
          f"({p.replayed_tool_calls} replayed), {p.policy_calls} policy calls ({p.replayed_policy_calls} replayed)")
    if stops:
        print("stop reasons: " + ", ".join(f"{k or '-'} {v}" for k, v in sorted(stops.items())))
    if args.out:
        n = 0
        with open(args.out + ".tmp", "wb") as f:
            for chunk in ro.export():
                f.write(chunk)
                n += chunk.count(b"\n")
        os.replace(args.out + ".tmp", args.out)
        print(f"exported {n} episodes to {args.out}")
    return 0 if p.state == "finished" else 1


if __name__ == "__main__":
    try:
        sys.exit(main(parse(sys.argv[1:])))
    except paddock.PaddockError as e:
        sys.exit(f"rollout: {e.message}")
    except OSError as e:
        sys.exit(f"rollout: {e}")
