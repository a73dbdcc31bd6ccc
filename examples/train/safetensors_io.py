"""A minimal safetensors reader/writer (F32 and BF16), no dependency beyond torch.

The format: an 8-byte little-endian header length N, N bytes of JSON
({name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}),
then the raw little-endian tensor data, offsets relative to the end of the header.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
from typing import Dict, Tuple

import torch

_DTYPES = {"F32": (torch.float32, 4), "BF16": (torch.bfloat16, 2)}
_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16"}


def load(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: shorter than 8 bytes")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > 100 << 20 or 8 + n > len(raw):
        raise ValueError(f"{path}: implausible header length {n}")
    header = json.loads(raw[8:8 + n])
    data = memoryview(raw)[8 + n:]
    meta = header.pop("__metadata__", {}) or {}
    out = {}
    for name, e in header.items():
        if e["dtype"] not in _DTYPES:
            raise ValueError(f"tensor {name!r}: dtype {e['dtype']} is not supported (F32 or BF16)")
        dt, size = _DTYPES[e["dtype"]]
        b, end = e["data_offsets"]
        numel = 1
        for s in e["shape"]:
            numel *= s
        if end - b != numel * size or end > len(data):
            raise ValueError(f"tensor {name!r}: data offsets [{b}, {end}] disagree with its shape")
        buf = bytearray(data[b:end])
        if dt == torch.bfloat16:
            t = torch.frombuffer(buf, dtype=torch.int16).to(torch.int32) << 16
            t = t.view(torch.float32)
        else:
            t = torch.frombuffer(buf, dtype=torch.float32)
        out[name] = t.reshape(e["shape"]).clone()
    return out, meta


def save(path: str, tensors: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> None:
    """Writes tensors (float32 or bfloat16) in name order, atomically (temp file, fsync, rename)."""
    header = {"__metadata__": metadata} if metadata else {}
    chunks = []
    off = 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        if t.dtype == torch.bfloat16:
            b = t.view(torch.int16).numpy().tobytes()
        elif t.dtype == torch.float32:
            b = t.numpy().tobytes()
        else:
            raise ValueError(f"tensor {name!r}: dtype {t.dtype} (float32 or bfloat16)")
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        chunks.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)  # pad so the data is 8-byte aligned
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".safetensors")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(h)))
            f.write(h)
            for b in chunks:
                f.write(b)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
