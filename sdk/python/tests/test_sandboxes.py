"""The sync client against a real paddockd: sandboxes, exec, streaming, files, errors."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

import paddock


def live_ids(client: paddock.Client) -> set[str]:
    return {s.id for s in client.sandboxes()}


@pytest.mark.parametrize("substrate", ["function", "container"])
def test_create_exec_destroy(client: paddock.Client, rootfs: str, substrate: str) -> None:
    sb = client.sandbox(substrate, rootfs, labels={"test": "pysdk"})
    assert len(sb.id) == 12
    assert sb.info is not None and sb.info.substrate == substrate and sb.info.state == "running"
    assert sb.info.labels["test"] == "pysdk"
    assert sb.id in live_ids(client)

    r = sb.exec(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert isinstance(r, paddock.ExecResult)
    assert (r.exit_code, r.signal, r.stdout, r.stderr) == (3, 0, b"out\n", b"err\n")
    assert not r.ok and not r.timed_out and not r.replayed and not r.stdout_truncated
    assert r.wall_time_us > 0
    with pytest.raises(paddock.CommandFailed, match="exited 3: err"):
        r.check()

    sb.destroy()
    assert sb.id not in live_ids(client)
    sb.destroy()  # a second destroy of the same handle does nothing
    with pytest.raises(paddock.NotFound):
        client.destroy(sb.id)


def test_container_keeps_state_and_files(client: paddock.Client, rootfs: str) -> None:
    with client.sandbox("container", rootfs, env={"GREETING": "hi"}) as sb:
        sb.exec(shell="echo one > /work/a.txt").check()
        assert sb.exec(["cat", "/work/a.txt"]).stdout == b"one\n"
        assert sb.exec(shell="echo $GREETING").stdout == b"hi\n"

        blob = bytes(range(256)) * 3
        w = sb.write_file("/work/sub/dir/blob.bin", blob, mode=0o600)
        assert w.bytes_written == len(blob) and not w.replayed
        assert sb.read_file("/work/sub/dir/blob.bin") == blob
        assert sb.exec(["wc", "-c", "/work/sub/dir/blob.bin"]).stdout.split()[0] == str(len(blob)).encode()
        sb.write_file("rel.txt", "text é")  # relative to the workdir (/work), str as UTF-8
        assert sb.read_file("/work/rel.txt") == "text é".encode()

        st = sb.stat("/work/sub/dir/blob.bin")
        assert (st.name, st.type, st.size, st.mode) == ("blob.bin", "file", len(blob), 0o600)
        assert st.is_file and not st.is_dir and st.mtime_unix_ms > 0
        entries = {e.name: e for e in sb.list_dir("/work")}
        assert entries["sub"].is_dir and entries["a.txt"].size == 4 and "rel.txt" in entries

        with pytest.raises(paddock.NotFound):
            sb.read_file("/work/missing")
        with pytest.raises(paddock.InvalidArgument, match=r"\.\."):
            sb.read_file("/work/../etc/passwd")
        with pytest.raises(paddock.ResourceExhausted):
            sb.read_file("/work/sub/dir/blob.bin", max_bytes=10)


def test_stdin_env_cwd_timeout(client: paddock.Client, rootfs: str) -> None:
    with client.sandbox("function", rootfs) as sb:
        data = b"line1\nline2\x00binary\xff"
        assert sb.exec(["cat"], stdin=data).stdout == data
        assert sb.exec(["sh", "-c", "echo $A-$B"], env={"A": "x", "B": "y z"}).stdout == b"x-y z\n"
        assert sb.exec(["pwd"], cwd="/etc").stdout == b"/etc\n"
        assert sb.exec(shell="cat | tr a-z A-Z", stdin="abc").stdout == b"ABC"

        t0 = time.monotonic()
        r = sb.exec(["sleep", "30"], timeout=0.5)
        assert r.timed_out and not r.ok
        assert time.monotonic() - t0 < 10

        r = sb.exec(shell="kill -9 $$")
        assert (r.exit_code, r.signal) == (-1, 9)

        r = sb.exec(shell="head -c 5000 /dev/zero", output_cap=1000)
        assert r.stdout_truncated and len(r.stdout) == 1000


def test_exec_stream_delivers_output_as_produced(client: paddock.Client, rootfs: str) -> None:
    with client.sandbox("container", rootfs) as sb:
        stream = sb.exec_stream(shell="echo first; echo oops >&2; sleep 1; echo second; exit 4")
        seen: list[tuple[str, bytes, float]] = []
        for chunk in stream:
            assert isinstance(chunk, paddock.OutputChunk)
            seen.append((chunk.stream, chunk.data, time.monotonic()))
        out = b"".join(d for s, d, _ in seen if s == "stdout")
        err = b"".join(d for s, d, _ in seen if s == "stderr")
        assert (out, err) == (b"first\nsecond\n", b"oops\n")
        first = next(t for s, d, t in seen if b"first" in d)
        second = next(t for s, d, t in seen if b"second" in d)
        assert second - first >= 0.7, "the first line must arrive before the command sleeps, not at its end"
        assert stream.result is not None and stream.result.exit_code == 4
        assert stream.result.stdout == b""  # the chunks were the output

        r = sb.exec_stream(["sh", "-c", "echo a; echo b >&2"]).collect()
        assert (r.stdout, r.stderr, r.exit_code) == (b"a\n", b"b\n", 0)

        with pytest.raises(paddock.NotFound):
            list(client.attach("000000000000").exec_stream(["true"]))


def sleeping(secs: str) -> bool:
    """True while a process on this host runs exactly ``sleep <secs>``."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [b"sleep", secs.encode()]:
            return True
    return False


