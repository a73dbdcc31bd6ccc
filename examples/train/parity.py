#!/usr/bin/env python3
"""Logprob parity between the embedded engine (paddock-policy) and the PyTorch twin.

Starts paddock-policy on a weights file, samples sequences through its /generate
API (temperature 1, no top-k/top-p, no constraint: the reported logprobs are the
plain log-softmax of the logits), recomputes every generated token's logprob with
the twin's full-sequence forward on the same weights, and compares.

  --exact   the engine runs with --exact-kv (no FP8/BF16/int4 storage emulation):
            every |engine - twin| must be <= --tol (1e-4), else exit 1
  --emulated  the engine runs as served by default (FP8/BF16/int4 KV): the
            mismatch is reported (mean/max |delta logprob|, KL per token), not asserted
  (both by default)

KL per token is estimated from the engine's samples (the engine reports only the
sampled token's logprob): k1 = mean(lp_engine - lp_twin) and
k3 = mean(exp(r) - 1 - r), r = lp_twin - lp_engine (both estimate KL(engine || twin)).
--json prints the figures as one JSON object on the last line.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import twin  # noqa: E402


def start_server(binary, weights, config, exact, threads):
    cmd = [binary, "--listen", "127.0.0.1:0", "--config", config, "--weights", weights,
           "--threads", str(threads)]
    if exact:
        cmd.append("--exact-kv")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r"on http://([0-9.]+):(\d+)", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"paddock-policy did not start: {line!r} {proc.stderr.read()}")
    if exact and "exact KV" not in line:
        proc.kill()
        raise RuntimeError(f"paddock-policy does not say it runs with --exact-kv: {line!r}")
    return proc, f"http://{m.group(1)}:{m.group(2)}"


def generate(url, prompt, n, seed):
    body = {"input_ids": prompt, "return_logprob": True,
            "sampling_params": {"temperature": 1.0, "max_new_tokens": n, "ignore_eos": True, "seed": seed}}
    req = urllib.request.Request(url + "/generate", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.loads(r.read())
    ids = out["output_ids"]
    lps = [e[0] for e in out["meta_info"]["output_token_logprobs"]]
    assert len(ids) == n and len(lps) == n, (len(ids), len(lps))
    return ids, lps


def compare(model, seqs):
    """seqs: [(prompt, ids, engine_lps)] -> per-token (engine, twin) pairs."""
    pairs = []
    with torch.no_grad():
        for prompt, ids, lps in seqs:
            full = prompt + ids
            lp = model.token_logprobs(full)[len(prompt) - 1:]
            pairs.extend(zip(lps, lp.tolist()))
    return pairs


def figures(pairs):
    d = [abs(a - b) for a, b in pairs]
    r = [b - a for a, b in pairs]
    worst = max(range(len(d)), key=lambda i: d[i])
    return {
        "tokens": len(pairs),
        "mean_abs_delta": sum(d) / len(d),
        "max_abs_delta": d[worst],
        "worst_token_index": worst,
        "kl_k1": sum(a - b for a, b in pairs) / len(pairs),
        "kl_k3": sum(math.exp(x) - 1 - x for x in r) / len(r),
        "frac_over_1e-4": sum(x > 1e-4 for x in d) / len(d),
    }


def show(mode, label, f):
    print(f"engine {mode:8s} vs {label:28s} tokens {f['tokens']}  mean |dlogprob| {f['mean_abs_delta']:.3g}  "
          f"max {f['max_abs_delta']:.3g}  KL/token k1 {f['kl_k1']:.3g} k3 {f['kl_k3']:.3g}  "
          f"over 1e-4: {100 * f['frac_over_1e-4']:.2f}%", flush=True)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy-bin", default=os.path.join(root, "build/policy/paddock-policy"))
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--weights", help="safetensors file (default: paddock-policy --save-weights --seed SEED)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the generated weights")
    ap.add_argument("--sequences", type=int, default=3)
    ap.add_argument("--prompt-len", type=int, default=40)
    ap.add_argument("--new-tokens", type=int, default=300,
                    help="generated tokens per sequence (past the window and many CSA/HCA blocks)")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--exact", action="store_true", help="only the --exact-kv check")
    ap.add_argument("--emulated", action="store_true", help="only the emulated report")
    ap.add_argument("--breakdown", action="store_true",
                    help="with the emulated engine, also the twin emulating only the FP8/BF16 entries "
                         "and only the int4 indexer keys: which storage causes the mismatch")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(max(1, args.threads))
    modes = []
    if args.exact or not args.emulated:
        modes.append("exact")
    if args.emulated or not args.exact:
        modes.append("emulated")

    tmp = tempfile.mkdtemp(prefix="paddock-parity-")
    weights = args.weights
    if not weights:
        weights = os.path.join(tmp, "weights.safetensors")
        subprocess.run([args.policy_bin, "--save-weights", weights, "--config", args.config,
                        "--seed", str(args.seed)], check=True, stdout=subprocess.DEVNULL)
    model = twin.Twin.load(weights)
    if model.config.name != args.config:
        sys.exit(f"parity: {weights} holds config {model.config.name!r}, not {args.config!r}")
    rng = random.Random(1234)
    prompts = [[rng.randrange(2, model.config.vocab_size) for _ in range(args.prompt_len)]
               for _ in range(args.sequences)]
    result = {"config": args.config, "weights": args.weights or f"seed {args.seed}"}
    ok = True
    for mode in modes:
        proc, url = start_server(args.policy_bin, weights, args.config, mode == "exact", args.threads)
        try:
            t0 = time.time()
            seqs = [(p, *generate(url, p, args.new_tokens, 100 + i)) for i, p in enumerate(prompts)]
            gen_s = time.time() - t0
        finally:
            proc.terminate()
            proc.wait()
        t0 = time.time()
        model.emulate = set()
        f = figures(compare(model, seqs))
        f["generate_s"] = round(gen_s, 2)
        f["twin_s"] = round(time.time() - t0, 2)
        result[mode] = f
        show(mode, "twin exact", f)
        if mode == "emulated":
            variants = [("entries", "index")]
            if args.breakdown:
                variants += [("entries",), ("index",)]
            for v in variants:
                model.emulate = set(v)
                g = figures(compare(model, seqs))
                label = "twin emulating " + "+".join(v)
                result[mode]["vs " + label] = g
                show(mode, label, g)
            model.emulate = set()
        if mode == "exact" and f["max_abs_delta"] > args.tol:
            ok = False
            print(f"parity: FAILED: max |dlogprob| {f['max_abs_delta']:.3g} > {args.tol} with --exact-kv "
                  f"(token {f['worst_token_index']})", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
