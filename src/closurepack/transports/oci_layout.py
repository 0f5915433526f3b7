"""oci transport: an OCI image layout directory, shared with other tags already in it.

Blobs go in first (each written atomically; good ones already there kept, bad ones replaced;
reflinks or kernel copies of blobs this process built or verified, else checked copies; never hard
links to the cache), ``index.json`` is replaced atomically last,
under an exclusive lock on the directory, so a failed or interrupted write leaves the previous
tags as they were (at most some unreferenced blobs). A build may have staged its layer blobs
in the layout while its layers were built (:mod:`closurepack.transports.layoutstaging`):
they are renamed into ``blobs/`` here, under the lock, and a build that fails removes them.
A multi-platform image is an index blob that ``index.json`` names by its tag (as ``skopeo
copy --all`` writes one), its images' blobs stored once each. Reading follows ``index.json``
to the manifest a tag names (through nested indexes, for the platform asked for, by default
this host's), or gives the index itself (:func:`read_index`); oci-archive reads the same
structure from a tar (both through :mod:`closurepack.transports.layoutread`, whose names are
imported from here too).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from closurepack._fs import TEMP_SUFFIX, sweep_stale_temp_dirs, sweep_stale_temps
from closurepack.blobstamp import BlobStamps
from closurepack.digest import Digest
from closurepack.errors import DestinationError
from closurepack.image import Image, canonical_json
from closurepack.mediatypes import MediaType
from closurepack.transports._files import atomic_file, probe_writable, put_blob
from closurepack.transports._raw import RawImage, RawIndex
from closurepack.transports.layoutblobs import image_blobs, write_blobs
from closurepack.transports.layoutread import (
    INDEX_DEPTH,
    REF_NAME,
    BlobStore,
    DirStore,
    read_stored_image,
    read_stored_index,
)
from closurepack.transports.layoutstaging import STAGING_PREFIX
from closurepack.transports.reference import Destination, oci_ref_names

if TYPE_CHECKING:  # (a multi-platform image or attachments: imported where they are made)
    from closurepack.imageindex import Attachments, ImageIndex
    from closurepack.platforms import Platform
    from closurepack.transports.layoutstaging import LayoutStaging

__all__ = [
    "INDEX_DEPTH",
    "LAYOUT_FILE",
    "REF_NAME",
    "BlobStore",
    "DirStore",
    "attached_blobs",
    "check_existing",
    "image_blobs",
    "index_with",
    "manifest_descriptor",
    "read_image",
    "read_index",
    "read_stored_image",
    "read_stored_index",
    "write_blobs",
    "write_image",
]

LAYOUT_FILE = canonical_json({"imageLayoutVersion": "1.0.0"})


def manifest_descriptor(image: Image | ImageIndex, ref_name: str) -> dict[str, Any]:
    """The index entry for ``image`` tagged ``ref_name``: a manifest with its platform, or
    an image index (whose entries name the platforms), as skopeo's ``copy --all`` makes it."""
    if not isinstance(image, Image):  # an ImageIndex
        return {
            "mediaType": str(MediaType.OCI_INDEX),
            "digest": str(image.digest),
            "size": len(image.index_bytes),
            "annotations": {REF_NAME: ref_name},
        }
    return {
        "mediaType": str(MediaType.OCI_MANIFEST),
        "digest": str(image.manifest_digest),
        "size": len(image.manifest_bytes),
        "annotations": {REF_NAME: ref_name},
        "platform": image.platform,
    }


