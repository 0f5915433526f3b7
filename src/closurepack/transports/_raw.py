"""What every transport's reading half returns: an image as stored, nothing verified; and the
small helpers the readers share."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

from closurepack.digest import Digest
from closurepack.errors import DestinationError, SourceError
from closurepack.jsontext import parse_json
from closurepack.mediatypes import MediaType

if TYPE_CHECKING:  # (an index's platforms: imported when one is read)
    from closurepack.platforms import Platform

__all__ = [
    "RawBlob",
    "RawImage",
    "RawIndex",
    "as_source_error",
    "missing_blob",
    "parse_json",
    "sniff_media_type",
]


class RawBlob(NamedTuple):
    """A layer as stored: its declared digest and size (``None`` when the format has none,
    as in docker-archive), its media type, and an opener for its bytes."""

    name: str
    media_type: MediaType
    opener: Callable[[], BinaryIO]
    digest: Digest | None = None
    size: int | None = None


class RawImage(NamedTuple):
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


@dataclass(frozen=True)
class RawIndex:
    """A multi-platform image as stored: the index (or manifest list) bytes beside the digest
    and size declared for it, its entries, and ``reader``, which reads the image an entry
    names. Nothing is verified."""

    source: str
    kind: str
    index_bytes: bytes
    index_digest: Digest | None
    index_size: int | None
    entries: tuple[Mapping[str, Any], ...]
    reader: Callable[[Mapping[str, Any]], RawImage] = field(repr=False, compare=False)

    @property
    def media_type(self) -> str:
        index = parse_json(self.index_bytes, f"{self.source}: index")
        declared = index.get("mediaType") if isinstance(index, dict) else None
        return str(declared or MediaType.OCI_INDEX)

    def image(self, platform: Platform | None = None) -> RawImage:
        """The image for ``platform`` (default: the host's); see
        :func:`~closurepack.platforms.choose_entry`."""
        from closurepack.platforms import choose_entry  # noqa: PLC0415 - indexes only

        return self.reader(choose_entry(self.entries, platform, where=self.source))

    def images(self) -> list[tuple[Platform, RawImage]]:
        """Every image of the index that names a platform, in order."""
        from closurepack.platforms import entry_platform  # noqa: PLC0415 - indexes only

        return [(p, self.reader(e)) for e in self.entries if (p := entry_platform(e)) is not None]


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
