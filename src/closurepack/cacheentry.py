"""A layer cache entry on disk (``keys/<key>.json``: a BuiltLayer descriptor, its blob's
path, and the blob's stamp when it was last hashed) and the check of its blob on a hit."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from closurepack._fs import hash_stream
from closurepack.digest import Digest
from closurepack.errors import CacheError, ImageError
from closurepack.layer import BuiltLayer

__all__ = [
    "blob_stamp",
    "blob_unchanged",
    "check_blob",
    "entry_text",
    "hash_file",
    "read_entry",
]

log = logging.getLogger("closurepack.cache")  # the cache's warnings, as they always were


def blob_stamp(st: os.stat_result) -> list[int]:
    """What says a blob is unchanged since it was last hashed: its size and mtime in ns."""
    return [st.st_size, st.st_mtime_ns]


def hash_file(path: Path) -> tuple[Digest, int]:
    """The digest and size of the file at ``path``."""
    with path.open("rb", buffering=0) as handle:
        return hash_stream(handle)


def read_entry(
    entry: Path, blob_path: Callable[[Digest], Path]
) -> tuple[BuiltLayer, list[int] | None] | None:
    """The layer the cache entry file ``entry`` records, its blob at ``blob_path(digest)``,
    and the blob's stamp when it was last hashed (None if unrecorded); None when there is no
    entry. An unreadable entry is an error; a bad one is logged, removed and None."""
    try:
        text = entry.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CacheError(f"{entry}: cannot read cache entry: {exc.strerror}") from exc
    try:
        # one parse: the descriptor and the stamp; the blob is where the cache keeps it
        obj = json.loads(text)
        layer = BuiltLayer.from_json_obj(obj, source=entry, blob_at=blob_path)
        stamp = obj.get("blob_stamp")
    except (ImageError, ValueError, AttributeError) as exc:
        log.warning("%s: bad cache entry (%s); removing it", entry, exc)
        entry.unlink(missing_ok=True)
        return None
    if not (isinstance(stamp, list) and all(isinstance(v, int) for v in stamp)):
        stamp = None
    return layer, stamp


def check_blob(
    layer: BuiltLayer, stamp: list[int] | None, *, verify: Literal["auto", "full", "size"]
) -> tuple[str | None, bool]:
    """(what is wrong with ``layer``'s blob or None, whether its stamp should be renewed),
    checked as ``verify`` says (see :mod:`closurepack.cache`) against the blob's ``stamp``."""
    try:
        st = layer.blob_path.stat()
    except FileNotFoundError:
        return "blob missing", False
    if st.st_size != layer.size:
        return f"blob is {st.st_size} bytes, entry says {layer.size}", False
    if verify == "size" or (verify == "auto" and stamp == blob_stamp(st)):
        return None, False
    digest, _ = hash_file(layer.blob_path)
    if digest != layer.digest:
        return f"blob hashes to {digest}, entry says {layer.digest}", False
    return None, stamp != blob_stamp(st)


def blob_unchanged(
    layer: BuiltLayer, stamp: list[int] | None, *, verify: Literal["auto", "full", "size"]
) -> bool:
    """True when :func:`check_blob` would pass ``layer``'s blob without reading it: the blob
    has the entry's size and, with ``verify="auto"``, the ``stamp`` it had when last hashed
    (never with ``"full"``, which always reads). False says nothing about the blob."""
    if verify == "full":
        return False
    try:
        st = layer.blob_path.stat()
    except OSError:
        return False
    return st.st_size == layer.size and (verify == "size" or stamp == blob_stamp(st))


def entry_text(layer: BuiltLayer) -> str:
    """The cache entry recording ``layer`` (its blob in the cache, stamped as it is now)."""
    obj = layer.to_json_obj()
    obj["blob"] = f"../blobs/sha256/{layer.digest.hex}"
    obj["blob_stamp"] = blob_stamp(layer.blob_path.stat())
    return json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n"
