"""The synchronous client of paddockd (see :mod:`paddock.aio` for asyncio).

::

    import paddock
    c = paddock.Client()                                   # unix socket, like the CLI
    with c.sandbox(substrate="container", image="/var/lib/images/busybox") as sb:
        r = sb.exec(["sh", "-c", "echo $((1+1))"], idempotency_key=("ep7", 3, 0))
        assert r.stdout == b"2\\n"

A :class:`Client` is thread-safe; share one among threads.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

import grpc

from . import _convert as cv
from . import _stubs
from .errors import NotFound, PaddockError, Unavailable, Unimplemented, Unknown, from_rpc_error
from .types import (
    DaemonStats,
    EpisodeDetail,
    EpisodeRecord,
    ExecResult,
    FileInfo,
    KeyLike,
    Limits,
    OutputChunk,
    SandboxInfo,
    Usage,
    VerifyReport,
    WriteResult,
)

__all__ = ["Client", "Sandbox", "ExecStream", "Log"]


class Client:
    """A connection to one paddockd.

    Args:
        socket_path: the daemon's unix socket; default ``$PADDOCK_SOCKET`` or
            ``/run/paddock/paddockd.sock`` (the CLI's default).
        address: ``"host:port"`` of a daemon started with ``--listen-tcp``, instead of the socket.
        token: the bearer token for ``address`` (``paddockd --token-file``).
        token_file: a file holding that token (surrounding whitespace ignored).
        tls_ca_file: ``address`` over TLS: the PEM CA bundle that signed paddockd's
            ``--tls-cert`` (default ``$PADDOCK_TLS_CA``; unset: plain TCP).
        tls_cert_file, tls_key_file: this client's certificate and key, for a daemon
            with ``--tls-client-ca`` (default ``$PADDOCK_TLS_CERT``, ``$PADDOCK_TLS_KEY``).
        connect_timeout: seconds to wait for the daemon to answer before raising
            :class:`paddock.Unavailable` (whose message says how to start it).
        call_timeout: deadline in seconds of every call except ``exec`` (whose deadline
            is its own timeout plus 30 s).

    Raises:
        paddock.Unavailable: nothing answers at the socket or address.
        paddock.InvalidArgument: both ``socket_path`` and ``address``, or an unreadable token file.
    """

    def __init__(self, socket_path: str | None = None, *, address: str | None = None,
                 token: str | None = None, token_file: str | None = None,
                 tls_ca_file: str | None = None, tls_cert_file: str | None = None,
                 tls_key_file: str | None = None,
                 connect_timeout: float = 2.0, call_timeout: float = cv.DEFAULT_CALL_TIMEOUT_S) -> None:
        self._grpc_target, self.target, self._tcp = cv.resolve_target(socket_path, address)
        creds = cv.tls_credentials(tls_ca_file, tls_cert_file, tls_key_file) if self._tcp else None
        if token_file and not token:
            token = cv.read_token_file(token_file)
        if self._tcp:
            cv.refuse_clear_token(self.target, token, creds)
        self._metadata = cv.metadata(token)
        self.call_timeout = call_timeout
        if not self._tcp:
            reason = cv.probe_unix_socket(self.target)
            if reason:
                raise cv.unreachable(self.target, reason)
        if creds is not None:
            self._channel = grpc.secure_channel(self._grpc_target, creds, options=cv.channel_options())
        else:
            self._channel = grpc.insecure_channel(self._grpc_target, options=cv.channel_options())
        try:
            grpc.channel_ready_future(self._channel).result(timeout=connect_timeout)
        except grpc.FutureTimeoutError:
            self._channel.close()
            if self._tcp:
                raise cv.unreachable_tcp(self.target, connect_timeout) from None
            raise cv.unreachable(self.target, f"no answer within {int(connect_timeout * 1000)} ms") from None
        self._sandboxes = _stubs.sandbox_pb2_grpc.SandboxesStub(self._channel)
        self.log = Log(self, _stubs.log_pb2_grpc.LogStub(self._channel))
        """The trajectory log (:class:`Log`)."""
        from . import images as _images, rollouts as _rollouts
        self.images = _images.Images(self)
        """The image store (:class:`paddock.images.Images`); raises Unimplemented when this build
        has no Images service."""
        self.rollouts = _rollouts.Rollouts(self)
        """Rollouts (:class:`paddock.rollouts.Rollouts`); raises Unimplemented when this build has
        no Rollouts service."""

    # ---- plumbing ----

    def _error(self, err: grpc.RpcError) -> PaddockError:
        e = from_rpc_error(err)
        if not e.message and isinstance(e, Unimplemented):
            return Unimplemented(f"paddockd at {self.target} does not serve this call (a daemon older "
                                 "than this SDK, or a service not built into it)")
        if isinstance(e, Unavailable) and not self._tcp:
            reason = cv.probe_unix_socket(self.target)
            if reason:
                return cv.unreachable(self.target, reason)
        return e

    def _call(self, method: Callable[..., Any], request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, timeout=timeout or self.call_timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise self._error(err) from None

    def _stream(self, method: Callable[..., Any], request: Any, timeout: float | None = None) -> Any:
        return method(request, timeout=timeout or self.call_timeout, metadata=self._metadata)

    # ---- sandboxes ----

    def sandbox(self, substrate: str, image: str, *, limits: Limits | Mapping[str, int] | None = None,
                env: Mapping[str, str] | None = None, workdir: str | None = None, ttl: float | None = None,
                labels: Mapping[str, str] | None = None, episode: str | None = None,
                network_allow: Sequence[str] | None = None) -> "Sandbox":
        """Creates a sandbox and returns it once it accepts exec.

        Use it as a context manager to destroy it on exit (also on an exception)::

            with c.sandbox("function", image) as sb: ...

        Args:
            substrate: ``"function"`` (stateless, a fresh process per exec) or ``"container"``.
            image: an image (a root filesystem directory, or a name in the image store).
            limits: :class:`Limits` or a dict of its fields; 0/absent means the daemon's default.
            env: environment of every exec.
            workdir: default cwd of execs and base of relative paths.
            ttl: seconds until the daemon destroys it (0/None: the daemon's default).
            labels: free-form labels (episode id, task id).
            episode: bind it to this episode of the trajectory log: while the bound sandbox
                lives another create returns it (``reused``); after a daemon restart a new one
                replaces it (``rebuilt``).
            network_allow: egress allow list (every substrate): ``"host[:port]"``,
                ``"*.domain[:port]"``, ``"IP[:port]"``, ``"CIDR[:port]"``, reached through the
                daemon's proxy (``HTTP_PROXY``/``HTTPS_PROXY`` in the sandbox). Default: none.

        Raises:
            paddock.InvalidArgument: unknown substrate, missing image, bad limits.
            paddock.ResourceExhausted: the daemon's sandbox cap is reached.
        """
        req = cv.create_request(substrate, image, limits=limits, env=env, workdir=workdir, ttl=ttl,
                                labels=labels, episode=episode, network_allow=network_allow)
        resp = self._call(self._sandboxes.Create, req)
        return Sandbox(self, resp.sandbox.id, info=cv.sandbox_info(resp.sandbox), reused=resp.reused,
                       rebuilt=resp.rebuilt, previous_sandbox_id=resp.previous_sandbox_id)

    def attach(self, sandbox_id: str) -> "Sandbox":
        """A handle on an existing sandbox (nothing is checked until its first call).

        Leaving a ``with`` block of it destroys it, like one made by :meth:`sandbox`."""
        return Sandbox(self, sandbox_id)

    def sandboxes(self) -> list[SandboxInfo]:
        """The live sandboxes."""
        return [cv.sandbox_info(s) for s in self._call(self._sandboxes.List, cv.pb.ListRequest()).sandboxes]

    def stats(self, sandbox_id: str | None = None) -> DaemonStats:
        """Daemon-wide numbers; with ``sandbox_id``, that sandbox's usage too (``.usage``)."""
        return cv.daemon_stats(self._call(self._sandboxes.Stats, cv.pb.StatsRequest(sandbox_id=sandbox_id or "")))

    def destroy(self, sandbox_id: str) -> None:
        """Destroys a sandbox by id (every process, mount, cgroup and directory it owns).

        Raises:
            paddock.NotFound: no such sandbox.
        """
        self._call(self._sandboxes.Destroy, cv.pb.DestroyRequest(sandbox_id=sandbox_id))

    def close(self) -> None:
        """Closes the connection; the client cannot be used afterwards."""
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"paddock.Client({self.target!r})"


class Sandbox:
    """One sandbox on the daemon. Made by :meth:`Client.sandbox` or :meth:`Client.attach`.

    Attributes:
        id: the sandbox id.
        info: its :class:`SandboxInfo` as created (None for an attached handle).
        reused: (``episode=`` creates) the episode's live sandbox was returned.
        rebuilt: (``episode=`` creates) the episode's earlier sandbox was gone; this one replaces it.
        previous_sandbox_id: with ``rebuilt``, the sandbox it replaces.
    """

    def __init__(self, client: Client, sandbox_id: str, *, info: SandboxInfo | None = None,
                 reused: bool = False, rebuilt: bool = False, previous_sandbox_id: str = "") -> None:
        self._client = client
        self.id = sandbox_id
        self.info = info
        self.reused = reused
        self.rebuilt = rebuilt
        self.previous_sandbox_id = previous_sandbox_id
        self._destroyed = False

    def exec(self, argv: Sequence[str] | None = None, *, shell: str | None = None,
             stdin: bytes | str | None = None, env: Mapping[str, str] | None = None, cwd: str | None = None,
             timeout: float | None = None, output_cap: int | None = None,
             idempotency_key: KeyLike | None = None, idempotent: bool = False) -> ExecResult:
        """Runs one command to completion and returns its whole result.

        Args:
            argv: the command as a list (``["ls", "-l"]``); exactly one of argv and shell.
            shell: run ``/bin/sh -c SHELL`` instead.
            stdin: bytes (or str, UTF-8 encoded) given as its stdin; default empty.
            env: added to the sandbox's environment.
            cwd: working directory (default: the sandbox's workdir).
            timeout: seconds until its whole process tree is killed (``timed_out``);
                default 60.
            output_cap: bytes kept per stream (default 1 MiB); the rest is dropped
                (``stdout_truncated``).
            idempotency_key: ``(episode, step, call)``, ``"EP:STEP:CALL"`` or a :class:`CallKey`:
                the call is logged write-ahead and a repeat is answered from the log
                (``replayed``) without running.
            idempotent: with a key: safe to run again if a crash left it in doubt.

        A non-zero exit is not an exception (see :meth:`ExecResult.check`).

        Raises:
            paddock.NotFound: the sandbox does not exist (any more).
            paddock.InvalidArgument: neither or both of argv and shell, an empty argv[0], a bad path.
            paddock.FailedPrecondition: the key was used for a different request, or is in doubt.
        """
        req = cv.exec_request(self.id, argv, shell, stdin, env, cwd, timeout, output_cap, idempotency_key,
                              idempotent)
        return cv.exec_result(self._client._call(self._client._sandboxes.Exec, req, cv.exec_deadline(timeout)))

    def exec_stream(self, argv: Sequence[str] | None = None, *, shell: str | None = None,
                    stdin: bytes | str | None = None, env: Mapping[str, str] | None = None,
                    cwd: str | None = None, timeout: float | None = None, output_cap: int | None = None,
                    idempotency_key: KeyLike | None = None, idempotent: bool = False) -> "ExecStream":
        """Runs one command, delivering its output as it is produced.

        Same arguments as :meth:`exec`. Iterate the returned :class:`ExecStream` for
        :class:`OutputChunk` s; when the iteration ends, ``.result`` holds the
        :class:`ExecResult` (with empty stdout/stderr: the chunks were the output)::

            s = sb.exec_stream(shell="for i in 1 2 3; do echo $i; sleep 1; done")
            for chunk in s:
                print(chunk.stream, chunk.data)
            print(s.result.exit_code)
        """
        req = cv.exec_request(self.id, argv, shell, stdin, env, cwd, timeout, output_cap, idempotency_key,
                              idempotent)
        try:
            call = self._client._stream(self._client._sandboxes.ExecStream, req, cv.exec_deadline(timeout))
        except grpc.RpcError as err:
            raise self._client._error(err) from None
        return ExecStream(self._client, call)

    def write_file(self, path: str, content: bytes | str, *, mode: int = 0o644, make_parents: bool = True,
                   idempotency_key: KeyLike | None = None, idempotent: bool = False) -> WriteResult:
        """Writes ``content`` (bytes, or str as UTF-8) to ``path`` inside the sandbox.

        Args:
            path: absolute, or relative to the sandbox's workdir; ``..`` is refused.
            mode: permission bits.
            make_parents: create missing parent directories.
            idempotency_key / idempotent: as for :meth:`exec`; a repeat writes nothing
                and answers ``replayed``.
        """
        req = cv.write_request(self.id, path, content, mode, make_parents, idempotency_key, idempotent)
        return cv.write_result(self._client._call(self._client._sandboxes.WriteFile, req))

    def read_file(self, path: str, *, max_bytes: int = 0) -> bytes:
        """The file's bytes. Files larger than ``max_bytes`` (0: 16 MiB) are refused.

        Raises:
            paddock.NotFound: no such file.
        """
        req = cv.pb.ReadFileRequest(sandbox_id=self.id, path=path, max_bytes=max_bytes)
        return self._client._call(self._client._sandboxes.ReadFile, req).content

    def list_dir(self, path: str) -> list[FileInfo]:
        """The entries of a directory inside the sandbox."""
        req = cv.pb.ListDirRequest(sandbox_id=self.id, path=path)
        return [cv.file_info(e) for e in self._client._call(self._client._sandboxes.ListDir, req).entries]

    def stat(self, path: str) -> FileInfo:
        """Metadata of one file inside the sandbox.

        Raises:
            paddock.NotFound: no such file.
        """
        req = cv.pb.StatRequest(sandbox_id=self.id, path=path)
        return cv.file_info(self._client._call(self._client._sandboxes.Stat, req))

    def usage(self) -> Usage:
        """What the sandbox uses now (memory, CPU time, processes)."""
        u = self._client.stats(self.id).usage
        return u if u is not None else Usage(0, 0, 0)

    def snapshot(self, name: str) -> str:
        """Turns the sandbox's changes into a new image and returns its reference.

        Raises:
            paddock.Unimplemented: the daemon has no image store yet.
        """
        req = cv.pb.SnapshotRequest(sandbox_id=self.id, name=name)
        return self._client._call(self._client._sandboxes.Snapshot, req).image

    def pause(self) -> int:
        """Pauses a microVM sandbox with its memory (saved to disk, host memory released;
        it survives a daemon restart). Returns the bytes saved.

        Raises:
            paddock.Unimplemented: not a microVM sandbox.
            paddock.FailedPrecondition: already paused, or calls still running in it.
        """
        req = cv.pb.PauseRequest(sandbox_id=self.id)
        return self._client._call(self._client._sandboxes.Pause, req).state_bytes

    def resume(self) -> None:
        """Resumes a paused microVM sandbox: its processes and files as they were."""
        req = cv.pb.ResumeRequest(sandbox_id=self.id)
        self._client._call(self._client._sandboxes.Resume, req)

    def fork(self, count: int = 1) -> "list[Sandbox]":
        """`count` (1..64) running copies of this microVM sandbox, memory included; this one runs on."""
        req = cv.pb.ForkRequest(sandbox_id=self.id, count=count)
        resp = self._client._call(self._client._sandboxes.Fork, req)
        return [Sandbox(self._client, s.id, info=cv.sandbox_info(s)) for s in resp.sandboxes]

    def destroy(self) -> None:
        """Destroys the sandbox. A second call does nothing.

        Raises:
            paddock.NotFound: it was already gone (destroyed elsewhere, or its TTL expired).
        """
        if self._destroyed:
            return
        self._client.destroy(self.id)
        self._destroyed = True

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self.destroy()
        except NotFound:
            pass  # already gone (its TTL expired, or destroyed elsewhere)
        except PaddockError:
            if exc_type is None:
                raise
            # else the exception that ended the block propagates, not this one

    def __repr__(self) -> str:
        return f"paddock.Sandbox({self.id!r})"


class ExecStream:
    """The output of :meth:`Sandbox.exec_stream`, as it is produced.

    Iterating yields :class:`OutputChunk` s; afterwards :attr:`result` holds the
    :class:`ExecResult`. Errors are raised from the iteration as :class:`paddock.PaddockError`.
    """

    def __init__(self, client: Client, call: Any) -> None:
        self._client = client
        self._call = call
        self.result: ExecResult | None = None
        """The command's result, once the iteration has ended (None before)."""
        self._cancelled = False

    def __iter__(self) -> Iterator[OutputChunk]:
        try:
            for ev in self._call:
                kind = ev.WhichOneof("event")
                if kind == "stdout":
                    yield OutputChunk("stdout", ev.stdout)
                elif kind == "stderr":
                    yield OutputChunk("stderr", ev.stderr)
                elif kind == "result":
                    self.result = cv.exec_result(ev.result)
        except grpc.RpcError as err:
            if self._cancelled and err.code() == grpc.StatusCode.CANCELLED:
                return
            raise self._client._error(err) from None
        if self.result is None:
            raise Unknown("the exec stream ended without a result")

    def collect(self) -> ExecResult:
        """Drains the stream and returns the result with stdout/stderr filled from the chunks."""
        out, err = bytearray(), bytearray()
        for c in self:
            (out if c.stream == "stdout" else err).extend(c.data)
        assert self.result is not None
        r = self.result
        return ExecResult(**{**r.__dict__, "stdout": bytes(out), "stderr": bytes(err)})

    def cancel(self) -> None:
        """Cancels the call: an iteration in progress ends (``result`` stays None) and the daemon
        kills the command in the sandbox, as a timeout would (a keyed call, ``idempotency_key``,
        runs on to its logged end)."""
        self._cancelled = True
        self._call.cancel()

    def __enter__(self) -> "ExecStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        """Cancels the stream when it was not read to its end."""
        if self.result is None:
            self.cancel()


class Log:
    """The trajectory log, through the daemon (``paddock log ...``). Reached as ``client.log``."""

    def __init__(self, client: Client, stub: Any) -> None:
        self._client = client
        self._stub = stub

    def episodes(self, prefix: str = "", limit: int = 0) -> list[EpisodeRecord]:
        """Episode records ordered by id; only ids starting with ``prefix``; at most ``limit`` (0: all)."""
        resp = self._client._call(self._stub.ListEpisodes, cv.logpb.ListEpisodesRequest(prefix=prefix, limit=limit))
        return [cv.episode_record(e) for e in resp.episodes]

    def episode(self, episode: str) -> EpisodeDetail:
        """One episode: its record (None when it has none), steps and in-doubt calls."""
        return cv.episode_detail(self._client._call(self._stub.ShowEpisode,
                                                    cv.logpb.ShowEpisodeRequest(episode=episode)))

    def export(self, episodes: Sequence[str] | None = None, format: str = "jsonl") -> Iterator[bytes]:
        """JSON lines of the named episodes (all when None), in chunks of whole lines as they arrive:
        per episode one ``{"type":"episode",...}`` line, then one ``{"type":"step",...}`` per step."""
        req = cv.logpb.ExportRequest(episodes=list(episodes or []), format=format)
        try:
            for chunk in self._client._stream(self._stub.Export, req):
                yield chunk.data
        except grpc.RpcError as err:
            raise self._client._error(err) from None

    def export_records(self, episodes: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
        """Like :meth:`export`, one parsed JSON object per line."""
        for chunk in self.export(episodes):
            for line in chunk.splitlines():
                if line.strip():
                    yield json.loads(line)

    def verify(self) -> VerifyReport:
        """Checks the log: block checksums, format version, records decode, in-doubt calls."""
        return cv.verify_report(self._client._call(self._stub.Verify, cv.logpb.VerifyRequest()))

    def backup(self, dir: str) -> int:
        """A new backup of the live log into ``dir`` (on the daemon's host; a relative path is made absolute
        against this process's cwd, as the CLI does); the backup id."""
        return self._client._call(self._stub.Backup, cv.logpb.BackupRequest(dir=os.path.abspath(dir))).backup_id

    def compact(self) -> None:
        """Full manual compaction of every column family."""
        self._client._call(self._stub.Compact, cv.logpb.CompactRequest())

    def prune(self, older_than: float) -> int:
        """Deletes episodes not updated for ``older_than`` seconds; returns how many."""
        req = cv.logpb.PruneRequest(older_than_seconds=int(older_than))
        return self._client._call(self._stub.Prune, req).episodes_deleted
