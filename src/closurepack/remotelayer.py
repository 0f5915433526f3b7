"""A layer whose blob is in the registry already (found through a shared layer cache,
:mod:`closurepack.registry.layercache`); apart from :mod:`closurepack.layer`, so that a build
without ``--cache-from`` does not define it (issue 11: a dataclass costs its import ~4M
instructions)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO

from closurepack.digest import Digest
from closurepack.mediatypes import MediaType

__all__ = ["RemoteLayer"]


@dataclass(frozen=True)
class RemoteLayer:
    """A layer whose blob is already in the registry the image is pushed to (found through a
    shared layer cache): nothing of it is on disk; :meth:`open` streams it from the registry,
    digest-checked, should anything need its bytes."""

    digest: Digest
    diff_id: Digest
    size: int
    media_type: MediaType
    opener: Callable[[], BinaryIO] = field(repr=False, compare=False)
    paths: tuple[str, ...] = ()
    comment: str = ""
    verified: bool = field(default=False, compare=False)
    annotations: Mapping[str, str] = field(default_factory=dict, compare=False)

    def open(self) -> BinaryIO:
        return self.opener()
