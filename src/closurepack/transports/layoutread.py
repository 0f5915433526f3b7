"""Reading an OCI image layout's structure from a :class:`BlobStore` (a directory, or the tar
of one for oci-archive): ``index.json`` to the manifest a tag names, through nested indexes
for a platform, or the multi-platform index itself; each image as stored (a RawImage)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from closurepack.digest import Digest
from closurepack.errors import DestinationError, ImageError
from closurepack.mediatypes import INDEX_TYPES, MediaType
from closurepack.transports._raw import RawBlob, RawImage, RawIndex, missing_blob, parse_json

if TYPE_CHECKING:  # (an index's platforms: imported when one is read)
    from closurepack.platforms import Platform

__all__ = [
    "INDEX_DEPTH",
    "REF_NAME",
    "BlobStore",
    "DirStore",
    "read_stored_image",
    "read_stored_index",
]

REF_NAME = "org.opencontainers.image.ref.name"


class BlobStore(Protocol):
    """Where the files of a layout are read from: a directory, or a tar of one."""

    def has(self, name: str) -> bool: ...
    def opener(self, name: str) -> Callable[[], BinaryIO]: ...
    def read(self, name: str) -> bytes: ...


class DirStore:
    """The files of a layout directory."""

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
    if not reference:  # artifacts attached to an image (an SBOM) are found by their subject
        entries = [m for m in entries if not m.get("artifactType")]
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


#: Indexes nest at most this deep (an index of indexes of ... manifests).
INDEX_DEPTH = 4


def _index_entries(
    store: BlobStore, entry: Mapping[str, Any], where: str
) -> tuple[bytes, list[Any]]:
    """The bytes and the entries of the nested index ``entry`` names."""
    _, name = _blob_name(entry.get("digest"), where)
    data = store.read(name)
    nested = parse_json(data, f"{where}: {name}")
    listed = nested.get("manifests") if isinstance(nested, dict) else None
    if not isinstance(listed, list):
        raise ImageError(f"{where}: {name} is not an image index")
    return data, [m for m in listed if isinstance(m, dict)]


def _tagged(store: BlobStore, reference: str | None, where: str) -> dict[str, Any]:
    index = parse_json(store.read("index.json"), f"{where}: index.json")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise ImageError(f"{where}: index.json is not an OCI image index")
    return _pick(index["manifests"], reference, where)


def read_stored_index(
    store: BlobStore, *, reference: str | None, where: str, kind: str, text: str
) -> RawIndex | None:
    """The multi-platform image tagged ``reference`` (or the only one) in ``store``, as
    stored; None when the tag names a single image."""
    entry = _tagged(store, reference, where)
    if entry.get("mediaType") not in INDEX_TYPES:
        return None
    data, entries = _index_entries(store, entry, where)
    digest, _ = _blob_name(entry.get("digest"), where)
    size = entry.get("size")

    def reader(chosen: Mapping[str, Any]) -> RawImage:
        return _read_manifest(
            store, _through_indexes(store, chosen, None, where), where, kind, text
        )

    return RawIndex(
        source=text,
        kind=kind,
        index_bytes=data,
        index_digest=digest,
        index_size=size if isinstance(size, int) else None,
        entries=tuple(entries),
        reader=reader,
    )


def _through_indexes(
    store: BlobStore, entry: Mapping[str, Any], platform: Platform | None, where: str
) -> Mapping[str, Any]:
    """The manifest entry ``entry`` leads to, through nested indexes (for ``platform``)."""
    for _ in range(INDEX_DEPTH):
        if entry.get("mediaType") not in INDEX_TYPES:
            return entry
        _, entries = _index_entries(store, entry, where)
        from closurepack.platforms import choose_entry  # noqa: PLC0415 - indexes only

        entry = choose_entry(entries, platform, where=where)
    raise ImageError(f"{where}: indexes nested more than {INDEX_DEPTH} deep")


def read_stored_image(
    store: BlobStore,
    *,
    reference: str | None,
    where: str,
    kind: str,
    text: str,
    platform: Platform | None = None,
) -> RawImage:
    """The image tagged ``reference`` (or the only one) in the layout ``store`` holds, as
    stored, for ``platform`` (default: the host's) when the tag names an index; ``where``
    names the layout in messages, ``text`` is how the user named it."""
    entry = _through_indexes(store, _tagged(store, reference, where), platform, where)
    return _read_manifest(store, entry, where, kind, text)


def _read_manifest(
    store: BlobStore, entry: Mapping[str, Any], where: str, kind: str, text: str
) -> RawImage:
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
