"""The artifacts attached to an image (``closurepack inspect``): in an ``oci:`` layout or an
``oci-archive:``, the index entries with an ``artifactType`` whose manifest's ``subject`` is the
image's manifest; in a registry, its referrers (see :mod:`closurepack.registry.referrers`); a
docker-archive holds none."""

from __future__ import annotations

from pathlib import Path

from closurepack.artifacts import Referrer, parse_referrer
from closurepack.digest import Digest
from closurepack.errors import ImageError
from closurepack.registry import RegistryOptions, is_registry_reference, parse_reference
from closurepack.registry.referrers import list_referrers
from closurepack.transports import parse_source
from closurepack.transports._raw import as_source_error, parse_json
from closurepack.transports._tar import TarReader
from closurepack.transports.oci_layout import BlobStore, DirStore

__all__ = ["attached_artifacts"]


def _layout_referrers(store: BlobStore, subject: Digest, where: str) -> list[Referrer]:
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
        referrer = parse_referrer(store.read(name), where=f"{where}: artifact {digest}")
        if referrer.subject == subject:
            found.append(referrer)
    return found


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
