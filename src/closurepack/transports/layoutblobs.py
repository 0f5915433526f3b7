"""The blobs of an OCI image layout: its layers, configs and manifests under
``blobs/sha256``, each written atomically, a good one already there kept (without a read
when its stamp says so, see :mod:`closurepack.blobstamp`), a bad one replaced; layer blobs
this process built or verified reflinked or copied in the kernel, never hard-linked to the
cache (or staged by :mod:`closurepack.transports.layoutstaging` while the build went on, then
renamed into place). :mod:`closurepack.transports.oci_layout` writes them before its
``index.json``."""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from closurepack._fs import clone_blob, fsync_dir
from closurepack.blobstamp import BlobStamps
from closurepack.digest import Digest
from closurepack.errors import DestinationError
from closurepack.image import Image, ImageLayer
from closurepack.layerpool import run_layers
from closurepack.transports._files import blob_is_good, put_blob

if TYPE_CHECKING:  # (only a multi-platform image is one: see closurepack.imageindex)
    from closurepack.imageindex import ImageIndex

__all__ = [
    "copy_layer",
    "image_blobs",
    "write_blobs",
]


def image_blobs(image: Image | ImageIndex) -> tuple[tuple[ImageLayer, ...], dict[Digest, bytes]]:
    """The layers of ``image`` (of every platform, each digest once) and its small blobs: the
    configs and manifests, and the index of a multi-platform image."""
    if not isinstance(image, Image):  # an ImageIndex
        return image.layers, image.small_blobs
    small = {image.config_digest: image.config_bytes, image.manifest_digest: image.manifest_bytes}
    return image.layers, small


