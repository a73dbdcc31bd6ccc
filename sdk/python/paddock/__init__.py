"""Paddock's Python SDK: drive paddockd's sandboxes, trajectory log and rollouts.

::

    import paddock
    c = paddock.Client()                       # unix socket by default (like the CLI)
    with c.sandbox(substrate="container", image="/var/lib/images/busybox") as sb:
        r = sb.exec(["sh", "-c", "echo $((1+1))"], idempotency_key=("ep7", 3, 0))
        print(r.exit_code, r.stdout, r.replayed)
    ro = c.rollouts.start("tasks.jsonl", policy="http://127.0.0.1:30000", concurrency=256)
    for ev in ro.watch(): ...

``paddock.aio.Client`` has the same surface on asyncio. Every failed call raises a
subclass of :class:`PaddockError` named after its gRPC status (:class:`NotFound`,
:class:`InvalidArgument`, :class:`ResourceExhausted`, :class:`Unavailable`, ...),
carrying the daemon's message. The reference is docs/python-sdk.md.
"""

from __future__ import annotations

from ._convert import default_socket_path
from .client import Client, ExecStream, Log, Sandbox
from .errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    CommandFailed,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PaddockError,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)
from .images import GcResult, ImageDetail, ImageSummary, ImportDirResult, ImportResult, LayerInfo, PullResult, PushResult
from .rollouts import (
    EpisodeGroup,
    EpisodeSummary,
    EpisodeTimings,
    PolicySpec,
    PolicyUpdate,
    ResumeResult,
    Rollout,
    RolloutEpisode,
    RolloutProgress,
    Sampling,
)
from .types import (
    CallKey,
    DaemonStats,
    EpisodeDetail,
    EpisodeRecord,
    ExecResult,
    FileInfo,
    InDoubtCall,
    Limits,
    OutputChunk,
    SandboxInfo,
    StepRecord,
    Usage,
    VerifyReport,
    WriteResult,
)

__version__ = "0.1.0"

__all__ = [
    "Client", "Sandbox", "ExecStream", "Log", "default_socket_path",
    "PaddockError", "Cancelled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
    "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
    "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
    "CommandFailed",
    "CallKey", "DaemonStats", "EpisodeDetail", "EpisodeRecord", "ExecResult", "FileInfo", "InDoubtCall",
    "Limits", "OutputChunk", "SandboxInfo", "StepRecord", "Usage", "VerifyReport", "WriteResult",
    "PolicySpec", "Sampling", "EpisodeTimings", "EpisodeSummary", "RolloutProgress", "RolloutEpisode",
    "ResumeResult", "Rollout", "EpisodeGroup", "PolicyUpdate",
    "ImportResult", "PullResult", "PushResult", "ImportDirResult", "ImageSummary", "LayerInfo", "ImageDetail", "GcResult",
]
