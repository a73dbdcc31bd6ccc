#!/usr/bin/env python3
"""Ships trained weights small: the tiny model's embedding (the tied output
head, 128815 x 64 in BF16: 16 MiB of the file's 19) is not trained by sft.py or
grpo.py (they leave it as the seeded file has it), so a trained file is the
seeded one (`paddock-policy --save-weights F --config tiny --seed S`) plus its
other 0.7M parameters. `pack` writes those (2.8 MB) with the seed and a hash
of the embedding; `unpack` regenerates the seeded file with paddock-policy,
checks the hash and writes the full safetensors file that paddock-policy
serves. Plain Python (no torch): scripts/demo.sh runs it.

  weights_pack.py pack FULL.safetensors DELTA.safetensors --seed 1
  weights_pack.py unpack DELTA.safetensors OUT.safetensors --policy-bin build/policy/paddock-policy
"""
import argparse
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile

EMBED = "embed.weight"


def read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, h in header.items():
        b, e = h["data_offsets"]
        tensors[name] = (h["dtype"], h["shape"], data[b:e])
    return tensors, meta


def write(path, tensors, meta):
    header, off, blobs = {"__metadata__": meta}, 0, []
    for name in sorted(tensors):
        dtype, shape, blob = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(blob)]}
        off += len(blob)
        blobs.append(blob)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)) or ".")
    with os.fdopen(fd, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def pack(full, delta, seed):
    tensors, meta = read(full)
    dtype, shape, blob = tensors.pop(EMBED)
    meta = dict(meta)
    meta["paddock.embed_seed"] = str(seed)
    meta["paddock.embed_sha256"] = hashlib.sha256(blob).hexdigest()
    write(delta, tensors, meta)


def unpack(delta, out, policy_bin):
    tensors, meta = read(delta)
    seed = meta.get("paddock.embed_seed")
    if seed is None:
        sys.exit(f"{delta}: no paddock.embed_seed metadata (not written by weights_pack.py pack)")
    config = json.loads(meta["paddock.config"])["name"]
    with tempfile.TemporaryDirectory() as d:
        seeded = os.path.join(d, "seeded.safetensors")
        subprocess.run([policy_bin, "--save-weights", seeded, "--config", config, "--seed", seed], check=True,
                       stdout=subprocess.DEVNULL)
        base, base_meta = read(seeded)
    if hashlib.sha256(base[EMBED][2]).hexdigest() != meta["paddock.embed_sha256"]:
        sys.exit(f"{delta}: the seeded embedding (seed {seed}) is not the one the weights were trained with")
    tensors[EMBED] = base[EMBED]
    missing = set(base) - set(tensors)
    if missing:
        sys.exit(f"{delta}: tensors missing: {sorted(missing)[:5]}")
    out_meta = {k: v for k, v in meta.items() if not k.startswith("paddock.embed_")}
    write(out, tensors, out_meta)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("full")
    p.add_argument("delta")
    p.add_argument("--seed", type=int, required=True, help="the --seed of the seeded file training started from")
    u = sub.add_parser("unpack")
    u.add_argument("delta")
    u.add_argument("out")
    u.add_argument("--policy-bin", required=True)
    a = ap.parse_args(argv)
    if a.cmd == "pack":
        pack(a.full, a.delta, a.seed)
    else:
        unpack(a.delta, a.out, a.policy_bin)


if __name__ == "__main__":
    main(sys.argv[1:])
