"""A registry blob streamed lazily: opened afresh at each call, its digest and size checked
at its end, a read that breaks taken up again where it broke (``Range``)."""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import httpx

from closurepack.digest import Digest
from closurepack.errors import RegistryError
from closurepack.registry.client import open_client
from closurepack.registry.options import RegistryOptions
from closurepack.registry.reference import RegistryRef

__all__ = [
    "blob_opener",
]

_CHUNK = 1 << 20


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
