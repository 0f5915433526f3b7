"""Deterministic tar streams of store items and of small in-memory trees, written by hand.

The format, fixed by :data:`TAR_FORMAT_VERSION` (bump it whenever the bytes could change):

* POSIX ustar headers; a PAX extended header (``typeflag x``, named ``././@PaxHeader``) goes
  before an entry only when ustar cannot hold it: a name that is not ASCII or does not fit the
  100-byte name field even after a prefix/name split at a ``/``, a link target that is not
  ASCII or is over 100 bytes, or a size of 8 GiB or more. PAX records are ``hdrcharset``
  (``BINARY``, only for names that are not valid UTF-8), ``linkpath``, ``path``, ``size``, in
  that (sorted) order; never atime, ctime or anything else from the host.
* Entries in GNU tar's ``--sort=name`` order: depth first, the entries of each directory
  sorted by the bytes of their UTF-8 names and written right after it (``a``, ``a/x``, ``a-b``);
  a directory's name is written with a trailing ``/``. Every layer carries the parent
  directories of the store (``nix/``, ``nix/store/``) with mode 0755, so layers are independent
  of each other.
* uid and gid 0 (store items; a :class:`TreeEntry` may give others), empty user and group
  names (an empty name makes every reader use the number); mtime the given value for every
  entry; device numbers 0.
* Modes: the permission bits 0o777 of what is on disk; setuid, setgid and sticky bits are
  dropped (a store never holds them legitimately). Symlinks always 0o777. Entries given
  explicitly as :class:`TreeEntry` keep their mode up to 0o7777.
* ``--perms`` and ``--uid``/``--gid`` (:class:`~closurepack.perms.Perms`) may set any entry's
  mode and owner; a file whose hard links end up with different modes or owners is written as
  separate files.
* Hard links: a regular file seen again within the same tar (same device and inode, same mode
  and owner) becomes a hard link entry to the first name in sort order. Links never point
  outside the tar, so Nix's store optimisation (hard links between items) only deduplicates
  within one layer.
* Only regular files, directories and symlinks; anything else raises :class:`StoreError`.
* The archive ends with two zero blocks and no further padding.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from closurepack.digest import Writable
from closurepack.errors import OptionError, StoreError
from closurepack.graph import check_readable_store, split_store_path
from closurepack.perms import Perms
from closurepack.tarentries import DIR_MODE, TarEntry, TreeEntry, parent_dirs, walk_host
from closurepack.tarheader import (
    DIRTYPE,
    LNKTYPE,
    MAX_MTIME,
    REGTYPE,
    SYMTYPE,
    ZERO_BLOCK,
    block_padding,
    tar_header,
)

__all__ = [
    "TAR_FORMAT_VERSION",
    "write_store_tar",
    "write_tree_tar",
]

#: Bumped whenever any change here could alter the bytes of a tar (it goes into cache keys).
TAR_FORMAT_VERSION = 2  # 2: GNU tar's depth-first order (1 sorted whole names: a, a-b, a/x)

_READ_CHUNK = 1 << 20
#: Files up to this size are read whole into the writer's batch (most files of a store: the
#: copy costs less than a write of their own); larger ones go straight to the stream.
_SMALL_FILE = 64 << 10
#: Bytes of headers and small files gathered before they are written.
_BATCH = 256 << 10


def _check_entry_name(name: bytes) -> None:
    """StoreError unless ``name`` stays inside the image root: relative, no empty, ``.`` or
    ``..`` part, no NUL. Store paths and :class:`TreeEntry` names are checked before they get
    here; this is the last line of defence against a tar entry written outside the root.

    It runs for every entry, so the common case is decided by a few substring tests: with no
    NUL, no ``//``, no ``/`` at either end and no part starting with ``.``, no part can be
    empty, ``.`` or ``..``; only other names are split into parts."""
    if (
        name
        and b"\0" not in name
        and b"//" not in name
        and b"/." not in name
        and name[:1] not in (b"/", b".")
        and name[-1:] != b"/"
    ):
        return
    if not name or any(part in (b"", b".", b"..") for part in name.split(b"/")) or b"\0" in name:
        raise StoreError(f"{os.fsdecode(name)!r}: a tar entry must stay inside the image root")


def _names_inside(names: list[bytes]) -> bool:
    """True when no name in ``names`` would fail :func:`_check_entry_name`, found in one pass
    over them all rather than a call each: joined by NUL (a byte no name may hold: one inside
    a name shows as a NUL too many), each "/" also made a NUL, every part of every name lies
    between two NULs, so an empty, ``.`` or ``..`` part is a NUL pair, NUL dot NUL or NUL dot
    dot NUL. (``find``, not ``in``: ``in`` tries the needle as an int first, an exception
    each time.)"""
    if not names:
        return True
    joined = b"\0".join(names)
    if joined.count(b"\0") != len(names) - 1:
        return False
    parts = b"\0" + joined.replace(b"/", b"\0") + b"\0"
    return parts.find(b"\0\0") == parts.find(b"\0.\0") == parts.find(b"\0..\0") == -1


def _with_perms(entry: TarEntry, perms: Perms) -> TarEntry:
    path = "/" + os.fsdecode(entry.name)
    mode, owner = perms.apply(path, entry.kind, entry.mode, entry.owner)
    if (mode, owner) == (entry.mode, entry.owner):
        return entry
    return entry._replace(mode=mode, owner=owner)


class _TarWriter:
    """Writes sorted entries to ``out``. Headers, paddings and the contents of small files are
    gathered in a batch and written together (one ``out.write`` for many entries: the layer
    pipe's per-write work was much of the writer's time); a larger file's content goes on
    its own, read straight into the stream's buffer when it has ``write_from``."""

    def __init__(self, out: Writable, mtime: int, perms: Perms | None = None) -> None:
        if not 0 <= mtime <= MAX_MTIME:
            raise OptionError(f"mtime {mtime} is out of range 0-{MAX_MTIME}")
        self._out = out
        #: the stream's own file reader, looked up once rather than for every file
        self._write_from = getattr(out, "write_from", None)
        self._mtime = mtime
        self._perms = perms if perms is not None and not perms.is_empty else None
        #: the read buffer of large files, made when the first one comes (a stream with
        #: ``write_from`` reads into its own: a layer build never needs this MiB)
        self._view: memoryview | None = None
        self._first_names: dict[tuple[int, int, int, tuple[int, int]], bytes] = {}
        self._batch: list[bytes] = []
        self._batched = 0  # bytes in the batch

    def _flush(self) -> None:
        if self._batch:
            self._out.write(b"".join(self._batch))
            self._batch.clear()
            self._batched = 0

    def write_all(self, entries: list[TarEntry]) -> None:
        if self._perms is not None:
            perms = self._perms
            entries = [_with_perms(entry, perms) for entry in entries]
        # Component-wise order (GNU tar's): "/" sorts below every byte of a name. No name
        # holds a NUL, so replacing "/" by NUL gives that order as one bytes comparison.
        entries.sort(key=lambda e: e.name.replace(b"/", b"\0"))
        inside = _names_inside([entry.name for entry in entries])
        previous: bytes | None = None
        for entry in entries:
            if entry.name == previous:
                raise OptionError(f"{os.fsdecode(entry.name)}: given twice in one layer")
            previous = entry.name
            if not inside:
                _check_entry_name(entry.name)
            self._write(entry)
        self._batch.append(ZERO_BLOCK * 2)
        self._flush()

    def _write(self, entry: TarEntry) -> None:
        kind = entry.kind
        if kind == "dir":
            self._add(
                tar_header(
                    entry.name + b"/",
                    mode=entry.mode,
                    size=0,
                    mtime=self._mtime,
                    typeflag=DIRTYPE,
                    owner=entry.owner,
                )
            )
            return
        if kind == "symlink":
            self._add(
                tar_header(
                    entry.name,
                    mode=0o777,
                    size=0,
                    mtime=self._mtime,
                    typeflag=SYMTYPE,
                    linkname=entry.target,
                    owner=entry.owner,
                )
            )
            return
        if entry.inode is not None:
            # links of one inode given different modes or owners (--perms) stay apart
            link_key = (*entry.inode, entry.mode, entry.owner)
            first = self._first_names.get(link_key)
            if first is not None:
                self._add(
                    tar_header(
                        entry.name,
                        mode=entry.mode,
                        size=0,
                        mtime=self._mtime,
                        typeflag=LNKTYPE,
                        linkname=first,
                        owner=entry.owner,
                    )
                )
                return
            self._first_names[link_key] = entry.name
        if entry.data is not None:
            header = tar_header(
                entry.name,
                mode=entry.mode,
                size=len(entry.data),
                mtime=self._mtime,
                typeflag=REGTYPE,
                owner=entry.owner,
            )
            self._add_file(header, entry.data)
            return
        assert entry.source is not None
        self._write_file(entry, entry.source)

    def _add(self, data: bytes) -> None:
        """Put ``data`` in the batch; write the batch when it has grown to _BATCH bytes."""
        self._batch.append(data)
        self._batched += len(data)
        if self._batched >= _BATCH:
            self._flush()

    def _add_file(self, header: bytes, data: bytes) -> None:
        """Put a small file's header, content and padding in the batch, each as it is (no
        concatenation: the batch's join is the one copy before the stream's)."""
        batch = self._batch
        batch.append(header)
        batch.append(data)
        size = len(data)
        if size % 512:
            batch.append(block_padding(size))
        self._batched += len(header) + size
        if self._batched >= _BATCH:
            self._flush()

    def _write_file(self, entry: TarEntry, source: bytes) -> None:
        size = entry.size
        header = tar_header(
            entry.name,
            mode=entry.mode,
            size=size,
            mtime=self._mtime,
            typeflag=REGTYPE,
            owner=entry.owner,
        )
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise StoreError(f"{os.fsdecode(source)}: cannot open: {exc.strerror}") from exc
        try:
            if size <= _SMALL_FILE:
                # one read (one byte more to notice growth), into the batch
                data = os.read(fd, size + 1)
                if len(data) != size:
                    raise _changed(source)
                self._add_file(header, data)
                return
            self._batch.append(header)
            self._flush()
            write_from = self._write_from
            if write_from is not None:
                # straight into the stream's buffer (see layerbuild._Pipe.write_from)
                if write_from(fd, size) != size or os.read(fd, 1):
                    raise _changed(source)
            else:
                self._copy(fd, size, source)
        except OSError as exc:
            raise StoreError(f"{os.fsdecode(source)}: cannot read: {exc.strerror}") from exc
        finally:
            os.close(fd)
        self._add(block_padding(size))

    def _copy(self, fd: int, size: int, source: bytes) -> None:
        """Copy ``size`` bytes of ``fd`` (all it has) to the stream through the read buffer."""
        remaining = size
        view = self._view
        if view is None:
            view = self._view = memoryview(bytearray(_READ_CHUNK))
        while remaining:
            n = os.readv(fd, [view[: min(remaining, _READ_CHUNK)]])
            if not n:
                raise _changed(source)
            self._out.write(view[:n])
            remaining -= n
        if os.read(fd, 1):
            raise _changed(source)


