"""Typed values the SDK returns and accepts (plain dataclasses, no gRPC types).

Times are unix milliseconds (``*_unix_ms``) or microseconds of duration
(``*_us``) as the daemon reports them; sizes are bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .errors import CommandFailed, InvalidArgument

__all__ = [
    "Limits",
    "SandboxInfo",
    "ExecResult",
    "OutputChunk",
    "WriteResult",
    "FileInfo",
    "Usage",
    "DaemonStats",
    "CallKey",
    "KeyLike",
    "EpisodeRecord",
    "StepRecord",
    "InDoubtCall",
    "EpisodeDetail",
    "VerifyReport",
]


@dataclass(frozen=True)
class Limits:
    """Resource limits of a sandbox; 0 means the daemon's default.

    Attributes:
        cpu_millicores: CPU bandwidth in thousandths of a core (1000 = one core).
        memory_bytes: memory limit.
        pids: maximum number of processes/threads.
        disk_bytes: bytes the sandbox may write to its filesystem.
    """

    cpu_millicores: int = 0
    memory_bytes: int = 0
    pids: int = 0
    disk_bytes: int = 0


@dataclass(frozen=True)
class SandboxInfo:
    """A live sandbox as the daemon describes it.

    Attributes:
        id: 12 hex characters.
        substrate: ``"function"`` or ``"container"``.
        image: the image it was created from.
        created_unix_ms / expires_unix_ms: creation time and TTL expiry.
        state: ``"running"``, or ``"failed"`` when its init died.
        labels: free-form labels given at creation (plus ``paddock.episode`` when bound).
        limits: the limits in force.
    """

    id: str
    substrate: str
    image: str
    created_unix_ms: int
    expires_unix_ms: int
    state: str
    labels: dict[str, str]
    limits: Limits


@dataclass(frozen=True)
class ExecResult:
    """The whole result of one command.

    Attributes:
        exit_code: the exit status; -1 when killed by a signal.
        signal: the signal that killed it, else 0.
        stdout / stderr: the captured output (empty for :meth:`Sandbox.exec_stream`,
            whose chunks were the output).
        stdout_truncated / stderr_truncated: output beyond the cap was dropped.
        timed_out: it ran past its timeout and its whole process tree was killed.
        oom_killed: the memory limit killed it.
        replayed: answered from the trajectory log (idempotency key seen before);
            the command did not run now.
        wall_time_us / cpu_time_us / peak_memory_bytes: what it cost.
    """

    exit_code: int
    signal: int = 0
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    timed_out: bool = False
    oom_killed: bool = False
    replayed: bool = False
    wall_time_us: int = 0
    cpu_time_us: int = 0
    peak_memory_bytes: int = 0

    @property
    def ok(self) -> bool:
        """True when the command exited 0 (not killed, not timed out)."""
        return self.exit_code == 0 and self.signal == 0 and not self.timed_out

    @property
    def wall_time(self) -> float:
        """Wall time in seconds."""
        return self.wall_time_us / 1e6

    def text(self, errors: str = "replace") -> str:
        """stdout decoded as UTF-8 (undecodable bytes replaced by default)."""
        return self.stdout.decode("utf-8", errors)

    def check(self) -> "ExecResult":
        """Returns self when :attr:`ok`, else raises :class:`paddock.CommandFailed`."""
        if not self.ok:
            raise CommandFailed(self)
        return self


@dataclass(frozen=True)
class OutputChunk:
    """One piece of output of a streamed command.

    Attributes:
        stream: ``"stdout"`` or ``"stderr"``.
        data: the bytes, as the command wrote them.
    """

    stream: str
    data: bytes


@dataclass(frozen=True)
class WriteResult:
    """The answer to a file write.

    Attributes:
        bytes_written: bytes written.
        replayed: answered from the trajectory log; nothing was written now.
    """

    bytes_written: int
    replayed: bool = False


@dataclass(frozen=True)
class FileInfo:
    """A file inside a sandbox.

    Attributes:
        name: the entry's name (the last path component).
        type: ``"file"``, ``"dir"``, ``"symlink"``, ``"other"`` or ``"unknown"``.
        size: size in bytes.
        mode: permission bits (e.g. ``0o644``).
        mtime_unix_ms: modification time.
    """

    name: str
    type: str
    size: int
    mode: int
    mtime_unix_ms: int

    @property
    def is_dir(self) -> bool:
        """True for a directory."""
        return self.type == "dir"

    @property
    def is_file(self) -> bool:
        """True for a regular file."""
        return self.type == "file"


@dataclass(frozen=True)
class Usage:
    """What one sandbox uses now.

    Attributes:
        memory_bytes: memory in use.
        cpu_time_us: CPU time consumed so far.
        pids: processes alive.
    """

    memory_bytes: int
    cpu_time_us: int
    pids: int


@dataclass(frozen=True)
class DaemonStats:
    """Daemon-wide numbers, and one sandbox's usage when it was asked about one.

    Attributes:
        live_sandboxes / max_sandboxes: live sandboxes and the cap.
        by_substrate: live sandboxes per substrate.
        execs_total: execs since the daemon started.
        daemon_rss_bytes: the daemon's resident memory.
        usage: the sandbox's :class:`Usage`, or None.
        queued_episodes: rollout episodes waiting for a slot of the daemon's bound on
            running episodes (docs/training.md, "Several rollouts").
    """

    live_sandboxes: int
    max_sandboxes: int
    by_substrate: dict[str, int]
    execs_total: int
    daemon_rss_bytes: int
    usage: Optional[Usage] = None
    queued_episodes: int = 0


@dataclass(frozen=True)
class CallKey:
    """The idempotency key of one side-effecting call: (episode, step, call).

    With a key the daemon logs the call write-ahead; a repeat of it is answered
    from its trajectory log (``replayed``) instead of running again; a key reused
    for a different request is refused (:class:`paddock.FailedPrecondition`).

    Attributes:
        episode: the episode id (may contain ``:``).
        step: the step within the episode (u64).
        call: the call within the step (u32).
        idempotent: the call may be run again if a crash left it in doubt.
    """

    episode: str
    step: int
    call: int = 0
    idempotent: bool = False

    @staticmethod
    def of(key: "KeyLike", idempotent: bool = False) -> "CallKey":
        """Builds a key from a ``CallKey``, an ``(episode, step, call)`` tuple or an
        ``"EPISODE:STEP:CALL"`` string (the last two ``:`` separate step and call).

        Raises :class:`paddock.InvalidArgument` naming the part at fault.
        """
        if isinstance(key, CallKey):
            return CallKey(key.episode, key.step, key.call, key.idempotent or idempotent)
        if isinstance(key, str):
            parts = key.rsplit(":", 2)
            if len(parts) != 3 or not parts[0]:
                raise InvalidArgument(f"key '{key}': expected EPISODE:STEP:CALL, e.g. ep7:3:0")
            ep, step_s, call_s = parts
            if not step_s.isdigit():
                raise InvalidArgument(f"key '{key}': STEP '{step_s}' is not a decimal u64")
            if not call_s.isdigit():
                raise InvalidArgument(f"key '{key}': CALL '{call_s}' is not a decimal u32")
            key = (ep, int(step_s), int(call_s))
        if not isinstance(key, tuple) or len(key) not in (2, 3):
            raise InvalidArgument(
                f"idempotency_key {key!r}: expected (episode, step, call), 'EPISODE:STEP:CALL' or a CallKey")
        ep, step = key[0], key[1]
        call = key[2] if len(key) == 3 else 0
        if not isinstance(ep, str) or not ep:
            raise InvalidArgument(f"idempotency_key {key!r}: the episode must be a non-empty string")
        if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step < 2**64:
            raise InvalidArgument(f"idempotency_key {key!r}: step must be an int in [0, 2**64)")
        if not isinstance(call, int) or isinstance(call, bool) or not 0 <= call < 2**32:
            raise InvalidArgument(f"idempotency_key {key!r}: call must be an int in [0, 2**32)")
        return CallKey(ep, step, call, idempotent)

    def __str__(self) -> str:
        return f"{self.episode}:{self.step}:{self.call}"


KeyLike = Union[CallKey, tuple, str]
"""What ``idempotency_key=`` accepts: a :class:`CallKey`, ``(episode, step, call)`` or ``"EP:STEP:CALL"``."""


@dataclass(frozen=True)
class EpisodeRecord:
    """An episode's record in the trajectory log.

    Attributes:
        episode_id: its id.
        state: ``"running"``, ``"finished"``, ``"failed"`` or ``""``.
        created_unix_ms / updated_unix_ms: when it was created and last updated.
        sandbox_id: the sandbox bound to it, if any.
        model / task: the policy that generated it and what it was asked to do.
        labels: free-form labels (spec fingerprint of the bound sandbox, ...).
        total_reward: the sum of its steps' rewards.
        stop_reason / failure_reason / rebuild_note: why it stopped, why it failed,
            and a note when its sandbox was rebuilt after a restart.
    """

    episode_id: str
    state: str
    created_unix_ms: int
    updated_unix_ms: int
    sandbox_id: str
    model: str
    task: str
    labels: dict[str, str]
    total_reward: float
    stop_reason: str
    failure_reason: str
    rebuild_note: str
    snapshot_step: int = 0
    snapshot_id: str = ""


@dataclass(frozen=True)
class StepRecord:
    """One step of an episode in the trajectory log.

    Attributes:
        step: its index.
        reward: its reward.
        stop_reason: set on the episode's last step.
        tool_calls: the tool calls it made (``id``, ``name``, ``arguments_json``, ``call_key``).
        record: the whole step record as a dict (protobuf JSON mapping, field names as in
            proto/trajectory.proto), including the policy request/response and observations.
    """

    step: int
    reward: float
    stop_reason: str
    tool_calls: list[dict[str, Any]]
    record: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class InDoubtCall:
    """A call whose intent was logged but whose result was not (the daemon died while it ran).

    Attributes:
        key: ``"EPISODE:STEP:CALL"``.
        request_summary: what the call was.
        idempotent: it was marked safe to run again.
        intent_unix_ms: when its intent was logged.
    """

    key: str
    request_summary: str
    idempotent: bool
    intent_unix_ms: int


@dataclass(frozen=True)
class EpisodeDetail:
    """One episode: its record (None when it has none), its steps and its in-doubt calls."""

    episode: Optional[EpisodeRecord]
    steps: list[StepRecord]
    in_doubt: list[InDoubtCall]


@dataclass(frozen=True)
class VerifyReport:
    """The trajectory log's integrity check (``paddock log verify``).

    Attributes:
        ok: integrity holds (in-doubt calls alone leave it True).
        problems: what is wrong, one line each.
        report: the whole report as text.
        in_doubt: the in-doubt calls found.
        details: every other field of the report (checksums_ok, format_version, episodes,
            steps, intents, results, corrupt_files, ...).
    """

    ok: bool
    problems: list[str]
    report: str
    in_doubt: list[InDoubtCall]
    details: dict[str, Any] = field(repr=False)
