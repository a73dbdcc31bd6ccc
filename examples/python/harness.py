#!/usr/bin/env python3
"""A harness that drives paddockd's sandboxes itself, with the Python SDK (asyncio).

Each episode gets a sandbox bound to it and runs a scripted "agent": step 0 writes a
solution script into the sandbox, step 1 runs it, step 2 checks the answer (the
verifier) and gives a reward. Every side-effecting call carries an idempotency key
(episode, step, call), so running the harness again with the same --run-id answers
every call from the daemon's trajectory log instead of running it again, as a
preempted training job would after a restart: the summary counts the replayed calls.

    examples/python/harness.py --image busybox --episodes 16
    examples/python/harness.py --image busybox --run-id r1   # again: all replayed

Needs the SDK: pip install ./sdk/python, or PYTHONPATH=sdk/python (docs/python-sdk.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

try:
    import paddock
    import paddock.aio
except ImportError as e:  # pragma: no cover - a message for users without PYTHONPATH
    sys.exit(f"harness: {e}; install the SDK (pip install ./sdk/python) or run with PYTHONPATH=sdk/python")

SOLUTION = """\
n={n}
total=0
i=1
while [ $i -le $n ]; do total=$((total + i)); i=$((i + 1)); done
echo $total > answer.txt
cat answer.txt
"""


async def episode(c: paddock.aio.Client, args: argparse.Namespace, run_id: str, i: int) -> dict:
    """One episode: three keyed steps on a sandbox bound to the episode; returns its summary."""
    ep = f"{run_id}/task-{i}"
    n = 10 * (i + 1)
    expected = n * (n + 1) // 2
    replayed = calls = 0
    t0 = time.monotonic()
    async with c.sandbox(args.substrate, args.image, episode=ep, workdir="/work",
                         labels={"run": run_id, "task": str(i)}) as sb:
        # Step 0: the "agent" writes its solution. A function sandbox keeps no files
        # between execs, so there the script travels as stdin of the run step instead.
        script = SOLUTION.format(n=n)
        if args.substrate == "container":
            w = await sb.write_file("solve.sh", script, mode=0o755, idempotency_key=(ep, 0, 0))
            calls += 1
            replayed += w.replayed
            run = await sb.exec(["sh", "solve.sh"], idempotency_key=(ep, 1, 0))
        else:
            run = await sb.exec(["sh", "-s"], stdin=script, cwd="/tmp", idempotency_key=(ep, 1, 0))
        calls += 1
        replayed += run.replayed
        # Step 2: the verifier, also keyed, so a resumed run gets the same verdict.
        check = await sb.exec(["sh", "-c", f'test "$(cat /dev/stdin)" = "{expected}"'],
                              stdin=run.stdout.strip(), idempotency_key=(ep, 2, 0))
        calls += 1
        replayed += check.replayed
    return {
        "episode": ep,
        "answer": run.stdout.decode().strip(),
        "expected": expected,
        "reward": 1.0 if check.exit_code == 0 else 0.0,
        "calls": calls,
        "replayed": replayed,
        "rebuilt": sb.rebuilt,
        "seconds": round(time.monotonic() - t0, 3),
    }


async def main(args: argparse.Namespace) -> int:
    run_id = args.run_id or "harness-" + os.urandom(4).hex()
    kw = {"address": args.tcp, "token_file": args.token_file} if args.tcp else {"socket_path": args.socket}
    async with paddock.aio.Client(**kw) as c:
        sem = asyncio.Semaphore(args.concurrency)

        async def bounded(i: int) -> dict:
            async with sem:
                return await episode(c, args, run_id, i)

        t0 = time.monotonic()
        results = await asyncio.gather(*(bounded(i) for i in range(args.episodes)))
        elapsed = time.monotonic() - t0
    summary = {
        "run_id": run_id,
        "episodes": len(results),
        "mean_reward": sum(r["reward"] for r in results) / max(1, len(results)),
        "calls": sum(r["calls"] for r in results),
        "replayed": sum(r["replayed"] for r in results),
        "seconds": round(elapsed, 3),
    }
    if args.json:
        print(json.dumps({"summary": summary, "episodes": results}))
    else:
        for r in results:
            print(f"{r['episode']:<32} reward {r['reward']:.1f}  answer {r['answer']:>6}  "
                  f"replayed {r['replayed']}/{r['calls']}{'  (sandbox rebuilt)' if r['rebuilt'] else ''}")
        print(f"run {run_id}: {summary['episodes']} episodes, mean reward {summary['mean_reward']:.2f}, "
              f"{summary['calls']} calls ({summary['replayed']} answered from the log), {elapsed:.2f} s")
    return 0 if summary["mean_reward"] == 1.0 else 1


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Drive paddockd sandboxes from Python: N scripted episodes with keyed, replayable calls.")
    ap.add_argument("--image", default=os.environ.get("PADDOCK_IMAGE"),
                    help="image: a name in the daemon's store (default $PADDOCK_IMAGE); "
                         "scripts/make-busybox-rootfs.sh DIR then `paddock image import-dir DIR --name busybox` makes one")
    ap.add_argument("--substrate", choices=["container", "function"], default="container")
    ap.add_argument("--episodes", type=int, default=8, help="episodes to run (default 8)")
    ap.add_argument("--concurrency", type=int, default=8, help="episodes at once (default 8)")
    ap.add_argument("--run-id", help="episode id prefix; reuse one to replay a run from the log")
    ap.add_argument("--socket", help="paddockd's unix socket (default $PADDOCK_SOCKET or /run/paddock/paddockd.sock)")
    ap.add_argument("--tcp", metavar="HOST:PORT", help="reach paddockd over TCP instead (needs --token-file)")
    ap.add_argument("--token-file", help="file holding the bearer token for --tcp")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(argv)
    if not args.image:
        ap.error("--image is required (or set PADDOCK_IMAGE)")
    if args.episodes < 1 or args.concurrency < 1:
        ap.error("--episodes and --concurrency must be at least 1")
    return args


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main(parse(sys.argv[1:]))))
    except paddock.PaddockError as e:
        sys.exit(f"harness: {e.message}")