@pytest.mark.parametrize("substrate", ["container", "function"])
def test_exec_stream_cancel_kills_the_command(client: paddock.Client, rootfs: str, substrate: str) -> None:
    secs = str(9000 + os.getpid() % 500 * 2 + (substrate == "function"))
    with client.sandbox(substrate, rootfs) as sb:
        stream = sb.exec_stream(shell=f"echo started; exec sleep {secs}", timeout=120)
        it = iter(stream)
        assert next(it).data == b"started\n"
        deadline = time.monotonic() + 5
        while not sleeping(secs) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sleeping(secs)
        stream.cancel()
        assert list(it) == [] and stream.result is None
        deadline = time.monotonic() + 5
        while sleeping(secs) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not sleeping(secs), f"sleep {secs} still runs after the stream was cancelled"
        assert sb.exec(["echo", "ok"]).stdout == b"ok\n"


def test_typed_errors_carry_the_daemons_message(client: paddock.Client, rootfs: str) -> None:
    ghost = client.attach("0123456789ab")
    with pytest.raises(paddock.NotFound) as e:
        ghost.exec(["true"])
    assert "0123456789ab" in e.value.message
    assert isinstance(e.value, paddock.PaddockError)
    assert e.value.code.name == "NOT_FOUND"

    with client.sandbox("function", rootfs) as sb:
        with pytest.raises(paddock.InvalidArgument, match="exactly one of argv and shell") as e2:
            sb.exec([])
        assert isinstance(e2.value, ValueError)
        with pytest.raises(paddock.InvalidArgument, match="exactly one of argv and shell"):
            sb.exec(["true"], shell="true")
        with pytest.raises(paddock.InvalidArgument, match=r"argv\[0\] is empty"):
            sb.exec([""])
        with pytest.raises(paddock.InvalidArgument, match="NUL"):
            sb.exec(["echo", "a\x00b"])
        # Found before anything is sent: a str where a list belongs.
        with pytest.raises(paddock.InvalidArgument, match="list of strings"):
            sb.exec("ls -l")  # type: ignore[arg-type]
        with pytest.raises(paddock.InvalidArgument, match="timeout"):
            sb.exec(["true"], timeout=0)
        # Pause, resume and fork keep a microVM's memory: other substrates say so.
        with pytest.raises(paddock.Unimplemented, match="microVM"):
            sb.pause()
        with pytest.raises(paddock.Unimplemented, match="microVM"):
            sb.fork(2)
    with pytest.raises(paddock.NotFound):
        ghost.resume()
    with pytest.raises(paddock.InvalidArgument, match="1 to 64"):
        ghost.fork(0)
    with pytest.raises(paddock.InvalidArgument, match="unknown substrate 'nope'"):
        client.sandbox("nope", rootfs)
    with pytest.raises(paddock.InvalidArgument, match="no image"):
        client.sandbox("function", "")


