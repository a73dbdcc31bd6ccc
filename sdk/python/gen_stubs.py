#!/usr/bin/env python3
"""Generates the Python messages and gRPC stubs of every proto/*.proto.

Run by sdk/python/CMakeLists.txt at build time (also usable by hand):

    gen_stubs.py --protoc /usr/bin/protoc --plugin /usr/bin/grpc_python_plugin \
        --proto-dir proto --out build/sdk/python proto/*.proto

The modules land in OUT/paddock_api/ (a package of its own, so that names such
as ``sandbox_pb2`` never reach the top level of ``sys.path``). protoc writes
imports between generated modules as absolute top-level imports
(``import trajectory_pb2 as ...``); they are rewritten to relative ones
(``from . import trajectory_pb2 as ...``) so the package is self-contained.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

_IMPORT = re.compile(r"^import (\w+_pb2(?:_grpc)?) as (\w+)$", re.MULTILINE)


def _relativize(text: str, local: set[str]) -> str:
    def repl(m: re.Match[str]) -> str:
        if m.group(1) in local:
            return f"from . import {m.group(1)} as {m.group(2)}"
        return m.group(0)

    return _IMPORT.sub(repl, text)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protoc", default="protoc", help="protoc binary")
    ap.add_argument("--plugin", default="/usr/bin/grpc_python_plugin", help="gRPC Python protoc plugin")
    ap.add_argument("--proto-dir", required=True, help="include directory of the .proto files")
    ap.add_argument("--out", required=True, help="directory that receives paddock_api/")
    ap.add_argument("protos", nargs="+", help=".proto files")
    args = ap.parse_args(argv)

    pkg = os.path.join(args.out, "paddock_api")
    os.makedirs(pkg, exist_ok=True)
    # Generate into a scratch dir, then move into place, so an interrupted run
    # never leaves a half-written module that a test would import.
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        cmd = [
            args.protoc,
            f"--plugin=protoc-gen-grpc_python={args.plugin}",
            f"-I{args.proto_dir}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            *args.protos,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(f"gen_stubs: {' '.join(cmd)} failed:\n{proc.stderr}")
            return 1
        names = sorted(f for f in os.listdir(tmp) if f.endswith(".py"))
        local = {n[:-3] for n in names}
        for n in names:
            with open(os.path.join(tmp, n), encoding="utf-8") as f:
                text = _relativize(f.read(), local)
            with open(os.path.join(tmp, n), "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(os.path.join(tmp, n), os.path.join(pkg, n))
    modules = sorted(n[:-3] for n in names)
    init = (
        '"""Generated from proto/*.proto by sdk/python/gen_stubs.py; do not edit."""\n'
        f"MODULES = {modules!r}\n"
    )
    with open(os.path.join(pkg, "__init__.py"), "w", encoding="utf-8") as f:
        f.write(init)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
