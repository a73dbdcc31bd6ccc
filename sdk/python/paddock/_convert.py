"""Building requests and reading responses; shared by the sync and asyncio clients."""

from __future__ import annotations

import errno
import inspect
import os
import socket
from typing import Any, Mapping, Sequence

from google.protobuf import json_format

from . import _stubs
from .errors import InvalidArgument, Unavailable
from .types import (
    CallKey,
    DaemonStats,
    EpisodeDetail,
    EpisodeRecord,
    ExecResult,
    FileInfo,
    InDoubtCall,
    KeyLike,
    Limits,
    SandboxInfo,
    StepRecord,
    Usage,
    VerifyReport,
    WriteResult,
)

pb = _stubs.sandbox_pb2
logpb = _stubs.log_pb2
trajpb = _stubs.trajectory_pb2

MAX_MESSAGE_BYTES = 128 << 20  # the daemon's bound, both directions
EXEC_DEADLINE_MARGIN_S = 30.0  # an exec's deadline is its own timeout plus this
DEFAULT_EXEC_TIMEOUT_S = 60.0  # the daemon's default when timeout is not given
DEFAULT_CALL_TIMEOUT_S = 300.0  # every other call; creating a sandbox may take seconds


def default_socket_path() -> str:
    """``$PADDOCK_SOCKET`` when set, else ``/run/paddock/paddockd.sock`` (same as the CLI)."""
    return os.environ.get("PADDOCK_SOCKET") or "/run/paddock/paddockd.sock"


def channel_options() -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]


def resolve_target(socket_path: str | None, address: str | None) -> tuple[str, str, bool]:
    """(grpc target, target for messages, is_tcp)."""
    if address:
        if socket_path:
            raise InvalidArgument("pass either address (TCP host:port) or socket_path, not both")
        if address.startswith("unix:"):
            return address, address[len("unix:"):], False
        return address, address, True
    path = socket_path or default_socket_path()
    return "unix:" + path, path, False