def test_context_manager_destroys_on_exception(client: paddock.Client, rootfs: str) -> None:
    ids = []
    with pytest.raises(RuntimeError, match="boom"):
        with client.sandbox("container", rootfs) as sb:
            ids.append(sb.id)
            assert sb.id in live_ids(client)
            raise RuntimeError("boom")
    assert ids[0] not in live_ids(client)
    with pytest.raises(paddock.NotFound):
        client.attach(ids[0]).exec(["true"])

    # A block that destroys the sandbox itself exits cleanly.
    with client.sandbox("function", rootfs) as sb2:
        client.destroy(sb2.id)


def test_sandboxes_and_stats(client: paddock.Client, rootfs: str) -> None:
    before = client.stats()
    with client.sandbox("container", rootfs, limits=paddock.Limits(memory_bytes=64 << 20, pids=64)) as sb:
        assert sb.info is not None and sb.info.limits.memory_bytes == 64 << 20 and sb.info.limits.pids == 64
        sb.exec(["true"])
        s = client.stats()
        assert s.live_sandboxes == before.live_sandboxes + 1
        assert s.by_substrate.get("container", 0) >= 1
        assert s.execs_total > before.execs_total and s.daemon_rss_bytes > 0 and s.max_sandboxes > 0
        assert s.usage is None
        u = sb.usage()
        assert u.memory_bytes > 0 and u.pids >= 1
        info = next(i for i in client.sandboxes() if i.id == sb.id)
        assert info.image == rootfs and info.expires_unix_ms > info.created_unix_ms
    with pytest.raises(paddock.InvalidArgument, match="limits"):
        client.sandbox("function", rootfs, limits={"memory": 1})


def test_unreachable_daemon_says_how_to_start_it(tmp_path: "os.PathLike[str]") -> None:
    with pytest.raises(paddock.Unavailable, match="paddockd is not running.*start it with"):
        paddock.Client(socket_path=os.path.join(str(tmp_path), "none.sock"))
    with pytest.raises(paddock.InvalidArgument):
        paddock.Client(socket_path="/x.sock", address="127.0.0.1:1")


def test_default_socket_follows_PADDOCK_SOCKET(monkeypatch: pytest.MonkeyPatch, daemon) -> None:
    monkeypatch.setenv("PADDOCK_SOCKET", daemon.socket_path)
    assert paddock.default_socket_path() == daemon.socket_path
    with paddock.Client() as c:
        assert c.target == daemon.socket_path
        c.sandboxes()
    monkeypatch.delenv("PADDOCK_SOCKET")
    assert paddock.default_socket_path() == "/run/paddock/paddockd.sock"


def test_tcp_with_token(daemon, rootfs: str, tmp_path) -> None:
    with paddock.Client(address=daemon.tcp_address, token=daemon.token) as c:
        with c.sandbox("function", rootfs) as sb:
            assert sb.exec(["echo", "tcp"]).stdout == b"tcp\n"
    tf = tmp_path / "tok"
    tf.write_text(f"  {daemon.token}\n")
    with paddock.Client(address=daemon.tcp_address, token_file=str(tf)) as c:
        c.stats()
    with paddock.Client(address=daemon.tcp_address, token="wrong") as c:
        with pytest.raises(paddock.Unauthenticated):
            c.sandboxes()
    with paddock.Client(address=daemon.tcp_address) as c:
        with pytest.raises(paddock.Unauthenticated):
            c.sandboxes()


