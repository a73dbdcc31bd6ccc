#!/usr/bin/env python3
"""Supervised warm start of the PyTorch twin on Paddock's exported trajectories.

Reads episodes.jsonl files (`paddock run --out DIR`: docs/export.schema.json),
keeps the samples with `train: true`, and minimizes the mean negative
log-likelihood of the tokens whose `loss_mask` is 1 (the policy's own tokens;
prompts, tool results and the chat template are context only). Writes a
safetensors file that paddock-policy serves as it is (--weights FILE or
/update_weights_from_disk).

  /usr/bin/python3 examples/train/sft.py runs/R/episodes.jsonl --init weights.safetensors \\
      --out sft.safetensors --steps 200 --lr 3e-3

--init: a weights file (paddock-policy --save-weights FILE --config tiny writes
seeded ones). --min-reward R keeps only samples rewarded at least R (the
scripted solutions). Prints the loss every --log-every steps.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import twin  # noqa: E402


def read_samples(paths, min_reward=None, max_len=2048):
    out = []
    for path in paths:
        with open(path) as f:
            for line in f:
                if not line.strip():
                    continue
                s = json.loads(line)
                if not s.get("train", True):
                    continue
                if min_reward is not None and (s.get("reward") or 0) < min_reward:
                    continue
                ids, mask = s["token_ids"], s["loss_mask"]
                if len(ids) != len(mask) or sum(mask[1:]) == 0:
                    continue
                out.append((ids[:max_len], mask[:max_len]))
    return out


def nll(model, ids, mask):
    """Mean -log p over the positions with loss_mask 1 (the first token has no context)."""
    ids_t = torch.tensor(ids, dtype=torch.long)
    at = torch.tensor(mask[1:], dtype=torch.bool).nonzero().flatten()  # predict ids[at + 1]
    h = model.hidden(ids_t)[at]  # only the rows with a loss: the vocabulary is large
    E = twin._Bf16Round.apply(model.p("embed.weight"))
    lp = torch.log_softmax(h @ E.t(), dim=-1).gather(1, ids_t[at + 1][:, None]).squeeze(1)
    return -lp.mean()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("exports", nargs="+", help="episodes.jsonl files")
    ap.add_argument("--init", required=True, help="starting weights (safetensors)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=4, help="samples per step")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-reward", type=float)
    ap.add_argument("--max-len", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    data = read_samples(args.exports, args.min_reward, args.max_len)
    if not data:
        sys.exit("sft: no trainable samples with policy tokens in " + ", ".join(args.exports))
    model = twin.Twin.load(args.init)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    tokens = sum(sum(m) for _, m in data)
    print(f"sft: {len(data)} samples, {tokens} policy tokens; {model.config.name}", flush=True)
    t0 = time.time()
    first = None
    for step in range(1, args.steps + 1):
        batch = [data[rng.randrange(len(data))] for _ in range(args.batch)]
        opt.zero_grad()
        loss = sum(nll(model, ids, mask) for ids, mask in batch) / len(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        first = first if first is not None else loss.item()
        if step % args.log_every == 0 or step == 1 or step == args.steps:
            print(f"step {step}  loss {loss.item():.4f}  ({time.time() - t0:.0f} s)", flush=True)
    model.save(args.out)
    with torch.no_grad():
        final = sum(nll(model, i, m).item() for i, m in data) / len(data)
    print(json.dumps({"samples": len(data), "first_loss": first, "final_mean_loss": final, "out": args.out}))


if __name__ == "__main__":
    main()
