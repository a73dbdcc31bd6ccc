"""The exceptions of the Paddock SDK.

Every error the daemon answers is a gRPC status; the SDK raises it as one
subclass of :class:`PaddockError` per status code, carrying the daemon's
message unchanged (it says what a user can do about it)::

    try:
        sb.exec(["ls"])
    except paddock.NotFound as e:
        print(e.message)        # "no sandbox 'abc123...'; ..."

``InvalidArgument`` is also a :class:`ValueError` and ``DeadlineExceeded`` a
:class:`TimeoutError`, so generic handlers catch them too.
"""

from __future__ import annotations

import grpc

__all__ = [
    "PaddockError",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
    "error_for_code",
    "from_rpc_error",
    "CommandFailed",
]


class PaddockError(Exception):
    """Base of every error the SDK raises for a failed call.

    Attributes:
        code: the gRPC status code (``grpc.StatusCode``).
        message: the daemon's message (or the SDK's, for errors found before
            a call was sent), unchanged.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class Cancelled(PaddockError):
    """The call was cancelled (by the caller, or the daemon shutting down)."""

    code = grpc.StatusCode.CANCELLED


class Unknown(PaddockError):
    """An error the daemon did not classify."""

    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(PaddockError, ValueError):
    """The request is malformed (bad argv, path, key, substrate, ...); the message names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(PaddockError, TimeoutError):
    """The call's deadline passed before the daemon answered."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(PaddockError):
    """The named sandbox, file, episode, image or rollout does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(PaddockError):
    """Something with that name exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(PaddockError):
    """The daemon refused the operation for lack of permission."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(PaddockError):
    """A cap was reached: too many sandboxes, a message or file too large, the log's disk reserve."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(PaddockError):
    """The system is not in a state that allows the call, e.g. an idempotency key reused for a
    different request, or a call in doubt after a crash."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(PaddockError):
    """The operation was aborted, typically by a concurrency conflict."""

    code = grpc.StatusCode.ABORTED


class OutOfRange(PaddockError):
    """A value is outside its valid range."""

    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(PaddockError):
    """The daemon does not implement this call (yet)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(PaddockError):
    """An internal error of the daemon."""

    code = grpc.StatusCode.INTERNAL


class Unavailable(PaddockError):
    """The daemon cannot be reached (not running, wrong socket or address) or is shutting down."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(PaddockError):
    """Unrecoverable data loss or corruption."""

    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(PaddockError):
    """A TCP call without the right bearer token."""

    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: dict[grpc.StatusCode, type[PaddockError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


def error_for_code(code: grpc.StatusCode, message: str) -> PaddockError:
    """Returns the exception of the class that matches ``code``, carrying ``message``."""
    cls = _BY_CODE.get(code, PaddockError)
    return cls(message, code)


def from_rpc_error(err: grpc.RpcError) -> PaddockError:
    """Converts a ``grpc.RpcError`` (sync or ``grpc.aio.AioRpcError``) to the matching exception."""
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    details = err.details() if callable(getattr(err, "details", None)) else str(err)
    return error_for_code(code or grpc.StatusCode.UNKNOWN, details or "")


class CommandFailed(Exception):
    """Raised by :meth:`paddock.ExecResult.check` when a command did not exit 0.

    Not a gRPC error: the call succeeded, the command failed. ``result`` is the
    whole :class:`paddock.ExecResult`.
    """

    def __init__(self, result: "object", argv: "list[str] | str | None" = None) -> None:
        self.result = result
        self.argv = argv
        r = result
        how = (
            "timed out" if getattr(r, "timed_out", False)
            else f"was killed by signal {getattr(r, 'signal', 0)}" if getattr(r, "signal", 0)
            else f"exited {getattr(r, 'exit_code', '?')}"
        )
        tail = (getattr(r, "stderr", b"") or b"")[-500:].decode("utf-8", "replace").strip()
        what = f"command {argv!r} " if argv is not None else "command "
        super().__init__(f"{what}{how}" + (f": {tail}" if tail else ""))