def write_blobs(
    image: Image | ImageIndex,
    root: Path,
    *,
    stamps: BlobStamps | None = None,
    sync_dir: bool = True,
    staged: Mapping[Digest, Path] | None = None,
) -> bool:
    """Store the layers, configs and manifests of ``image`` (and its index) under
    ``root/blobs/sha256``, a blob that several platforms share once. Each is a file of its
    own, never a hard link to the cache (a change to one would show in the other); a blob
    already there is checked and replaced when it is not what its name says. True when any
    blob was written (else every one was there and good).

    ``stamps``: records of the layout blobs earlier builds wrote or hashed; a layer blob that
    still matches its record (same inode, size, mtime and ctime, see :mod:`closurepack.blobstamp`)
    is kept without being read; every layer blob written or hashed here is recorded.

    ``staged``: layer blobs already copied and fsynced into the layout's staging directory
    while the build went on (see :mod:`closurepack.transports.layoutstaging`), by digest:
    each is renamed into place here (unless its stamp says the blob there is good), which
    needs neither a copy nor a wait on the disk.

    The layer blobs are placed by several threads at once (:data:`_PLACERS`, through
    :func:`closurepack.layerpool.run_layers`, largest first): each is a kernel copy and an
    fsync, so one at a time a cold build ended in a serial tail of copies and disk waits
    (issue 11); a single one (a warm rebuild's new layer) is placed on the calling thread.
    The configs and manifests (and a multi-platform image's index) follow only when every
    layer is in place, so a write that fails leaves nothing new, nothing that names a
    missing layer; they too are placed at once, a thread each (a warm rebuild's config and
    manifest: the filesystem's journal commits the two fsyncs together, where one after the
    other each waited for its own commit). The directory entries of all the blobs written
    are synced once, at the end (``sync_dir`` False: by the caller, which
    :func:`~closurepack.transports.oci_layout.write_image` does while ``index.json``, which
    alone names them, is fsynced, before it is renamed into place; a crash before that sync
    leaves the old ``index.json``, naming only blobs that were durable already). A warm
    rebuild waits for 4 fsyncs one after another with ``index.json``, not 7: the new layer,
    its config and manifest, the blobs' directory with ``index.json``, and the layout's
    directory."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    layers, small = image_blobs(image)
    unique = list({layer.digest: layer for layer in layers}.values())
    # the blobs their stamps keep, sorted out here: a warm rebuild starts no threads for them
    pending = [
        layer
        for layer in unique
        if stamps is None or not stamps.matches(blobs / layer.digest.hex, layer.digest, layer.size)
    ]
    staged = staged or {}
    # several at a time, the first failure stopping the rest; one on this thread, with no
    # pool. A staged blob is renamed and its stamp recorded (new files, each a wait on the
    # filesystem's journal when it is busy: so in parallel too)
    placed = run_layers(
        {
            i: functools.partial(_place_layer, layer, blobs, stamps, staged.get(layer.digest))
            for i, layer in enumerate(pending)
        },
        sizes=[layer.size for layer in pending],
        jobs=_PLACERS,
        thread_name="blob",
    ).values()
    written = run_layers(
        {
            i: functools.partial(put_blob, blobs, digest, data, size=len(data), sync_dir=False)
            for i, (digest, data) in enumerate(small.items())
        },
        sizes=[len(data) for data in small.values()],
        jobs=_PLACERS,
        thread_name="blob",
    ).values()
    changed = any(placed) or any(written)
    if changed and sync_dir:
        fsync_dir(blobs)
    return changed


#: Blobs placed at once by :func:`write_blobs`: copies are CPU in the kernel, fsyncs are
#: disk waits that the filesystem's journal can commit together.
_PLACERS = 8


def _place_layer(
    layer: ImageLayer, blobs: Path, stamps: BlobStamps | None, staged: Path | None
) -> bool:
    """Make ``blobs/<hex>`` the layer's blob (``staged``, that blob staged in the layout,
    renamed there; else kept when its bytes say it already is, else a kernel copy of a
    verified blob, or a checked copy) and record its stamp; True when it was written. Blobs
    whose stamps match were sorted out by :func:`write_blobs` before."""
    target = blobs / layer.digest.hex
    if staged is not None and _move_staged(staged, target):
        if stamps is not None:  # (after the rename, which moves the file's ctime on)
            stamps.record(target, layer.digest)
        return True
    written = not blob_is_good(target, layer.digest, layer.size)
    if written:
        copy_layer(layer, blobs)
    if stamps is not None:
        stamps.record(target, layer.digest)
    return written


def copy_layer(layer: ImageLayer, directory: Path) -> None:
    """Write ``layer``'s blob as ``directory/<hex>``, fsynced (its name not: the caller syncs
    the directory, or renames the file on): a kernel copy of a blob this process built or
    verified, else a copy checked against its digest. A DestinationError when it cannot."""
    target = directory / layer.digest.hex
    try:
        cloned = _clone_verified(layer, directory)
    except OSError as exc:  # a kernel copy: mostly the layout's disk being full
        raise DestinationError(f"{target}: cannot write blob: {exc.strerror or exc}") from exc
    if not cloned:
        try:
            with layer.open() as src:
                put_blob(directory, layer.digest, src, size=layer.size, sync_dir=False)
        except OSError as exc:
            raise DestinationError(f"layer {layer.digest}: cannot read blob: {exc}") from exc


def _move_staged(staged: Path, target: Path) -> bool:
    """Rename the staged blob ``staged`` to ``target``, replacing what is there (a blob whose
    stamp matched was sorted out before); False when the two are on different filesystems (a
    mount inside the layout), which leaves the blob to a copy."""
    try:
        os.replace(staged, target)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            return False
        raise DestinationError(f"{target}: cannot write blob: {exc.strerror or exc}") from exc
    return True


def _clone_verified(layer: ImageLayer, blobs: Path) -> bool:
    """Reflink (else copy in the kernel) a blob this process built or verified (see
    ``BuiltLayer.verified``) instead of copying and rehashing it in Python; False when the
    layer is not verified or neither is possible there."""
    source = getattr(layer, "blob_path", None)
    if not getattr(layer, "verified", False) or not isinstance(source, Path):
        return False
    if source.stat().st_size != layer.size:
        return False
    return clone_blob(blobs, source, layer.digest, sync_dir=False)
