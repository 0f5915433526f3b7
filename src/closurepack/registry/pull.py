"""Read an image from a registry: the manifest (through an index, for the platform asked for,
by default this host's), the config, and layer blobs opened lazily and digest-checked while
they stream; or an index itself, with a reader of each of its images.

What is read into memory is bounded: a manifest or index at most :data:`MANIFEST_LIMIT`, a
config at most :data:`CONFIG_LIMIT`, and indexes nest at most :data:`INDEX_DEPTH` deep.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import httpx

from closurepack.digest import Digest
from closurepack.errors import ImageError, RegistryError, SourceError
from closurepack.jsontext import parse_json
from closurepack.mediatypes import ANY_MANIFEST_ACCEPT, IMAGE_MANIFEST_TYPES, INDEX_TYPES, MediaType
from closurepack.platforms import Platform, choose_entry
from closurepack.registry.client import RegistryClient, open_client, read_limited
from closurepack.registry.options import RegistryOptions
from closurepack.registry.record import BlobRecord
from closurepack.registry.reference import RegistryRef

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

#: The distribution spec lets registries refuse manifests over 4 MiB; so do we.
MANIFEST_LIMIT = 4 << 20
#: Configs of closurepack images record every store path (a big closure: several MiB).
CONFIG_LIMIT = 32 << 20
INDEX_DEPTH = 4

_CHUNK = 1 << 20


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


def blob_opener(
    ref: RegistryRef, options: RegistryOptions, digest: Digest, size: int | None
) -> Callable[[], BinaryIO]:
    """Opens blob ``digest`` of ``ref``'s repository afresh at each call, on a connection of
    its own; reading it to the end raises RegistryError when its digest or size is wrong."""

    def opener() -> BinaryIO:
        return io.BufferedReader(_BlobStream(ref, options, digest, size), _CHUNK)

    return opener


class _BlobStream(io.RawIOBase):
    """A blob streamed from the registry; at its end the digest (and size) are checked.

    A read that breaks on the way (a connection reset, a timeout) is taken up again where it
    broke, up to the client's retries: ``Range: bytes=N-``, and from the answer's start when the
    registry answers 206 for that range; else the blob from its beginning, its first N bytes
    skipped. The digest is over every byte handed out, whichever answers they came from.
    """

    def __init__(
        self, ref: RegistryRef, options: RegistryOptions, digest: Digest, size: int | None
    ) -> None:
        self._stack = contextlib.ExitStack()
        self._what = f"blob {digest} of {ref}"
        self._digest = digest
        self._size = size
        self._hash = hashlib.sha256()
        self._count = 0
        self._pending = b""
        self._breaks = 0
        self._response: httpx.Response | None = None
        try:
            self._client = self._stack.enter_context(
                open_client(ref, options, [f"repository:{ref.repository}:pull"])
            )
            self._stack.callback(self._close_response)
            self._chunks = self._open(0)
        except BaseException:
            self._stack.close()
            raise
        self._done = False

    def _get(self, headers: dict[str, str] | None) -> httpx.Response:
        self._close_response()
        self._response = self._client.request(
            "GET",
            self._client.url(f"blobs/{self._digest}"),
            what=self._what,
            ok=(200, 206, 416) if headers else (200,),
            headers=headers,
            stream=True,
            follow_redirects=True,
        )
        return self._response

    def _open(self, offset: int) -> Iterator[bytes]:
        """The blob's bytes from ``offset`` on, as they arrive (a chunk is not held back until
        it is full: what came before a break counts)."""
        if offset:
            response = self._get({"Range": f"bytes={offset}-"})
            if response.status_code == 206 and _range_start(response) == offset:
                return response.iter_raw()
            if response.status_code != 200:  # 416, or another range than asked for
                response = self._get(None)
        else:
            response = self._get(None)
        return _skip(response.iter_raw(), offset)

    def _close_response(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending and not self._done:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                self._done = True
                self._finish()
            except httpx.TransportError as exc:
                self._resume(exc)
                continue
            except httpx.HTTPError as exc:
                raise RegistryError(f"{self._what}: reading failed: {exc}") from exc
            self._hash.update(self._pending)
            self._count += len(self._pending)
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _resume(self, exc: httpx.TransportError) -> None:
        """Take the read up again after ``exc`` broke it, or give up after the retries."""
        retries = self._client.options.retries
        if self._breaks >= retries:
            tries = f" (after {retries + 1} tries)" if retries else ""
            raise RegistryError(
                f"{self._what}: reading failed after {self._count} bytes: {exc}{tries}"
            ) from exc
        self._client.pause(self._breaks)
        self._breaks += 1
        self._chunks = self._open(self._count)

    def _finish(self) -> None:
        actual = Digest(self._hash.hexdigest())
        if actual != self._digest:
            raise RegistryError(f"{self._what}: the registry sent bytes whose digest is {actual}")
        if self._size is not None and self._count != self._size:
            raise RegistryError(
                f"{self._what}: the registry sent {self._count} bytes, the manifest says"
                f" {self._size}"
            )

    def close(self) -> None:
        self._stack.close()
        super().close()


def _range_start(response: httpx.Response) -> int | None:
    """The first byte of ``Content-Range: bytes FIRST-LAST/TOTAL``, None when unreadable."""
    unit, _, rest = response.headers.get("Content-Range", "").partition(" ")
    first = rest.partition("-")[0]
    return int(first) if unit == "bytes" and first.isdigit() else None


def _skip(chunks: Iterator[bytes], count: int) -> Iterator[bytes]:
    """``chunks`` without their first ``count`` bytes."""
    for chunk in chunks:
        if count >= len(chunk):
            count -= len(chunk)
            continue
        yield chunk[count:] if count else chunk
        count = 0
