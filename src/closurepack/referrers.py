"""The artifacts attached to an image (``closurepack inspect``): in an ``oci:`` layout or an
``oci-archive:``, the index entries with an ``artifactType`` whose manifest's ``subject`` is the
image's manifest; in a registry, its referrers (see :mod:`closurepack.registry.referrers`); a
docker-archive holds none."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from closurepack.artifacts import CarriedArtifact, Referrer, parse_referrer
from closurepack.digest import Digest
from closurepack.errors import ImageError
from closurepack.registry import RegistryOptions, is_registry_reference, parse_reference
from closurepack.registry.referrers import (
    ARTIFACT_BLOB_LIMIT,
    ARTIFACT_COUNT_LIMIT,
    carried_referrers,
    list_referrers,
)
from closurepack.transports import parse_source
from closurepack.transports._raw import as_source_error, parse_json
from closurepack.transports._tar import TarReader
from closurepack.transports.oci_layout import BlobStore, DirStore

__all__ = ["attached_artifacts", "carried_artifacts"]


def _layout_referrers(store: BlobStore, subject: Digest, where: str) -> list[Referrer]:
    return [referrer for _, referrer in _layout_manifests(store, subject, where)]


def _layout_manifests(
    store: BlobStore, subject: Digest, where: str
) -> list[tuple[bytes, Referrer]]:
    index = parse_json(store.read("index.json"), f"{where}: index.json")
    entries = index.get("manifests") if isinstance(index, dict) else None
    found = []
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
        if referrer.subject == subject:
            found.append((body, referrer))
    return found


def _layout_blob(store: BlobStore, descriptor: dict[str, Any], where: str) -> bytes:
    digest = Digest.parse(str(descriptor.get("digest")))
    size = descriptor.get("size")
    name = f"blobs/{digest.algorithm}/{digest.hex}"
    if not isinstance(size, int) or not 0 <= size <= ARTIFACT_BLOB_LIMIT:
        raise ImageError(f"{where}: blob {digest}: size {size!r} is not 0 to"
                         f" {ARTIFACT_BLOB_LIMIT} bytes")  # fmt: skip
    if not store.has(name):
        raise ImageError(f"{where}: blob {digest} is missing")
    with store.opener(name)() as handle:
        data = handle.read(size + 1)
    if Digest.of_bytes(data) != digest or len(data) != size:
        raise ImageError(f"{where}: blob {digest} does not match its digest")
    return data


def _carried(store: BlobStore, subject: Digest, where: str) -> list[CarriedArtifact]:
    found = _layout_manifests(store, subject, where)
    if len(found) > ARTIFACT_COUNT_LIMIT:
        raise ImageError(f"{where}: more than {ARTIFACT_COUNT_LIMIT} artifacts of {subject}")
    carried = []
    for body, referrer in found:
        config = parse_json(body, f"{where}: artifact {referrer.digest}")
        descriptors = [*referrer.layers]
        if isinstance(config, dict) and isinstance(config.get("config"), dict):
            descriptors.insert(0, config["config"])
        blobs = tuple(_layout_blob(store, dict(d), f"{where}: artifact {referrer.digest}")
                      for d in descriptors)  # fmt: skip
        carried.append(CarriedArtifact(manifest=body, blobs=blobs))
    return carried


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
        return {subject: _carried(store, subject, str(path)) for subject in subjects}


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
