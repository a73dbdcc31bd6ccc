"""The asyncio client against the real daemon: concurrency, streaming, errors, context managers."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

import paddock
import paddock.aio


def run(coro):  # pytest-asyncio is not a Debian 12 dependency we take; a loop per test is enough
    return asyncio.run(coro)


def test_twenty_concurrent_execs(daemon, rootfs: str) -> None:
    async def main() -> None:
        async with paddock.aio.Client(daemon.socket_path) as c:
            async with c.sandbox("function", rootfs) as sb:
                t0 = time.monotonic()
                results = await asyncio.gather(
                    *(sb.exec(["sh", "-c", f"sleep 0.5; echo {i}"]) for i in range(20)))
                elapsed = time.monotonic() - t0
                assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(20)]
                assert all(r.ok for r in results)
                # 20 half-second sleeps one after another would take 10 s.
                assert elapsed < 6, f"20 concurrent execs took {elapsed:.1f} s: they did not overlap"
            assert sb.id not in {s.id for s in await c.sandboxes()}

    run(main())


def test_aio_files_stream_keys_and_errors(daemon, rootfs: str) -> None:
    ep = f"pysdk-aio-{os.getpid()}-{os.urandom(3).hex()}"

    async def main() -> None:
        c = paddock.aio.Client(daemon.socket_path)
        try:
            sb = await c.sandbox("container", rootfs, workdir="/work")
            try:
                w = await sb.write_file("notes/a.txt", b"hello")
                assert w.bytes_written == 5
                assert await sb.read_file("/work/notes/a.txt") == b"hello"
                assert (await sb.stat("notes/a.txt")).size == 5
                assert [e.name for e in await sb.list_dir("/work/notes")] == ["a.txt"]
                r = await sb.exec(["cat"], stdin=b"in", cwd="/work/notes", env={"K": "v"})
                assert r.stdout == b"in"

                chunks = []
                stream = sb.exec_stream(shell="echo one; sleep 0.5; echo two >&2")
                async for ch in stream:
                    chunks.append(ch)
                assert [(c_.stream, c_.data) for c_ in chunks] == [("stdout", b"one\n"), ("stderr", b"two\n")]
                assert stream.result is not None and stream.result.exit_code == 0

                first = await sb.exec(["sh", "-c", "echo x >> /work/n; cat /proc/sys/kernel/random/uuid"],
                                      idempotency_key=(ep, 0, 0))
                again = await sb.exec(["sh", "-c", "echo x >> /work/n; cat /proc/sys/kernel/random/uuid"],
                                      idempotency_key=(ep, 0, 0))
                assert again.replayed and again.stdout == first.stdout
                assert await sb.read_file("/work/n") == b"x\n"
                assert [e.episode_id for e in await c.log.episodes(prefix=ep)] == [ep]
                assert (await c.log.episode(ep)).episode is not None
                exported = b"".join([ch async for ch in c.log.export([ep])])
                rec = json.loads(exported.splitlines()[0])
                assert (rec["type"], rec["episode_id"]) == ("episode", ep)

                with pytest.raises(paddock.InvalidArgument, match="exactly one of argv and shell"):
                    await sb.exec([])
                with pytest.raises(paddock.NotFound):
                    await sb.read_file("/nope")
                s = await c.stats(sb.id)
                assert s.usage is not None and s.live_sandboxes >= 1
            finally:
                await sb.destroy()
            with pytest.raises(paddock.NotFound):
                await c.attach(sb.id).exec(["true"])
        finally:
            await c.close()

    run(main())


def test_aio_context_manager_destroys_on_exception(daemon, rootfs: str) -> None:
    async def main() -> str:
        async with paddock.aio.Client(daemon.socket_path) as c:
            ids = []
            with pytest.raises(KeyError):
                async with c.sandbox("function", rootfs) as sb:
                    ids.append(sb.id)
                    raise KeyError("boom")
            assert ids[0] not in {s.id for s in await c.sandboxes()}
            return ids[0]

    run(main())


def test_aio_unreachable_and_tcp(daemon, rootfs: str, tmp_path) -> None:
    with pytest.raises(paddock.Unavailable, match="paddockd is not running"):
        paddock.aio.Client(str(tmp_path / "none.sock"))

    async def main() -> None:
        async with paddock.aio.Client(address=daemon.tcp_address, token=daemon.token) as c:
            async with c.sandbox("function", rootfs) as sb:
                assert (await sb.exec(["echo", "ok"])).stdout == b"ok\n"
        async with paddock.aio.Client(address=daemon.tcp_address, token="bad") as c:
            with pytest.raises(paddock.Unauthenticated):
                await c.sandboxes()

    run(main())


def test_aio_stream_cancel(daemon, rootfs: str) -> None:
    async def main() -> None:
        async with paddock.aio.Client(daemon.socket_path) as c:
            async with c.sandbox("container", rootfs) as sb:
                t0 = time.monotonic()
                s = sb.exec_stream(shell="echo start; sleep 20", timeout=25)
                got = []
                async for chunk in s:
                    got.append(chunk.data)
                    s.cancel()
                assert got == [b"start\n"] and s.result is None
                async with sb.exec_stream(shell="echo a; sleep 20", timeout=25) as s2:
                    async for chunk in s2:
                        assert chunk.data == b"a\n"
                        break
                assert time.monotonic() - t0 < 10
                assert (await sb.exec(["echo", "ok"])).stdout == b"ok\n"

    run(main())
