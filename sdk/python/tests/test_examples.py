"""examples/python run as a user would run them, against the session daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import SOURCE_DIR

HARNESS = os.path.join(SOURCE_DIR, "examples", "python", "harness.py")


def run_example(path: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    return subprocess.run([sys.executable, path, *args], capture_output=True, text=True, env=env, timeout=120)


def test_harness_help() -> None:
    p = run_example(HARNESS, "--help")
    assert p.returncode == 0 and "--run-id" in p.stdout and "--substrate" in p.stdout
    p = run_example(HARNESS)
    assert p.returncode == 2 and "--image is required" in p.stderr


def test_harness_runs_then_replays_from_the_log(daemon, rootfs: str) -> None:
    run_id = f"pysdk-harness-{os.getpid()}-{os.urandom(3).hex()}"
    args = ["--socket", daemon.socket_path, "--image", rootfs, "--episodes", "4", "--run-id", run_id, "--json"]
    first = run_example(HARNESS, *args)
    assert first.returncode == 0, first.stderr
    out1 = json.loads(first.stdout)
    assert out1["summary"]["episodes"] == 4 and out1["summary"]["mean_reward"] == 1.0
    assert out1["summary"]["replayed"] == 0 and out1["summary"]["calls"] == 12
    assert [e["answer"] for e in out1["episodes"]] == ["55", "210", "465", "820"]

    # Same run id: every call is answered from the trajectory log, on rebuilt sandboxes.
    second = run_example(HARNESS, *args)
    assert second.returncode == 0, second.stderr
    out2 = json.loads(second.stdout)
    assert out2["summary"]["replayed"] == out2["summary"]["calls"] == 12
    assert [e["answer"] for e in out2["episodes"]] == [e["answer"] for e in out1["episodes"]]
    assert all(e["rebuilt"] for e in out2["episodes"])


def test_harness_on_function_sandboxes_text_output(daemon, rootfs: str) -> None:
    p = run_example(HARNESS, "--socket", daemon.socket_path, "--image", rootfs, "--substrate", "function",
                    "--episodes", "3")
    assert p.returncode == 0, p.stderr
    assert "3 episodes, mean reward 1.00" in p.stdout and "6 calls (0 answered from the log)" in p.stdout


def test_harness_reports_daemon_errors(daemon, tmp_path) -> None:
    p = run_example(HARNESS, "--socket", str(tmp_path / "none.sock"), "--image", "/nonexistent")
    assert p.returncode == 1 and "paddockd is not running" in p.stderr
    p = run_example(HARNESS, "--socket", daemon.socket_path, "--image", str(tmp_path / "no-such-image"),
                    "--episodes", "1")
    assert p.returncode == 1 and p.stderr.startswith("harness: ") and "no-such-image" in p.stderr


ROLLOUT = os.path.join(SOURCE_DIR, "examples", "python", "rollout.py")


def test_rollout_example_help_and_usage_errors(tmp_path) -> None:
    p = run_example(ROLLOUT, "--help")
    assert p.returncode == 0 and "--resume" in p.stdout and "--scripted" in p.stdout
    p = run_example(ROLLOUT)
    assert p.returncode == 2 and "a tasks file is required" in p.stderr
    p = run_example(ROLLOUT, "tasks.jsonl")
    assert p.returncode == 2 and "exactly one of --policy URL and --scripted FILE" in p.stderr
    p = run_example(ROLLOUT, "tasks.jsonl", "--policy", "http://127.0.0.1:1", "--socket", str(tmp_path / "none.sock"))
    assert p.returncode == 1 and "paddockd is not running" in p.stderr


def test_readme_python_snippet_runs(daemon, rootfs: str) -> None:
    with open(os.path.join(SOURCE_DIR, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme[readme.index("## Python SDK"):]
    code = section[section.index("```python\n") + len("```python\n"):section.index("```\n", section.index("```python"))]
    code = code.replace('image="busybox"', f'image="{rootfs}"')
    env = dict(os.environ, PADDOCK_SOCKET=daemon.socket_path)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "0 b'2\\n' False\n"
