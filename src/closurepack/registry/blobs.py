"""Blob requests of the distribution API: existence checks, cross-repository mounts, uploads.

Uploads start with ``POST /v2/NAME/blobs/uploads/``; a blob up to ``monolithic_limit`` then goes
in one ``PUT ...?digest=``, a larger one in ``PATCH`` chunks (at least the registry's
``OCI-Chunk-Min-Length``) closed by an empty ``PUT``. An upload that breaks on the way (a
connection error, 5xx, 429) is started again from the ``POST``, up to ``retries`` times.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

import httpx

from closurepack.digest import Digest
from closurepack.errors import RegistryError
from closurepack.registry.client import RegistryClient, TransientRegistryError

__all__ = ["Opener", "blob_exists", "missing_blobs", "mount_blob", "upload_blob"]

#: Opens a blob's bytes afresh (each try of an upload reads it again).
Opener = Callable[[], BinaryIO]

_READ = 1 << 20
_OCTETS = "application/octet-stream"


def blob_exists(client: RegistryClient, digest: Digest, size: int | None = None) -> bool:
    """``HEAD`` the blob in the client's repository: whether the registry has it (with ``size``
    bytes, when the registry says how many)."""
    response = client.request(
        "HEAD",
        client.url(f"blobs/{digest}"),
        what=f"checking blob {digest} in {client.ref.name}",
        ok=(200, 404),
        follow_redirects=True,
    )
    if response.status_code != 200:
        return False
    length = response.headers.get("Content-Length")
    return size is None or length is None or not length.isdigit() or int(length) == size


def missing_blobs(client: RegistryClient, blobs: Mapping[Digest, int]) -> list[Digest]:
    """The blobs of ``blobs`` (digest -> size) that the client's repository does not hold, in
    their order: one ``HEAD`` each, ``client.options.jobs`` at a time over the client's
    connection pool (a manifest's blobs can be deleted while its tag stays). The first
    failure of any ``HEAD`` is raised."""
    items = list(blobs.items())
    if len(items) <= 1:
        return [d for d, size in items if not blob_exists(client, d, size)]
    with ThreadPoolExecutor(
        min(client.options.jobs, len(items)), thread_name_prefix="head"
    ) as pool:
        present = list(pool.map(lambda item: blob_exists(client, *item), items))
    return [d for (d, _), there in zip(items, present, strict=True) if not there]


def mount_blob(client: RegistryClient, digest: Digest, source: str) -> str | None:
    """Ask the registry to mount ``digest`` from repository ``source``; None when it did, else
    the location of the upload session it opened instead (to upload into)."""
    response = client.request(
        "POST",
        str(
            httpx.URL(client.url("blobs/uploads/")).copy_merge_params(
                {"mount": str(digest), "from": source}
            )
        ),
        what=f"mounting blob {digest} from {source} in {client.ref.name}",
        ok=(201, 202),
        headers={"Content-Length": "0"},
    )
    if response.status_code == 201:
        _check_digest(client, response, digest, "mounted blob")
        return None
    return _location(response, f"upload of blob {digest} to {client.ref.name}")


def upload_blob(
    client: RegistryClient,
    digest: Digest,
    size: int,
    opener: Opener,
    *,
    location: str | None = None,
) -> None:
    """Upload the blob (``size`` bytes from ``opener``) to the client's repository; start
    again from the beginning when an upload breaks, up to the client's retries."""
    options = client.options
    what = f"upload of blob {digest} ({size} bytes) to {client.ref.name}"
    attempts = options.retries + 1
    for attempt in range(attempts):
        try:
            min_chunk = 0
            if location is None:
                location, min_chunk = _start(client, what)
            if size <= options.monolithic_limit:
                _put_whole(client, location, digest=digest, size=size, opener=opener, what=what)
            else:
                chunk = max(options.chunk_size, min_chunk)
                _put_chunks(
                    client,
                    location,
                    digest=digest,
                    size=size,
                    opener=opener,
                    chunk=chunk,
                    what=what,
                )
            return
        except TransientRegistryError as exc:
            location = None
            if attempt == attempts - 1:
                raise TransientRegistryError(f"{exc} (after {attempts} tries)") from exc
            time.sleep(min(options.max_backoff, options.backoff * (2**attempt)))


def _start(client: RegistryClient, what: str) -> tuple[str, int]:
    response = client.request(
        "POST",
        client.url("blobs/uploads/"),
        what=what,
        ok=(202,),
        headers={"Content-Length": "0"},
        tries=1,
    )
    minimum = response.headers.get("OCI-Chunk-Min-Length", "")
    return _location(response, what), int(minimum) if minimum.isdigit() else 0


def _put_whole(
    client: RegistryClient, location: str, *, digest: Digest, size: int, opener: Opener, what: str
) -> None:
    def body() -> Iterator[bytes]:
        with opener() as blob:
            sent = 0
            while chunk := blob.read(_READ):
                sent += len(chunk)
                yield chunk
        if sent != size:
            raise RegistryError(f"{what}: the blob has {sent} bytes, not {size}")

    response = client.request(
        "PUT",
        str(httpx.URL(location).copy_merge_params({"digest": str(digest)})),
        what=what,
        ok=(201,),
        headers={"Content-Type": _OCTETS, "Content-Length": str(size)},
        content=body,
        tries=1,
    )
    _check_digest(client, response, digest, what)


def _put_chunks(
    client: RegistryClient,
    location: str,
    *,
    digest: Digest,
    size: int,
    opener: Opener,
    chunk: int,
    what: str,
) -> None:
    offset = 0
    with opener() as blob:
        while offset < size:
            data = _read_exactly(blob, min(chunk, size - offset), what)
            end = offset + len(data) - 1
            response = client.request(
                "PATCH",
                location,
                what=f"{what}, bytes {offset}-{end}",
                ok=(202,),
                headers={
                    "Content-Type": _OCTETS,
                    "Content-Length": str(len(data)),
                    "Content-Range": f"{offset}-{end}",
                },
                content=data,
                tries=1,
            )
            location = _location(response, what)
            offset += len(data)
    response = client.request(
        "PUT",
        str(httpx.URL(location).copy_merge_params({"digest": str(digest)})),
        what=what,
        ok=(201,),
        headers={"Content-Length": "0"},
        tries=1,
    )
    _check_digest(client, response, digest, what)


def _read_exactly(blob: BinaryIO, n: int, what: str) -> bytes:
    parts = []
    left = n
    while left:
        data = blob.read(left)
        if not data:
            raise RegistryError(f"{what}: the blob ended early")
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


def _location(response: httpx.Response, what: str) -> str:
    location = response.headers.get("Location")
    if not location:
        raise RegistryError(f"{what}: the registry gave no upload location")
    return str(response.url.join(location))


def _check_digest(
    client: RegistryClient, response: httpx.Response, digest: Digest, what: str
) -> None:
    answered = response.headers.get("Docker-Content-Digest")
    if answered and answered != str(digest):
        raise RegistryError(f"{what}: {client.registry} stored it as {answered}, not {digest}")
