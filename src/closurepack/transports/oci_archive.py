"""oci-archive transport: an OCI image layout in one tar, written atomically and
deterministically (fixed order: oci-layout, index.json, blobs by digest).

Writing to an existing oci-archive adds the tag to it, as ``oci:`` does for a directory: the
entry with the same ``org.opencontainers.image.ref.name`` is replaced, other tags and the blobs
they reach are kept, and blobs nothing reaches any more are dropped. Reading is the oci
transport's, from the tar's members.
"""

from __future__ import annotations

import contextlib
import functools
import json
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from closurepack.artifacts import drop_replaced_referrers
from closurepack.digest import Digest, Writable
from closurepack.errors import DestinationError
from closurepack.image import Image, canonical_json
from closurepack.imageindex import Attachments, ImageIndex
from closurepack.mediatypes import IMAGE_MANIFEST_TYPES, INDEX_TYPES
from closurepack.platforms import Platform
from closurepack.transports._files import (
    atomic_file,
    destination_lock,
    open_layer,
    sweep_beside,
)
from closurepack.transports._raw import RawImage, RawIndex
from closurepack.transports._tar import TarReader, TarWriter
from closurepack.transports.oci_layout import (
    LAYOUT_FILE,
    attached_blobs,
    image_blobs,
    index_with,
    read_stored_image,
    read_stored_index,
)
from closurepack.transports.reference import Destination, oci_ref_names

__all__ = ["check_existing", "read_image", "read_index", "write_image", "write_stream"]

_BLOBS = "blobs/sha256/"


def write_stream(
    image: Image | ImageIndex,
    out: Writable | BinaryIO,
    *,
    ref_names: Sequence[str],
    existing: tarfile.TarFile | None = None,
    attachments: Attachments = (),
) -> None:
    """Stream ``image`` (or a multi-platform image's index) as an oci-archive tagged with each
    of ``ref_names``, with ``attachments`` as artifacts whose subject is its manifest (a single
    image's); with ``existing`` (an open oci-archive), its other tags and the blobs they reach
    are carried over. A blob several platforms share is one member."""
    old_index = _read_index(existing) if existing is not None else None
    index = index_with(old_index, image, ref_names)
    if existing is not None:
        index = drop_replaced_referrers(old_index, index, functools.partial(_small_blob, existing))
    index, small = attached_blobs(image, index, attachments)
    own_layers, own_small = image_blobs(image)
    small.update((digest.hex, data) for digest, data in own_small.items())
    layers = {layer.digest.hex: layer for layer in own_layers}
    carried = _reachable(existing, index, skip=small.keys() | layers.keys()) if existing else {}
    first = image.images[0].image if isinstance(image, ImageIndex) else image

    tar = TarWriter(out, mtime=first.created_epoch)
    tar.add_bytes("oci-layout", LAYOUT_FILE)
    tar.add_bytes("index.json", canonical_json(index))
    tar.add_dir("blobs")
    tar.add_dir("blobs/sha256")
    for hex_digest in sorted(small.keys() | layers.keys() | carried.keys()):
        name = f"{_BLOBS}{hex_digest}"
        if hex_digest in small:
            tar.add_bytes(name, small[hex_digest])
        elif hex_digest in layers:
            layer = layers[hex_digest]
            with open_layer(layer) as src:
                tar.add_blob(name, src, size=layer.size, digest=layer.digest)
        else:
            assert existing is not None
            member = carried[hex_digest]
            with _member(existing, member) as src:
                tar.add_blob(name, src, size=member.size, digest=Digest(hex_digest))
    tar.close()


def _where(archive: tarfile.TarFile) -> str:
    name = archive.name
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)


def _member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> contextlib.closing[Any]:
    handle = archive.extractfile(member)
    if handle is None:
        raise DestinationError(f"{_where(archive)}: {member.name} is not a regular file")
    return contextlib.closing(handle)


def _small_blob(archive: tarfile.TarFile, digest: str) -> bytes | None:
    """An artifact manifest of ``archive`` by digest; None if it is not there."""
    try:
        member = archive.getmember(_BLOBS + digest.partition(":")[2])
    except KeyError:
        return None
    if not member.isfile() or member.size > 4 << 20:
        return None
    with _member(archive, member) as handle:
        data: bytes = handle.read()
        return data


def _read_index(archive: tarfile.TarFile) -> dict[str, Any]:
    try:
        member = archive.getmember("index.json")
        with _member(archive, member) as handle:
            index = json.loads(handle.read())
    except (KeyError, ValueError, RecursionError) as exc:
        raise DestinationError(
            f"{_where(archive)}: not an OCI archive (no readable index.json)"
        ) from exc
    if not isinstance(index, dict):
        raise DestinationError(f"{_where(archive)}: index.json is not a JSON object")
    return index


