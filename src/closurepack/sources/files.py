"""Closure files: ``nix path-info --json``, exportReferencesGraph JSON and text, zstd or gzip.

Formats, told apart by content (see docs/formats.md):

* ``nix path-info --json --recursive``: a list of objects with ``path`` (Nix < 2.19), or an
  object keyed by path (2.19+), whose values may carry ``storeDir`` and use base names for the
  keys and ``references`` (``--json-format 2``/``3``);
* structured-attrs ``exportReferencesGraph``: a list of objects, or an object whose single
  value is that list (``{"closure": [...]}``);
* text ``exportReferencesGraph`` (also Guix's ``#:references-graphs``): per item its path, its
  deriver (may be empty), the number of references and that many reference lines.

Items without a size (the text format) get the NAR size of their files when these exist under
``store_root`` (or the real store directory), else 0.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from closurepack.errors import ClosureError, StoreError
from closurepack.graph import Closure, StoreItem
from closurepack.readall import read_all
from closurepack.sources.narsize import nar_size

__all__ = [
    "DEFAULT_STORE_DIR",
    "decompress",
    "load_closure_file",
    "parse_closure",
    "size_from_files",
    "store_file",
]

DEFAULT_STORE_DIR = "/nix/store"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_GZIP_MAGIC = b"\x1f\x8b"


def load_closure_file(path: Path, *, store_root: Path | None = None) -> Closure:
    """Read a closure file in any supported format (optionally zstd- or gzip-compressed).

    Raises ClosureError naming the file and line or item when it cannot be read or parsed, or
    when the graph it describes is invalid; StoreError when the files of an item without a size
    cannot be read.
    """
    source = str(path)
    try:
        data = read_all(Path(path))
    except OSError as exc:
        raise ClosureError(f"{source}: cannot read: {exc.strerror}") from exc
    return parse_closure(data, source=source, store_root=store_root)


def parse_closure(
    data: bytes,
    *,
    source: str,
    store_root: Path | None = None,
    roots: Sequence[str] | None = None,
) -> Closure:
    """Parse the bytes of a closure file (see the module docstring); ``source`` names it.

    ``roots`` are the closure's roots when known (a query); otherwise the items nothing refers to.
    """
    data = decompress(data, source=source)
    start = data[:64].lstrip()
    if not start:
        raise ClosureError(f"{source}: the file is empty")
    if start[:1] not in (b"[", b"{", b"/"):
        raise ClosureError(
            f"{source}:1: not a closure file (expected JSON or an exportReferencesGraph path line)"
        )
    with _collection_paused():
        if start[:1] == b"/":
            items = _items_from_text(data, source, store_root)
        else:
            items = _items_from_json(data, source, store_root)
        return Closure.from_items(items, source=source, roots=roots)


@contextlib.contextmanager
def _collection_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: building a big graph creates only acyclic objects,
    and the collections it would trigger cost a tenth of the load (63k items: ~0.6 s -> ~0.55 s)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def decompress(data: bytes, *, source: str) -> bytes:
    """Undo zstd or gzip compression, told by the magic number; other data is returned as is.
    (The codecs are imported only for compressed data: a plain graph file needs neither.)"""
    if data.startswith(_ZSTD_MAGIC):
        import zstandard  # noqa: PLC0415 - only for compressed graph files

        try:
            # One decompressobj per frame: ZstdDecompressor.decompress would stop after the
            # first frame of a multi-frame file without a word.
            dctx = zstandard.ZstdDecompressor()
            chunks, rest = [], data
            while rest:
                frame = dctx.decompressobj()
                chunks.append(frame.decompress(rest))
                if not frame.eof:
                    raise ClosureError(f"{source}: cannot decompress: truncated zstd data")
                rest = frame.unused_data
        except (zstandard.ZstdError, OSError, EOFError) as exc:
            raise ClosureError(f"{source}: cannot decompress: {exc}") from exc
        return b"".join(chunks)
    if data.startswith(_GZIP_MAGIC):
        import gzip  # noqa: PLC0415 - only for compressed graph files

        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise ClosureError(f"{source}: cannot decompress: {exc}") from exc
    return data


def store_file(path: str, store_root: Path | None) -> Path:
    """Where the files of store path ``path`` are: under ``store_root`` when given."""
    return Path(store_root, path.lstrip("/")) if store_root is not None else Path(path)


def size_from_files(path: str, store_root: Path | None, where: str) -> int:
    """The NAR size of an item's files when they exist, else 0 (a plan needs only the graph)."""
    location = store_file(path, store_root)
    if not os.path.lexists(location):
        return 0
    try:
        return nar_size(location)
    except StoreError as exc:
        raise StoreError(f"{where}: {exc}") from exc