def probe_unix_socket(path: str) -> str:
    """Why a unix socket does not answer, from connect(2) itself; "" when it accepts."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(2.0)
        s.connect(path)
        return ""
    except FileNotFoundError:
        return "no such socket (paddockd is not running)"
    except ConnectionRefusedError:
        return "connection refused (stale socket; paddockd is not running)"
    except OSError as e:
        return os.strerror(e.errno) if e.errno else str(e)
    finally:
        s.close()


def unreachable(target: str, reason: str) -> Unavailable:
    return Unavailable(
        f"cannot reach paddockd at {target}: {reason}; start it with "
        "`paddockd --state-dir /var/lib/paddock &` or set PADDOCK_SOCKET"
    )


def unreachable_tcp(target: str, timeout: float) -> Unavailable:
    return Unavailable(
        f"cannot reach paddockd at {target}: no answer within {int(timeout * 1000)} ms; "
        f"is it running with `--listen-tcp {target}`?"
    )


def metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {token}"),) if token else None


def _read_pem(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InvalidArgument(f"{what} {path}: {os.strerror(e.errno or errno.EIO)}") from None
    if b"-----BEGIN " not in data:
        raise InvalidArgument(f"{what} {path} holds no PEM data")
    return data


def tls_credentials(tls_ca_file: str | None, tls_cert_file: str | None,
                    tls_key_file: str | None) -> Any:
    """gRPC channel credentials for a paddockd started with ``--tls-cert`` (None: plain TCP).

    Each argument defaults to ``$PADDOCK_TLS_CA``, ``$PADDOCK_TLS_CERT`` and
    ``$PADDOCK_TLS_KEY``, as for the C++ client and the CLI.
    """
    import grpc  # noqa: PLC0415 (kept local: the module is imported by the stubs' users too)
    ca = tls_ca_file or os.environ.get("PADDOCK_TLS_CA")
    cert = tls_cert_file or os.environ.get("PADDOCK_TLS_CERT")
    key = tls_key_file or os.environ.get("PADDOCK_TLS_KEY")
    if not ca:
        if cert:
            raise InvalidArgument("a client certificate needs TLS: pass tls_ca_file")
        return None  # plain TCP: refuse_clear_token() guards the token
    if bool(cert) != bool(key):
        raise InvalidArgument("tls_cert_file and tls_key_file go together")
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem(ca, "TLS CA"),
        private_key=_read_pem(key, "client key") if key else None,
        certificate_chain=_read_pem(cert, "client certificate") if cert else None)


def refuse_clear_token(address: str, token: str | None, creds: Any) -> None:
    """A token never crosses the network in clear text: plain TCP only to loopback."""
    host = address.rsplit(":", 1)[0]
    loopback = host in ("localhost", "[::1]") or host.startswith("127.")
    if token and creds is None and not loopback:
        raise InvalidArgument(f"refusing to send the token in clear text to {address}: reach a non-loopback "
                              "paddockd over TLS (tls_ca_file, or PADDOCK_TLS_CA)")


def read_token_file(path: str) -> str:
    """The token in ``path`` (surrounding whitespace ignored), as ``paddock --token-file`` reads it."""
    try:
        with open(path, encoding="utf-8") as f:
            tok = f.read().strip()
    except OSError as e:
        raise InvalidArgument(f"token file {path}: {os.strerror(e.errno or errno.EIO)}") from None
    if not tok:
        raise InvalidArgument(f"token file {path} is empty")
    return tok


# ---- requests ----

def limits_pb(limits: Limits | Mapping[str, int] | None) -> Any:
    if limits is None:
        return pb.Limits()
    if isinstance(limits, Mapping):
        try:
            limits = Limits(**limits)
        except TypeError as e:
            raise InvalidArgument(f"limits: {e}") from None
    return pb.Limits(
        cpu_millicores=limits.cpu_millicores,
        memory_bytes=limits.memory_bytes,
        pids=limits.pids,
        disk_bytes=limits.disk_bytes,
    )


def _str_map(name: str, m: Mapping[str, str] | None) -> dict[str, str]:
    if m is None:
        return {}
    if not isinstance(m, Mapping):
        raise InvalidArgument(f"{name} must be a mapping of str to str, got {type(m).__name__}")
    out = {}
    for k, v in m.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidArgument(f"{name}: {k!r}={v!r}: keys and values must be str")
        out[k] = v
    return out


def create_request(substrate: str, image: str, *, limits: Limits | Mapping[str, int] | None,
                   env: Mapping[str, str] | None, workdir: str | None, ttl: float | None,
                   labels: Mapping[str, str] | None, episode: str | None,
                   network_allow: Sequence[str] | None = None) -> Any:
    if isinstance(image, os.PathLike):
        image = os.fspath(image)
    spec = pb.SandboxSpec(
        substrate=substrate or "",
        image=image or "",
        limits=limits_pb(limits),
        env=_str_map("env", env),
        workdir=workdir or "",
        ttl_seconds=int(ttl or 0),
        labels=_str_map("labels", labels),
        network_allow=list(network_allow or []),
    )
    return pb.CreateRequest(spec=spec, episode=episode or "")


def key_pb(key: KeyLike | None, idempotent: bool) -> Any:
    if key is None:
        if idempotent:
            raise InvalidArgument("idempotent=True needs an idempotency_key")
        return None
    k = CallKey.of(key, idempotent)
    return pb.IdempotencyKey(episode=k.episode, step=k.step, call=k.call, idempotent=k.idempotent)


def _bytes(name: str, data: bytes | str | None) -> bytes:
    if data is None:
        return b""
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise InvalidArgument(f"{name} must be bytes or str, got {type(data).__name__}")


def exec_request(sandbox_id: str, argv: Sequence[str] | None, shell: str | None, stdin: bytes | str | None,
                 env: Mapping[str, str] | None, cwd: str | None, timeout: float | None,
                 output_cap: int | None, idempotency_key: KeyLike | None, idempotent: bool) -> Any:
    if isinstance(argv, (str, bytes)):
        raise InvalidArgument(
            f"argv must be a list of strings, got a {type(argv).__name__} ({argv!r}); "
            f"pass [{argv!r}] or shell={argv!r}")
    argv_l = list(argv) if argv is not None else []
    for a in argv_l:
        if not isinstance(a, str):
            raise InvalidArgument(f"argv element {a!r} is a {type(a).__name__}, not a str")
    if timeout is not None and timeout <= 0:
        raise InvalidArgument(f"timeout {timeout} must be more than 0 seconds")
    req = pb.ExecRequest(
        sandbox_id=sandbox_id,
        argv=argv_l,
        shell=shell or "",
        stdin=_bytes("stdin", stdin),
        env=_str_map("env", env),
        cwd=cwd or "",
        timeout_ms=int(round(timeout * 1000)) if timeout is not None else 0,
        output_cap_bytes=int(output_cap or 0),
    )
    k = key_pb(idempotency_key, idempotent)
    if k is not None:
        req.idempotency_key.CopyFrom(k)
    return req


def exec_deadline(timeout: float | None) -> float:
    return (timeout if timeout is not None else DEFAULT_EXEC_TIMEOUT_S) + EXEC_DEADLINE_MARGIN_S


def write_request(sandbox_id: str, path: str, content: bytes | str, mode: int, make_parents: bool,
                  idempotency_key: KeyLike | None, idempotent: bool) -> Any:
    req = pb.WriteFileRequest(sandbox_id=sandbox_id, path=path, content=_bytes("content", content),
                              mode=mode, make_parents=make_parents)
    k = key_pb(idempotency_key, idempotent)
    if k is not None:
        req.idempotency_key.CopyFrom(k)
    return req


# ---- responses ----

def limits_from(p: Any) -> Limits:
    return Limits(cpu_millicores=p.cpu_millicores, memory_bytes=p.memory_bytes, pids=p.pids,
                  disk_bytes=p.disk_bytes)


def sandbox_info(p: Any) -> SandboxInfo:
    return SandboxInfo(id=p.id, substrate=p.substrate, image=p.image, created_unix_ms=p.created_unix_ms,
                       expires_unix_ms=p.expires_unix_ms, state=p.state, labels=dict(p.labels),
                       limits=limits_from(p.limits))


def exec_result(p: Any) -> ExecResult:
    return ExecResult(
        exit_code=p.exit_code, signal=p.signal, stdout=p.stdout, stderr=p.stderr,
        stdout_truncated=p.stdout_truncated, stderr_truncated=p.stderr_truncated,
        timed_out=p.timed_out, oom_killed=p.oom_killed, replayed=p.replayed,
        wall_time_us=p.wall_time_us, cpu_time_us=p.cpu_time_us, peak_memory_bytes=p.peak_memory_bytes,
    )


def write_result(p: Any) -> WriteResult:
    return WriteResult(bytes_written=p.bytes_written, replayed=p.replayed)


_FILE_TYPES = {
    pb.FILE_TYPE_REGULAR: "file",
    pb.FILE_TYPE_DIRECTORY: "dir",
    pb.FILE_TYPE_SYMLINK: "symlink",
    pb.FILE_TYPE_OTHER: "other",
}


def file_info(p: Any) -> FileInfo:
    return FileInfo(name=p.name, type=_FILE_TYPES.get(p.type, "unknown"), size=p.size, mode=p.mode,
                    mtime_unix_ms=p.mtime_unix_ms)


def daemon_stats(p: Any) -> DaemonStats:
    usage = None
    if p.HasField("usage"):
        usage = Usage(memory_bytes=p.usage.memory_bytes, cpu_time_us=p.usage.cpu_time_us, pids=p.usage.pids)
    return DaemonStats(live_sandboxes=p.live_sandboxes, max_sandboxes=p.max_sandboxes,
                       by_substrate=dict(p.by_substrate), execs_total=p.execs_total,
                       daemon_rss_bytes=p.daemon_rss_bytes, usage=usage, queued_episodes=p.queued_episodes)


# MessageToDict's switch for fields at their zero value: protobuf 5.26 renamed
# including_default_value_fields (3.x, 4.x) to always_print_fields_with_no_presence and
# dropped the old name.
_ZERO_FIELDS_KW = (
    "always_print_fields_with_no_presence"
    if "always_print_fields_with_no_presence" in inspect.signature(json_format.MessageToDict).parameters
    else "including_default_value_fields")


def to_dict(msg: Any, defaults: bool = False) -> dict[str, Any]:
    """A message as a dict (protobuf JSON mapping with the .proto field names; with ``defaults``
    fields at their zero value are included too)."""
    return json_format.MessageToDict(msg, preserving_proto_field_name=True, **{_ZERO_FIELDS_KW: defaults})


_EPISODE_STATES = {1: "running", 2: "finished", 3: "failed"}


def episode_record(p: Any) -> EpisodeRecord:
    return EpisodeRecord(
        episode_id=p.episode_id, state=_EPISODE_STATES.get(p.state, ""), created_unix_ms=p.created_unix_ms,
        updated_unix_ms=p.updated_unix_ms, sandbox_id=p.sandbox_id, model=p.model, task=p.task,
        labels=dict(p.labels), total_reward=p.total_reward, stop_reason=p.stop_reason,
        failure_reason=p.failure_reason, rebuild_note=p.rebuild_note, snapshot_step=p.snapshot_step,
        snapshot_id=p.snapshot_id,
    )


def step_record(p: Any) -> StepRecord:
    return StepRecord(step=p.step, reward=p.reward, stop_reason=p.stop_reason,
                      tool_calls=[to_dict(t) for t in p.tool_calls], record=to_dict(p))


def in_doubt(p: Any) -> InDoubtCall:
    return InDoubtCall(key=p.key, request_summary=p.request_summary, idempotent=p.idempotent,
                       intent_unix_ms=p.intent_unix_ms)


def episode_detail(p: Any) -> EpisodeDetail:
    return EpisodeDetail(
        episode=episode_record(p.episode) if p.HasField("episode") else None,
        steps=[step_record(s) for s in p.steps],
        in_doubt=[in_doubt(c) for c in p.in_doubt],
    )


def verify_report(p: Any) -> VerifyReport:
    d = to_dict(p, defaults=True)
    for k in ("ok", "problems", "report", "in_doubt"):
        d.pop(k, None)
    return VerifyReport(ok=p.ok, problems=list(p.problems), report=p.report,
                        in_doubt=[in_doubt(c) for c in p.in_doubt], details=d)
