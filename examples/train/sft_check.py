#!/usr/bin/env python3
"""sft.py end to end, small (tests/train_tests.cmake: train_sft_smoke).

Writes an export in the shape of episodes.jsonl (token_ids, loss_mask, train):
eight samples whose context is random tokens and whose policy tokens (loss_mask 1)
are one fixed 8-token answer; trains the twin on it with sft.py from seeded
weights; then paddock-policy serves the saved file and, greedy, answers a
training context with the answer. Fails when the loss does not fall or the
engine does not generate what the twin learned. Then grpo.py's logits' scale
(twin.logit_scale) on a fixed group: one step sharpens it, and the file saved
carries it.
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
    check_logit_scale(out, contexts[0], answer, os.path.join(tmp, "scaled.safetensors"))
    subprocess.run(["rm", "-rf", tmp])


def check_logit_scale(weights, context, answer, out):
    """grpo.py's logits' scale on a fixed group: the learned answer rewarded 1, another answer 0,
    their rollout logprobs the twin's own (ratio 1). One step with only the scale learning
    (lr 0.05) sharpens: the scale rises by exactly exp(0.05) (Adam's first step), the file saved
    has norm.weight times that, and the twin loaded from it gives the scaled twin's logprobs."""
    import math
    import types
    import torch
    import grpo
    import sft
    import twin
    model, ref = twin.Twin.load(weights), twin.Twin.load(weights)
    other = [7000 + 13 * i for i in range(len(answer))]
    samples = []
    for toks, reward in ((answer, 1.0), (other, 0.0)):
        ids = context + toks
        at = torch.arange(len(context) - 1, len(ids) - 1)
        with torch.no_grad():
            lps = sft.token_logprobs_at(model, ids, at).tolist()
        samples.append({"token_ids": ids, "loss_mask": [0] * len(context) + [1] * len(toks), "reward": reward,
                        "logprobs": [None] * len(context) + lps, "train": True})
    scale = model.logit_scale()
    opt = torch.optim.AdamW([{"params": [p for p in model.parameters() if p is not scale], "lr": 0.0},
                             {"params": [scale], "lr": 0.05}], weight_decay=0.0)
    args = types.SimpleNamespace(max_len=4096, kl_samples=2, clip=0.2, clip_c=3.0, kl_coef=0.0)
    fig = grpo.grpo_step(model, ref, opt, [{"samples": samples}], args)
    got = math.exp(scale.item())
    print("logits' scale after one step on a fixed group: %.5f (KL to start %.4f)" % (got, fig["kl_to_start"]))
    assert abs(got - math.exp(0.05)) < 1e-5, "the scale did not sharpen by Adam's first step: %r" % got
    model.save(out)
    back = twin.Twin.load(out)
    ratio = back.p("norm.weight") / ref.p("norm.weight")
    assert (ratio / got - 1).abs().max().item() < 1e-6, "norm.weight saved is not the start's times the scale"
    ids, at = context + answer, torch.arange(len(context) - 1, len(context) + len(answer) - 1)
    with torch.no_grad():
        d = (sft.token_logprobs_at(back, ids, at) - sft.token_logprobs_at(model, ids, at)).abs().max().item()
    assert d < 1e-5, "the saved file does not give the scaled twin's logprobs (max |delta| %g)" % d
    print("saved with the scale in norm.weight; reloaded, the same logprobs (max |delta| %.1g)" % d)


if __name__ == "__main__":
    main()