# JSON ------------------------------------------------------------------------------------------


def _items_from_json(data: bytes, source: str, store_root: Path | None) -> list[StoreItem]:
    try:
        doc = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ClosureError(f"{source}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from exc
    except UnicodeDecodeError as exc:
        raise ClosureError(f"{source}: not UTF-8 text: {exc.reason}") from exc
    except RecursionError as exc:
        raise ClosureError(f"{source}: invalid JSON: nested too deeply") from exc
    if isinstance(doc, list):
        return list(_entries_from_list(doc, source, store_root))
    if isinstance(doc, dict):
        if "references" in doc or "narSize" in doc:  # one path-info object, not keyed by path
            if not isinstance(doc.get("path"), str):
                raise ClosureError(
                    f"{source}: a single path-info object without 'path' (expected a list of"
                    " them, or an object keyed by store path)"
                )
            return [_item(doc["path"], doc, store_root, source)]
        lists = [key for key, value in doc.items() if isinstance(value, list)]
        if lists:
            # exportReferencesGraph with structured attrs: {"closure": [...]}, or the builder's
            # whole .attrs.json, where the graph is the one list of objects with a "path".
            graphs = [key for key in lists if _looks_like_graph(doc[key])]
            key = lists[0] if len(lists) == 1 else graphs[0] if len(graphs) == 1 else None
            if key is None:
                raise ClosureError(
                    f"{source}: expected one list of store items, found lists {sorted(lists)}"
                )
            return list(_entries_from_list(doc[key], f"{source}: {key!r}", store_root))
        return list(_entries_from_mapping(doc, source, store_root))
    raise ClosureError(f"{source}: expected a JSON list or object, not {_kind(doc)}")


def _looks_like_graph(value: list[Any]) -> bool:
    return bool(value) and all(isinstance(v, dict) and "path" in v for v in value)


def _entries_from_list(
    entries: list[Any], where: str, store_root: Path | None
) -> Iterator[StoreItem]:
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ClosureError(f"{where}: item {index}: expected an object, not {_kind(entry)}")
        path = entry.get("path")
        if not isinstance(path, str):
            raise ClosureError(f"{where}: item {index}: 'path' must be a string")
        if entry.get("valid") is False:  # how Nix < 2.19 lists a path it does not have
            raise ClosureError(f"{where}: item {index} ({path}) is not a valid store path")
        yield _item(path, entry, store_root, where, index)


def _entries_from_mapping(
    doc: Mapping[str, Any], where: str, store_root: Path | None
) -> Iterator[StoreItem]:
    for key, entry in doc.items():
        if entry is None:
            raise ClosureError(f"{where}: {key} is not a valid store path (null entry)")
        if not isinstance(entry, dict):
            raise ClosureError(
                f"{where}: {key}: expected an object keyed by store path, not {_kind(entry)}"
            )
        path = key if key.startswith("/") else _join(_store_dir_of(entry, where, key), key)
        yield _item(path, entry, store_root, where)


def _item(
    path: str,
    entry: Mapping[str, Any],
    store_root: Path | None,
    source: str,
    index: int | None = None,
) -> StoreItem:
    """One item from its JSON object; ``source`` and ``index`` are only for error messages."""
    refs = entry.get("references")
    if type(refs) is not list:
        raise ClosureError(f"{_where(source, index, path)}: 'references' must be a list")
    try:
        joined = "\n".join(refs)  # checks in C that every reference is a string
    except TypeError:
        joined = ""
    if not refs or (joined[:1] == "/" and joined.count("\n/") == len(refs) - 1):
        references = tuple(refs)  # the usual case: full paths
    else:
        store_dir: str | None = None
        full = []
        for ref in refs:
            if not isinstance(ref, str) or not ref:
                raise ClosureError(
                    f"{_where(source, index, path)}: 'references' must hold non-empty strings,"
                    f" not {ref!r}"
                )
            if ref[0] == "/":
                full.append(ref)
            else:
                store_dir = store_dir or _store_dir_of(entry, _where(source, index, path), ref)
                full.append(_join(store_dir, ref))
        references = tuple(full)
    size = entry.get("narSize")
    if size is None:
        size = size_from_files(path, store_root, _where(source, index, path))
    elif type(size) is not int or size < 0:
        raise ClosureError(
            f"{_where(source, index, path)}: 'narSize' must be a non-negative integer, not {size!r}"
        )
    nar_hash = entry.get("narHash")
    if nar_hash is not None and type(nar_hash) is not str:
        raise ClosureError(
            f"{_where(source, index, path)}: 'narHash' must be a string, not {_kind(nar_hash)}"
        )
    deriver = entry.get("deriver")
    if deriver is not None and type(deriver) is not str:
        raise ClosureError(
            f"{_where(source, index, path)}: 'deriver' must be a string, not {_kind(deriver)}"
        )
    return StoreItem(path, size, references, nar_hash, deriver or None)


def _where(source: str, index: int | None, path: str) -> str:
    return f"{source}: {path}" if index is None else f"{source}: item {index} ({path})"


def _store_dir_of(entry: Mapping[str, Any], where: str, name: str) -> str:
    store_dir = entry.get("storeDir", DEFAULT_STORE_DIR)
    if not isinstance(store_dir, str) or not store_dir.startswith("/"):
        raise ClosureError(f"{where}: 'storeDir' must be an absolute path, not {store_dir!r}")
    if "/" in name:
        raise ClosureError(f"{where}: {name!r} is neither a store path nor a base name")
    return store_dir


def _join(store_dir: str, name: str) -> str:
    return f"{store_dir.rstrip('/')}/{name}"


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


# Text exportReferencesGraph --------------------------------------------------------------------


def _items_from_text(data: bytes, source: str, store_root: Path | None) -> list[StoreItem]:
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ClosureError(f"{source}:{line}: not UTF-8 text") from exc
    lines = text.split("\n")
    if lines[-1] == "":  # the newline that ends the last line starts no line
        lines.pop()
    return list(_parse_text(lines, source, store_root))


def _parse_text(lines: list[str], source: str, store_root: Path | None) -> Iterable[StoreItem]:
    index, count = 0, len(lines)
    while index < count:
        path = lines[index]
        if not path:  # blank lines between items and at the end
            index += 1
            continue
        if not path.startswith("/"):
            raise ClosureError(f"{source}:{index + 1}: expected a store path, got {path!r}")
        if index + 2 >= count:
            raise ClosureError(
                f"{source}:{index + 1}: {path}: truncated item (expected a deriver line and a"
                " reference count)"
            )
        number = lines[index + 2]
        if not number.isascii() or not number.isdigit():
            raise ClosureError(
                f"{source}:{index + 3}: {path}: expected a reference count, got {number!r}"
            )
        first, end = index + 3, index + 3 + int(number)
        if end > count:
            raise ClosureError(
                f"{source}:{index + 3}: {path}: {number} references announced, file ends first"
            )
        references = lines[first:end]
        for offset, ref in enumerate(references):
            if not ref.startswith("/"):
                raise ClosureError(
                    f"{source}:{first + offset + 1}: {path}: reference {ref!r} is not a path"
                )
        where = f"{source}:{index + 1}: {path}"
        size = size_from_files(path, store_root, where)
        yield StoreItem(path, size, tuple(references), deriver=lines[index + 1] or None)
        index = end
