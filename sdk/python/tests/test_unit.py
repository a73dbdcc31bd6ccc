"""Parts of the SDK that need no daemon: error mapping, keys, request building, the stubs."""

from __future__ import annotations

import glob
import importlib
import os

import grpc
import pytest

import paddock
from paddock import _api
from paddock import _convert as cv
from paddock import rollouts as ro
from conftest import SOURCE_DIR


def test_every_status_code_has_its_exception() -> None:
    seen = set()
    for code in grpc.StatusCode:
        if code == grpc.StatusCode.OK:
            continue
        e = paddock.errors.error_for_code(code, "the daemon's words")
        assert isinstance(e, paddock.PaddockError) and type(e) is not paddock.PaddockError
        assert e.code == code and e.message == "the daemon's words"
        assert str(e) == f"{code.name}: the daemon's words"
        seen.add(type(e))
    assert len(seen) == 16
    assert issubclass(paddock.InvalidArgument, ValueError) and issubclass(paddock.DeadlineExceeded, TimeoutError)
    for name in ["NotFound", "InvalidArgument", "ResourceExhausted", "Unavailable", "FailedPrecondition",
                 "Unauthenticated", "Unimplemented"]:
        assert issubclass(getattr(paddock, name), paddock.PaddockError)


def test_call_keys() -> None:
    assert paddock.CallKey.of(("ep7", 3, 0)) == paddock.CallKey("ep7", 3, 0)
    assert paddock.CallKey.of(("ep7", 3)) == paddock.CallKey("ep7", 3, 0)
    assert paddock.CallKey.of("run/a:b:12:1", idempotent=True) == paddock.CallKey("run/a:b", 12, 1, True)
    assert str(paddock.CallKey("e", 1, 2)) == "e:1:2"
    for bad in ["", ":1:2", "e:1:-2", "e:1:x", ("e", True, 0), ("e", 1, 2**32), ("e", 2**64, 0), [1], None]:
        with pytest.raises(paddock.InvalidArgument):
            paddock.CallKey.of(bad)  # type: ignore[arg-type]
    k = cv.key_pb(("e", 5, 6), True)
    assert (k.episode, k.step, k.call, k.idempotent) == ("e", 5, 6, True)


def test_exec_request_building() -> None:
    req = cv.exec_request("abc", ["ls", "-l"], None, "in", {"A": "1"}, "/w", 1.5, 100, ("e", 1, 2), False)
    assert list(req.argv) == ["ls", "-l"] and req.stdin == b"in" and req.timeout_ms == 1500
    assert req.output_cap_bytes == 100 and req.idempotency_key.step == 1 and dict(req.env) == {"A": "1"}
    assert not cv.exec_request("abc", None, "true", None, None, None, None, None, None, False).HasField(
        "idempotency_key")
    for argv in ["ls", b"ls", [1], ["a", None]]:
        with pytest.raises(paddock.InvalidArgument):
            cv.exec_request("abc", argv, None, None, None, None, None, None, None, False)  # type: ignore[arg-type]
    with pytest.raises(paddock.InvalidArgument, match="env"):
        cv.exec_request("abc", ["x"], None, None, {"A": 1}, None, None, None, None, False)  # type: ignore[dict-item]
    with pytest.raises(paddock.InvalidArgument, match="stdin"):
        cv.exec_request("abc", ["x"], None, 5, None, None, None, None, None, False)  # type: ignore[arg-type]
    assert cv.exec_deadline(None) == 90 and cv.exec_deadline(10) == 40


