#!/usr/bin/env python3
"""sft.py end to end, small (tests/train_tests.cmake: train_sft_smoke).

Writes an export in the shape of episodes.jsonl (token_ids, loss_mask, train):
eight samples whose context is random tokens and whose policy tokens (loss_mask 1)
are one fixed 8-token answer; trains the twin on it with sft.py from seeded
weights; then paddock-policy serves the saved file and, greedy, answers a
training context with the answer. Fails when the loss does not fall or the
engine does not generate what the twin learned.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import urllib.request

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
import parity  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy-bin", required=True)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="paddock-sft-")
    init = os.path.join(tmp, "init.safetensors")
    out = os.path.join(tmp, "sft.safetensors")
    subprocess.run([args.policy_bin, "--save-weights", init, "--config", "tiny", "--seed", "3"],
                   check=True, stdout=subprocess.DEVNULL)
    rng = random.Random(7)
    answer = [5000 + 17 * i for i in range(8)]
    contexts = [[rng.randrange(2, 100000) for _ in range(24)] for _ in range(8)]
    export = os.path.join(tmp, "episodes.jsonl")
    with open(export, "w") as f:
        for i, c in enumerate(contexts):
            f.write(json.dumps({"sample": i, "train": True, "reward": 1.0, "token_ids": c + answer,
                                "loss_mask": [0] * len(c) + [1] * len(answer)}) + "\n")
        # not trainable: ignored
        f.write(json.dumps({"sample": 9, "train": False, "token_ids": [3] * 40, "loss_mask": [1] * 40}) + "\n")
    r = subprocess.run([sys.executable, os.path.join(here, "sft.py"), export, "--init", init, "--out", out,
                        "--steps", "25", "--batch", "4", "--lr", "1e-2", "--threads", "1"],
                       check=True, stdout=subprocess.PIPE, text=True)
    print(r.stdout)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["samples"] == 8, res
    assert res["final_mean_loss"] < 0.5 * res["first_loss"], res
    proc, url = parity.start_server(args.policy_bin, out, "tiny", False, 1)
    try:
        body = {"input_ids": contexts[0] + answer[:1], "return_logprob": True,
                "sampling_params": {"temperature": 0, "max_new_tokens": len(answer) - 1, "ignore_eos": True}}
        req = urllib.request.Request(url + "/generate", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        got = json.loads(urllib.request.urlopen(req, timeout=300).read())["output_ids"]
    finally:
        proc.terminate()
        proc.wait()
    print(f"engine on the SFT weights, greedy after a training context: {got} (answer {answer[1:]})")
    assert got == answer[1:], "the served weights do not generate what the twin learned"
    subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