def index_with(
    index: dict[str, Any] | None, image: Image | ImageIndex, ref_names: Sequence[str]
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


def attached_blobs(
    image: Image | ImageIndex, index: dict[str, Any], attachments: Attachments
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """``index`` with an entry for the artifact manifest of each of ``attachments`` whose
    subject is ``image``'s manifest (of a multi-platform image: each platform image's; no
    ref name: an artifact is found by its subject), and the blobs those manifests need, by
    hex digest."""
    if not attachments:
        return index, {}
    from closurepack.artifacts import (  # noqa: PLC0415 - with attachments only
        artifact_manifests,
        merge_referrers,
        referrer_descriptor,
    )
    from closurepack.imageindex import attachment_subjects  # noqa: PLC0415 - the same

    blobs: dict[str, bytes] = {}
    descriptors = []
    subjects = attachment_subjects(image, attachments, media_type=str(MediaType.OCI_MANIFEST))
    for subject, documents in subjects:
        for manifest, parts in artifact_manifests(subject, documents):
            for blob in (*parts, manifest):
                blobs[Digest.of_bytes(blob).hex] = blob
            descriptors.append(referrer_descriptor(manifest))
    if not descriptors:
        return index, {}
    return merge_referrers(index, descriptors), blobs


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


def _has_artifacts(index: dict[str, Any]) -> bool:
    """Whether ``index`` has an artifact's entry (one with an ``artifactType``)."""
    return any(isinstance(e, dict) and e.get("artifactType") for e in index["manifests"])


def _read_blob(blobs: Path, digest: str) -> bytes | None:
    """A small blob of the layout (an artifact manifest) by digest; None if it is not there."""
    algorithm, _, hex_digest = digest.partition(":")
    path = blobs / hex_digest
    if algorithm != "sha256" or "/" in hex_digest or not path.is_file():
        return None
    if path.stat().st_size > 4 << 20:
        return None  # no artifact manifest is that large
    return path.read_bytes()


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


def _same_file(path: Path, text: bytes) -> bool:
    """True if ``path`` holds exactly ``text`` (False when it cannot be read)."""
    try:
        return path.read_bytes() == text
    except OSError:
        return False


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
    # (temp files of a killed write of ours, or the staging directory of a build, do not
    # make it foreign: the write sweeps those of killed ones)
    if any(not _is_ours(p.name) for p in root.iterdir()):
        raise DestinationError(f"{root}: directory is not empty and not an OCI layout")
    return False


def _is_ours(name: str) -> bool:
    """Whether ``name`` in a directory that is no layout yet is a temp file of a write of
    ours, or a build's staging directory (hidden while made, then hidden by its prefix)."""
    if name.startswith(".") and name.endswith(TEMP_SUFFIX):
        return True
    return name.startswith((STAGING_PREFIX, "." + STAGING_PREFIX))


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
    image: Image | ImageIndex,
    dest: Destination,
    *,
    tags: Sequence[str] = (),
    started: float | None = None,
    attachments: Attachments = (),
    stamps: BlobStamps | None = None,
    staging: LayoutStaging | None = None,
) -> None:
    """Add ``image`` (or a multi-platform image's index) to the OCI layout at ``dest.path``
    under each of its tags (see :func:`oci_ref_names`), keeping other tags, with
    ``attachments`` as artifacts whose subject is its manifest; temp files (and staging
    directories) of writes killed before ``started`` (default: now) are removed first.
    ``staging``: the build's blobs placed in the layout while it ran, moved into place."""
    root = dest.path
    if root is None:
        raise DestinationError(f"{dest}: oci needs a directory")
    ref_names = oci_ref_names(dest, tags)
    staged = staging.staged() if staging is not None else None  # (each placement done)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _locked(root):
            when = time.time() if started is None else started
            for directory in (root, root / "blobs" / "sha256"):
                sweep_stale_temps(directory, started=when)
            sweep_stale_temp_dirs(root, STAGING_PREFIX, before=when)
            if not _check_layout(root):
                # first, so that a write that fails leaves an (empty) layout, which the next
                # write takes, rather than a directory of blobs it would refuse as foreign
                with atomic_file(root / "oci-layout") as out:
                    out.write(LAYOUT_FILE)
            # (their names synced with index.json's fsync, below)
            written = write_blobs(image, root, stamps=stamps, sync_dir=False, staged=staged)
            old = _read_index(root)
            blobs = root / "blobs" / "sha256"
            index = index_with(old, image, ref_names)
            if _has_artifacts(index):  # (only they can name a replaced image as their subject)
                from closurepack.artifacts import drop_replaced_referrers  # noqa: PLC0415

                index = drop_replaced_referrers(old, index, functools.partial(_read_blob, blobs))
            index, extra = attached_blobs(image, index, attachments)
            attached = False
            for hex_digest, blob in sorted(extra.items()):
                digest = Digest(hex_digest)
                attached |= put_blob(blobs, digest, blob, size=len(blob), sync_dir=False)
            text = canonical_json(index)
            if not (written or attached) and _same_file(root / "index.json", text):
                return  # a rebuild of what the layout holds already: nothing to write or sync
            # The blobs' names durable before index.json names them: those written here, the
            # artifacts', or blobs found there, which may be those of a write that was
            # interrupted before their names were durable; synced while index.json is.
            with atomic_file(root / "index.json", sync_also=blobs) as out:
                out.write(text)
    except OSError as exc:
        raise DestinationError(f"{root}: cannot write OCI layout: {exc.strerror or exc}") from exc


def read_image(
    source: Destination, path: Path, text: str, *, platform: Platform | None = None
) -> RawImage:
    """The image of the OCI layout ``path`` that ``source.reference`` tags (or its only one),
    as stored (of an index: the one for ``platform``); ``text`` is how the user named it."""
    return read_stored_image(
        _layout(path),
        reference=source.reference,
        where=str(path),
        kind=source.kind,
        text=text,
        platform=platform,
    )


def read_index(source: Destination, path: Path, text: str) -> RawIndex | None:
    """The multi-platform image of the OCI layout ``path`` that ``source.reference`` tags;
    None when it is a single image."""
    return read_stored_index(
        _layout(path), reference=source.reference, where=str(path), kind=source.kind, text=text
    )


def _layout(path: Path) -> BlobStore:
    if not path.is_dir():
        raise DestinationError(f"{path}: no such OCI layout directory")
    return DirStore(path)
