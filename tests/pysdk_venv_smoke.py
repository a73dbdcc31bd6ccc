"""The pip-installed SDK against a real paddockd: run by tests/pysdk_venv_test.sh with the
venv's interpreter, from a directory outside the source tree.

    pysdk_venv_smoke.py VENV SOURCE_DIR

Checks that ``paddock`` (and its generated stubs) come from VENV and nothing from
SOURCE_DIR is importable, then starts paddockd (PADDOCKD, PADDOCK_INIT from the
environment) and, with the sync and the asyncio client, imports the busybox rootfs
(PADDOCK_TEST_ROOTFS) as an image, creates a sandbox, execs, writes and reads a file,
and destroys it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


def fail(msg: str) -> None:
    sys.exit(f"pysdk_venv_smoke: {msg}")


def check_origin(venv: str, source_dir: str) -> None:
    import paddock
    import paddock._api.sandbox_pb2 as sandbox_pb2

    venv = os.path.realpath(venv)
    for mod in (paddock, sandbox_pb2):
        path = os.path.realpath(mod.__file__ or "")
        if not path.startswith(venv + os.sep):
            fail(f"{mod.__name__} was imported from {path}, not from the venv {venv}")
    src = os.path.realpath(source_dir)
    for p in sys.path:
        if p and os.path.realpath(p).startswith(src + os.sep):
            fail(f"sys.path has {p} of the source tree: the test would not show the install works alone")
    for name in ("paddock_api", "sandbox_pb2"):
        try:
            __import__(name)
        except ImportError:
            continue
        fail(f"module {name} is importable at the top level; the stubs must live in paddock._api only")


def start_daemon(tmp: str) -> subprocess.Popen:
    sock = os.path.join(tmp, "d.sock")
    err = open(os.path.join(tmp, "paddockd.stderr"), "w")
    proc = subprocess.Popen(
        [os.environ["PADDOCKD"], "--state-dir", os.path.join(tmp, "state"), "--socket", sock,
         "--init-path", os.environ["PADDOCK_INIT"], "--warm-pool", "0", "--log-level", "warn"],
        stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(f"paddockd exited {proc.returncode} at start:\n{open(err.name).read()}")
        if os.path.exists(sock):
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(sock)
                return proc
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(0.05)
    proc.kill()
    fail(f"paddockd did not create {sock} within 30 s:\n{open(err.name).read()}")
    raise AssertionError  # unreachable


def drive_sync(sock: str, rootfs: str) -> None:
    import paddock

    with paddock.Client(socket_path=sock) as c:
        c.images.import_dir(rootfs, name="busybox:venv")
        with c.sandbox("container", "busybox:venv", env={"GREETING": "hi"}) as sb:
            r = sb.exec(["sh", "-c", "echo $GREETING; echo err >&2; exit 3"])
            if (r.exit_code, r.stdout, r.stderr) != (3, b"hi\n", b"err\n"):
                fail(f"exec gave {r!r}")
            sb.write_file("/tmp/a.txt", "from the venv\n")
            if sb.read_file("/tmp/a.txt") != b"from the venv\n":
                fail("read_file does not return what write_file wrote")
            sid = sb.id
        if sid in {s.id for s in c.sandboxes()}:
            fail(f"sandbox {sid} still listed after leaving its with block")
        try:
            c.attach(sid).exec(["true"])
        except paddock.NotFound:
            pass
        else:
            fail(f"exec in the destroyed sandbox {sid} did not raise paddock.NotFound")


def drive_aio(sock: str) -> None:
    import paddock.aio

    async def main() -> None:
        async with paddock.aio.Client(sock) as c:
            async with c.sandbox("function", "busybox:venv") as sb:
                rs = await asyncio.gather(*(sb.exec(["echo", str(i)]) for i in range(4)))
                if [r.stdout for r in rs] != [f"{i}\n".encode() for i in range(4)]:
                    fail(f"aio execs gave {[r.stdout for r in rs]!r}")
            if sb.id in {s.id for s in await c.sandboxes()}:
                fail(f"aio sandbox {sb.id} still listed after leaving its async with block")

    asyncio.run(main())


def main() -> None:
    if len(sys.argv) != 3:
        fail("usage: pysdk_venv_smoke.py VENV SOURCE_DIR")
    check_origin(sys.argv[1], sys.argv[2])
    tmp = tempfile.mkdtemp(prefix="pysdk-venv-d-")
    os.chmod(tmp, 0o711)  # sandbox users must be able to search down to the state dir
    proc = start_daemon(tmp)
    try:
        sock = os.path.join(tmp, "d.sock")
        drive_sync(sock, os.environ["PADDOCK_TEST_ROOTFS"])
        drive_aio(sock)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    import paddock
    print(f"pysdk_venv_smoke: ok (paddock {paddock.__file__}, Python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
