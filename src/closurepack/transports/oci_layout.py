"""oci transport: an OCI image layout directory, shared with other tags already in it.

Blobs go in first (each written atomically; good ones already there kept, bad ones replaced;
copies or reflinks, never hard links to the cache), ``index.json`` is replaced atomically last,
under an exclusive lock on the directory, so a failed or interrupted write leaves the previous
tags as they were (at most some unreferenced blobs). Reading follows ``index.json`` to the
manifest a tag names (through nested indexes, for this host's platform); oci-archive reads the
same structure from a tar.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from closurepack._fs import TEMP_SUFFIX, clone_blob, sweep_stale_temps
from closurepack.blobstamp import BlobStamps
from closurepack.digest import Digest
from closurepack.errors import DestinationError, ImageError
from closurepack.image import Image, ImageLayer, canonical_json, host_architecture
from closurepack.mediatypes import MediaType
from closurepack.transports._files import atomic_file, blob_is_good, probe_writable, put_blob
from closurepack.transports._raw import RawBlob, RawImage, missing_blob, parse_json
from closurepack.transports.reference import Destination, oci_ref_names

__all__ = [
    "LAYOUT_FILE",
    "REF_NAME",
    "BlobStore",
    "check_existing",
    "index_with",
    "manifest_descriptor",
    "read_image",
    "read_stored_image",
    "write_blobs",
    "write_image",
]

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_FILE = canonical_json({"imageLayoutVersion": "1.0.0"})
_INDEX_TYPES = {MediaType.OCI_INDEX.value, MediaType.DOCKER_MANIFEST_LIST.value}


def manifest_descriptor(image: Image, ref_name: str) -> dict[str, Any]:
    """The index entry for ``image`` tagged ``ref_name``."""
    return {
        "mediaType": str(MediaType.OCI_MANIFEST),
        "digest": str(image.manifest_digest),
        "size": len(image.manifest_bytes),
        "annotations": {REF_NAME: ref_name},
        "platform": image.platform,
    }


def index_with(
    index: dict[str, Any] | None, image: Image, ref_names: Sequence[str]
) -> dict[str, Any]:
    """``index`` with the entry tagged by each of ``ref_names`` replaced by ``image`` (in
    place), or added at the end; other entries are kept as they were."""
    manifests = list((index or {}).get("manifests") or [])
    for ref_name in ref_names:
        entry = manifest_descriptor(image, ref_name)
        for i, old in enumerate(manifests):
            if isinstance(old, dict) and (old.get("annotations") or {}).get(REF_NAME) == ref_name:
                manifests[i] = entry
                break
        else:
            manifests.append(entry)
    out = dict(index or {})
    out.update(schemaVersion=2, mediaType=str(MediaType.OCI_INDEX), manifests=manifests)
    return out


def write_blobs(image: Image, root: Path, *, stamps: BlobStamps | None = None) -> None:
    """Store the layers, config and manifest of ``image`` under ``root/blobs/sha256``. Each is
    a file of its own, never a hard link to the cache (a change to one would show in the other);
    a blob already there is checked and replaced when it is not what its name says.

    ``stamps``: records of the layout blobs earlier builds wrote or hashed; a layer blob that
    still matches its record (same inode, size, mtime and ctime, see :mod:`closurepack.blobstamp`)
    is kept without being read; every layer blob written or hashed here is recorded."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    for layer in image.layers:
        target = blobs / layer.digest.hex
        if stamps is not None and stamps.matches(target, layer.digest, layer.size):
            continue
        if not blob_is_good(target, layer.digest, layer.size):
            try:
                if not _clone_verified(layer, blobs):
                    with layer.open() as src:
                        put_blob(blobs, layer.digest, src, size=layer.size)
            except OSError as exc:
                raise DestinationError(f"layer {layer.digest}: cannot read blob: {exc}") from exc
        if stamps is not None:
            stamps.record(target, layer.digest)
    put_blob(blobs, image.config_digest, image.config_bytes, size=len(image.config_bytes))
    put_blob(blobs, image.manifest_digest, image.manifest_bytes, size=len(image.manifest_bytes))


def _clone_verified(layer: ImageLayer, blobs: Path) -> bool:
    """Reflink a blob this process built or verified (see ``BuiltLayer.verified``) instead of
    copying and rehashing it; False when the layer is not verified or the filesystem cannot
    clone it there."""
    source = getattr(layer, "blob_path", None)
    if not getattr(layer, "verified", False) or not isinstance(source, Path):
        return False
    if source.stat().st_size != layer.size:
        return False
    return clone_blob(blobs, source, layer.digest)