def _make_certs(d) -> None:
    """A CA, and a server and a client certificate for 127.0.0.1 it signed (openssl CLI)."""
    script = (
        "set -e; openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 "
        "-subj /CN=pysdk-ca 2>/dev/null; for who in server client; do "
        "openssl req -newkey rsa:2048 -nodes -keyout $who.key -out $who.csr -subj /CN=$who 2>/dev/null; "
        "printf 'subjectAltName=IP:127.0.0.1\\n' > $who.ext; "
        "openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $who.pem -days 2 "
        "-extfile $who.ext 2>/dev/null; done; chmod 600 *.key")
    subprocess.run(["/bin/sh", "-c", script], cwd=d, check=True)


def test_tcp_with_mutual_tls(daemon, tmp_path) -> None:
    """A second paddockd serving TCP with --tls-cert and --tls-client-ca: the SDK connects
    with the CA and its certificate; a plain-text client gets nothing."""
    _make_certs(tmp_path)
    state, sock = tmp_path / "state", tmp_path / "d.sock"
    token = tmp_path / "token"
    token.write_text("tls-token\n")
    os.chmod(token, 0o600)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen(
        [os.environ.get("PADDOCKD", "build/rollout/paddockd"), "--state-dir", str(state), "--socket", str(sock),
         "--init-path", os.environ.get("PADDOCK_INIT", "build/sandbox/paddock-init"), "--warm-pool", "0",
         "--listen-tcp", f"127.0.0.1:{port}", "--token-file", str(token),
         "--tls-cert", str(tmp_path / "server.pem"), "--tls-key", str(tmp_path / "server.key"),
         "--tls-client-ca", str(tmp_path / "ca.pem"), "--log-level", "warn"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with paddock.Client(address=f"127.0.0.1:{port}", token="tls-token", connect_timeout=5,
                            tls_ca_file=str(tmp_path / "ca.pem"), tls_cert_file=str(tmp_path / "client.pem"),
                            tls_key_file=str(tmp_path / "client.key")) as c:
            assert c.sandboxes() == []
        with pytest.raises(paddock.Unavailable):
            with paddock.Client(address=f"127.0.0.1:{port}", token="tls-token", connect_timeout=1) as c:
                c.sandboxes()
        with pytest.raises(paddock.InvalidArgument):
            paddock.Client(address=f"127.0.0.1:{port}", tls_cert_file=str(tmp_path / "client.pem"))
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_exec_stream_cancel_ends_the_iteration(client: paddock.Client, rootfs: str) -> None:
    with client.sandbox("container", rootfs) as sb:
        t0 = time.monotonic()
        s = sb.exec_stream(shell="echo start; sleep 20", timeout=25)
        got = []
        for chunk in s:
            got.append(chunk.data)
            s.cancel()
        assert got == [b"start\n"] and s.result is None
        assert time.monotonic() - t0 < 10, "cancel must end the iteration at once, not when the command ends"
        with sb.exec_stream(shell="echo a; sleep 20", timeout=25) as s2:
            assert next(iter(s2)).data == b"a\n"
        assert s2.result is None
        assert time.monotonic() - t0 < 15
        assert sb.exec(["echo", "still usable"]).stdout == b"still usable\n"


def test_one_client_shared_by_threads(client: paddock.Client, rootfs: str) -> None:
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path
    with client.sandbox("function", Path(rootfs)) as sb:
        with ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(lambda i: sb.exec(["echo", str(i)]).stdout, range(40)))
    assert outs == [f"{i}\n".encode() for i in range(40)]
