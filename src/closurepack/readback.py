"""Images read back from any transport (``docker-archive:``, ``oci:``, ``oci-archive:``,
``docker://``) for ``--from``, ``inspect`` and ``copy``: the format-independent part, turning
what a transport's reader returns (a :class:`~closurepack.transports.RawImage`, nothing
verified) into an :class:`~closurepack.image.Image` whose layers open their stored blobs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from closurepack._fs import hash_stream
from closurepack.digest import Digest
from closurepack.errors import DestinationError, ImageError, SourceError
from closurepack.image import BaseImage, Image, layer_paths_from_config, manifest_for
from closurepack.mediatypes import MediaType
from closurepack.platforms import Platform
from closurepack.registry import RegistryOptions
from closurepack.transports import RawImage, as_source_error, read_raw

__all__ = ["BlobLayer", "image_from_raw", "read_base_image", "read_image"]


@dataclass(frozen=True)
class BlobLayer:
    """A layer whose blob lives elsewhere (an image read back, a base image): opened on demand."""

    digest: Digest
    diff_id: Digest
    size: int
    media_type: MediaType
    opener: Callable[[], BinaryIO] = field(repr=False, compare=False)
    paths: tuple[str, ...] = ()
    comment: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict, compare=False)

    def open(self) -> BinaryIO:
        return self.opener()


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageError(f"{what}: not valid JSON: {exc}") from exc


def _source_opener(opener: Callable[[], BinaryIO]) -> Callable[[], BinaryIO]:
    def open_blob() -> BinaryIO:
        with as_source_error():
            return opener()

    return open_blob


def read_image(
    source: str, *, registry: RegistryOptions | None = None, platform: Platform | None = None
) -> Image:
    """The image at ``source`` (of a multi-platform image: the one for ``platform``, by
    default this host's) as an :class:`Image` whose layers open their stored blobs (see
    :func:`image_from_raw`)."""
    return image_from_raw(read_raw(source, registry=registry, platform=platform))


def image_from_raw(raw: RawImage) -> Image:
    """``raw`` as an :class:`Image` whose layers open their stored blobs.

    Digests are the declared ones (docker-archive declares none: its layers are hashed, and
    its manifest is made as :func:`~closurepack.image.manifest_for` makes one). Raise
    ImageError if the config's diff_ids and the layers do not correspond one to one.
    """
    source = raw.source
    config = _json(raw.config_bytes, f"{source}: config")
    if not isinstance(config, dict):
        raise ImageError(f"{source}: config is not a JSON object")
    for key, kind, name in (
        ("config", dict, "object"),
        ("rootfs", dict, "object"),
        ("history", list, "array"),
    ):
        if not isinstance(config.get(key) or kind(), kind):
            raise ImageError(f"{source}: config: {key!r} is not a JSON {name}")
    _check_container_config(config.get("config") or {}, source)
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    if not isinstance(diff_ids, list):
        raise ImageError(f"{source}: config: rootfs.diff_ids is not a list")
    if len(diff_ids) != len(raw.layers):
        raise ImageError(
            f"{source}: config lists {len(diff_ids)} diff_ids for {len(raw.layers)} layers"
        )
    recorded = layer_paths_from_config(config)
    history = [h for h in config.get("history") or [] if isinstance(h, dict)]
    comments = [str(h.get("comment", "")) for h in history if not h.get("empty_layer")]
    layers = []
    for i, (blob, diff_id) in enumerate(zip(raw.layers, diff_ids, strict=True)):
        if blob.digest is not None and blob.size is not None:
            digest, size = blob.digest, blob.size
        else:
            try:
                with blob.opener() as stream:
                    digest, size = hash_stream(stream)
            except OSError as exc:
                raise SourceError(f"{source}: {blob.name}: cannot read: {exc}") from exc
            except DestinationError as exc:
                raise SourceError(str(exc)) from exc
        layers.append(
            BlobLayer(
                digest=digest,
                diff_id=Digest.parse(str(diff_id)),
                size=size,
                media_type=blob.media_type,
                opener=_source_opener(blob.opener),
                paths=tuple(recorded.get(str(diff_id), ())),
                comment=comments[i] if len(comments) == len(diff_ids) else "",
            )
        )
    manifest_bytes = raw.manifest_bytes
    if manifest_bytes is None:
        manifest_bytes = manifest_for(raw.config_bytes, layers)
    return Image(config_bytes=raw.config_bytes, manifest_bytes=manifest_bytes, layers=tuple(layers))


# The JSON types of the container config fields an image built on this one inherits.
_CONTAINER_FIELDS = {
    "Env": list,
    "Entrypoint": list,
    "Cmd": list,
    "Labels": dict,
    "ExposedPorts": dict,
    "Volumes": dict,
    "WorkingDir": str,
    "User": str,
    "StopSignal": str,
}
_JSON_NAMES = {list: "an array of strings", dict: "an object", str: "a string"}


def _check_container_config(container: dict[str, Any], source: str) -> None:
    """An ImageError naming the first field of ``container`` that is not of its JSON type
    (null is fine: unset); lists must hold strings."""
    for key, kind in _CONTAINER_FIELDS.items():
        value = container.get(key)
        if value is None:
            continue
        if not isinstance(value, kind) or (
            kind is list and not all(isinstance(item, str) for item in value)
        ):
            raise ImageError(f"{source}: config: config.{key} is not {_JSON_NAMES[kind]}")


def read_base_image(
    source: str, *, registry: RegistryOptions | None = None, platform: Platform | None = None
) -> BaseImage:
    """The image at ``source`` (for ``platform``, of a multi-platform one) as a base for
    ``--from``."""
    return read_image(source, registry=registry, platform=platform).as_base()
