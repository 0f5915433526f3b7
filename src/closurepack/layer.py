"""Built layers: a compressed blob on disk with its digests, and its JSON descriptor.

A :class:`BuiltLayer` is what the layer builder produces and what image assembly consumes;
its JSON form is the descriptor ``closurepack build-layer`` writes beside the blob, so that a
layer can be built in one process (or one Nix derivation) and assembled into an image in another.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from closurepack.digest import Digest
from closurepack.errors import ImageError
from closurepack.mediatypes import MediaType

__all__ = ["DESCRIPTOR_FORMAT", "BuiltLayer", "store_layer_comment"]

DESCRIPTOR_FORMAT = "closurepack-layer"


@dataclass(frozen=True)
class BuiltLayer:
    """A finished layer blob.

    ``digest`` and ``size`` describe the compressed blob at ``blob_path``; ``diff_id`` is the
    sha256 of the uncompressed tar. ``paths`` are the store items it holds (empty for a
    customisation or base-image layer). ``media_type`` is always the OCI flavour; destinations
    that want Docker media types translate it.
    """

    digest: Digest
    diff_id: Digest
    size: int
    media_type: MediaType
    blob_path: Path
    paths: tuple[str, ...] = ()
    #: Free text for the image history, e.g. "store items" or "customisation".
    comment: str = ""
    #: The layer descriptor's annotations (zstd:chunked's TOC digest and position).
    annotations: Mapping[str, str] = field(default_factory=dict, compare=False)
    #: True when this process built the blob or checked it against ``digest`` and ``size``
    #: (a cache hit); destinations may then link it instead of copying and rehashing it.
    #: Never serialised: a descriptor read from a file is not trusted.
    verified: bool = field(default=False, compare=False)

    @property
    def compression(self) -> str:
        return self.media_type.compression

    def open(self) -> BinaryIO:
        """Open the compressed blob for reading."""
        return self.blob_path.open("rb")

    def to_json_obj(self, *, relative_to: Path | None = None) -> dict[str, Any]:
        blob = self.blob_path
        if relative_to is not None:
            try:
                blob = blob.relative_to(relative_to)
            except ValueError:
                blob = blob.resolve()
        obj: dict[str, Any] = {
            "format": DESCRIPTOR_FORMAT,
            "digest": str(self.digest),
            "diff_id": str(self.diff_id),
            "size": self.size,
            "mediaType": str(self.media_type),
            "blob": str(blob),
            "paths": list(self.paths),
        }
        if self.comment:
            obj["comment"] = self.comment
        if self.annotations:
            obj["annotations"] = dict(self.annotations)
        return obj

    def to_json(self, *, relative_to: Path | None = None) -> str:
        return json.dumps(
            self.to_json_obj(relative_to=relative_to), sort_keys=True, separators=(",", ":")
        )

    @classmethod
    def from_json(cls, text: str | bytes, *, source: Path) -> BuiltLayer:
        """Read a descriptor written by :meth:`to_json`; a relative blob path is taken relative
        to the descriptor's directory."""
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise ImageError(f"{source}: invalid layer descriptor: {exc}") from exc
        return cls.from_json_obj(obj, source=source)

    @classmethod
    def from_json_obj(
        cls, obj: object, *, source: Path, blob_at: Callable[[Digest], Path] | None = None
    ) -> BuiltLayer:
        """:meth:`from_json` of the parsed descriptor ``obj``; with ``blob_at``, the blob is
        ``blob_at(digest)`` whatever the descriptor names (a cache entry's blob is found by
        its digest)."""
        try:
            if not isinstance(obj, dict) or obj.get("format") != DESCRIPTOR_FORMAT:
                raise ValueError("not a closurepack layer descriptor")
            digest = Digest.parse(obj["digest"])
            if blob_at is not None:
                blob = blob_at(digest)
            else:
                blob = Path(obj["blob"])
                if not blob.is_absolute():
                    blob = source.parent / blob
            return cls(
                digest=digest,
                diff_id=Digest.parse(obj["diff_id"]),
                size=int(obj["size"]),
                media_type=MediaType(obj["mediaType"]),
                blob_path=blob,
                paths=tuple(obj.get("paths", ())),
                comment=str(obj.get("comment", "")),
                annotations={str(k): str(v) for k, v in obj.get("annotations", {}).items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError, ImageError) as exc:
            raise ImageError(f"{source}: invalid layer descriptor: {exc}") from exc


def store_layer_comment(paths: tuple[str, ...] | list[str], *, limit: int = 200) -> str:
    """The image history comment of a store layer: its item count and names (without the hash
    parts), largest first is not known here, so in path order, cut at about ``limit`` chars."""
    names = [p.rsplit("/", 1)[-1].split("-", 1)[-1] for p in paths]
    head = f"{len(names)} store item{'' if len(names) == 1 else 's'}: "
    text = head + ", ".join(names)
    if len(text) > limit:
        text = text[: limit - 4].rsplit(", ", 1)[0] + ", ..."
    return text
