"""The artifacts attached to an image (``closurepack inspect``): in an ``oci:`` layout or an
``oci-archive:``, the index entries with an ``artifactType`` whose manifest's ``subject`` is the
image's manifest; in a registry, its referrers (see :mod:`closurepack.registry.referrers`); a
docker-archive holds none."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from closurepack.artifacts import CarriedArtifact, Referrer, carry, parse_referrer
from closurepack.digest import Digest
from closurepack.errors import ImageError
from closurepack.registry import RegistryOptions, is_registry_reference, parse_reference
from closurepack.registry.referrers import carried_referrers, list_referrers
from closurepack.transports import parse_source
from closurepack.transports._raw import as_source_error, parse_json
from closurepack.transports._tar import TarReader
from closurepack.transports.oci_layout import BlobStore, DirStore

__all__ = ["attached_artifacts", "carried_artifacts"]


def _layout_referrers(store: BlobStore, subject: Digest, where: str) -> list[Referrer]:
    return [referrer for _, referrer in _layout_manifests(store, where).get(subject, [])]


def _layout_manifests(store: BlobStore, where: str) -> dict[Digest, list[tuple[bytes, Referrer]]]:
    """Every artifact manifest the layout's ``index.json`` lists (bytes and parsed), by subject,
    in the index's order: read once however many images' artifacts are asked for."""
    index = parse_json(store.read("index.json"), f"{where}: index.json")
    entries = index.get("manifests") if isinstance(index, dict) else None
    found: dict[Digest, list[tuple[bytes, Referrer]]] = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not entry.get("artifactType"):
            continue
        try:
            digest = Digest.parse(str(entry.get("digest")))
        except ImageError as exc:
            raise ImageError(f"{where}: index.json: artifact entry: {exc}") from exc
        name = f"blobs/{digest.algorithm}/{digest.hex}"
        if not store.has(name):
            raise ImageError(f"{where}: artifact manifest {digest} is missing")
        body = store.read(name)
        referrer = parse_referrer(body, where=f"{where}: artifact {digest}")
        if referrer.subject is not None:
            found.setdefault(referrer.subject, []).append((body, referrer))
    return found


def _carried(
    store: BlobStore, subjects: Sequence[Digest], where: str
) -> dict[Digest, list[CarriedArtifact]]:
    def read_blob(digest: Digest, size: int) -> bytes | None:
        name = f"blobs/{digest.algorithm}/{digest.hex}"
        if not store.has(name):
            return None
        with store.opener(name)() as handle:
            return handle.read(size + 1)  # one more: a longer blob does not match

    by_subject = _layout_manifests(store, where)
    return {
        subject: carry(by_subject.get(subject, []), read_blob, f"{where}: artifacts of {subject}")
        for subject in subjects
    }


def carried_artifacts(
    source: str, subjects: Sequence[Digest], *, registry: RegistryOptions | None = None
) -> dict[Digest, list[CarriedArtifact]]:
    """The artifacts of the images of ``source`` whose manifests are ``subjects``, each with
    the blobs it names (read whole, checked against their digests, within the limits of
    :mod:`closurepack.registry.referrers`), for ``copy``; a docker-archive holds none."""
    if is_registry_reference(source):
        return carried_referrers(parse_reference(source), registry or RegistryOptions(), subjects)
    where = parse_source(source)
    path = Path(str(where.path))
    if where.kind not in ("oci", "oci-archive"):
        return {}
    with as_source_error():
        store: BlobStore = DirStore(path) if where.kind == "oci" else TarReader(path)
        return _carried(store, subjects, str(path))


def attached_artifacts(
    source: str, manifest: Digest, *, registry: RegistryOptions | None = None
) -> list[Referrer]:
    """The artifacts of the image ``source`` whose subject is its manifest ``manifest``, in
    the order the layout's index or the referrers index lists them."""
    if is_registry_reference(source):
        return list_referrers(parse_reference(source), registry or RegistryOptions(), manifest)
    where = parse_source(source)
    path = Path(str(where.path))
    if where.kind not in ("oci", "oci-archive"):
        return []
    with as_source_error():
        store: BlobStore = DirStore(path) if where.kind == "oci" else TarReader(path)
        return _layout_referrers(store, manifest, str(path))