def _reachable(
    archive: tarfile.TarFile, index: dict[str, Any], *, skip: set[str] | Any
) -> dict[str, tarfile.TarInfo]:
    """The blobs of ``archive`` that ``index`` reaches (through nested indexes and manifests),
    except those in ``skip`` (the new image's own)."""
    members = {
        m.name[len(_BLOBS) :]: m
        for m in archive.getmembers()
        if m.isfile() and m.name.startswith(_BLOBS)
    }
    found: dict[str, tarfile.TarInfo] = {}
    todo: list[Any] = list(index.get("manifests") or [])
    while todo:
        descriptor = todo.pop()
        if not isinstance(descriptor, dict) or not isinstance(descriptor.get("digest"), str):
            continue
        hex_digest = descriptor["digest"].partition(":")[2]
        if hex_digest in found or hex_digest in skip:
            continue
        member = members.get(hex_digest)
        if member is None:
            raise DestinationError(
                f"{_where(archive)}: blob {descriptor['digest']} of another tag is missing"
            )
        found[hex_digest] = member
        media_type = descriptor.get("mediaType")
        if media_type in INDEX_TYPES or media_type in IMAGE_MANIFEST_TYPES:
            with _member(archive, member) as handle:
                try:
                    inner = json.loads(handle.read())
                except (ValueError, RecursionError) as exc:
                    raise DestinationError(
                        f"{_where(archive)}: {descriptor['digest']} is not valid JSON"
                    ) from exc
            if isinstance(inner, dict):
                todo.extend(inner.get("manifests") or [])
                todo.append(inner.get("config"))
                todo.extend(inner.get("layers") or [])
    return found


@contextlib.contextmanager
def _existing_archive(dest: Destination) -> Iterator[tarfile.TarFile | None]:
    path = dest.path
    if path is None or not path.is_file() or path.stat().st_size == 0:
        yield None
        return
    try:
        archive = tarfile.open(path, mode="r:")  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, OSError) as exc:
        raise DestinationError(
            f"{path}: exists and is not an OCI archive; remove it or choose another path"
        ) from exc
    with archive:
        names = set(archive.getnames())
        if not {"oci-layout", "index.json"} <= names:
            raise DestinationError(
                f"{path}: exists and is not an OCI archive; remove it or choose another path"
            )
        yield archive


def check_existing(dest: Destination) -> None:
    """Raise DestinationError if ``dest.path`` exists but is not an OCI archive with a readable
    index.json (cheap: reads the tar's member list and index.json, no blob)."""
    with _existing_archive(dest) as existing:
        if existing is not None:
            _read_index(existing)


def write_image(
    image: Image | ImageIndex,
    dest: Destination,
    *,
    tags: Sequence[str] = (),
    started: float | None = None,
    attachments: Attachments = (),
) -> None:
    """Write ``image`` to the oci-archive ``dest.path``, adding its tags (see
    :func:`oci_ref_names`) and ``attachments`` (artifacts whose subject is its manifest) to an
    existing one; temp files of writes killed before ``started`` are removed first."""
    path = dest.path
    if path is None:
        raise DestinationError(f"{dest}: oci-archive needs a path")
    if path.is_dir():
        raise DestinationError(f"{path}: is a directory, expected an archive file path")
    # the tags of the archive are read, merged and written back under one lock per archive
    with destination_lock(path):
        sweep_beside(path, started=started)
        with _existing_archive(dest) as existing, atomic_file(path) as out:
            write_stream(
                image,
                out,
                ref_names=oci_ref_names(dest, tags),
                existing=existing,
                attachments=attachments,
            )


def read_image(
    source: Destination, path: Path, text: str, *, platform: Platform | None = None
) -> RawImage:
    """The image of the oci-archive at ``path`` that ``source.reference`` tags (or its only
    one), as stored (of an index: the one for ``platform``); ``text`` is how the user named
    it."""
    return read_stored_image(
        TarReader(path),
        reference=source.reference,
        where=str(path),
        kind=source.kind,
        text=text,
        platform=platform,
    )


def read_index(source: Destination, path: Path, text: str) -> RawIndex | None:
    """The multi-platform image of the oci-archive at ``path`` that ``source.reference``
    tags; None when it is a single image."""
    return read_stored_index(
        TarReader(path), reference=source.reference, where=str(path), kind=source.kind, text=text
    )
