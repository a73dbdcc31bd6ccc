#!/usr/bin/env python3
"""Copy augmentation, the number vector and row-keeping deltas (tests/train_tests.cmake:
train_copy_smoke).

1. copy_augment.remap on an episode in the export's shape, with the real tokenizer's
   ids: the instruction's and the tool result's numbers are replaced, the same way
   at every position (the command and the answer still copy them), by number tokens
   outside the held-out ranges; the `[exit code N]`, the system prompt and a
   command's own constants are kept; an episode without copied numbers is unchanged.
2. sft.py --number-vector --copy-augment --copy-head trains a few steps: the saved
   embedding differs from the seeded one in exactly the number tokens' rows, each
   row r become s * r + v with one scale s and one vector v.
3. weights_pack.py pack --base keeps those rows (and only those); unpack with
   paddock-policy gives back the trained file tensor for tensor; a delta packed
   without --base is refused by unpack (its embedding is not the seeded one);
   paddock-policy serves the unpacked file: what it samples after the episode's
   numbers has the twin's logprobs (--exact-kv, 1e-4).
"""
import argparse
import json
import os
import random
import struct
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
import copy_augment  # noqa: E402


def tokens(vocab, *words):
    return [vocab[w] for w in words]


def episode(nt, vocab):
    """An export-shaped episode of the multiplication: system prompt (with a digit),
    instruction "What is 42*8?", the command `expr 42 \\* 8` (policy), the tool result
    336 with [exit code 0], the answer 336 (policy), plus a command constant 7."""
    sys_prompt = tokens(vocab, "You", "Ġare", "Ġ", "1")
    user = [nt.user] + tokens(vocab, "What", "Ġis", "Ġ", "42", "*", "8", "?")
    cmd = tokens(vocab, "expr", "Ġ", "42", "Ġ\\", "*", "Ġ", "8", "Ġ", "7")
    result = [nt.user] + tokens(vocab, "336", "Ċ", "[", "exit", "Ġcode", "Ġ", "0", "]")
    answer = tokens(vocab, "336")
    ids = sys_prompt + user + cmd + result + answer
    mask = [0] * len(sys_prompt + user) + [1] * len(cmd) + [0] * len(result) + [1] * len(answer)
    return ids, mask