def test_rollout_request_building(tmp_path) -> None:
    text, src = ro.tasks_jsonl([{"id": "a"}, {"id": "b"}])
    assert text == '{"id": "a"}\n{"id": "b"}\n' and src == ""
    f = tmp_path / "t.jsonl"
    f.write_text('{"id": "x"}\n')
    assert ro.tasks_jsonl(str(f)) == ('{"id": "x"}\n', str(f))
    assert ro.tasks_jsonl('{"id": "y"}') == ('{"id": "y"}', "")
    with pytest.raises(paddock.InvalidArgument, match="tasks file"):
        ro.tasks_jsonl(str(tmp_path / "missing.jsonl"))
    req = ro.start_request([{"id": "a"}], paddock.PolicySpec(kind="scripted", script=["x", "y"]), 8,
                           {"temperature": 0.5, "seed": 7}, 2, "r-1", {"k": "v"}, 30, True, None)
    assert req.policy.script == '["x", "y"]' and req.policy.kind == "scripted" and req.concurrency == 8
    assert req.sampling.HasField("temperature") and not req.sampling.HasField("top_p") and req.sampling.seed == 7
    assert (req.samples_per_task, req.rollout_id, req.episode_deadline_s, req.thinking) == (2, "r-1", 30, True)
    assert (req.weight, req.priority) == (0, 0)  # the daemon's defaults: weight 1, priority 0
    shared = ro.start_request([{"id": "a"}], "http://h:1", 8, None, 0, None, None, None, False, None,
                              weight=3, priority=-2)
    assert (shared.weight, shared.priority) == (3, -2)
    assert ro.policy_pb("http://h:1").url == "http://h:1"
    with pytest.raises(paddock.InvalidArgument, match="policy"):
        ro.policy_pb({"urll": "x"})
    # The tool constraint is sent only when given, so a resume keeps the stored one.
    assert not ro.policy_pb("http://h:1").HasField("constrain_tools")
    off = ro.policy_pb({"url": "http://h:1", "constrain_tools": False})
    assert off.HasField("constrain_tools") and not off.constrain_tools
    on = ro.policy_pb(paddock.PolicySpec(url="http://h:1", constrain_tools=True, tool_choice="required"))
    assert on.constrain_tools and on.tool_choice == "required"


def test_stubs_cover_every_proto() -> None:
    protos = sorted(os.path.basename(p)[:-len(".proto")] for p in glob.glob(os.path.join(SOURCE_DIR, "proto", "*.proto")))
    assert protos, "no proto/*.proto found"
    for name in protos:
        assert f"{name}_pb2" in _api.MODULES and f"{name}_pb2_grpc" in _api.MODULES, name
    for m in _api.MODULES:  # all load into one descriptor pool: no clashing names
        importlib.import_module(f"paddock._api.{m}")
    assert paddock._stubs.module("no_such_pb2") is None


def test_stubs_are_the_packaged_ones() -> None:
    # The package carries its stubs (pip install needs no build tree) and keeps them
    # out of the top level of sys.path.
    here = os.path.dirname(os.path.abspath(paddock.__file__))
    assert os.path.dirname(os.path.abspath(_api.__file__)) == os.path.join(here, "_api")
    assert paddock._stubs.sandbox_pb2.__name__ == "paddock._api.sandbox_pb2"
    for top in ("paddock_api", "sandbox_pb2"):
        with pytest.raises(ImportError):
            importlib.import_module(top)


def test_gen_stubs_check_reports_stale_stubs(tmp_path) -> None:
    # --check on a copy with one module edited and one missing fails and names the refresh
    # command; on an exact copy it passes.
    import shutil
    import subprocess
    import sys
    gen = os.path.join(SOURCE_DIR, "sdk", "python", "gen_stubs.py")
    plugin = shutil.which("grpc_python_plugin") or "/usr/bin/grpc_python_plugin"
    if not os.access(plugin, os.X_OK) or not shutil.which("protoc"):
        pytest.skip("protoc or grpc_python_plugin not installed")
    out = tmp_path / "_api"
    shutil.copytree(os.path.dirname(_api.__file__), out, ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [sys.executable, gen, "--plugin", plugin, "--out", str(out), "--check"]
    ok = subprocess.run(cmd, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    (out / "log_pb2.py").write_text((out / "log_pb2.py").read_text() + "# edited\n")
    (out / "node_pb2_grpc.py").unlink()
    stale = subprocess.run(cmd, capture_output=True, text=True)
    assert stale.returncode == 1
    assert "log_pb2.py" in stale.stderr and "node_pb2_grpc.py" in stale.stderr
    assert "scripts/gen-python-stubs.sh" in stale.stderr
    # Refreshing (the same command without --check) repairs the copy.
    assert subprocess.run(cmd[:-1], capture_output=True).returncode == 0
    assert subprocess.run(cmd, capture_output=True).returncode == 0


def test_relative_imports_in_generated_code() -> None:
    import importlib.util
    spec = importlib.util.spec_from_file_location("gen_stubs", os.path.join(SOURCE_DIR, "sdk", "python", "gen_stubs.py"))
    gen = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(gen)
    text = "import grpc\nimport trajectory_pb2 as trajectory__pb2\nimport other_pb2 as other__pb2\n"
    assert gen._relativize(text, {"trajectory_pb2"}) == (
        "import grpc\nfrom . import trajectory_pb2 as trajectory__pb2\nimport other_pb2 as other__pb2\n")