@contextlib.contextmanager
def _locked(root: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold the layout's exclusive lock (an flock on the directory); yield whether it is held,
    which is always when ``wait``, and only if no one else holds it when not."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _read_index(root: Path) -> dict[str, Any] | None:
    path = root / "index.json"
    try:
        index = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DestinationError(f"{path}: unreadable OCI index: {exc}") from exc
    if not isinstance(index, dict) or not isinstance(index.get("manifests", []), list):
        raise DestinationError(f"{path}: not an OCI image index")
    return index


def _check_layout(root: Path) -> bool:
    """True if ``root`` already is an OCI layout; error if it is something else."""
    layout = root / "oci-layout"
    if layout.exists():
        try:
            version = json.loads(layout.read_bytes()).get("imageLayoutVersion")
        except (OSError, ValueError, AttributeError) as exc:
            raise DestinationError(f"{layout}: unreadable: {exc}") from exc
        if version != "1.0.0":
            raise DestinationError(f"{layout}: unsupported imageLayoutVersion {version!r}")
        return True
    # (temp files of a killed write of ours do not make it foreign: the write sweeps them)
    if any(not (p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX)) for p in root.iterdir()):
        raise DestinationError(f"{root}: directory is not empty and not an OCI layout")
    return False


def check_existing(dest: Destination) -> None:
    """Raise DestinationError if ``dest.path`` exists but is not an OCI layout or an empty
    directory, or cannot be written to. Checked under the layout's lock, so that a write in
    progress in another process is not mistaken for something else; while another build holds
    the lock (it is writing there), there is nothing to check and no reason to wait."""
    root = dest.path
    if root is None or not root.exists():
        return
    if not root.is_dir():
        raise DestinationError(f"{root}: not a directory (an OCI layout is one)")
    try:
        with _locked(root, wait=False) as held:
            if held:
                if _check_layout(root):
                    _read_index(root)  # an unreadable index.json fails now, not after the build
                probe_writable(root, root)
    except OSError as exc:
        raise DestinationError(f"{root}: cannot write OCI layout: {exc.strerror or exc}") from exc


def write_image(
    image: Image,
    dest: Destination,
    *,
    tags: Sequence[str] = (),
    started: float | None = None,
    stamps: BlobStamps | None = None,
) -> None:
    """Add ``image`` to the OCI layout at ``dest.path`` under each of its tags (see
    :func:`oci_ref_names`), keeping other tags; temp files of writes killed before ``started``
    (default: now) are removed first."""
    root = dest.path
    if root is None:
        raise DestinationError(f"{dest}: oci needs a directory")
    ref_names = oci_ref_names(dest, tags)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _locked(root):
            when = time.time() if started is None else started
            for directory in (root, root / "blobs" / "sha256"):
                sweep_stale_temps(directory, started=when)
            if not _check_layout(root):
                # first, so that a write that fails leaves an (empty) layout, which the next
                # write takes, rather than a directory of blobs it would refuse as foreign
                with atomic_file(root / "oci-layout") as out:
                    out.write(LAYOUT_FILE)
            write_blobs(image, root, stamps=stamps)
            index = index_with(_read_index(root), image, ref_names)
            with atomic_file(root / "index.json") as out:
                out.write(canonical_json(index))
    except OSError as exc:
        raise DestinationError(f"{root}: cannot write OCI layout: {exc.strerror or exc}") from exc


class BlobStore(Protocol):
    """Where the files of a layout are read from: a directory, or a tar of one."""

    def has(self, name: str) -> bool: ...
    def opener(self, name: str) -> Callable[[], BinaryIO]: ...
    def read(self, name: str) -> bytes: ...


class _Dir:
    def __init__(self, path: Path) -> None:
        self.path = path

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def opener(self, name: str) -> Callable[[], BinaryIO]:
        path = self.path / name
        return lambda: path.open("rb")

    def read(self, name: str) -> bytes:
        try:
            return (self.path / name).read_bytes()
        except OSError as exc:
            raise DestinationError(f"{self.path / name}: cannot read: {exc.strerror}") from exc


