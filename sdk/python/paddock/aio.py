"""The asyncio client of paddockd: the surface of :class:`paddock.Client`, on ``grpc.aio``.

::

    import asyncio, paddock.aio

    async def main():
        async with paddock.aio.Client() as c:
            async with c.sandbox("function", "/var/lib/images/busybox") as sb:
                results = await asyncio.gather(*(sb.exec(["echo", str(i)]) for i in range(20)))
            ro = await c.rollouts.start("tasks.jsonl", policy="http://127.0.0.1:30000")
            async for ev in ro.watch(): ...

    asyncio.run(main())

One :class:`Client` serves any number of concurrent calls of its event loop.
Types and exceptions are the same as the sync client's.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, AsyncIterator, Callable, Generator, Mapping, Optional, Sequence, Union

import grpc
import grpc.aio

from . import _convert as cv
from . import _stubs
from . import rollouts as _ro
from ._msg import from_msg
from .errors import NotFound, PaddockError, Unavailable, Unimplemented, Unknown, from_rpc_error
from . import images as _im
from .images import GcResult, ImageDetail, ImageSummary, ImportDirResult, ImportResult, PullResult, PushResult
from .rollouts import (EpisodeGroup, EpisodeSummary, PolicySpec, PolicyUpdate, ResumeResult, RolloutEpisode,
                       RolloutProgress, Sampling)
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

__all__ = ["Client", "Sandbox", "ExecStream", "Log", "Images", "Rollouts", "Rollout"]


class Client:
    """An asyncio connection to one paddockd. Arguments as for :class:`paddock.Client`.

    The unix socket is checked at once (a missing daemon raises :class:`paddock.Unavailable`
    here); the channel itself is opened on the first call, inside the running event loop.
    Use ``async with`` or :meth:`close` to release it.
    """

    def __init__(self, socket_path: str | None = None, *, address: str | None = None,
                 token: str | None = None, token_file: str | None = None,
                 tls_ca_file: str | None = None, tls_cert_file: str | None = None,
                 tls_key_file: str | None = None,
                 connect_timeout: float = 2.0, call_timeout: float = cv.DEFAULT_CALL_TIMEOUT_S) -> None:
        self._grpc_target, self.target, self._tcp = cv.resolve_target(socket_path, address)
        self._creds = cv.tls_credentials(tls_ca_file, tls_cert_file, tls_key_file) if self._tcp else None
        if token_file and not token:
            token = cv.read_token_file(token_file)
        if self._tcp:
            cv.refuse_clear_token(self.target, token, self._creds)
        self._metadata = cv.metadata(token)
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        if not self._tcp:
            reason = cv.probe_unix_socket(self.target)
            if reason:
                raise cv.unreachable(self.target, reason)
        self._channel_obj: grpc.aio.Channel | None = None
        self._sb_stub: Any = None
        self._log_stub: Any = None
        self.log = Log(self)
        """The trajectory log (:class:`Log`)."""
        self.rollouts = Rollouts(self)
        """Rollouts (:class:`Rollouts`)."""
        self.images = Images(self)
        """The image store (:class:`Images`)."""

    # ---- plumbing ----

    @property
    def _channel(self) -> grpc.aio.Channel:
        if self._channel_obj is None:
            if self._creds is not None:
                self._channel_obj = grpc.aio.secure_channel(self._grpc_target, self._creds,
                                                            options=cv.channel_options())
            else:
                self._channel_obj = grpc.aio.insecure_channel(self._grpc_target, options=cv.channel_options())
            self._sb_stub = _stubs.sandbox_pb2_grpc.SandboxesStub(self._channel_obj)
            self._log_stub = _stubs.log_pb2_grpc.LogStub(self._channel_obj)
        return self._channel_obj

    @property
    def _sandboxes(self) -> Any:
        self._channel  # noqa: B018 (opens it)
        return self._sb_stub

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Waits until the daemon answers (``connect_timeout`` by default).

        Raises:
            paddock.Unavailable: it did not, with how to start it.
        """
        t = self.connect_timeout if timeout is None else timeout
        try:
            await asyncio.wait_for(self._channel.channel_ready(), t)
        except asyncio.TimeoutError:
            if self._tcp:
                raise cv.unreachable_tcp(self.target, t) from None
            raise cv.unreachable(self.target, f"no answer within {int(t * 1000)} ms") from None

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

    async def _call(self, method: Callable[..., Any], request: Any, timeout: float | None = None) -> Any:
        try:
            return await method(request, timeout=timeout or self.call_timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise self._error(err) from None

    # ---- sandboxes ----

    def sandbox(self, substrate: str, image: str, *, limits: Limits | Mapping[str, int] | None = None,
                env: Mapping[str, str] | None = None, workdir: str | None = None, ttl: float | None = None,
                labels: Mapping[str, str] | None = None, episode: str | None = None,
                network_allow: Sequence[str] | None = None) -> "_Creating":
        """Creates a sandbox (arguments as for :meth:`paddock.Client.sandbox`).

        ``sb = await c.sandbox(...)``, or ``async with c.sandbox(...) as sb:`` to destroy it on exit
        (also on an exception)."""
        req = cv.create_request(substrate, image, limits=limits, env=env, workdir=workdir, ttl=ttl,
                                labels=labels, episode=episode, network_allow=network_allow)
        return _Creating(self, req)

    async def _create(self, req: Any) -> "Sandbox":
        resp = await self._call(self._sandboxes.Create, req)
        return Sandbox(self, resp.sandbox.id, info=cv.sandbox_info(resp.sandbox), reused=resp.reused,
                       rebuilt=resp.rebuilt, previous_sandbox_id=resp.previous_sandbox_id)

    def attach(self, sandbox_id: str) -> "Sandbox":
        """A handle on an existing sandbox (nothing is checked until its first call)."""
        return Sandbox(self, sandbox_id)

    async def sandboxes(self) -> list[SandboxInfo]:
        """The live sandboxes."""
        resp = await self._call(self._sandboxes.List, cv.pb.ListRequest())
        return [cv.sandbox_info(s) for s in resp.sandboxes]

    async def stats(self, sandbox_id: str | None = None) -> DaemonStats:
        """Daemon-wide numbers; with ``sandbox_id``, that sandbox's usage too."""
        return cv.daemon_stats(await self._call(self._sandboxes.Stats, cv.pb.StatsRequest(sandbox_id=sandbox_id or "")))

    async def destroy(self, sandbox_id: str) -> None:
        """Destroys a sandbox by id. Raises :class:`paddock.NotFound` when there is none."""
        await self._call(self._sandboxes.Destroy, cv.pb.DestroyRequest(sandbox_id=sandbox_id))

    async def close(self) -> None:
        """Closes the channel."""
        if self._channel_obj is not None:
            await self._channel_obj.close()
            self._channel_obj = None

    async def __aenter__(self) -> "Client":
        await self.wait_ready()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"paddock.aio.Client({self.target!r})"


class _Creating:
    """What :meth:`Client.sandbox` returns: await it, or use it with ``async with``."""

    def __init__(self, client: Client, req: Any) -> None:
        self._client = client
        self._req = req
        self._sb: Sandbox | None = None

    def __await__(self) -> Generator[Any, None, "Sandbox"]:
        return self._client._create(self._req).__await__()

    async def __aenter__(self) -> "Sandbox":
        self._sb = await self._client._create(self._req)
        return self._sb

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self._sb is not None
        await self._sb.__aexit__(exc_type, exc, tb)


class Sandbox:
    """One sandbox (asyncio). Methods and attributes as :class:`paddock.Sandbox`, awaited."""

    def __init__(self, client: Client, sandbox_id: str, *, info: SandboxInfo | None = None,
                 reused: bool = False, rebuilt: bool = False, previous_sandbox_id: str = "") -> None:
        self._client = client
        self.id = sandbox_id
        self.info = info
        self.reused = reused
        self.rebuilt = rebuilt
        self.previous_sandbox_id = previous_sandbox_id
        self._destroyed = False

    async def exec(self, argv: Sequence[str] | None = None, *, shell: str | None = None,
                   stdin: bytes | str | None = None, env: Mapping[str, str] | None = None, cwd: str | None = None,
                   timeout: float | None = None, output_cap: int | None = None,
                   idempotency_key: KeyLike | None = None, idempotent: bool = False) -> ExecResult:
        """Runs one command to completion (see :meth:`paddock.Sandbox.exec`)."""
        req = cv.exec_request(self.id, argv, shell, stdin, env, cwd, timeout, output_cap, idempotency_key,
                              idempotent)
        return cv.exec_result(await self._client._call(self._client._sandboxes.Exec, req, cv.exec_deadline(timeout)))

    def exec_stream(self, argv: Sequence[str] | None = None, *, shell: str | None = None,
                    stdin: bytes | str | None = None, env: Mapping[str, str] | None = None,
                    cwd: str | None = None, timeout: float | None = None, output_cap: int | None = None,
                    idempotency_key: KeyLike | None = None, idempotent: bool = False) -> "ExecStream":
        """Runs one command, delivering output as it is produced: ``async for chunk in
        sb.exec_stream(...)``, then ``.result`` (see :meth:`paddock.Sandbox.exec_stream`)."""
        req = cv.exec_request(self.id, argv, shell, stdin, env, cwd, timeout, output_cap, idempotency_key,
                              idempotent)
        c = self._client
        call = c._sandboxes.ExecStream(req, timeout=cv.exec_deadline(timeout), metadata=c._metadata)
        return ExecStream(c, call)

    async def write_file(self, path: str, content: bytes | str, *, mode: int = 0o644, make_parents: bool = True,
                         idempotency_key: KeyLike | None = None, idempotent: bool = False) -> WriteResult:
        """Writes a file inside the sandbox (see :meth:`paddock.Sandbox.write_file`)."""
        req = cv.write_request(self.id, path, content, mode, make_parents, idempotency_key, idempotent)
        return cv.write_result(await self._client._call(self._client._sandboxes.WriteFile, req))

    async def read_file(self, path: str, *, max_bytes: int = 0) -> bytes:
        """The file's bytes (see :meth:`paddock.Sandbox.read_file`)."""
        req = cv.pb.ReadFileRequest(sandbox_id=self.id, path=path, max_bytes=max_bytes)
        return (await self._client._call(self._client._sandboxes.ReadFile, req)).content

    async def list_dir(self, path: str) -> list[FileInfo]:
        """The entries of a directory inside the sandbox."""
        req = cv.pb.ListDirRequest(sandbox_id=self.id, path=path)
        return [cv.file_info(e) for e in (await self._client._call(self._client._sandboxes.ListDir, req)).entries]

    async def stat(self, path: str) -> FileInfo:
        """Metadata of one file inside the sandbox."""
        req = cv.pb.StatRequest(sandbox_id=self.id, path=path)
        return cv.file_info(await self._client._call(self._client._sandboxes.Stat, req))

    async def usage(self) -> Usage:
        """What the sandbox uses now."""
        u = (await self._client.stats(self.id)).usage
        return u if u is not None else Usage(0, 0, 0)

    async def snapshot(self, name: str) -> str:
        """Turns the sandbox's changes into a new image (Unimplemented until the image store lands)."""
        req = cv.pb.SnapshotRequest(sandbox_id=self.id, name=name)
        return (await self._client._call(self._client._sandboxes.Snapshot, req)).image

    async def pause(self) -> int:
        """Pauses a microVM sandbox with its memory; returns the bytes saved (see paddock.Sandbox.pause)."""
        req = cv.pb.PauseRequest(sandbox_id=self.id)
        return (await self._client._call(self._client._sandboxes.Pause, req)).state_bytes

    async def resume(self) -> None:
        """Resumes a paused microVM sandbox."""
        req = cv.pb.ResumeRequest(sandbox_id=self.id)
        await self._client._call(self._client._sandboxes.Resume, req)

    async def fork(self, count: int = 1) -> "list[Sandbox]":
        """`count` (1..64) running copies of this microVM sandbox, memory included."""
        req = cv.pb.ForkRequest(sandbox_id=self.id, count=count)
        resp = await self._client._call(self._client._sandboxes.Fork, req)
        return [Sandbox(self._client, s.id, info=cv.sandbox_info(s)) for s in resp.sandboxes]

    async def destroy(self) -> None:
        """Destroys the sandbox; a second call does nothing."""
        if self._destroyed:
            return
        await self._client.destroy(self.id)
        self._destroyed = True

    async def __aenter__(self) -> "Sandbox":
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            await self.destroy()
        except NotFound:
            pass
        except PaddockError:
            if exc_type is None:
                raise

    def __repr__(self) -> str:
        return f"paddock.aio.Sandbox({self.id!r})"


class ExecStream:
    """Output of :meth:`Sandbox.exec_stream`: ``async for`` yields :class:`OutputChunk` s; then
    :attr:`result` holds the :class:`ExecResult`."""

    def __init__(self, client: Client, call: Any) -> None:
        self._client = client
        self._call = call
        self.result: ExecResult | None = None
        """The command's result once the iteration has ended."""
        self._cancelled = False

    async def __aiter__(self) -> AsyncIterator[OutputChunk]:
        try:
            async for ev in self._call:
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
        except asyncio.CancelledError:
            if self._cancelled:
                return
            raise
        if self.result is None:
            raise Unknown("the exec stream ended without a result")

    async def collect(self) -> ExecResult:
        """Drains the stream; the result with stdout/stderr filled from the chunks."""
        out, err = bytearray(), bytearray()
        async for c in self:
            (out if c.stream == "stdout" else err).extend(c.data)
        assert self.result is not None
        return ExecResult(**{**self.result.__dict__, "stdout": bytes(out), "stderr": bytes(err)})

    def cancel(self) -> None:
        """Stops receiving: an iteration in progress ends (``result`` stays None). The command
        itself runs on until it exits or its ``timeout`` kills it."""
        self._cancelled = True
        self._call.cancel()

    async def __aenter__(self) -> "ExecStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        """Cancels the stream when it was not read to its end."""
        if self.result is None:
            self.cancel()


class Log:
    """The trajectory log (asyncio); methods as :class:`paddock.Log`, awaited."""

    def __init__(self, client: Client) -> None:
        self._client = client

    @property
    def _stub(self) -> Any:
        self._client._channel  # noqa: B018
        return self._client._log_stub

    async def episodes(self, prefix: str = "", limit: int = 0) -> list[EpisodeRecord]:
        """Episode records ordered by id."""
        resp = await self._client._call(self._stub.ListEpisodes,
                                        cv.logpb.ListEpisodesRequest(prefix=prefix, limit=limit))
        return [cv.episode_record(e) for e in resp.episodes]

    async def episode(self, episode: str) -> EpisodeDetail:
        """One episode: record, steps, in-doubt calls."""
        return cv.episode_detail(await self._client._call(self._stub.ShowEpisode,
                                                          cv.logpb.ShowEpisodeRequest(episode=episode)))

    async def export(self, episodes: Sequence[str] | None = None, format: str = "jsonl") -> AsyncIterator[bytes]:
        """JSON lines of the named episodes (all when None), in chunks of whole lines."""
        c = self._client
        call = self._stub.Export(cv.logpb.ExportRequest(episodes=list(episodes or []), format=format),
                                 timeout=c.call_timeout, metadata=c._metadata)
        try:
            async for chunk in call:
                yield chunk.data
        except grpc.RpcError as err:
            raise c._error(err) from None

    async def verify(self) -> VerifyReport:
        """Checks the log's integrity."""
        return cv.verify_report(await self._client._call(self._stub.Verify, cv.logpb.VerifyRequest()))

    async def backup(self, dir: str) -> int:
        """A new backup of the live log into ``dir``; the backup id."""
        return (await self._client._call(self._stub.Backup, cv.logpb.BackupRequest(dir=os.path.abspath(dir)))).backup_id

    async def compact(self) -> None:
        """Full manual compaction."""
        await self._client._call(self._stub.Compact, cv.logpb.CompactRequest())

    async def prune(self, older_than: float) -> int:
        """Deletes episodes not updated for ``older_than`` seconds; how many."""
        req = cv.logpb.PruneRequest(older_than_seconds=int(older_than))
        return (await self._client._call(self._stub.Prune, req)).episodes_deleted


class Rollouts:
    """The Rollouts service (asyncio); methods as :class:`paddock.rollouts.Rollouts`, awaited."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._stub_obj: Any = None

    @property
    def _stub(self) -> Any:
        if self._stub_obj is None:
            self._stub_obj = _ro._grpc_mod().RolloutsStub(self._client._channel)
        return self._stub_obj

    async def start(self, tasks: Union[str, os.PathLike, Sequence[Mapping[str, Any]]],
                    policy: Union[str, PolicySpec, Mapping[str, Any]], *, concurrency: int = 0,
                    sampling: Sampling | Mapping[str, Any] | None = None, samples_per_task: int = 0,
                    rollout_id: str | None = None, labels: Mapping[str, str] | None = None,
                    episode_deadline: float | None = None, thinking: bool = False,
                    source: str | None = None, retry_infra: int = 0, policy_version: str | None = None,
                    max_policy_lag: int = 0, abort_on_update: bool = False, weight: int = 0,
                    priority: int = 0) -> "Rollout":
        """Starts a rollout (see :meth:`paddock.rollouts.Rollouts.start`)."""
        req = _ro.start_request(tasks, policy, concurrency, sampling, samples_per_task, rollout_id, labels,
                                episode_deadline, thinking, source, retry_infra, policy_version, max_policy_lag,
                                abort_on_update, weight, priority)
        resp = await self._client._call(self._stub.StartRollout, req)
        return Rollout(self, resp.rollout_id, episodes=resp.episodes)

    async def fork(self, episode_id: str, at_step: int, samples: int = 1, *, rollout_id: str | None = None,
                   concurrency: int = 0) -> "Rollout":
        """Forks of an episode at a turn (see :meth:`paddock.rollouts.Rollouts.fork`)."""
        req = _ro._pb().ForkEpisodeRequest(episode_id=episode_id, at_step=at_step, samples=samples,
                                           rollout_id=rollout_id or "", concurrency=concurrency)
        resp = await self._client._call(self._stub.ForkEpisode, req)
        return Rollout(self, resp.rollout_id, episodes=resp.episodes)

    def get(self, rollout_id: str) -> "Rollout":
        """A handle on an existing rollout."""
        return Rollout(self, rollout_id)

    async def list(self, limit: int = 0) -> list[RolloutProgress]:
        """Rollouts known to the log, newest first."""
        resp = await self._client._call(self._stub.ListRollouts, _ro._pb().ListRolloutsRequest(limit=limit))
        return [from_msg(RolloutProgress, r) for r in resp.rollouts]

    async def get_episode(self, episode_id: str) -> RolloutEpisode:
        """One episode with its logged steps."""
        return _ro.episode_detail(await self._client._call(self._stub.GetEpisode,
                                                           _ro._pb().GetEpisodeRequest(episode_id=episode_id)))


class Rollout:
    """One rollout (asyncio); methods as :class:`paddock.Rollout`, awaited; ``watch`` is an async iterator."""

    def __init__(self, rollouts: Rollouts, rollout_id: str, episodes: int = 0) -> None:
        self._r = rollouts
        self.id = rollout_id
        self.episodes = episodes

    async def watch(self, interval: float = 1.0, include_finished: bool = False
                    ) -> AsyncIterator[Union[RolloutProgress, EpisodeSummary]]:
        """Progress events and finished episodes until the rollout stops running."""
        c = self._r._client
        req = _ro._pb().WatchRequest(rollout_id=self.id, interval_ms=int(interval * 1000),
                                     include_finished=include_finished)
        call = self._r._stub.Watch(req, metadata=c._metadata)
        try:
            async for ev in call:
                e = _ro.event(ev)
                if e is not None:
                    yield e
        except grpc.RpcError as err:
            raise c._error(err) from None
        finally:
            call.cancel()

    async def wait(self, interval: float = 1.0) -> RolloutProgress:
        """Waits until the rollout stops running; its final counters."""
        async for _ in self.watch(interval=interval):
            pass
        return await self.progress()

    async def progress(self) -> RolloutProgress:
        """The rollout's counters now."""
        return from_msg(RolloutProgress, await self._r._client._call(
            self._r._stub.GetRollout, _ro._pb().GetRolloutRequest(rollout_id=self.id)))

    async def episode(self, episode_id: str) -> RolloutEpisode:
        """One of its episodes with its logged steps."""
        return await self._r.get_episode(episode_id)

    async def resume(self, policy: Union[str, PolicySpec, Mapping[str, Any], None] = None,
                     concurrency: int = 0, weight: int = 0, priority: Optional[int] = None) -> ResumeResult:
        """Continues the rollout from its definition in the log; ``policy`` overrides the stored
        one field by field (see :meth:`paddock.Rollout.resume`)."""
        req = _ro._pb().ResumeRolloutRequest(rollout_id=self.id, concurrency=concurrency, weight=weight)
        if priority is not None:
            req.priority = priority
        p = _ro.policy_pb(policy)
        if p is not None:
            req.policy.CopyFrom(p)
        r = await self._r._client._call(self._r._stub.ResumeRollout, req)
        return ResumeResult(r.rollout_id, r.episodes_total, r.already_done, r.to_run)

    async def cancel(self, episode_id: str | None = None) -> int:
        """Cancels the rollout (or one episode); how many episodes were cancelled."""
        req = _ro._pb().CancelRolloutRequest(rollout_id=self.id, episode_id=episode_id or "")
        return (await self._r._client._call(self._r._stub.Cancel, req)).cancelled

    async def export(self, include_unfinished: bool = False) -> AsyncIterator[bytes]:
        """One JSON line per episode, in chunks of whole lines."""
        c = self._r._client
        req = _ro._pb().ExportRolloutRequest(rollout_id=self.id, format="jsonl",
                                             include_unfinished=include_unfinished)
        call = self._r._stub.Export(req, timeout=c.call_timeout, metadata=c._metadata)
        try:
            async for chunk in call:
                yield chunk.data
        except grpc.RpcError as err:
            raise c._error(err) from None

    async def groups(self, consumer: str | None = None, *, follow: bool = True,
                     summaries_only: bool = False) -> AsyncIterator[EpisodeGroup]:
        """Each group once all its samples have ended (``async for group in rollout.groups()``);
        see :meth:`paddock.Rollout.groups`."""
        c = self._r._client
        req = _ro._pb().StreamGroupsRequest(rollout_id=self.id, consumer=consumer or "", follow=follow,
                                            summaries_only=summaries_only)
        call = self._r._stub.StreamGroups(req, metadata=c._metadata)
        try:
            async for g in call:
                yield _ro.group(g)
        except grpc.RpcError as err:
            raise c._error(err) from None
        finally:
            call.cancel()

    async def ack(self, consumer: str, group_ids: Union[str, Sequence[str]]) -> int:
        """Records that ``consumer`` took these groups; how many were newly acknowledged."""
        ids = [group_ids] if isinstance(group_ids, str) else list(group_ids)
        req = _ro._pb().AckGroupsRequest(rollout_id=self.id, consumer=consumer, group_ids=ids)
        return (await self._r._client._call(self._r._stub.AckGroups, req)).acknowledged

    async def update_policy(self, weights: str | None = None, version: str | None = None, *,
                            abort_in_flight: bool | None = None, timeout: float = 600.0) -> PolicyUpdate:
        """A new policy version (see :meth:`paddock.Rollout.update_policy`)."""
        req = _ro.update_policy_request(self.id, weights, version, abort_in_flight, timeout)
        c = self._r._client
        try:
            r = await self._r._stub.UpdatePolicy(req, metadata=c._metadata, timeout=timeout + 300)
        except grpc.RpcError as err:
            raise c._error(err) from None
        return _ro.policy_update(r)

    def __repr__(self) -> str:
        return f"paddock.aio.Rollout({self.id!r})"


class Images:
    """The image store (asyncio); methods as :class:`paddock.images.Images`, awaited."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._stub_obj: Any = None

    @property
    def _stub(self) -> Any:
        if self._stub_obj is None:
            self._stub_obj = _im._grpc_mod().ImagesStub(self._client._channel)
        return self._stub_obj

    async def import_(self, path: str, name: str | None = None,
                      on_progress: Callable[[str, str], None] | None = None) -> ImportResult:
        """Imports an OCI image layout or a ``docker save`` archive (see :meth:`paddock.images.Images.import_`)."""
        c = self._client
        req = _im._pb().ImportRequest(path=_im._abs(path, "import"), name=name or "")
        call = self._stub.Import(req, timeout=c.call_timeout, metadata=c._metadata)
        return await self._collect(call, on_progress, lambda r: from_msg(ImportResult, r), "import")

    async def _collect(self, call: Any, on_progress: Callable[[str, str], None] | None,
                       convert: Callable[[Any], Any], what: str) -> Any:
        # The asyncio twin of paddock.images.collect_events.
        result = None
        try:
            async for ev in call:
                got = _im.event_result(ev, on_progress, convert)
                if got is not None:
                    result = got
        except grpc.RpcError as err:
            raise self._client._error(err) from None
        if result is None:
            raise _im.no_result(what)
        return result

    async def pull(self, ref: str, name: str | None = None, *, insecure_registries: Sequence[str] | None = None,
                   platform: str | None = None, ca_file: str | None = None,
                   credentials: tuple[str, str] | None = None,
                   on_progress: Callable[[str, str], None] | None = None) -> PullResult:
        """Pulls an image from a registry into the store (see :meth:`paddock.images.Images.pull`)."""
        c = self._client
        req = _im.pull_request(ref, name, insecure_registries, platform, ca_file, credentials)
        call = self._stub.Pull(req, timeout=_im.PULL_TIMEOUT_S, metadata=c._metadata)
        return await self._collect(call, on_progress, _im.pull_result, "pull")

    async def push(self, image: str, ref: str, *, insecure_registries: Sequence[str] | None = None,
                   ca_file: str | None = None, credentials: tuple[str, str] | None = None,
                   on_progress: Callable[[str, str], None] | None = None,
                   chunk_size: int | None = None) -> PushResult:
        """Pushes an image of the store to a registry (see :meth:`paddock.images.Images.push`)."""
        c = self._client
        req = _im.push_request(image, ref, insecure_registries, ca_file, credentials, chunk_size)
        call = self._stub.Push(req, timeout=_im.PULL_TIMEOUT_S, metadata=c._metadata)
        return await self._collect(call, on_progress, _im.push_result, "push")

    async def import_dir(self, path: str, name: str | None = None, *,
                         env: Sequence[str] | dict[str, str] | None = None,
                         workdir: str | None = None) -> ImportDirResult:
        """Imports a plain root filesystem directory as a one-layer image."""
        req = _im.import_dir_request(path, name, env, workdir)
        return from_msg(ImportDirResult, await self._client._call(self._stub.ImportDir, req))

    async def ls(self) -> list[ImageSummary]:
        """The images in the store."""
        resp = await self._client._call(self._stub.List, _im._pb().ImageListRequest())
        return [from_msg(ImageSummary, i) for i in resp.images]

    async def inspect(self, ref: str) -> ImageDetail:
        """One image by name, digest or digest prefix."""
        return _im.detail(await self._client._call(self._stub.Inspect, _im._pb().InspectRequest(ref=ref)))

    async def rm(self, ref: str) -> str:
        """Removes a name or an image; returns the image's digest."""
        return (await self._client._call(self._stub.Remove, _im._pb().RemoveImageRequest(ref=ref))).image

    async def gc(self, grace: float | None = None) -> GcResult:
        """Frees unreferenced blobs older than ``grace`` seconds (None: 1 h)."""
        req = _im._pb().GcRequest(grace_seconds=-1 if grace is None else int(grace))
        return from_msg(GcResult, await self._client._call(self._stub.Gc, req))

    async def export(self, ref: str, dir: str) -> str:
        """Writes the image as an OCI image layout into ``dir``; returns its digest."""
        req = _im._pb().ExportImageRequest(ref=ref, dir=_im._abs(dir, "export"))
        return (await self._client._call(self._stub.Export, req)).image
