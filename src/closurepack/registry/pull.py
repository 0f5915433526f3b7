"""Read an image from a registry: the manifest (through an index, for the platform asked for,
by default this host's), the config, and layer blobs opened lazily and digest-checked while
they stream (:mod:`closurepack.registry.blobstream`); or an index itself, with a reader of
each of its images.

What is read into memory is bounded: a manifest or index at most :data:`MANIFEST_LIMIT`, a
config at most :data:`CONFIG_LIMIT`, and indexes nest at most :data:`INDEX_DEPTH` deep.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from closurepack.digest import Digest
from closurepack.errors import ImageError, SourceError
from closurepack.jsontext import parse_json
from closurepack.mediatypes import ANY_MANIFEST_ACCEPT, IMAGE_MANIFEST_TYPES, INDEX_TYPES, MediaType
from closurepack.platforms import Platform, choose_entry
from closurepack.registry.blobstream import blob_opener
from closurepack.registry.client import RegistryClient, open_client, read_limited
from closurepack.registry.options import RegistryOptions
from closurepack.registry.record import BlobRecord
from closurepack.registry.reference import RegistryRef
from closurepack.registry.tagged import MANIFEST_LIMIT

__all__ = [
    "CONFIG_LIMIT",
    "INDEX_DEPTH",
    "MANIFEST_LIMIT",
    "PulledBlob",
    "PulledImage",
    "PulledIndex",
    "blob_opener",
    "pull_image",
    "pull_image_or_index",
    "pull_index",
]

#: Configs of closurepack images record every store path (a big closure: several MiB).
CONFIG_LIMIT = 32 << 20
INDEX_DEPTH = 4


@dataclass(frozen=True)
class PulledBlob:
    """A layer of a registry image: declared digest, size and media type, and an opener that
    streams it (raising RegistryError at the end when the bytes do not match)."""

    digest: Digest
    size: int | None
    media_type: MediaType
    opener: Callable[[], BinaryIO]


@dataclass(frozen=True)
class PulledImage:
    """A registry image as stored: the manifest and config bytes beside their declared digests
    and sizes, and its layers (unread)."""

    ref: RegistryRef
    manifest_bytes: bytes
    manifest_digest: Digest
    manifest_size: int | None
    config_bytes: bytes
    config_digest: Digest
    config_size: int | None
    layers: tuple[PulledBlob, ...]


@dataclass(frozen=True)
class PulledIndex:
    """A registry's image index (or manifest list) as stored, and a reader of the image each
    entry names."""

    ref: RegistryRef
    index_bytes: bytes
    index_digest: Digest
    entries: tuple[dict[str, Any], ...]
    reader: Callable[[Mapping[str, Any]], PulledImage] = field(repr=False, compare=False)


def _get_manifest(
    client: RegistryClient, reference: str, what: str, *, missing: str | None = None
) -> tuple[bytes, str, Digest | None]:
    """The manifest ``reference`` names; with ``missing`` (the image as the user named it),
    a 404 answer is a SourceError: the image is not there (bad input, not a registry fault)."""
    response = client.request(
        "GET",
        client.url(f"manifests/{reference}"),
        what=what,
        ok=(200, 404) if missing else (200,),
        headers={"Accept": ANY_MANIFEST_ACCEPT},
        stream=True,
    )
    if response.status_code == 404:
        response.close()
        raise SourceError(f"{missing}: no such image: {client.registry} has no manifest there")
    media_type = response.headers.get("Content-Type", "").partition(";")[0].strip()
    answered = response.headers.get("Docker-Content-Digest")
    body = read_limited(response, MANIFEST_LIMIT, what)
    try:
        declared = Digest.parse(answered) if answered else None
    except ImageError:
        declared = None
    return body, media_type, declared


def _descriptor_digest(desc: Any, where: str) -> Digest:
    if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str):
        raise ImageError(f"{where}: descriptor without a digest")
    return Digest.parse(desc["digest"])


def _is_index(media_type: str, manifest: Any) -> bool:
    kind = media_type or (manifest.get("mediaType") if isinstance(manifest, dict) else "")
    return kind in INDEX_TYPES


def _index_entries(manifest: Any, where: str) -> list[dict[str, Any]]:
    listed = manifest.get("manifests") if isinstance(manifest, dict) else None
    entries = [m for m in listed if isinstance(m, dict)] if isinstance(listed, list) else []
    if not entries:
        raise ImageError(f"{where}: the index lists no image")
    return entries


def pull_image(
    ref: RegistryRef, options: RegistryOptions, *, platform: Platform | None = None
) -> PulledImage:
    """Read the manifest and config of ``ref`` (through an index, for ``platform``, by
    default this host's: see :func:`~closurepack.platforms.choose_entry`); its layers are
    opened later, each on a connection of its own."""
    with open_client(ref, options, [f"repository:{ref.repository}:pull"]) as client:
        body, media_type, declared, manifest = _top_manifest(client)
        if _is_index(media_type, manifest):
            entry = choose_entry(_index_entries(manifest, str(ref)), platform, where=str(ref))
            return _pull_entry(client, entry, platform, None)
        return _pull_single(client, body, media_type, declared)


def pull_index(ref: RegistryRef, options: RegistryOptions) -> PulledIndex | None:
    """The image index (or manifest list) ``ref`` names, as stored, with a reader of each of
    its images; None when ``ref`` names a single image."""
    with open_client(ref, options, [f"repository:{ref.repository}:pull"]) as client:
        body, media_type, declared, manifest = _top_manifest(client)
    if not _is_index(media_type, manifest):
        return None
    return _pulled_index(ref, options, body, declared, manifest)


def pull_image_or_index(ref: RegistryRef, options: RegistryOptions) -> PulledImage | PulledIndex:
    """What ``ref`` names, from one GET of its manifest: the index (or manifest list) as
    stored, with a reader of each of its images, or the single image (its config read)."""
    with open_client(ref, options, [f"repository:{ref.repository}:pull"]) as client:
        body, media_type, declared, manifest = _top_manifest(client)
        if not _is_index(media_type, manifest):
            return _pull_single(client, body, media_type, declared)
    return _pulled_index(ref, options, body, declared, manifest)


def _top_manifest(client: RegistryClient) -> tuple[bytes, str, Digest | None, Any]:
    """The manifest (or index) the client's reference names: body, media type, the digest
    the registry declared, and the body parsed."""
    where = str(client.ref)
    body, media_type, declared = _get_manifest(
        client, client.ref.reference, f"manifest of {where}", missing=where
    )
    return body, media_type, declared, parse_json(body, f"{where}: manifest", deep_error=True)


def _pull_single(
    client: RegistryClient, body: bytes, media_type: str, declared: Digest | None
) -> PulledImage:
    """The single image whose manifest ``body`` the reference named."""
    digest = client.ref.digest or declared or Digest.of_bytes(body)
    entry = {"digest": str(digest), "mediaType": media_type}
    return _pull_entry(client, entry, None, (body, media_type))


def _pulled_index(
    ref: RegistryRef, options: RegistryOptions, body: bytes, declared: Digest | None, manifest: Any
) -> PulledIndex:
    entries = _index_entries(manifest, str(ref))

    def reader(entry: Mapping[str, Any]) -> PulledImage:
        with open_client(ref, options, [f"repository:{ref.repository}:pull"]) as client:
            return _pull_entry(client, entry, None, None)

    return PulledIndex(
        ref=ref,
        index_bytes=body,
        index_digest=ref.digest or declared or Digest.of_bytes(body),
        entries=tuple(entries),
        reader=reader,
    )


def _pull_entry(
    client: RegistryClient,
    entry: Mapping[str, Any],
    platform: Platform | None,
    fetched: tuple[bytes, str] | None,
) -> PulledImage:
    """The image the descriptor ``entry`` names (through nested indexes, for ``platform``);
    ``fetched`` is its manifest's body and media type when read already."""
    ref = client.ref
    where = str(ref)
    manifest_size: int | None = None
    manifest_digest = _descriptor_digest(entry, f"{where}: index")
    body, media_type = fetched or (b"", "")
    for depth in range(INDEX_DEPTH + 1):
        if fetched is None:
            size = entry.get("size")
            manifest_size = size if isinstance(size, int) else None
            manifest_digest = _descriptor_digest(entry, f"{where}: index")
            body, media_type, _ = _get_manifest(
                client, str(manifest_digest), f"manifest {manifest_digest} of {where}"
            )
        fetched = None
        manifest = parse_json(body, f"{where}: manifest {manifest_digest}", deep_error=True)
        if not _is_index(media_type, manifest):
            break
        if depth == INDEX_DEPTH:
            raise ImageError(f"{where}: indexes nested more than {INDEX_DEPTH} deep")
        entry = choose_entry(_index_entries(manifest, where), platform, where=where)
    return _pull_manifest(client, body, media_type, manifest_digest, manifest_size)


def _pull_manifest(
    client: RegistryClient,
    body: bytes,
    media_type: str,
    manifest_digest: Digest,
    manifest_size: int | None,
) -> PulledImage:
    """The config and layer descriptors of the image manifest ``body``."""
    ref, options = client.ref, client.options
    where = str(ref)
    manifest = parse_json(body, f"{where}: manifest {manifest_digest}", deep_error=True)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
        raise ImageError(f"{where}: manifest {manifest_digest} has no config descriptor")
    kind = media_type or str(manifest.get("mediaType", ""))
    if kind and kind not in IMAGE_MANIFEST_TYPES:
        raise ImageError(f"{where}: unsupported manifest media type {kind!r}")
    config_desc = manifest["config"]
    config_digest = _descriptor_digest(config_desc, f"{where}: config")
    response = client.request(
        "GET",
        client.url(f"blobs/{config_digest}"),
        what=f"config {config_digest} of {where}",
        stream=True,
        follow_redirects=True,
    )
    config_bytes = read_limited(response, CONFIG_LIMIT, f"config {config_digest} of {where}")
    layers = []
    for desc in manifest.get("layers") or []:
        digest = _descriptor_digest(desc, f"{where}: layer")
        try:
            layer_type = MediaType(str(desc.get("mediaType")))
        except ValueError as exc:
            raise ImageError(
                f"{where}: layer {digest}: unsupported media type {desc.get('mediaType')!r}"
            ) from exc
        size = desc.get("size")
        size = size if isinstance(size, int) and not isinstance(size, bool) else None
        layers.append(PulledBlob(digest, size, layer_type, blob_opener(ref, options, digest, size)))
    csize = config_desc.get("size")
    BlobRecord(options.blob_record).add(
        ref.registry, ref.repository, [config_digest, *(layer.digest for layer in layers)]
    )
    return PulledImage(
        ref=ref,
        manifest_bytes=body,
        manifest_digest=manifest_digest,
        manifest_size=manifest_size,
        config_bytes=config_bytes,
        config_digest=config_digest,
        config_size=csize if isinstance(csize, int) else None,
        layers=tuple(layers),
    )
