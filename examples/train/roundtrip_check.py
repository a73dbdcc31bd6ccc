#!/usr/bin/env python3
"""The twin's weights files are the engine's: a check (tests/train_tests.cmake).

1. The twin loads a file paddock-policy wrote and saves it again unchanged: the
   engine generates the same tokens and logprobs (greedy, bit for bit) from both.
2. The twin perturbs every tensor and saves: the engine (--exact-kv) serves the
   new file, and its logprobs are the twin's to 1e-4, while the old ones are not.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import parity  # noqa: E402
import twin  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy-bin", required=True)
    ap.add_argument("--dir", required=True, help="holds a.safetensors (paddock-policy --save-weights)")
    ap.add_argument("--config", default="tiny")
    args = ap.parse_args()
    torch.set_num_threads(1)
    a = os.path.join(args.dir, "a.safetensors")
    a2 = os.path.join(args.dir, "a2.safetensors")
    b = os.path.join(args.dir, "b.safetensors")
    m = twin.Twin.load(a)
    m.save(a2)
    again = twin.Twin.load(a2)
    for name, p in m.params.items():
        assert torch.equal(p, again.params[name]), f"{name}: changed by save + load"
    prompt = list(range(1000, 1040))

    def greedy(path, exact=False, n=60):
        proc, url = parity.start_server(args.policy_bin, path, args.config, exact, 1)
        try:
            import json
            import urllib.request
            body = {"input_ids": prompt, "return_logprob": True,
                    "sampling_params": {"temperature": 0, "max_new_tokens": n, "ignore_eos": True}}
            req = urllib.request.Request(url + "/generate", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
            out = json.loads(urllib.request.urlopen(req, timeout=300).read())
            return out["output_ids"], [e[0] for e in out["meta_info"]["output_token_logprobs"]]
        finally:
            proc.terminate()
            proc.wait()

    ta, la = greedy(a)
    ta2, la2 = greedy(a2)
    assert ta == ta2 and la == la2, "the twin's re-saved file generates differently"
    print(f"resaved: {len(ta)} greedy tokens identical, logprobs bit for bit")

    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in m.params.values():
            p.add_(0.2 * p.abs().mean() * torch.randn(p.shape, generator=g))
    m.save(b)
    tb, lb = greedy(b, exact=True)
    with torch.no_grad():
        mine = m.token_logprobs(prompt + tb)[len(prompt) - 1:].tolist()
        old = twin.Twin.load(a).token_logprobs(prompt + tb)[len(prompt) - 1:].tolist()
    worst = max(abs(x - y) for x, y in zip(lb, mine))
    worst_old = max(abs(x - y) for x, y in zip(lb, old))
    print(f"perturbed: engine vs twin max |dlogprob| {worst:.3g} (vs the unperturbed weights {worst_old:.3g})")
    assert worst <= 1e-4, worst
    assert worst_old > 1e-2, "the perturbation did not reach the engine"
    assert tb != ta, "the perturbed weights generate the same tokens"


if __name__ == "__main__":
    main()
