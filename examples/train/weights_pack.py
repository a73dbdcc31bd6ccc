#!/usr/bin/env python3
"""Ships trained weights small: the tiny model's embedding (the tied output
head, 128815 x 64 in BF16: 16 MiB of the file's 19) is not trained by sft.py or
grpo.py (they leave it as the seeded file has it), so a trained file is the
seeded one (`paddock-policy --save-weights F --config tiny --seed S`) plus its
other 0.7M parameters. `pack` writes those (2.8 MB) with the seed and a hash
of the embedding; `unpack` regenerates the seeded file with paddock-policy,
checks the hash and writes the full safetensors file that paddock-policy
serves. Plain Python (no torch): scripts/demo.sh runs it.

Training may change a few rows of the embedding (sft.py --number-vector trains
one vector and one scale of the 1,110 number tokens' rows). Given the seeded file
(`--base`), `pack` also keeps the rows that differ from it (`embed.rows`, their
indices, and `embed.rows.weight`, 142 KB for the number tokens); the hash is
then the seeded embedding's, and `unpack` writes those rows over it.

  weights_pack.py pack FULL.safetensors DELTA.safetensors --seed 1 [--base SEEDED.safetensors]
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
ROWS = "embed.rows"  # I32 [n]: the embedding rows kept in the delta
ROWS_WEIGHT = "embed.rows.weight"  # [n, d], the embedding's dtype


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


def changed_rows(blob, base_blob, row_bytes):
    """Indices of the rows (row_bytes each) where blob differs from base_blob."""
    return [r for r in range(len(blob) // row_bytes)
            if blob[r * row_bytes:(r + 1) * row_bytes] != base_blob[r * row_bytes:(r + 1) * row_bytes]]


def pack(full, delta, seed, base=None):
    tensors, meta = read(full)
    dtype, shape, blob = tensors.pop(EMBED)
    meta = dict(meta)
    meta["paddock.embed_seed"] = str(seed)
    if base is not None:
        bdtype, bshape, bblob = read(base)[0][EMBED]
        if (bdtype, bshape) != (dtype, shape):
            sys.exit(f"{base}: embedding {bdtype}{bshape}, {full} has {dtype}{shape}")
        row_bytes = len(blob) // shape[0]
        rows = changed_rows(blob, bblob, row_bytes)
        if len(rows) > shape[0] // 10:
            sys.exit(f"{full}: {len(rows)} of {shape[0]} embedding rows differ from {base}: not a delta")
        if rows:
            tensors[ROWS] = ("I32", [len(rows)], struct.pack("<%di" % len(rows), *rows))
            tensors[ROWS_WEIGHT] = (dtype, [len(rows), shape[1]],
                                    b"".join(blob[r * row_bytes:(r + 1) * row_bytes] for r in rows))
        blob = bblob
    meta["paddock.embed_sha256"] = hashlib.sha256(blob).hexdigest()
    write(delta, tensors, meta)


def apply_rows(embed, tensors, delta):
    """The seeded embedding `embed` (dtype, shape, blob) with the delta's rows written over it."""
    if ROWS not in tensors:
        return embed
    dtype, shape, blob = embed
    rdtype, rshape, rows_blob = tensors.pop(ROWS)
    if ROWS_WEIGHT not in tensors or rdtype != "I32" or len(rshape) != 1 or len(rows_blob) != 4 * rshape[0]:
        sys.exit(f"{delta}: {ROWS} is not an I32 list of rows with {ROWS_WEIGHT} beside it")
    n = rshape[0]
    wdtype, wshape, wblob = tensors.pop(ROWS_WEIGHT)
    row_bytes = len(blob) // shape[0]
    if wdtype != dtype or wshape != [n, shape[1]] or len(wblob) != n * row_bytes:
        sys.exit(f"{delta}: {ROWS_WEIGHT} is {wdtype}{wshape}, expected {dtype}{[n, shape[1]]}")
    out = bytearray(blob)
    for i, r in enumerate(struct.unpack("<%di" % n, rows_blob)):
        if not 0 <= r < shape[0]:
            sys.exit(f"{delta}: embedding row {r} out of range")
        out[r * row_bytes:(r + 1) * row_bytes] = wblob[i * row_bytes:(i + 1) * row_bytes]
    return dtype, shape, bytes(out)


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
    tensors[EMBED] = apply_rows(base[EMBED], tensors, delta)
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
    p.add_argument("--base", help="that seeded file: embedding rows that differ from it are kept in the delta "
                                  "(without it the whole embedding must be the seeded one)")
    u = sub.add_parser("unpack")
    u.add_argument("delta")
    u.add_argument("out")
    u.add_argument("--policy-bin", required=True)
    a = ap.parse_args(argv)
    if a.cmd == "pack":
        pack(a.full, a.delta, a.seed, a.base)
    else:
        unpack(a.delta, a.out, a.policy_bin)


if __name__ == "__main__":
    main(sys.argv[1:])
