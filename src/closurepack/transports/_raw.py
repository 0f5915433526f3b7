"""What every transport's reading half returns: an image as stored, nothing verified; and the
small helpers the readers share."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from closurepack.digest import Digest
from closurepack.errors import DestinationError, ImageError, SourceError
from closurepack.mediatypes import MediaType

__all__ = [
    "RawBlob",
    "RawImage",
    "as_source_error",
    "missing_blob",
    "parse_json",
    "sniff_media_type",
]


@dataclass(frozen=True)
class RawBlob:
    """A layer as stored: its declared digest and size (``None`` when the format has none,
    as in docker-archive), its media type, and an opener for its bytes."""

    name: str
    media_type: MediaType
    opener: Callable[[], BinaryIO]
    digest: Digest | None = None
    size: int | None = None


@dataclass(frozen=True)
class RawImage:
    """An image as stored, nothing verified. ``manifest_bytes`` is ``None`` for docker-archive
    (which has no manifest); declared values come from index descriptors or file names."""

    source: str
    kind: str
    config_bytes: bytes
    config_digest: Digest | None
    config_size: int | None
    manifest_bytes: bytes | None
    manifest_digest: Digest | None
    manifest_size: int | None
    layers: tuple[RawBlob, ...]


def parse_json(data: bytes, what: str) -> Any:
    """``data`` parsed, or an ImageError naming ``what``."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageError(f"{what}: not valid JSON: {exc}") from exc


def sniff_media_type(opener: Callable[[], BinaryIO]) -> MediaType:
    """The OCI layer media type of a blob judged by its first bytes (docker-archive has none)."""
    with opener() as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b":
        return MediaType.OCI_LAYER_GZIP
    if head == b"\x28\xb5\x2f\xfd":
        return MediaType.OCI_LAYER_ZSTD
    return MediaType.OCI_LAYER


def missing_blob(what: str) -> Callable[[], BinaryIO]:
    """An opener for a blob that is not there: opening it is a DestinationError."""

    def fail() -> BinaryIO:
        raise DestinationError(f"{what}: blob is missing")

    return fail


@contextlib.contextmanager
def as_source_error() -> Iterator[None]:
    """The DestinationErrors of reading (an image that is not there) as SourceErrors: a source
    is not a destination, and its problems are not exit status 5."""
    try:
        yield
    except DestinationError as exc:
        raise SourceError(str(exc)) from exc
