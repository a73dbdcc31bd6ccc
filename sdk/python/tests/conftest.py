"""Fixtures: one real paddockd for the session (own state dir, socket and TCP port under a
temp dir), the busybox rootfs, and clients.

Paths come from the environment ctest sets (tests/pysdk_tests.cmake):
  PADDOCKD            the paddockd binary
  PADDOCK_INIT        the paddock-init binary
  PADDOCK_TEST_ROOTFS the busybox rootfs (built with scripts/make-busybox-rootfs.sh when missing)
  PADDOCK_SOURCE_DIR  the source tree (scripts/, examples/)
Run by hand: PADDOCKD=build/rollout/paddockd PADDOCK_INIT=build/sandbox/paddock-init
  PYTHONPATH=sdk/python python3 -m pytest -q sdk/python/tests
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator

import pytest

import paddock

SOURCE_DIR = os.environ.get("PADDOCK_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def _need(var: str, default: str | None = None) -> str:
    v = os.environ.get(var) or default
    if not v or not os.path.exists(v):
        pytest.exit(f"{var}={v!r}: not found; set it to the built binary (ctest does)", returncode=2)
    return v  # type: ignore[return-value]


@dataclass
class Daemon:
    """A running paddockd of the test session."""

    proc: subprocess.Popen
    socket_path: str
    tcp_address: str
    token: str
    state_dir: str
    stderr_path: str

    def stderr(self) -> str:
        with open(self.stderr_path, errors="replace") as f:
            return f.read()


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _start(tmp: str) -> Daemon:
    paddockd = _need("PADDOCKD", os.path.join(SOURCE_DIR, "build", "rollout", "paddockd"))
    init = _need("PADDOCK_INIT", os.path.join(SOURCE_DIR, "build", "sandbox", "paddock-init"))
    sock = os.path.join(tmp, "d.sock")
    state = os.path.join(tmp, "state")
    token = "pysdk-test-" + os.urandom(8).hex()
    token_file = os.path.join(tmp, "token")
    with open(token_file, "w") as f:
        f.write(token + "\n")
    os.chmod(token_file, 0o600)  # paddockd refuses a token file others can read
    port = _free_port()
    err = os.path.join(tmp, "paddockd.stderr")
    with open(err, "w") as ef:
        proc = subprocess.Popen(
            [paddockd, "--state-dir", state, "--socket", sock, "--init-path", init,
             "--listen-tcp", f"127.0.0.1:{port}", "--token-file", token_file,
             "--warm-pool", "0", "--log-level", "warn"],
            stdin=subprocess.DEVNULL, stdout=ef, stderr=ef)
    d = Daemon(proc, sock, f"127.0.0.1:{port}", token, state, err)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.exit(f"paddockd exited {proc.returncode} at start:\n{d.stderr()}", returncode=1)
        if os.path.exists(sock):
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(sock)
                return d
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(0.05)
    proc.kill()
    pytest.exit(f"paddockd did not serve {sock} within 30 s:\n{d.stderr()}", returncode=1)


def _stop(d: Daemon) -> None:
    if d.proc.poll() is None:
        d.proc.send_signal(signal.SIGTERM)
        try:
            d.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            d.proc.kill()
            d.proc.wait()


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    """One paddockd for the whole session; stopped with SIGTERM at the end (it destroys every sandbox)."""
    tmp = tempfile.mkdtemp(prefix="pysdk-")
    os.chmod(tmp, 0o711)  # sandbox users must be able to search down to the state dir
    d = _start(tmp)
    try:
        yield d
    finally:
        _stop(d)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def rootfs_dir() -> str:
    """The busybox root filesystem directory."""
    path = os.environ.get("PADDOCK_TEST_ROOTFS") or "/var/tmp/paddock-test-rootfs/busybox"
    if not os.path.exists(os.path.join(path, ".complete")):
        subprocess.run([os.path.join(SOURCE_DIR, "scripts", "make-busybox-rootfs.sh"), path], check=True)
    return path


@pytest.fixture(scope="session")
def rootfs(daemon: Daemon, rootfs_dir: str) -> str:
    """The busybox rootfs imported into the session daemon's store: the image name
    the tests use (paddockd takes no host directory as an image by default)."""
    with paddock.Client(socket_path=daemon.socket_path) as c:
        c.images.import_dir(rootfs_dir, name="busybox:pysdk")
    return "busybox:pysdk"


@pytest.fixture(scope="session")
def client(daemon: Daemon) -> Iterator[paddock.Client]:
    """A sync client on the session daemon's unix socket."""
    c = paddock.Client(socket_path=daemon.socket_path)
    yield c
    c.close()
