"""The generated gRPC stubs: the subpackage ``paddock._api``.

They are generated from proto/*.proto by sdk/python/gen_stubs.py (run
scripts/gen-python-stubs.sh after a .proto change) and committed, so the
package installs and imports with no build tree and no protoc.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional

from . import _api
from ._api import log_pb2, log_pb2_grpc, sandbox_pb2, sandbox_pb2_grpc, trajectory_pb2


def module(name: str) -> Optional[ModuleType]:
    """The generated module ``paddock._api.<name>`` (e.g. ``"sandbox_pb2"``), or None when no
    .proto gives it."""
    if name not in _api.MODULES:
        return None
    return importlib.import_module(f"{_api.__name__}.{name}")


__all__ = ["module", "log_pb2", "log_pb2_grpc", "sandbox_pb2", "sandbox_pb2_grpc", "trajectory_pb2"]