def check_remap(nt, vocab):
    ids, mask = episode(nt, vocab)
    inv = {v: k for k, v in vocab.items()}
    src = [inv[t] for t in copy_augment.copied_numbers(ids, mask, nt)]
    assert sorted(src) == ["336", "42", "8"], src
    seen_targets = set()
    for seed in range(200):
        out = copy_augment.remap(ids, mask, nt, random.Random(seed))
        assert len(out) == len(ids)
        sub = {}
        for a, b in zip(ids, out):
            if a != b:
                assert inv[a] in ("42", "8", "336"), f"changed {inv[a]!r}"
                assert sub.setdefault(a, b) == b, "a number replaced two ways"
        # each replaced (unless drawn as itself: 1 in ~1,000), never two by one
        assert set(sub) <= {vocab["42"], vocab["8"], vocab["336"]} and len(sub) >= 2, sub
        assert len(set(sub.values())) == len(sub), "two numbers replaced by one"
        for b in sub.values():
            assert inv[b] not in copy_augment.HELDOUT_EXCLUDED and nt.is_number(b), inv[b]
            seen_targets.add(b)
        # the exit code, the system prompt's digit and the command's constant stay
        assert out[:4] == ids[:4]
        assert out[-3] == vocab["0"] and out[-11] == vocab["7"]
        # copies stay copies: the command repeats the instruction's numbers, the answer the output
        assert out[out.index(nt.user) + 4] == out[out.index(nt.user) + 10]
        assert out[-1] == out[-9]
    assert len(seen_targets) > 100, "the draw does not vary"
    plain = ids[:4] + [nt.user] + tokens(vocab, "Fix", "Ġit") + [vocab["done"]]
    pmask = [0] * 7 + [1]
    assert copy_augment.remap(plain, pmask, nt, random.Random(0)) == plain
    assert copy_augment.copy_targets(ids, mask, nt) == [i - 1 for i, t in enumerate(ids)
                                                        if mask[i] and inv[t] in ("42", "8", "336")]
    # an induction sample: a repeat, loss on it, no held-out number
    s, m = copy_augment.induction_sample(random.Random(1), nt, 128815)
    n = len(s) // 2
    assert s[:n] == s[n:] and len(m) == len(s) and sum(m) == n - 1 and m[-1] == 1
    assert not set(s) & set(nt.heldout_pool)
    print("remap: copies kept, exit code, prompt and constants untouched, no held-out number drawn")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy-bin", required=True)
    ap.add_argument("--tokenizer", default=copy_augment.DEFAULT_TOKENIZER)
    args = ap.parse_args()
    with open(args.tokenizer) as f:
        vocab = json.load(f)["model"]["vocab"]
    nt = copy_augment.NumberTokens(args.tokenizer)
    check_remap(nt, vocab)

    import torch
    import parity
    import twin
    import weights_pack
    tmp = tempfile.mkdtemp(prefix="paddock-copy-")
    seeded = os.path.join(tmp, "seeded.safetensors")
    out = os.path.join(tmp, "sft.safetensors")
    subprocess.run([args.policy_bin, "--save-weights", seeded, "--config", "tiny", "--seed", "1"],
                   check=True, stdout=subprocess.DEVNULL)
    export = os.path.join(tmp, "episodes.jsonl")
    ids, mask = episode(nt, vocab)
    with open(export, "w") as f:
        for i in range(4):
            f.write(json.dumps({"sample": i, "train": True, "reward": 1.0, "token_ids": ids, "loss_mask": mask}) + "\n")
    subprocess.run([sys.executable, os.path.join(here, "sft.py"), export, "--init", seeded, "--out", out,
                    "--steps", "3", "--batch", "2", "--lr", "1e-2", "--warmup", "1", "--threads", "1", "--number-vector",
                    "--copy-augment", "1", "--copy-weight", "3", "--induction", "0.3", "--copy-probe-every", "3",
                    "--number-vector-init", "0.5", "--copy-head", "3",
                    "--tokenizer", args.tokenizer], check=True)
    a, b = twin.Twin.load(seeded), twin.Twin.load(out)
    old, new = a.p("embed.weight"), b.p("embed.weight")
    changed = ((new - old) != 0).any(1).nonzero().flatten().tolist()
    assert sorted(changed) == sorted(nt.text), f"{len(changed)} rows changed, {len(nt.text)} number tokens"
    # every number row became s * row + v, with one scale s and one vector v (each row then
    # rounded to BF16: within 2^-8 of its values)
    x, y = old[changed], new[changed]
    xc, yc = x - x.mean(0), y - y.mean(0)
    s = float((xc * yc).sum() / (xc * xc).sum())
    v = y.mean(0) - s * x.mean(0)
    assert abs(s - 1) > 1e-3 and v.abs().max() > 0.01, f"the scale or the vector did not move: {s}, {v.abs().max()}"
    assert (y - (s * x + v)).abs().max() <= 2.0 ** -8 * float(y.abs().max()) * 2, "not one shared scale and vector"
    print(f"number rows: {len(changed)} changed, all by one scale ({s:.4f}) and one vector (|v| = {v.norm():.4f})")

    delta = os.path.join(tmp, "delta.safetensors")
    back = os.path.join(tmp, "back.safetensors")
    weights_pack.pack(out, delta, 1, seeded)
    kept = weights_pack.read(delta)[0]
    assert kept[weights_pack.ROWS][1] == [len(nt.text)], kept[weights_pack.ROWS][1]
    assert weights_pack.EMBED not in kept
    subprocess.run([sys.executable, os.path.join(here, "weights_pack.py"), "unpack", delta, back,
                    "--policy-bin", args.policy_bin], check=True)
    assert weights_pack.read(back)[0] == weights_pack.read(out)[0], "unpack did not give the trained file back"
    size = os.path.getsize(delta)
    print(f"pack --base: {size} bytes, the number rows kept; unpack gives the trained file back")
    bad = os.path.join(tmp, "bad.safetensors")
    weights_pack.pack(out, bad, 1)
    r = subprocess.run([sys.executable, os.path.join(here, "weights_pack.py"), "unpack", bad,
                        os.path.join(tmp, "x.safetensors"), "--policy-bin", args.policy_bin],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "not the one" in r.stderr, r.stderr
    # A malformed delta is refused with a clear error: its rows not an I32 list, a row out of range.
    good, meta = weights_pack.read(delta)
    rows = good[weights_pack.ROWS]
    for broken, why in [(("F32",) + rows[1:], "not an I32 list"),
                        (("I32", rows[1], struct.pack("<i", 10 ** 7) + rows[2][4:]), "out of range")]:
        hostile = dict(good)
        hostile[weights_pack.ROWS] = broken
        weights_pack.write(bad, hostile, meta)
        r = subprocess.run([sys.executable, os.path.join(here, "weights_pack.py"), "unpack", bad,
                            os.path.join(tmp, "x.safetensors"), "--policy-bin", args.policy_bin],
                           capture_output=True, text=True)
        assert r.returncode != 0 and why in r.stderr, r.stderr

    proc, url = parity.start_server(args.policy_bin, back, "tiny", True, 1)
    try:
        gen, lps = parity.generate(url, ids, 24, 0)
    finally:
        proc.terminate()
        proc.wait()
    worst = parity.figures(parity.compare(b, [(ids, gen, lps)]))["max_abs_delta"]
    print(f"engine (--exact-kv) on the unpacked file vs the twin: max |d logprob| {worst:.2e} over {len(gen)} tokens")
    assert worst <= 1e-4, worst
    subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