def _changed(source: bytes) -> StoreError:
    return StoreError(f"{os.fsdecode(source)}: changed size while being archived")


def write_store_tar(
    out: Writable,
    paths: Sequence[str],
    *,
    store_root: Path | None = None,
    mtime: int = 1,
    perms: Perms | None = None,
) -> None:
    """Write a deterministic tar of the store items ``paths`` (absolute store paths) to ``out``.

    Item ``/nix/store/x`` is read from ``store_root/nix/store/x`` when ``store_root`` is given,
    else from ``/nix/store/x``; it is named ``nix/store/x`` in the tar. Without ``store_root``
    only items of ``/nix/store`` and ``/gnu/store`` are read (ClosureError for any other path:
    no other file of the host goes in a layer). Symlinks are stored as links, never followed.
    ``perms`` sets modes and owners by path.
    """
    root = os.fsencode(store_root) if store_root is not None else b""
    entries: list[TarEntry] = []
    names: list[bytes] = []
    for path in sorted(set(paths)):
        store_dir, _ = split_store_path(path, where="layer")
        check_readable_store(store_dir, store_root=store_root, where=f"layer: {path}")
        name = os.fsencode(path).lstrip(b"/")
        host = root.rstrip(b"/") + b"/" + name
        if not os.path.lexists(host):
            raise StoreError(
                f"{path}: store item not found under {os.fsdecode(root) or '/'}"
                f" (looked at {os.fsdecode(host)})"
            )
        walk_host(name, host, entries)
        names.append(name)
    entries.extend(TarEntry(parent, "dir", DIR_MODE) for parent in sorted(parent_dirs(names)))
    _TarWriter(out, mtime, perms).write_all(entries)


def write_tree_tar(
    out: Writable, entries: Iterable[TreeEntry], *, mtime: int = 1, perms: Perms | None = None
) -> None:
    """Write a deterministic tar of ``entries`` (plus any missing parent directories, 0o755),
    modes and owners then set by ``perms``.

    A directory given twice keeps its first mode; any other name given twice is an OptionError.
    """
    seen_dirs: set[bytes] = set()
    raw: list[TarEntry] = []
    for tree_entry in entries:
        entry = tree_entry.to_tar_entry()
        if entry.kind == "dir":
            if entry.name in seen_dirs:
                continue
            seen_dirs.add(entry.name)
        raw.append(entry)
    kinds = {e.name: e.kind for e in raw}
    parents = parent_dirs(kinds)
    for parent in sorted(parents):
        kind = kinds.get(parent, "dir")
        if kind != "dir":
            # a file or symlink with entries below it: extraction would write through it
            raise OptionError(f"{os.fsdecode(parent)}: is a {kind} but other entries are below it")
    raw.extend(TarEntry(p, "dir", DIR_MODE) for p in sorted(parents - kinds.keys()))
    _TarWriter(out, mtime, perms).write_all(raw)
