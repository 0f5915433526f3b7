"""Earlier plans and images as planning input (``--previous``): their layers count as existing."""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from closurepack._fs import put_blob
from closurepack.digest import Digest
from closurepack.errors import DestinationError, ImageError, InputError, PlanError, SourceError
from closurepack.image import layer_paths_from_config, oci_media_type
from closurepack.layer import BuiltLayer, store_layer_comment
from closurepack.layerlist import list_store_items
from closurepack.mediatypes import MediaType
from closurepack.plan import ImagePlan, LayerPlan, PlannedLayer
from closurepack.platforms import Platform
from closurepack.registry import RegistryOptions
from closurepack.transports import RawImage, RawIndex, read_image_or_index, read_raw

__all__ = [
    "ForeignLayer",
    "Previous",
    "load_previous",
    "plan_from_image_config",
    "plan_from_layer_lists",
    "read_previous",
]


@dataclass(frozen=True)
class ForeignLayer:
    """A layer of an image made by another tool that holds store items only: a build that
    plans exactly these ``paths`` into one layer reuses this blob as it is (same digest)."""

    paths: tuple[str, ...]
    digest: Digest
    diff_id: Digest
    size: int
    media_type: MediaType
    opener: Callable[[], BinaryIO]
    where: str

    def materialize(self, dest_dir: Path) -> BuiltLayer:
        """Copy the blob into ``dest_dir``, checked against its digest while copying."""
        try:
            with self.opener() as stream:
                put_blob(dest_dir, stream, expected=self.digest, fsync=False)
        except ValueError as exc:
            raise ImageError(f"{self.where}: {exc}") from exc
        except DestinationError as exc:
            raise SourceError(str(exc)) from exc
        except OSError as exc:
            raise SourceError(f"{self.where}: cannot read: {exc}") from exc
        return BuiltLayer(
            digest=self.digest,
            diff_id=self.diff_id,
            size=self.size,
            media_type=self.media_type,
            blob_path=dest_dir / self.digest.hex,
            paths=self.paths,
            comment=store_layer_comment(self.paths),
            verified=True,
        )


@dataclass(frozen=True)
class Previous:
    """What ``--previous`` found: the layers as a plan, and the blobs a build may reuse."""

    plan: LayerPlan
    foreign: tuple[ForeignLayer, ...] = ()


def plan_from_image_config(config: dict[str, object], *, source: str) -> LayerPlan:
    """The store layers an image records (``dev.closurepack.layers``), bottom first.

    Layers without store items (base image, customisation) are left out. An image that was not
    built by closurepack records nothing: that is a PlanError naming it.
    """
    recorded = layer_paths_from_config(config)
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):  # null, a number...: nothing recorded
        diff_ids = []
    layers = tuple(
        PlannedLayer(tuple(sorted(recorded[d])), 0, "previous")
        for d in diff_ids
        if isinstance(d, str) and recorded.get(d)
    )
    if not layers:
        raise PlanError(f"{source}: the image records no store layers (not built by closurepack?)")
    store_dir = layers[0].paths[0].rsplit("/", 1)[0]
    return LayerPlan((ImagePlan(layers, name=source),), store_dir=store_dir, strategy="previous")


class _PositionalReader(io.RawIOBase):
    """Reads the file ``fd`` from its start with ``pread``: readers of one fd do not share a
    position (and closing one leaves the fd open)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = os.pread(self._fd, len(buffer), self._offset)
        buffer[: len(data)] = data
        self._offset += len(data)
        return len(data)


class _KeptBlob:
    """A blob kept in an unnamed temp file while it is needed: the file is closed (and its
    space freed) when the last opener is dropped, and nothing is left behind when the
    process dies."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the openers)
        weakref.finalize(self, self.file.close)

    def opener(self) -> BinaryIO:
        return io.BufferedReader(_PositionalReader(self.file.fileno()), _CHUNK)


def load_previous(
    spec: str, *, registry: RegistryOptions | None = None, store_dir: str = "/nix/store"
) -> LayerPlan:
    """The layers of ``spec`` as a plan (see :func:`read_previous`)."""
    return read_previous(spec, registry=registry, store_dir=store_dir).plan


