#!/usr/bin/env python3
"""ctest train_loop_smoke: the training loop's pieces against a real paddockd and
paddock-policy, small enough for a test (busybox tasks only):

  1. the oracle rollout: examples/demo/make_tasks.py --split train tasks answered
     by oracle.py's per-task script (`--policy scripted`, by_prompt and
     {last_output}): every episode is rewarded 1.0 and its export has policy
     tokens (loss_mask);
  2. sft.py, a few steps on that export from seeded weights: the mean loss on the
     policy tokens of the export falls;
  3. grpo.py, one step end to end: a rollout with G samples per task (coin-flip
     tasks whose verifier rewards at random, so groups carry a signal), the
     groups streamed, a gradient step, new weights written and loaded through
     `paddock rollout update-policy` (paddock-policy then reports the version
     step-1), the figures logged and the curve written; the logits' scale
     (twin.logit_scale) is written into the final norm's gain.

  loop_check.py --build BUILD [--work DIR]
Exits 1 saying what failed; 77 when not root (sandboxes need it).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import stack  # noqa: E402


def fail(msg):
    print("loop_check: FAILED: " + msg, flush=True)
    sys.exit(1)


def mean_loss(weights, export):
    import torch
    import sft
    import twin
    torch.set_num_threads(1)
    model = twin.Twin.load(weights)
    data = sft.read_samples([export], 1.0)
    with torch.no_grad():
        return sum(sft.nll(model, i, m).item() for i, m in data) / len(data)


def check_logit_scale(row, before, after):
    """With a group that carried signal, the logits' scale (--scale-lr 0.05) took its first Adam step
    (a log-scale move of 0.05 either way); without one (the coin can land the same way 4 times in
    both groups) it stayed 1. Either way the weights written carry it in the final norm's gain:
    every entry is the start's times the scale (up to the gain's own step at --lr, 2e-4).
    (sft_check.py checks the scale's step on a fixed batch, independent of the coin.)"""
    import math
    import twin
    s = row.get("logit_scale")
    if s is None:
        fail("grpo.py's step has no logit_scale: %s" % row)
    if row["tokens"] > 0 and not 0.04 < abs(math.log(s)) < 0.06:
        fail("the logits' scale did not take its step (logit_scale %r)" % s)
    if row["tokens"] == 0 and s != 1.0:
        fail("the logits' scale moved (%r) on a step without signal" % s)
    g0, g1 = twin.Twin.load(before).p("norm.weight"), twin.Twin.load(after).p("norm.weight")
    err = ((g1 / g0) / s - 1).abs().max().item()
    if err > 1e-3:
        fail("norm.weight written is not the start's times the logits' scale %.4f (worst entry off by %.2g)"
             % (s, err))
    print("grpo: the logits' scale %.4f is written into norm.weight (worst entry off by %.1g)" % (s, err))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("SKIP: sandboxes need root")
        sys.exit(77)
    work = a.work or tempfile.mkdtemp(prefix="paddock-loop-check-")
    os.chmod(work, 0o755)  # sandbox users must reach the state dir below it
    st = stack.Stack(a.build, work)
    py = sys.executable
    ok = False
    try:
        st.start_daemon()
        images = st.import_images(debian=False)
        tasks = os.path.join(work, "train.jsonl")
        # busybox function (multiply, login shell) and container (count.sh fix, logs) tasks.
        subprocess.run([py, os.path.join(stack.ROOT, "examples/demo/make_tasks.py"), "--episodes", "4", "--busybox",
                        images[0], "--python", "", "--split", "train", "--seed", "5", "--max-turns", "3",
                        "--max-new-tokens", "160", "--out", tasks], check=True)
        script = os.path.join(work, "oracle.json")
        with open(script, "w") as f:
            subprocess.run([py, os.path.join(HERE, "oracle.py"), tasks], stdout=f, check=True)
        lines = st.run(tasks, "oracle", script=script, concurrency=4)
        if len(lines) != 4:
            fail("the oracle rollout exported %d episodes, not 4" % len(lines))
        for s in lines:
            if s["reward"] != 1.0:
                fail("oracle episode %s: reward %s (%s): %s" % (s["task_id"], s["reward"], s["stop_reason"],
                                                               json.dumps(s.get("messages"))[-600:]))
            if sum(s["loss_mask"]) == 0 or len(s["loss_mask"]) != len(s["token_ids"]):
                fail("oracle episode %s: no policy tokens in the export" % s["task_id"])
        print("oracle rollout: 4 episodes, each rewarded 1.0 (answers from {last_output} and given)", flush=True)

        export = os.path.join(work, "runs", "oracle", "episodes.jsonl")
        init = os.path.join(work, "seeded.safetensors")
        st.save_seeded_weights(init, seed=1)
        out = os.path.join(work, "sft.safetensors")
        subprocess.run([py, os.path.join(HERE, "sft.py"), export, "--init", init, "--out", out, "--steps", "4",
                        "--batch", "2", "--lr", "3e-3", "--warmup", "1", "--min-reward", "1", "--log-every", "1"],
                       check=True)
        before, after = mean_loss(init, export), mean_loss(out, export)
        print("sft: mean loss on the policy tokens %.3f -> %.3f" % (before, after), flush=True)
        if not after < before - 0.5:
            fail("sft did not reduce the loss on the policy tokens (%.3f -> %.3f)" % (before, after))

        coin = os.path.join(work, "coin.jsonl")
        with open(coin, "w") as f:
            for n in range(4):
                f.write(json.dumps({
                    "id": "coin-%d" % n, "image": images[0], "substrate": "function",
                    "system": "You are an agent.", "instruction": "Flip a coin %d times, then call submit." % n,
                    "tools": ["bash", "submit"], "max_turns": 1, "max_tokens": 4096, "max_new_tokens": 24,
                    "verifier": {"command": "echo $((RANDOM % 2))", "reward": "stdout", "timeout_s": 10}}) + "\n")
        url = st.start_policy(out)
        gdir = os.path.join(work, "grpo")
        subprocess.run([py, os.path.join(HERE, "grpo.py"), "--tasks", coin, "--init", out, "--work", gdir,
                        "--paddock", st.paddock, "--policy-url", url, "--steps", "1", "--group", "4",
                        "--groups-per-step", "2", "--chunk-steps", "1", "--concurrency", "4",
                        "--scale-lr", "0.05", "--rollout-id", "loop"], check=True)
        rows = [json.loads(l) for l in open(os.path.join(gdir, "grpo.jsonl"))]
        if len(rows) != 1:
            fail("grpo.py logged %d steps, not 1" % len(rows))
        r = rows[0]
        for k in ("reward", "kl_to_start", "gap_mean", "gap_max", "gap_k1"):
            if k not in r:
                fail("grpo.py's step has no %r: %s" % (k, r))
        with urllib.request.urlopen(url + "/weight_version", timeout=30) as resp:
            version = json.loads(resp.read())["weight_version"]
        if version != "step-1":
            fail("paddock-policy serves weight version %r after the step, not step-1" % version)
        for f in ("grpo.safetensors", "weights/step-1.safetensors"):
            if not os.path.exists(os.path.join(gdir, f)):
                fail("grpo.py wrote no %s" % f)
        check_logit_scale(r, out, os.path.join(gdir, "weights", "step-1.safetensors"))
        if not any(os.path.exists(os.path.join(gdir, "reward_curve." + e)) for e in ("png", "csv")):
            fail("grpo.py drew no reward curve")
        print("grpo: one step: reward %.3f, %d samples, KL to start %s, gap mean %s; "
              "paddock-policy now serves step-1" % (r["reward"], r["samples"], r["kl_to_start"], r["gap_mean"]))
        print("loop_check: OK")
        ok = True
    finally:
        st.close()
    if ok and not a.work:
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
