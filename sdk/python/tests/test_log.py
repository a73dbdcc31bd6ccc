"""Idempotency keys, episode-bound sandboxes and the Log service through the sync client."""

from __future__ import annotations

import json
import os

import pytest

import paddock


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{os.urandom(3).hex()}"


def test_keyed_exec_replays_without_running_again(client: paddock.Client, rootfs: str) -> None:
    ep = unique("pysdk-replay")
    with client.sandbox("container", rootfs) as sb:
        # Side effect (one line per run) plus output that differs on every run.
        cmd = ["sh", "-c", "echo ran >> /work/runs; cat /proc/sys/kernel/random/uuid"]
        first = sb.exec(cmd, idempotency_key=(ep, 3, 0))
        assert first.exit_code == 0 and not first.replayed and len(first.stdout) == 37

        again = sb.exec(cmd, idempotency_key=(ep, 3, 0))
        assert again.replayed
        assert again.stdout == first.stdout and again.stderr == first.stderr
        assert again.exit_code == first.exit_code
        # The same key as a string and as a CallKey are the same key.
        assert sb.exec(cmd, idempotency_key=f"{ep}:3:0").replayed
        assert sb.exec(cmd, idempotency_key=paddock.CallKey(ep, 3, 0)).stdout == first.stdout
        assert sb.read_file("/work/runs") == b"ran\n", "a replayed call must not run again"

        # A new key runs.
        other = sb.exec(cmd, idempotency_key=(ep, 3, 1))
        assert not other.replayed and other.stdout != first.stdout
        assert sb.read_file("/work/runs") == b"ran\nran\n"

        # The key reused for a different request is refused, naming what differs.
        with pytest.raises(paddock.FailedPrecondition, match="different request") as e:
            sb.exec(["sh", "-c", "echo something else"], idempotency_key=(ep, 3, 0))
        assert f"{ep}:3:0" in e.value.message
        assert sb.read_file("/work/runs") == b"ran\nran\n"

        # Keyed writes replay too: the second write writes nothing.
        w1 = sb.write_file("/work/f.txt", b"v1", idempotency_key=(ep, 4, 0))
        sb.exec(shell="echo changed > /work/f.txt")
        w2 = sb.write_file("/work/f.txt", b"v1", idempotency_key=(ep, 4, 0))
        assert (w1.replayed, w2.replayed, w2.bytes_written) == (False, True, 2)
        assert sb.read_file("/work/f.txt") == b"changed\n"

        # Streamed keyed execs replay as well.
        s = sb.exec_stream(cmd, idempotency_key=(ep, 3, 1))
        r = s.collect()
        assert r.replayed and r.stdout == other.stdout

    # After the sandbox is gone the log still answers the logged call.
    assert client.attach(sb.id).exec(cmd, idempotency_key=(ep, 3, 0)).stdout == first.stdout


def test_bad_keys_are_refused_before_sending(client: paddock.Client, rootfs: str) -> None:
    with client.sandbox("function", rootfs) as sb:
        for bad, what in [(("", 1, 0), "episode"), (("ep", -1, 0), "step"), (("ep", 1, 2**32), "call"),
                          ("ep:x:0", "STEP"), ("ep:1", "EPISODE:STEP:CALL"), (("ep",), "expected")]:
            with pytest.raises(paddock.InvalidArgument, match=what):
                sb.exec(["true"], idempotency_key=bad)  # type: ignore[arg-type]
        with pytest.raises(paddock.InvalidArgument, match="needs an idempotency_key"):
            sb.exec(["true"], idempotent=True)
    assert paddock.CallKey.of("a:b:7:2") == paddock.CallKey("a:b", 7, 2)


def test_episode_bound_sandbox_is_reused(client: paddock.Client, rootfs: str) -> None:
    ep = unique("pysdk-bound")
    a = client.sandbox("container", rootfs, episode=ep)
    try:
        assert not a.reused and not a.rebuilt
        b = client.sandbox("container", rootfs, episode=ep)
        assert b.reused and b.id == a.id
        assert a.info is not None and a.info.labels.get("paddock.episode") == ep
        with pytest.raises(paddock.FailedPrecondition):
            client.sandbox("container", rootfs, episode=ep, env={"X": "different spec"})
    finally:
        a.destroy()
    c = client.sandbox("container", rootfs, episode=ep)
    with c:
        assert c.id != a.id and c.rebuilt and c.previous_sandbox_id == a.id


def test_log_lists_shows_and_exports_episodes(client: paddock.Client, rootfs: str) -> None:
    ep = unique("pysdk-log")
    with client.sandbox("function", rootfs) as sb:
        sb.exec(["echo", "step0"], idempotency_key=(ep, 0, 0))
        sb.exec(["echo", "step1"], idempotency_key=(ep, 1, 0))

    eps = client.log.episodes(prefix=ep)
    assert [e.episode_id for e in eps] == [ep]
    assert eps[0].state == "running" and eps[0].created_unix_ms > 0
    assert client.log.episodes(prefix=ep + "-none") == []

    d = client.log.episode(ep)
    assert d.episode is not None and d.episode.episode_id == ep and d.in_doubt == []

    lines = [json.loads(line) for chunk in client.log.export([ep]) for line in chunk.splitlines()]
    assert lines and lines[0]["type"] == "episode"
    assert any(ep in json.dumps(x) for x in lines)
    assert list(client.log.export_records([ep]))[0]["type"] == "episode"

    with pytest.raises(paddock.InvalidArgument, match="format"):
        list(client.log.export([ep], format="csv"))
    with pytest.raises(paddock.InvalidArgument):
        client.log.episode("")

    v = client.log.verify()
    assert v.ok and v.problems == [] and "episodes" in v.details and v.report
    with pytest.raises(paddock.InvalidArgument):
        client.log.prune(0)


def test_log_backup_and_compact(client: paddock.Client, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "backups"
    first = client.log.backup(str(d))
    monkeypatch.chdir(tmp_path)
    second = client.log.backup("backups")  # relative: made absolute against the caller's cwd
    assert first >= 1 and second == first + 1
    assert any(d.iterdir())
    client.log.compact()
    assert client.log.verify().ok