def _blob_name(digest_text: object, where: str) -> tuple[Digest, str]:
    if not isinstance(digest_text, str):
        raise ImageError(f"{where}: descriptor without a digest")
    digest = Digest.parse(digest_text)
    return digest, f"blobs/{digest.algorithm}/{digest.hex}"


def _pick(manifests: list[Any], reference: str | None, where: str) -> dict[str, Any]:
    entries = [m for m in manifests if isinstance(m, dict)]
    if reference:
        for entry in entries:
            if (entry.get("annotations") or {}).get(REF_NAME) in (reference,):
                return entry
        tags = sorted(str((e.get("annotations") or {}).get(REF_NAME, "")) for e in entries)
        raise DestinationError(f"{where}: no image tagged {reference!r} (tags: {', '.join(tags)})")
    if len(entries) == 1:
        return entries[0]
    if not entries:
        raise DestinationError(f"{where}: the index lists no image")
    raise DestinationError(f"{where}: the index lists {len(entries)} images; name one with :TAG")


def _platform_pick(manifests: list[Any], where: str) -> dict[str, Any]:
    entries = [m for m in manifests if isinstance(m, dict)]
    if not entries:
        raise ImageError(f"{where}: nested index lists no image")
    arch, _ = host_architecture()
    for entry in entries:
        platform = entry.get("platform")
        if not isinstance(platform, dict):
            continue
        if platform.get("architecture") == arch and platform.get("os", "linux") == "linux":
            return entry
    return entries[0]


def read_stored_image(
    store: BlobStore, *, reference: str | None, where: str, kind: str, text: str
) -> RawImage:
    """The image tagged ``reference`` (or the only one) in the layout ``store`` holds, as
    stored; ``where`` names the layout in messages, ``text`` is how the user named it."""
    index = parse_json(store.read("index.json"), f"{where}: index.json")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise ImageError(f"{where}: index.json is not an OCI image index")
    entry = _pick(index["manifests"], reference, where)
    for _ in range(4):
        if entry.get("mediaType") not in _INDEX_TYPES:
            break
        _, name = _blob_name(entry.get("digest"), where)
        nested = parse_json(store.read(name), f"{where}: {name}")
        listed = nested.get("manifests") if isinstance(nested, dict) else None
        entry = _platform_pick(listed if isinstance(listed, list) else [], f"{where}: {name}")
    manifest_digest, manifest_name = _blob_name(entry.get("digest"), where)
    manifest_bytes = store.read(manifest_name)
    manifest = parse_json(manifest_bytes, f"{where}: manifest {manifest_digest}")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
        raise ImageError(f"{where}: manifest {manifest_digest} has no config descriptor")
    config_desc = manifest["config"]
    config_digest, config_name = _blob_name(config_desc.get("digest"), where)
    config_bytes = store.read(config_name)
    layers = []
    for desc in manifest.get("layers") or []:
        if not isinstance(desc, dict):
            raise ImageError(f"{where}: manifest {manifest_digest}: layer entry is not an object")
        digest, name = _blob_name(desc.get("digest"), where)
        try:
            media_type = MediaType(str(desc.get("mediaType")))
        except ValueError as exc:
            raise ImageError(
                f"{where}: layer {digest}: unsupported media type {desc.get('mediaType')!r}"
            ) from exc
        opener = store.opener(name) if store.has(name) else missing_blob(f"{where}: {name}")
        size = desc.get("size")
        layers.append(
            RawBlob(
                name=name,
                media_type=media_type,
                opener=opener,
                digest=digest,
                size=size if isinstance(size, int) else None,
            )
        )
    size = config_desc.get("size")
    msize = entry.get("size")
    return RawImage(
        source=text,
        kind=kind,
        config_bytes=config_bytes,
        config_digest=config_digest,
        config_size=size if isinstance(size, int) else None,
        manifest_bytes=manifest_bytes,
        manifest_digest=manifest_digest,
        manifest_size=msize if isinstance(msize, int) else None,
        layers=tuple(layers),
    )


def read_image(source: Destination, path: Path, text: str) -> RawImage:
    """The image of the OCI layout ``path`` that ``source.reference`` tags (or its only one),
    as stored; ``text`` is how the user named it."""
    if not path.is_dir():
        raise DestinationError(f"{path}: no such OCI layout directory")
    return read_stored_image(
        _Dir(path), reference=source.reference, where=str(path), kind=source.kind, text=text
    )
