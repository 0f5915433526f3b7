"""The store items a layer blob holds, from its tar entry names (images made by other tools).

Images built by nixpkgs' dockerTools, nix2container and the like carry no
``dev.closurepack.layers`` label, but their layers are plain tars of store items. A layer is
read once, as a stream (decompressed on the fly, entry names listed, file data skipped, memory
bounded by the number of items, never by the layer's size), and its blob digest, size and
diff_id are computed in the same pass.

A layer *holds* an item when it has the item's top entry, ``nix/store/<hash>-<name>`` directly
below the store directory (with or without a leading ``./`` or ``/``). Directories above the
store (``nix/``, ``nix/store/``) are no content; anything else (``etc/passwd``, a whiteout, the
files of an item whose top entry is missing, a device, a hard link out of the store, a name
with ``..``) is *other* content: the layer's store items still
count, but it is not a layer of store items only (see :attr:`LayerListing.only_store`).
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from closurepack.decompression import open_decompressed
from closurepack.digest import Digest
from closurepack.errors import ImageError

__all__ = ["LayerListing", "list_store_items"]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class LayerListing:
    """What one layer blob holds and what it is."""

    #: The store paths whose top entry the layer holds, sorted.
    items: tuple[str, ...]
    #: True when the layer holds nothing but those items (and the directories above the store).
    only_store: bool
    #: sha256 and length of the blob as stored, and sha256 of its uncompressed tar.
    digest: Digest
    size: int
    diff_id: Digest


class _Hashing:
    """A reader passing ``source``'s bytes on while hashing and counting them (and writing
    them to ``sink``, when given)."""

    def __init__(self, source: BinaryIO, name: str, sink: BinaryIO | None = None) -> None:
        self._source = source
        self._sink = sink
        self._hash = hashlib.sha256()
        self.size = 0
        self.name = name  # how decompression errors name the layer

    def read(self, size: int = -1, /) -> bytes:
        data = self._source.read(size)
        self._seen(data)
        return data

    def readinto(self, buffer: bytearray | memoryview, /) -> int:
        count: int = self._source.readinto(buffer)  # type: ignore[attr-defined]
        self._seen(memoryview(buffer)[:count])
        return count

    def _seen(self, data: bytes | memoryview) -> None:
        self._hash.update(data)
        self.size += len(data)
        if self._sink is not None:
            self._sink.write(data)

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    @property
    def digest(self) -> Digest:
        return Digest(self._hash.hexdigest())


def list_store_items(
    opener: Callable[[], BinaryIO],
    compression: str,
    *,
    store_dir: str,
    where: str,
    copy_to: BinaryIO | None = None,
) -> LayerListing:
    """List the layer ``opener`` opens (``gzip``, ``zstd`` or ``none``) for the items of
    ``store_dir`` it holds; an ImageError naming ``where`` when it is no readable tar. The
    blob's bytes, as read, are written to ``copy_to`` too when given (so that a blob streamed
    from afar need not be fetched again)."""
    store = store_dir.strip("/")
    above = {"", "."}
    parts = store.split("/")
    above.update("/".join(parts[:n]) for n in range(1, len(parts)))
    items: set[str] = set()
    inner: set[str] = set()
    other = False
    try:
        with opener() as blob:
            compressed = _Hashing(blob, where, copy_to)
            with open_decompressed(compression, compressed) as plain:  # type: ignore[arg-type]
                tar_bytes = _Hashing(plain, where)  # type: ignore[arg-type]
                with tarfile.open(fileobj=tar_bytes, mode="r|") as tar:  # type: ignore[call-overload]
                    while (info := tar.next()) is not None:
                        tar.members.clear()  # a stream: keep no entry once it is seen
                        name = _normalise(info.name)
                        if name in above or name == store:
                            other = other or not info.isdir()  # a link over the store
                            continue
                        top, sep = _item_of(name, store)
                        if top is None or not _plain(info, store):
                            other = True
                        elif sep:
                            inner.add(top)
                        else:
                            items.add(top)
                tar_bytes.drain()  # the end-of-archive blocks count towards the diff_id
            compressed.drain()
    except (OSError, EOFError, tarfile.TarError) as exc:
        raise ImageError(f"{where}: cannot read the layer as a tar: {exc}") from exc
    return LayerListing(
        items=tuple(sorted(f"{store_dir}/{top}" for top in items)),
        only_store=not other and inner <= items,
        digest=compressed.digest,
        size=compressed.size,
        diff_id=tar_bytes.digest,
    )


def _normalise(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/")


def _plain(info: tarfile.TarInfo, store: str) -> bool:
    """Whether an entry is what a store holds: a directory, a file, a symbolic link, or a hard
    link to another entry of the store; no ``..`` in its name (devices, fifos are not)."""
    if ".." in info.name.split("/"):
        return False
    if info.islnk():
        return _normalise(info.linkname).startswith(store + "/")
    return info.isdir() or info.isreg() or info.issym()


def _item_of(name: str, store: str) -> tuple[str | None, bool]:
    """The item name an entry belongs to (None: not in the store, or no item's name) and
    whether the entry lies inside the item rather than being its top entry."""
    if not name.startswith(store + "/"):
        return None, False
    top, sep, _ = name[len(store) + 1 :].partition("/")
    if not top or top.startswith(".") or "\0" in top:  # .wh. whiteouts, .links, ..
        return None, False
    return top, bool(sep)
