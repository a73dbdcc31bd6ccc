"""The image store through the daemon (service ``paddock.v1.Images``, proto/image.proto).

Reached as ``client.images``::

    r = c.images.import_("/srv/images/python3.tar", name="python:3")   # OCI layout or docker save
    c.images.import_dir("/var/lib/images/busybox", name="busybox:latest")
    with c.sandbox("container", "python:3") as sb: ...
    c.images.ls(); c.images.inspect("python:3"); c.images.rm("python:3")
    c.images.pull("127.0.0.1:5000/test/busybox:1")                    # from a registry
    c.images.push("python:3", "registry.example/team/python:3", credentials=("user", "password"))

Paths are on the daemon's host; relative ones are made absolute against this
process's cwd (as the CLI does). Images are usable as ``image=`` of a sandbox by
name (``name:tag``), digest or digest prefix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import grpc

from . import _stubs
from ._msg import from_msg
from .errors import InvalidArgument, Unimplemented, Unknown

if TYPE_CHECKING:
    from .client import Client

__all__ = ["Images", "ImportResult", "PullResult", "PushResult", "ImportDirResult", "ImageSummary", "LayerInfo", "ImageDetail", "GcResult"]


@dataclass(frozen=True)
class ImportResult:
    """What an archive import stored.

    Attributes:
        images: the image digests, in archive order.
        names: the names given to them.
        layers_total / layers_new: layers in the archive, and those not already stored.
        bytes_committed: bytes written to the store.
    """

    images: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    layers_total: int = 0
    layers_new: int = 0
    bytes_committed: int = 0


@dataclass(frozen=True)
class PullResult:
    """What a registry pull stored.

    Attributes:
        image: the store's image id (a sandbox's ``image=``, like its names).
        names: the names given to it (the reference itself unless ``name`` was given).
        manifest_digest: the registry's manifest digest (of the chosen platform).
        layers_total / layers_new: layers of the image, and those fetched (not already stored).
        bytes_fetched: layer bytes downloaded; bytes_committed: bytes written to the store.
    """

    image: str = ""
    names: list[str] = field(default_factory=list)
    manifest_digest: str = ""
    layers_total: int = 0
    layers_new: int = 0
    bytes_fetched: int = 0
    bytes_committed: int = 0


@dataclass(frozen=True)
class PushResult:
    """What a registry push did.

    Attributes:
        image: the store's image id; ref: the reference pushed to, fully spelled.
        manifest_digest: the OCI manifest now on the registry.
        blobs_total: distinct blobs (config and layers); blobs_present: already there, not sent;
        blobs_mounted: mounted from another repository of the registry; blobs_uploaded: sent.
        bytes_uploaded: blob bytes sent.
        blobs_chunked: of those sent, in chunks (PATCH); chunk_resumes: chunks resumed after a
        failed PATCH from the registry's upload status.
    """

    image: str = ""
    ref: str = ""
    manifest_digest: str = ""
    blobs_total: int = 0
    blobs_present: int = 0
    blobs_mounted: int = 0
    blobs_uploaded: int = 0
    bytes_uploaded: int = 0
    blobs_chunked: int = 0
    chunk_resumes: int = 0


# A pull of a large image may take long; like the C++ client's kLongCall.
PULL_TIMEOUT_S = 2 * 3600.0


def _credentials(credentials: tuple[str, str] | None, what: str) -> Any:
    if credentials is None:
        return None
    if not (isinstance(credentials, tuple) and len(credentials) == 2 and all(isinstance(x, str) for x in credentials)):
        raise InvalidArgument(f"{what}: credentials must be a (username, password) tuple")
    return _pb().RegistryCredentials(username=credentials[0], password=credentials[1])


def pull_request(ref: str, name: str | None, insecure_registries: Sequence[str] | None, platform: str | None,
                 ca_file: str | None, credentials: tuple[str, str] | None = None) -> Any:
    if not isinstance(ref, str) or not ref:
        raise InvalidArgument("pull: a reference is required, e.g. registry.example/repo:tag")
    return _pb().PullRequest(ref=ref, name=name or "", insecure_registries=list(insecure_registries or []),
                             platform=platform or "", ca_file=_abs(ca_file, "pull ca_file") if ca_file else "",
                             credentials=_credentials(credentials, "pull"))


def push_request(image: str, ref: str, insecure_registries: Sequence[str] | None, ca_file: str | None,
                 credentials: tuple[str, str] | None, chunk_size: int | None = None) -> Any:
    if not isinstance(image, str) or not image:
        raise InvalidArgument("push: an image of the store is required, e.g. python:3")
    if not isinstance(ref, str) or not ref:
        raise InvalidArgument("push: a reference is required, e.g. registry.example/repo:tag")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or not (chunk_size == 0 or 64 << 10 <= chunk_size <= 1 << 30)):
        raise InvalidArgument("push: chunk_size must be 0 (never chunked) or 64 KiB to 1 GiB")
    return _pb().PushRequest(image=image, ref=ref, insecure_registries=list(insecure_registries or []),
                             ca_file=_abs(ca_file, "push ca_file") if ca_file else "",
                             credentials=_credentials(credentials, "push"),
                             chunk_size=0 if chunk_size is None else (-1 if chunk_size == 0 else chunk_size))


def push_result(r: Any) -> PushResult:
    return from_msg(PushResult, r)


def pull_result(r: Any) -> PullResult:
    return from_msg(PullResult, r, image=r.images[0] if r.images else "")


@dataclass(frozen=True)
class ImportDirResult:
    """What a directory import stored: the image digest, its names, and how many device nodes
    and sockets were left out."""

    image: str = ""
    names: list[str] = field(default_factory=list)
    skipped_special: int = 0


@dataclass(frozen=True)
class ImageSummary:
    """One image of the store: digest, names, number of layers, bytes stored."""

    digest: str = ""
    names: list[str] = field(default_factory=list)
    layers: int = 0
    stored_bytes: int = 0


@dataclass(frozen=True)
class LayerInfo:
    """One layer: its diff id, blob digest, compression, sizes, and whether this node's layer
    cache has it unpacked (``materialized``)."""

    diff_id: str = ""
    blob: str = ""
    compression: str = ""
    size: int = 0
    uncompressed_size: int = 0
    materialized: bool = False


@dataclass(frozen=True)
class ImageDetail:
    """One image: digest, names, layers (bottom first) and its config (env, workdir, entrypoint,
    cmd, user)."""

    digest: str = ""
    names: list[str] = field(default_factory=list)
    layers: list[LayerInfo] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    workdir: str = ""
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    user: str = ""
    config_digest: str = ""


@dataclass(frozen=True)
class GcResult:
    """What a garbage collection freed."""

    blobs_removed: int = 0
    bytes_freed: int = 0
    staging_removed: int = 0


def _pb() -> Any:
    m = _stubs.module("image_pb2")
    if m is None:
        raise Unimplemented("this SDK was built without proto/image.proto (the Images service)")
    return m


def _grpc_mod() -> Any:
    _pb()
    return _stubs.module("image_pb2_grpc")


def _abs(path: str, what: str) -> str:
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise InvalidArgument(f"{what}: a path is required")
    return os.path.abspath(os.fspath(path))


def detail(p: Any) -> ImageDetail:
    return from_msg(ImageDetail, p, layers=[from_msg(LayerInfo, layer) for layer in p.layers])


def event_result(ev: Any, on_progress: Callable[[str, str], None] | None,
                 convert: Callable[[Any], Any]) -> Any:
    """One event of an Import or Pull stream: progress goes to ``on_progress``;
    a result comes back converted (None for anything else)."""
    kind = ev.WhichOneof("event")
    if kind == "progress" and on_progress is not None:
        on_progress(ev.progress.phase, ev.progress.message)
    elif kind == "result":
        return convert(ev.result)
    return None


def no_result(what: str) -> Unknown:
    return Unknown(f"the {what} stream ended without a result")


def collect_events(events: Iterable[Any], on_progress: Callable[[str, str], None] | None,
                   convert: Callable[[Any], Any], what: str) -> Any:
    """Reads an Import or Pull stream to its end; its result, converted."""
    result = None
    for ev in events:
        got = event_result(ev, on_progress, convert)
        if got is not None:
            result = got
    if result is None:
        raise no_result(what)
    return result


def import_dir_request(path: str, name: str | None, env: Sequence[str] | dict[str, str] | None,
                       workdir: str | None) -> Any:
    if isinstance(env, dict):
        env = [f"{k}={v}" for k, v in env.items()]
    return _pb().ImportDirRequest(path=_abs(path, "import_dir"), name=name or "", env=list(env or []),
                                  workdir=workdir or "")


class Images:
    """The daemon's image store."""

    def __init__(self, client: "Client") -> None:
        self._client = client
        self._stub_obj: Any = None

    @property
    def _stub(self) -> Any:
        if self._stub_obj is None:
            self._stub_obj = _grpc_mod().ImagesStub(self._client._channel)
        return self._stub_obj

    def import_(self, path: str, name: str | None = None,
                on_progress: Callable[[str, str], None] | None = None) -> ImportResult:
        """Imports an OCI image layout or a ``docker save`` archive (tar or directory).

        Args:
            path: on the daemon's host (made absolute here).
            name: ``name[:tag]`` to give it; default the archive's own names.
            on_progress: called with ``(phase, message)`` as the daemon reports progress.

        Raises:
            paddock.InvalidArgument: not an image archive, or a hostile entry (named).
            paddock.NotFound: no such path.
        """
        c = self._client
        req = _pb().ImportRequest(path=_abs(path, "import"), name=name or "")
        try:
            return collect_events(c._stream(self._stub.Import, req), on_progress,
                                  lambda r: from_msg(ImportResult, r), "import")
        except grpc.RpcError as err:
            raise c._error(err) from None

    def pull(self, ref: str, name: str | None = None, *, insecure_registries: Sequence[str] | None = None,
             platform: str | None = None, ca_file: str | None = None,
             credentials: tuple[str, str] | None = None,
             on_progress: Callable[[str, str], None] | None = None) -> PullResult:
        """Pulls an image from a registry into the store (OCI and Docker schema 2).

        Args:
            ref: ``[HOST[:PORT]/]REPOSITORY[:TAG][@sha256:HEX]``.
            name: ``name[:tag]`` to give it; default the reference itself.
            insecure_registries: hosts (``host`` or ``host:port``) spoken to over plain HTTP;
                loopback hosts always are. Unix-socket clients only.
            platform: ``os/arch[/variant]`` picked from a multi-platform image (default linux/amd64).
            ca_file: PEM CAs on the daemon's host to verify the registry with. Unix-socket clients only.
            credentials: ``(username, password)`` for the registry (basic or token auth); None:
                anonymous. Sent with this call only; never sent over plain HTTP to a non-loopback host.
            on_progress: called with ``(phase, message)`` as the daemon reports progress.

        Raises:
            paddock.NotFound: no such repository, tag or platform.
            paddock.DataLoss: a blob that does not match its digest or size (nothing is stored).
            paddock.Unauthenticated / PermissionDenied / ResourceExhausted / Unavailable: what the
                registry answered (401, 403, 429, 5xx), or TLS verification failed (PermissionDenied).
        """
        c = self._client
        req = pull_request(ref, name, insecure_registries, platform, ca_file, credentials)
        try:
            return collect_events(c._stream(self._stub.Pull, req, timeout=PULL_TIMEOUT_S), on_progress,
                                  pull_result, "pull")
        except grpc.RpcError as err:
            raise c._error(err) from None

    def push(self, image: str, ref: str, *, insecure_registries: Sequence[str] | None = None,
             ca_file: str | None = None, credentials: tuple[str, str] | None = None,
             on_progress: Callable[[str, str], None] | None = None,
             chunk_size: int | None = None) -> PushResult:
        """Pushes ``image`` (name, digest or prefix in the store) to the registry reference ``ref``
        (``HOST[:PORT]/REPOSITORY:TAG``) as an OCI image manifest; blobs the registry has are
        not sent. ``insecure_registries``, ``ca_file`` and ``credentials`` as for :meth:`pull`.
        Blobs larger than ``chunk_size`` bytes (default 16 MiB; 0: never) go in chunks (PATCH).

        Raises:
            paddock.NotFound: no such image in the store.
            paddock.Unauthenticated / PermissionDenied / Unavailable: what the registry answered.
        """
        c = self._client
        req = push_request(image, ref, insecure_registries, ca_file, credentials, chunk_size)
        try:
            return collect_events(c._stream(self._stub.Push, req, timeout=PULL_TIMEOUT_S), on_progress,
                                  push_result, "push")
        except grpc.RpcError as err:
            raise c._error(err) from None

    def import_dir(self, path: str, name: str | None = None, *,
                   env: Sequence[str] | dict[str, str] | None = None, workdir: str | None = None) -> ImportDirResult:
        """Imports a plain root filesystem directory as a one-layer image (``env`` as ``KEY=value``
        strings or a dict; ``workdir`` its default working directory)."""
        req = import_dir_request(path, name, env, workdir)
        return from_msg(ImportDirResult, self._client._call(self._stub.ImportDir, req))

    def ls(self) -> list[ImageSummary]:
        """The images in the store."""
        return [from_msg(ImageSummary, i) for i in self._client._call(self._stub.List, _pb().ImageListRequest()).images]

    def inspect(self, ref: str) -> ImageDetail:
        """One image by name, digest or digest prefix.

        Raises:
            paddock.NotFound: no such image.
        """
        return detail(self._client._call(self._stub.Inspect, _pb().InspectRequest(ref=ref)))

    def rm(self, ref: str) -> str:
        """Removes a name (and the image when no other name points at it), or by digest the image
        and all its names. Returns the image's digest."""
        return self._client._call(self._stub.Remove, _pb().RemoveImageRequest(ref=ref)).image

    def gc(self, grace: float | None = None) -> GcResult:
        """Frees blobs no image references for longer than ``grace`` seconds (None: 1 h)."""
        req = _pb().GcRequest(grace_seconds=-1 if grace is None else int(grace))
        return from_msg(GcResult, self._client._call(self._stub.Gc, req))

    def export(self, ref: str, dir: str) -> str:
        """Writes the image as an OCI image layout into ``dir`` (on the daemon's host; created).
        Returns its digest."""
        req = _pb().ExportImageRequest(ref=ref, dir=_abs(dir, "export"))
        return self._client._call(self._stub.Export, req).image
