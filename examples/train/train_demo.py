#!/usr/bin/env python3
"""The training demo (`make train-demo`): SFT on Paddock's exported oracle
trajectories, then GRPO on Paddock's streamed groups, with the held-out reward
measured through real `paddock run`s (tool-constrained decoding, as the demo
rolls out) before training, after SFT and after GRPO. docs/training.md.

  1. paddockd (own state under WORK), the demo images, seeded tiny weights;
  2. tasks (examples/demo/make_tasks.py): --sft-tasks training instances
     (--split train --seed 1), --eval-tasks held-out ones (--split heldout:
     other numbers, file and person names) and the GRPO instances (train, seed 2);
  3. the oracle rollout: `paddock run --policy scripted` with oracle.py's
     per-task script; its export (token ids, loss mask, rewards) is the SFT data;
  4. held-out reward of the untrained weights;
  5. sft.py on the export (loss on the policy tokens, the embedding kept);
  6. held-out reward after SFT;
  7. grpo.py (G samples per task, K groups per step, update-policy each step);
  8. held-out reward after GRPO; the reward curve; WORK/summary.json.

The final weights are kept as WORK/weights/demo.safetensors (scripts/demo.sh
serves them when present) and packed small (weights_pack.py) as
WORK/weights/demo-delta.safetensors.

  /usr/bin/python3 examples/train/train_demo.py [--build build] [--work build/train-demo] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import stack  # noqa: E402

ROOT = stack.ROOT


def say(msg):
    print("\n\033[1m== %s\033[0m" % msg, flush=True)


def note(msg):
    print("   " + msg, flush=True)


def make_tasks(path, n, split, seed, images, turns, tokens):
    bb, py = images
    subprocess.run([sys.executable, os.path.join(ROOT, "examples/demo/make_tasks.py"), "--episodes", str(n),
                    "--busybox", bb, "--python", py, "--split", split, "--seed", str(seed), "--max-turns",
                    str(turns), "--max-new-tokens", str(tokens), "--out", path], check=True)


# sft.py options that teach copying numbers (docs/training.md, "Copying numbers"): the
# copied numbers of 70% of the drawn episodes replaced by other number tokens, their
# loss weighed 5x, one trained vector and scale shared by the number tokens' embedding
# rows (started random), and head 0 of layer 3 started as a copy head (output gain 4).
# COPY_CONTINUE: the same, continuing from trained weights (--init): their copy head
# and number rows kept, not started again.
COPY_CONTINUE = "--copy-augment 0.7 --copy-weight 5 --number-vector"
COPY_RECIPE = COPY_CONTINUE + " --number-vector-init 1 --copy-head 3 --copy-head-gain 4"

# The families whose answer changes with the instance: the number is copied from
# the instruction into the command (multiplication, sum of squares, factorial) or
# from the command's output into the answer (those and the CSV total), plus the
# ERROR count (a fixed command whose output is copied). --sft-copy-tasks adds
# training instances of these only.
COPY_KINDS = ("what-is-compute-it", "use-python-to-compute", "work-data-csv-has", "the-directory-work-logs")


def add_copy_tasks(path, n, images, turns, tokens, seed=3):
    """Appends to the tasks file at `path` n training instances (--split train --seed
    `seed`) of the COPY_KINDS families."""
    tmp = path + ".more"
    make_tasks(tmp, 4 * n, "train", seed, images, turns, tokens)
    with open(tmp) as f:
        more = [l for l in f if l.strip() and json.loads(l)["metadata"]["kind"] in COPY_KINDS][:n]
    os.remove(tmp)
    with open(path, "a") as f:
        f.writelines(more)
    return len(more)


def pack_delta(final, st, wdir):
    """Packs `final` as WORK/weights/demo-delta.safetensors against the seeded (--seed 1)
    weights: the embedding rows training changed are kept (weights_pack.py --base). Weights
    whose embedding is not mostly the seeded one (e.g. --init from elsewhere) are not packed."""
    seeded = os.path.join(wdir, "seeded.safetensors")
    if not os.path.exists(seeded):
        st.save_seeded_weights(seeded, seed=1)
    r = subprocess.run([sys.executable, os.path.join(HERE, "weights_pack.py"), "pack", final,
                        os.path.join(wdir, "demo-delta.safetensors"), "--seed", "1", "--base", seeded],
                       capture_output=True, text=True)
    note("packed as demo-delta.safetensors" if r.returncode == 0 else "not packed: " + r.stderr.strip())


def evaluate(st, weights, tasks, rid, a):
    """Held-out mean reward: a.eval_samples samples of every task, episode i sampled with seed i (so the same
    weights score the same, and the samples of a task are independent draws)."""
    t = time.time()
    st.start_policy(weights)
    lines = st.run(tasks, rid, concurrency=a.concurrency, samples=a.eval_samples, extra=("--seed", "0"))
    st.stop_policy()
    mean, by, infra = stack.rewards(lines)
    note("held-out mean reward %.3f over %d episodes (%d infra) in %.0f s" % (mean, len(lines), infra,
                                                                            time.time() - t))
    note("  by family: " + ", ".join("%s %.2f" % (k, v) for k, v in by.items()))
    return {"mean": mean, "by_family": by, "episodes": len(lines), "infra": infra, "seconds": time.time() - t}


def run_grpo(a, st, summary, times, work, sft_out, grpo_tasks, heldout):
    """GRPO from sft_out; returns the final weights, the logged steps and the curve."""
    say("GRPO: %d steps of %d groups x %d samples, on Paddock's streamed groups" %
        (a.grpo_steps, a.groups_per_step, a.group))
    t = time.time()
    gdir = os.path.join(work, "grpo")
    shutil.rmtree(gdir, ignore_errors=True)
    os.makedirs(gdir)
    base = summary.get("heldout_sft") or summary.get("heldout_init") or summary.get("heldout_untrained")
    with open(os.path.join(gdir, "evals.json"), "w") as f:
        json.dump({"0": base["mean"]}, f)
    url = st.start_policy(sft_out)
    subprocess.run([sys.executable, os.path.join(HERE, "grpo.py"), "--tasks", grpo_tasks, "--init", sft_out,
                    "--work", gdir, "--paddock", st.paddock, "--policy-url", url, "--steps", str(a.grpo_steps),
                    "--group", str(a.group), "--groups-per-step", str(a.groups_per_step),
                    "--lr", str(a.grpo_lr), "--scale-lr", str(a.grpo_scale_lr),
                    "--concurrency", str(a.concurrency), "--rollout-id", "grpo"],
                   check=True)
    st.stop_policy()
    times["grpo_s"] = time.time() - t
    final = os.path.join(gdir, "grpo.safetensors")
    rows = [json.loads(l) for l in open(os.path.join(gdir, "grpo.jsonl"))]
    last = rows[-1]["step"] if rows else 1
    evals = {0: base["mean"]}
    for k in range(a.grpo_eval_every, last, a.grpo_eval_every) if a.grpo_eval_every > 0 else ():
        say("held-out reward after GRPO step %d" % k)
        r = evaluate(st, os.path.join(gdir, "weights", "step-%d.safetensors" % k), heldout, "eval-grpo-%d" % k, a)
        summary.setdefault("heldout_grpo_steps", {})[str(k)] = r
        evals[k] = r["mean"]
    say("held-out reward after GRPO")
    summary["heldout_grpo"] = evaluate(st, final, heldout, "eval-grpo", a)
    evals[last] = summary["heldout_grpo"]["mean"]

    # The curve again, with the held-out points.
    sys.path.insert(0, HERE)
    import grpo
    with open(os.path.join(gdir, "evals.json"), "w") as f:
        json.dump(evals, f)
    curve = grpo.draw_curve(rows, evals, gdir)
    summary["grpo_evals"] = evals
    return final, rows, curve


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--work", default=None, help="default BUILD/train-demo")
    ap.add_argument("--sft-tasks", type=int, default=640)
    ap.add_argument("--eval-tasks", type=int, default=40)
    ap.add_argument("--eval-samples", type=int, default=4,
                    help="samples of each held-out task (independent draws: a family scores its solve rate)")
    ap.add_argument("--sft-steps", type=int, default=900)
    ap.add_argument("--sft-batch", type=int, default=4)
    ap.add_argument("--sft-lr", type=float, default=3e-3)
    ap.add_argument("--sft-time", type=float, default=960,
                    help="stop SFT after this many seconds (default 960: the demo within 30 minutes; 0: none)")
    ap.add_argument("--sft-copy-tasks", type=int, default=640,
                    help="extra training instances of the families whose answer is copied (COPY_KINDS)")
    ap.add_argument("--sft-args", default=COPY_RECIPE,
                    help="more sft.py options, as one string (default: %(default)r, the recipe that teaches "
                         "copying numbers: docs/training.md; '' for plain SFT)")
    ap.add_argument("--sft-device", default="cpu", help="torch device for SFT (cuda where there is one)")
    ap.add_argument("--stop-after", choices=["oracle", "sft"],
                    help="oracle: stop once the SFT data is exported (to train elsewhere, e.g. on a GPU); "
                         "sft: no GRPO, the SFT weights are the result")
    ap.add_argument("--sft-weights", help="SFT weights trained elsewhere (sft.py on the oracle export): "
                                          "evaluate them instead of training")
    ap.add_argument("--grpo-steps", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--groups-per-step", type=int, default=4)
    ap.add_argument("--grpo-lr", type=float, default=5e-4)
    ap.add_argument("--grpo-scale-lr", type=float, default=0.02,
                    help="grpo.py --scale-lr: learning rate of the logits' scale (docs/training.md)")
    ap.add_argument("--grpo-eval-every", type=int, default=8,
                    help="held-out reward of every Nth step's weights too, for the curve (0: only the last)")
    ap.add_argument("--init", default=None, help="start SFT from these weights instead of the seeded ones")
    ap.add_argument("--skip-sft", action="store_true", help="GRPO straight from --init (e.g. the shipped weights)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--no-debian", action="store_true", help="busybox tasks only")
    ap.add_argument("--quick", action="store_true", help="a few steps of each (for tests)")
    a = ap.parse_args()
    if a.quick:
        a.sft_tasks, a.eval_tasks, a.sft_steps, a.sft_batch, a.grpo_steps = 8, 8, 3, 2, 2
        a.grpo_eval_every = 1
        a.sft_copy_tasks = 0
        a.eval_samples = 1
        a.group, a.groups_per_step = 2, 2
    work = os.path.abspath(a.work or os.path.join(a.build, "train-demo"))
    started = time.time()
    times = {}
    st = stack.Stack(a.build, work)
    summary = {}
    try:
        say("paddockd, the demo images, seeded weights (work %s)" % work)
        shutil.rmtree(os.path.join(work, "runs"), ignore_errors=True)
        st.start_daemon()
        images = st.import_images(debian=not a.no_debian)
        wdir = os.path.join(work, "weights")
        os.makedirs(wdir, exist_ok=True)
        init = a.init or os.path.join(wdir, "seeded.safetensors")
        if not a.init:
            st.save_seeded_weights(init, seed=1)
        times["setup_s"] = time.time() - started

        say("tasks: %d training instances, %d held-out (other numbers, files, names)" % (a.sft_tasks, a.eval_tasks))
        tdir = os.path.join(work, "tasks")
        os.makedirs(tdir, exist_ok=True)
        train, heldout, grpo_tasks = (os.path.join(tdir, n) for n in ("train.jsonl", "heldout.jsonl", "grpo.jsonl"))
        # 512 tokens a turn: the tool constraint keeps a reserve of the budget for closing
        # the call (docs/paddock-policy.md); with 160 it closes every value at once.
        turns, tokens = 3, 512
        make_tasks(train, a.sft_tasks, "train", 1, images, turns, tokens)
        if a.sft_copy_tasks:
            note("+ %d training instances of the copying families" %
                 add_copy_tasks(train, a.sft_copy_tasks, images, turns, tokens))
        make_tasks(heldout, a.eval_tasks, "heldout", 0, images, turns, tokens)
        make_tasks(grpo_tasks, max(4, a.grpo_steps * a.groups_per_step * 2), "train", 2, images, turns, tokens)

        t = time.time()
        if not a.skip_sft and not a.sft_weights:
            say("the oracle rollout: each training task answered with its own scripted solution (SFT data)")
            script = os.path.join(tdir, "oracle.json")
            with open(script, "w") as f:
                subprocess.run([sys.executable, os.path.join(HERE, "oracle.py"), train], stdout=f, check=True)
            lines = st.run(train, "oracle", script=script, concurrency=a.concurrency)
            mean, by, infra = stack.rewards(lines)
            export = os.path.join(work, "runs", "oracle", "episodes.jsonl")
            note("%d episodes, mean reward %.3f (%d infra); export %s" % (len(lines), mean, infra, export))
            summary["oracle_reward"] = mean
        times["oracle_s"] = time.time() - t
        if a.stop_after == "oracle":
            note("SFT data: %s" % export)
            return

        if not a.sft_weights:
            say("held-out reward before training")
            summary["heldout_untrained" if not a.init else "heldout_init"] = evaluate(
                st, init, heldout, "eval-init", a)

        sft_out = init
        if a.sft_weights:
            sft_out = os.path.abspath(a.sft_weights)
            say("held-out reward of the given SFT weights (%s)" % sft_out)
            summary["heldout_sft"] = evaluate(st, sft_out, heldout, "eval-sft", a)
        elif not a.skip_sft:
            say("SFT: %d steps of %d samples, loss on the policy tokens (loss_mask)" % (a.sft_steps, a.sft_batch))
            t = time.time()
            sft_out = os.path.join(wdir, "sft.safetensors")
            cmd = [sys.executable, os.path.join(HERE, "sft.py"), export, "--init", init, "--out", sft_out,
                   "--steps", str(a.sft_steps), "--batch", str(a.sft_batch), "--lr", str(a.sft_lr),
                   "--min-reward", "1", "--log-every", "10", "--warmup", "10", "--device", a.sft_device]
            if a.sft_time:
                cmd += ["--time-limit", str(a.sft_time)]
            cmd += shlex.split(COPY_CONTINUE if a.init and a.sft_args == COPY_RECIPE else a.sft_args)
            subprocess.run(cmd, check=True)
            times["sft_s"] = time.time() - t
            say("held-out reward after SFT")
            summary["heldout_sft"] = evaluate(st, sft_out, heldout, "eval-sft", a)

        rows, curve, final = [], None, sft_out
        if a.stop_after != "sft":
            final, rows, curve = run_grpo(a, st, summary, times, work, sft_out, grpo_tasks, heldout)
        shutil.copy(final, os.path.join(wdir, "demo.safetensors"))
        pack_delta(final, st, wdir)
        times["total_s"] = time.time() - started
        summary["times"] = {k: round(v, 1) for k, v in times.items()}
        summary["curve"] = curve
        summary["grpo_steps"] = rows
        with open(os.path.join(work, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        say("done in %.0f s" % times["total_s"])
        for k in ("heldout_untrained", "heldout_init", "heldout_sft"):
            if k in summary:
                note("%-18s %.3f" % (k, summary[k]["mean"]))
        for k, r in summary.get("heldout_grpo_steps", {}).items():
            note("%-18s %.3f" % ("heldout_grpo_%s" % k, r["mean"]))
        if "heldout_grpo" in summary:
            note("%-18s %.3f" % ("heldout_grpo", summary["heldout_grpo"]["mean"]))
        if rows:
            note("reward curve: %s" % curve)
            import grpo
            print(grpo.text_curve(rows, summary["grpo_evals"]))
        note("weights: %s (scripts/demo.sh serves them)" % os.path.join(wdir, "demo.safetensors"))
        note("summary: %s" % os.path.join(work, "summary.json"))
    finally:
        st.close()


if __name__ == "__main__":
    main()
