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
import math
import os
import random
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import copy_augment  # noqa: E402
import twin  # noqa: E402


def kept_positions(ids, mask):
    """The positions of the context each policy turn really saw. Export files written by
    a paddockd before trajectory.proto's delta_after_output gave each later step's
    prompt as the delta from the previous step's prompt, so a policy turn (loss_mask 1)
    is followed by the same tokens again as context (loss_mask 0); the engine's next
    prompt holds the turn once. Leaves such repeats out; in an export without them
    (any export of a newer daemon) every position is kept."""
    keep, i, n = [], 0, len(ids)
    while i < n:
        if not mask[i]:
            keep.append(i)
            i += 1
            continue
        j = i
        while j < n and mask[j]:
            j += 1
        keep += range(i, j)
        k = j + (j - i)
        if k <= n and ids[j:k] == ids[i:j] and not any(mask[j:k]):
            j = k  # the repeat
        i = j
    return keep


def drop_repeated_turns(ids, mask):
    keep = kept_positions(ids, mask)
    return [ids[i] for i in keep], [mask[i] for i in keep]


def read_samples(paths, min_reward=None, max_len=2048, as_exported=False):
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
                if not as_exported:
                    ids, mask = drop_repeated_turns(ids, mask)
                out.append((ids[:max_len], mask[:max_len]))
    return out


def logprob_rows(model, ids, at):
    """log p(. | ids[:a + 1]) over the whole vocabulary for each a in `at` (a LongTensor), one
    row each, differentiable. Only those rows go through the output head: the vocabulary is large."""
    dev = model.p("norm.weight").device
    ids_t = torch.as_tensor(ids, dtype=torch.long, device=dev)
    E = model.embedding()
    h = model.hidden(ids_t[: int(at.max()) + 1], E)[at.to(dev)]
    return torch.log_softmax(h @ E.t(), dim=-1)


def token_logprobs_at(model, ids, at):
    """log p(ids[a + 1] | ids[:a + 1]) for each a in `at` (a LongTensor), differentiable."""
    nxt = torch.as_tensor(ids, dtype=torch.long)[at + 1]
    return logprob_rows(model, ids, at).gather(1, nxt[:, None].to(model.p("norm.weight").device)).squeeze(1)


def policy_positions(mask):
    """Positions a whose next token ids[a + 1] has loss_mask 1 (the first token has no context)."""
    return torch.tensor(mask[1:], dtype=torch.bool).nonzero().flatten()


def init_copy_head(model, layer, gain):
    """Starts head 0 of `layer` as a copy head: its entries keep the normalized residual's
    position-free dims as they are (wkv's first nope_dim rows the identity) and its output
    adds them back, times `gain` (wo's head-0 block the identity on those dims, zero
    elsewhere). Whatever the head attends to is then written back as itself, which the
    tied head reads as that token: training has only to learn where to look. The other
    heads of the layer share the entries (one key = value per token) and keep their own
    projections."""
    c = model.config
    n = c.nope_dim
    with torch.no_grad():
        wkv = model.p(f"layers.{layer}.attn.wkv")
        wkv[:n].zero_()
        wkv[:n, :n] += torch.eye(n, device=wkv.device)
        wo = model.p(f"layers.{layer}.attn.wo")
        wo[:, : c.head_dim].zero_()
        wo[:n, :n] += gain * torch.eye(n, device=wo.device)


def nll(model, ids, mask, copy_at=(), copy_weight=1.0):
    """Mean -log p over the positions with loss_mask 1; the positions in `copy_at`
    (where the next token is a copied number) weigh `copy_weight` each."""
    at = policy_positions(mask)
    lp = token_logprobs_at(model, ids, at)
    if copy_weight == 1.0 or not copy_at:
        return -lp.mean()
    w = torch.ones_like(lp)
    w[torch.isin(at.to(lp.device), torch.tensor(list(copy_at), device=lp.device))] = copy_weight
    return -(w * lp).sum() / w.sum()


