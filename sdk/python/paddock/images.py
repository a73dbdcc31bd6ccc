"""The image store through the daemon (service ``paddock.v1.Images``, proto/image.proto).

Reached as ``client.images``. Until proto/image.proto is part of the build every
call raises :class:`paddock.Unimplemented` saying so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _stubs
from .errors import Unimplemented

if TYPE_CHECKING:
    from .client import Client

__all__ = ["Images"]


def _pb() -> Any:
    m = _stubs.module("image_pb2")
    if m is None:
        raise Unimplemented("this SDK was built without proto/image.proto (the Images service)")
    return m


class Images:
    """The daemon's image store."""

    def __init__(self, client: "Client") -> None:
        self._client = client

    def _unavailable(self) -> Unimplemented:
        _pb()
        return Unimplemented("the Images service is not supported by this SDK version yet")

    def import_(self, *args: Any, **kwargs: Any) -> Any:
        """Imports an image (OCI layout, docker-save tar, or a directory)."""
        raise self._unavailable()

    def ls(self) -> Any:
        """The images in the store."""
        raise self._unavailable()

    def inspect(self, ref: str) -> Any:
        """One image's manifest and layers."""
        raise self._unavailable()

    def rm(self, ref: str) -> Any:
        """Removes an image name."""
        raise self._unavailable()
