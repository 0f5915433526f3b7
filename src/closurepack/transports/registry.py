"""docker:// transport: the same verbs as the file transports, over the ``registry`` package's
pull and push (HEAD, mounts, uploads, manifest last)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from closurepack.digest import Digest
from closurepack.image import Image
from closurepack.imageindex import Attachments, ImageIndex
from closurepack.platforms import Platform
from closurepack.registry import RegistryOptions, RegistryRef, parse_reference
from closurepack.registry.pull import (
    PulledImage,
    PulledIndex,
    pull_image,
    pull_image_or_index,
    pull_index,
)
from closurepack.registry.push import ImagePusher
from closurepack.registry.referrers import attach_platforms, attach_pushed
from closurepack.transports._raw import RawBlob, RawImage, RawIndex

__all__ = [
    "check_destination",
    "read_image",
    "read_image_or_index",
    "read_index",
    "write_image",
]


def check_destination(text: str) -> RegistryRef:
    """``text`` parsed as a push destination (a tag, not a digest); the registry itself is
    asked only when the image is pushed."""
    return parse_reference(text, for_push=True)


def read_image(
    source: str, registry: RegistryOptions | None = None, *, platform: Platform | None = None
) -> RawImage:
    """The image ``source`` (``docker://HOST/REPO[:TAG|@DIGEST]``) names, as stored (of an
    index: the one for ``platform``): manifest and config read, layers opened later (each
    checked against its digest as it streams)."""
    pulled = pull_image(parse_reference(source), registry or RegistryOptions(), platform=platform)
    return _raw(source, pulled)


def read_index(source: str, registry: RegistryOptions | None = None) -> RawIndex | None:
    """The image index (or manifest list) ``source`` names, as stored; None when it names a
    single image."""
    pulled = pull_index(parse_reference(source), registry or RegistryOptions())
    return None if pulled is None else _raw_index(source, pulled)


def read_image_or_index(
    source: str, registry: RegistryOptions | None = None
) -> RawImage | RawIndex:
    """The index ``source`` names, or the single image it names, from one manifest GET."""
    pulled = pull_image_or_index(parse_reference(source), registry or RegistryOptions())
    if isinstance(pulled, PulledIndex):
        return _raw_index(source, pulled)
    return _raw(source, pulled)


def _raw_index(source: str, pulled: PulledIndex) -> RawIndex:
    reader = pulled.reader

    def read(entry: Mapping[str, Any]) -> RawImage:
        return _raw(source, reader(entry))

    return RawIndex(
        source=source,
        kind="docker",
        index_bytes=pulled.index_bytes,
        index_digest=pulled.index_digest,
        index_size=None,
        entries=pulled.entries,
        reader=read,
    )


def _raw(source: str, pulled: PulledImage) -> RawImage:
    layers = tuple(
        RawBlob(str(b.digest), b.media_type, b.opener, b.digest, b.size) for b in pulled.layers
    )
    return RawImage(
        source=source,
        kind="docker",
        config_bytes=pulled.config_bytes,
        config_digest=pulled.config_digest,
        config_size=pulled.config_size,
        manifest_bytes=pulled.manifest_bytes,
        manifest_digest=pulled.manifest_digest,
        manifest_size=pulled.manifest_size,
        layers=layers,
    )


def write_image(
    image: Image | ImageIndex,
    ref: RegistryRef,
    *,
    options: RegistryOptions,
    tags: Sequence[str] = (),
    docker: bool = False,
    mount_from: Sequence[str] = (),
    attachments: Attachments = (),
) -> Digest:
    """Push ``image`` to ``ref`` under ``tags`` (default: the reference's own); return the
    digest of the manifest pushed (Docker schema 2 with ``docker``). Blobs the repository has
    are not sent again; blobs of the repositories ``mount_from`` (of the same registry) are
    mounted from there rather than uploaded. A multi-platform image has every image pushed
    by digest, then its index under the tags. ``attachments`` follow as artifacts whose
    subject is the manifest pushed (of an index: each platform's image's)."""
    with ImagePusher(
        ref, options=options, tags=tags, docker=docker, mount_from=mount_from
    ) as pusher:
        if isinstance(image, ImageIndex):
            digest = pusher.push_index(image)
            attach_platforms(pusher, image, attachments)
            return digest
        digest = pusher.push(image)
        if not isinstance(attachments, Mapping):
            attach_pushed(pusher, attachments)
        return digest