def induction_probe(model, numbers, n=8, seed=54321):
    """Top-1 accuracy on the repeats of `n` synthetic copy sequences made of held-out
    number tokens and random tokens (copy_augment.induction_sample's shape)."""
    rng = random.Random(seed)
    hits, total = 0, 0
    dev = model.p("norm.weight").device
    with torch.no_grad():
        E = model.embedding()
        for _ in range(n):
            L = rng.randint(16, 56)
            seq = [rng.choice(numbers.heldout_pool) if rng.random() < 0.5 else rng.randrange(2, model.config.vocab_size)
                   for _ in range(L)]
            t = torch.as_tensor(seq + seq, dtype=torch.long, device=dev)
            h = model.hidden(t, E)[L:-1]  # predicting positions L+1 .. 2L-1
            hits += int(((h @ E.t()).argmax(-1) == t[L + 1:]).sum())
            total += L - 1
    return hits / total


def copy_probe(model, probe, numbers, seed=12345):
    """On `probe` samples whose copied numbers are replaced by held-out number tokens
    (copy_augment.HELDOUT_EXCLUDED, never drawn in training): the mean -log p of the
    copied tokens and the fraction the model ranks first. (nan, nan) without any."""
    rng = random.Random(seed)
    nlls, hits = [], []
    dev = model.p("norm.weight").device
    with torch.no_grad():
        E = model.embedding()
        for ids, mask in probe:
            ids = copy_augment.remap(ids, mask, numbers, rng, numbers.heldout_pool)
            at = copy_augment.copy_targets(ids, mask, numbers)
            if not at:
                continue
            t = torch.as_tensor(ids, dtype=torch.long, device=dev)
            a = torch.tensor(at, device=dev)
            h = model.hidden(t[: int(a.max()) + 1], E)[a]
            logits = h @ E.t()
            lp = torch.log_softmax(logits, -1).gather(1, t[a + 1][:, None]).squeeze(1)
            nlls += (-lp).tolist()
            hits += (logits.argmax(-1) == t[a + 1]).float().tolist()
    if not nlls:
        return float("nan"), float("nan")
    return sum(nlls) / len(nlls), sum(hits) / len(hits)


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
    ap.add_argument("--as-exported", action="store_true",
                    help="train on token_ids as exported, repeated turns included (drop_repeated_turns)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: OpenMP threads on a busy 2-core machine cost more than they give)")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--copy-probe-every", type=int, default=0, metavar="N",
                    help="every N steps (at a logged step) also print how well the model copies numbers it never "
                         "saw in that role (copy_probe; needs the tokenizer)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-embed", action="store_true",
                    help="train the embedding (the tied output head) too; by default it stays as --init has it, "
                         "so the trained weights differ from --init only in the 0.7M other parameters (tiny)")
    ap.add_argument("--warmup", type=int, default=20, help="steps of linear learning-rate warm-up, then cosine decay")
    ap.add_argument("--copy-augment", type=float, default=0.0, metavar="P",
                    help="with probability P a drawn sample has the numbers it copies (from the instruction or a "
                         "tool result) replaced by other number tokens, consistently (copy_augment.py), so that "
                         "the numbers are learned as copies, not by value (default 0: never)")
    ap.add_argument("--induction", type=float, default=0.0, metavar="P",
                    help="with probability P a batch item is a synthetic copy sequence instead "
                         "(copy_augment.induction_sample: random tokens, then the same again)")
    ap.add_argument("--copy-weight", type=float, default=1.0,
                    help="loss weight of the policy tokens that copy a number (default 1)")
    ap.add_argument("--number-vector", action="store_true",
                    help="train one vector shared by every number token (1-3 digits), added to their embedding "
                         "rows (twin.number_vector): a number never seen in training carries it too")
    ap.add_argument("--number-vector-init", type=float, default=0.0, metavar="X",
                    help="start the number vector random, X times the number rows' mean norm (default 0: zero)")
    ap.add_argument("--number-scale", type=float, default=1.0,
                    help="start the number rows' shared scale here (trained with --number-vector; default 1)")
    ap.add_argument("--fixed-number-scale", action="store_true", help="do not train the number rows' scale")
    ap.add_argument("--copy-head", type=int, metavar="LAYER",
                    help="start head 0 of layer LAYER as a copy head (init_copy_head) before training")
    ap.add_argument("--copy-head-gain", type=float, default=2.0,
                    help="the copy head's output gain (default 2)")
    ap.add_argument("--tokenizer", default=copy_augment.DEFAULT_TOKENIZER,
                    help="the DeepSeek tokenizer.json (for --copy-augment and the copy probe)")
    ap.add_argument("--device", default="cpu", help="torch device (cpu; cuda where there is one)")
    ap.add_argument("--save-every", type=int, default=0, help="also save OUT-stepN.safetensors every N steps")
    ap.add_argument("--time-limit", type=float, default=0,
                    help="stop after this many seconds (0: none); the cosine decay then follows whichever of "
                         "steps and time is further along, so a run cut by time still ends at the low rate")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    data = read_samples(args.exports, args.min_reward, args.max_len, args.as_exported)
    if not data:
        sys.exit("sft: no trainable samples with policy tokens in " + ", ".join(args.exports))
    numbers = copy_augment.NumberTokens(args.tokenizer) if os.path.exists(args.tokenizer) else None
    if (args.copy_augment or args.copy_weight != 1.0 or args.number_vector or args.induction) and numbers is None:
        sys.exit(f"sft: --copy-augment, --copy-weight, --induction and --number-vector need the tokenizer ({args.tokenizer})")
    probe = []
    if args.copy_probe_every and numbers:
        probe = [d for d in data if copy_augment.copy_targets(*d, numbers)]
        probe = probe[:: max(1, len(probe) // 32)]
    model = twin.Twin.load(args.init).to(args.device)
    if not args.train_embed:
        model.p("embed.weight").requires_grad_(False)
    if args.number_vector:
        model.number_vector(numbers.text.keys(), args.number_vector_init, math.log(args.number_scale),
                            seed=args.seed)
        if args.fixed_number_scale:
            model.class_log_scale.requires_grad_(False)
    if args.copy_head is not None:
        init_copy_head(model, args.copy_head, args.copy_head_gain)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    t0 = time.time()

    def progress(s):  # how far along: by steps, or by time when --time-limit comes first
        by_time = (time.time() - t0) / args.time_limit if args.time_limit else 0.0
        return min(1.0, max(s / args.steps, by_time))

    def lr_factor(s):  # linear warm-up, then cosine down to a tenth
        return min(1.0, (s + 1) / max(1, args.warmup)) * (0.1 + 0.45 * (1 + math.cos(math.pi * progress(s))))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    tokens = sum(sum(m) for _, m in data)
    print(f"sft: {len(data)} samples, {tokens} policy tokens; {model.config.name}", flush=True)
    first = None
    for step in range(1, args.steps + 1):
        batch = []
        for _ in range(args.batch):
            if args.induction and rng.random() < args.induction:
                ids, mask = copy_augment.induction_sample(rng, numbers, model.config.vocab_size)
                batch.append((ids, mask, ()))
                continue
            ids, mask = data[rng.randrange(len(data))]
            if args.copy_augment and rng.random() < args.copy_augment:
                ids = copy_augment.remap(ids, mask, numbers, rng)
            at = copy_augment.copy_targets(ids, mask, numbers) if args.copy_weight != 1.0 else ()
            batch.append((ids, mask, at))
        opt.zero_grad()
        loss = sum(nll(model, ids, mask, at, args.copy_weight) for ids, mask, at in batch) / len(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        sched.step()
        first = first if first is not None else loss.item()
        if step % args.log_every == 0 or step == 1 or step == args.steps:
            line = f"step {step}  loss {loss.item():.4f}"
            if probe and args.copy_probe_every and (step % args.copy_probe_every == 0 or step == args.steps):
                c_nll, c_hit = copy_probe(model, probe, numbers)
                line += f"  copy of unseen numbers: nll {c_nll:.3f}, top-1 {c_hit:.2f}"
                if args.induction:
                    line += f"; synthetic repeats top-1 {induction_probe(model, numbers):.2f}"
            print(f"{line}  ({time.time() - t0:.0f} s)", flush=True)
        if args.save_every and step % args.save_every == 0 and step < args.steps:
            model.save(args.out.replace(".safetensors", "") + f"-step{step}.safetensors")
        if args.time_limit and time.time() - t0 > args.time_limit:
            print(f"sft: time limit reached at step {step}", flush=True)
            break
    model.to("cpu").save(args.out)
    with torch.no_grad():
        probe = data[:: max(1, len(data) // 32)]
        final = sum(nll(model, i, m).item() for i, m in probe) / len(probe)
    print(json.dumps({"samples": len(data), "first_loss": first, "final_mean_loss": final, "out": args.out}))


if __name__ == "__main__":
    main()