def read_previous(
    spec: str,
    *,
    registry: RegistryOptions | None = None,
    store_dir: str = "/nix/store",
    platform: Platform | None = None,
    every_platform: bool = False,
    keep_blobs: bool = False,
) -> Previous:
    """Read ``spec``: a plan file (JSON from ``closurepack plan --json``), or an image
    (``docker-archive:``, ``oci:``, ``oci-archive:``, ``docker://``; a bare path to a tar is
    read as a docker-archive, a bare directory as an OCI layout).

    An image's layers are what its ``dev.closurepack.layers`` label records; an image without
    the label (made by another tool) has its layers' file lists read for the items of
    ``store_dir`` they hold (:func:`plan_from_layer_lists`); with ``keep_blobs``, the
    reusable ones of a registry image are kept from that one download for the build.
    A bare path that is neither, or does not exist, is a PlanError naming it. Of a
    multi-platform image, the image for ``platform`` is read (default: the host's), or with
    ``every_platform`` (a multi-platform build) every platform's, one image of the plan each.
    """
    path = Path(spec)
    bare = not spec.startswith(_TRANSPORTS)
    if bare:
        if path.is_dir():
            spec = f"oci:{spec}"
        elif path.is_file():
            try:
                with path.open("rb") as handle:
                    head = handle.read(512)
                    is_json = head.lstrip()[:1] in (b"{", b"[")
                    text = head + handle.read() if is_json else b""
            except OSError as exc:
                raise PlanError(f"--previous {spec}: cannot read: {exc.strerror}") from exc
            if is_json:
                return Previous(LayerPlan.from_json(text, source=spec))
            if not _looks_like_tar(path):
                raise PlanError(
                    f"--previous {spec}: neither a plan (JSON) nor an image archive (tar)"
                )
            spec = f"docker-archive:{spec}"
        else:
            raise PlanError(f"--previous {spec}: no such plan file or image")
    if every_platform:  # one manifest GET: the index, or the single image it turns out to be
        read = read_image_or_index(spec, registry=registry)
    else:
        read = read_raw(spec, registry=registry, platform=platform)
    if isinstance(read, RawIndex):
        found = [_previous_image(raw, store_dir, keep_blobs) for _, raw in read.images()]
        if not found:
            raise PlanError(f"--previous {spec}: the index lists no image for any platform")
        plan = LayerPlan(
            tuple(image for f in found for image in f.plan.images),
            store_dir=found[0].plan.store_dir,
            strategy="previous",
        )
        return Previous(plan, tuple(layer for f in found for layer in f.foreign))
    return _previous_image(read, store_dir, keep_blobs)


def _previous_image(raw: RawImage, store_dir: str, keep_blobs: bool) -> Previous:
    spec = raw.source
    try:
        config = json.loads(raw.config_bytes)
    except (ValueError, RecursionError) as exc:
        raise InputError(f"{spec}: the image config is not JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise InputError(f"{spec}: the image config is not a JSON object")
    if layer_paths_from_config(config):
        return Previous(plan_from_image_config(config, source=spec))
    return plan_from_layer_lists(
        raw, config, store_dir=store_dir, keep_blobs=keep_blobs and raw.kind == "docker"
    )


def plan_from_layer_lists(
    raw: RawImage, config: dict[str, object], *, store_dir: str, keep_blobs: bool = False
) -> Previous:
    """The store layers of an image without our label, from the entry names of its layers
    (each blob streamed once, its digest and diff_id checked against what the image declares).

    A layer holding items of ``store_dir`` is a previous layer of those items (its other files
    do not count); one holding nothing but them is also reusable as it is (a ForeignLayer).
    With ``keep_blobs`` the blob of a reusable layer is kept from the listing's read (in an
    unnamed temp file) and a build copies it from there: a registry's blob is downloaded once.
    No layer holding any item is a PlanError naming the image.
    """
    spec = raw.source
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(raw.layers):
        count = len(diff_ids) if isinstance(diff_ids, list) else 0
        raise ImageError(f"{spec}: config lists {count} diff_ids for {len(raw.layers)} layers")
    layers = []
    foreign = []
    for index, blob in enumerate(raw.layers):
        where = f"{spec}: layer {index} ({blob.name})"
        kept = None
        try:
            kept = _KeptBlob() if keep_blobs else None
            listing = list_store_items(
                blob.opener,
                blob.media_type.compression,
                store_dir=store_dir,
                where=where,
                copy_to=kept.file if kept else None,
            )
            if kept is not None:
                kept.file.flush()
        except DestinationError as exc:  # the blob is missing: a source that is not there
            raise SourceError(str(exc)) from exc
        except OSError as exc:  # the temp file (a full disk)
            raise SourceError(f"{where}: cannot keep the blob: {exc.strerror or exc}") from exc
        if blob.digest is not None and listing.digest != blob.digest:
            raise ImageError(f"{where}: the blob's digest is {listing.digest}, not {blob.digest}")
        if str(diff_ids[index]) != str(listing.diff_id):
            raise ImageError(
                f"{where}: the layer's diff_id is {listing.diff_id}, the config says"
                f" {diff_ids[index]}"
            )
        if kept is not None and not (listing.items and listing.only_store):
            kept.file.close()  # not reusable: no need to keep it
            kept = None
        if not listing.items:
            continue
        layers.append(PlannedLayer(listing.items, 0, "previous"))
        if listing.only_store:
            foreign.append(
                ForeignLayer(
                    paths=listing.items,
                    digest=listing.digest,
                    diff_id=listing.diff_id,
                    size=listing.size,
                    media_type=oci_media_type(blob.media_type),
                    opener=kept.opener if kept is not None else blob.opener,
                    where=where,
                )
            )
    if not layers:
        raise PlanError(
            f"{spec}: the image records no store layers (not built by closurepack?) and its"
            f" layers hold no items of {store_dir}"
        )
    plan = LayerPlan(
        (ImagePlan(tuple(layers), name=spec),), store_dir=store_dir, strategy="previous"
    )
    return Previous(plan, tuple(foreign))


_TRANSPORTS = ("docker-archive:", "oci:", "oci-archive:", "docker://")
_CHUNK = 1 << 20


def _looks_like_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False
