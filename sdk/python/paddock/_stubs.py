"""Finds and imports the generated gRPC stubs (package ``paddock_api``).

The stubs are generated at build time (sdk/python/CMakeLists.txt) into
``BUILD/sdk/python/paddock_api``. They are looked up, in order:

1. on ``sys.path`` (``PYTHONPATH=BUILD/sdk/python``, what ctest sets);
2. in ``$PADDOCK_PY_STUBS`` (a directory that contains ``paddock_api/``);
3. in ``build/sdk/python`` of the source tree this package sits in (the
   default build directory of ``make``).
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType


def _import_api() -> ModuleType:
    try:
        return importlib.import_module("paddock_api")
    except ImportError:
        pass
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = []
    if os.environ.get("PADDOCK_PY_STUBS"):
        candidates.append(os.environ["PADDOCK_PY_STUBS"])
    candidates.append(os.path.normpath(os.path.join(here, "..", "..", "..", "build", "sdk", "python")))
    for c in candidates:
        if os.path.isfile(os.path.join(c, "paddock_api", "__init__.py")):
            sys.path.append(c)
            return importlib.import_module("paddock_api")
    raise ImportError(
        "paddock: the generated gRPC stubs (package paddock_api) were not found; build them "
        "(`cmake --build build --target paddock_python_stubs`) and put build/sdk/python on "
        "PYTHONPATH, or set PADDOCK_PY_STUBS to that directory"
    )


_api = _import_api()


def module(name: str) -> ModuleType | None:
    """The generated module ``paddock_api.<name>`` (e.g. ``"sandbox_pb2"``), or None when its
    .proto is not part of this build."""
    if name not in _api.MODULES:
        return None
    return importlib.import_module(f"paddock_api.{name}")


sandbox_pb2 = importlib.import_module("paddock_api.sandbox_pb2")
sandbox_pb2_grpc = importlib.import_module("paddock_api.sandbox_pb2_grpc")
log_pb2 = importlib.import_module("paddock_api.log_pb2")
log_pb2_grpc = importlib.import_module("paddock_api.log_pb2_grpc")
trajectory_pb2 = importlib.import_module("paddock_api.trajectory_pb2")
