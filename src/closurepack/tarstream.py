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

import dataclasses
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from closurepack.digest import Writable
from closurepack.errors import OptionError, StoreError
from closurepack.graph import check_readable_store, split_store_path
from closurepack.perms import MAX_ID, Perms

__all__ = [
    "MAX_ID",
    "MAX_MTIME",
    "TAR_FORMAT_VERSION",
    "TreeEntry",
    "scan_host_tree",
    "tar_header",
    "write_store_tar",
    "write_tree_tar",
]

#: Bumped whenever any change here could alter the bytes of a tar (it goes into cache keys).
TAR_FORMAT_VERSION = 2  # 2: GNU tar's depth-first order (1 sorted whole names: a, a-b, a/x)

_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_READ_CHUNK = 1 << 20
_MAX_OCTAL_11 = 8**11 - 1  # largest value of a 12-byte octal field (size, mtime)
#: The latest entry mtime a tar header holds here (2242-03-16T12:56:31Z).
MAX_MTIME = _MAX_OCTAL_11
_PAX_NAME = b"././@PaxHeader"
_DIR_MODE = 0o755

_REGTYPE = b"0"
_LNKTYPE = b"1"
_SYMTYPE = b"2"
_DIRTYPE = b"5"
_PAXTYPE = b"x"

_KIND_NAMES = {
    stat.S_IFIFO: "a fifo",
    stat.S_IFCHR: "a char device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _octal(value: int, width: int) -> bytes:
    """``width``-byte NUL-terminated zero-padded octal field."""
    return b"%0*o\0" % (width - 1, value)


def _split_ustar_name(name: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) fitting ustar's 155/100-byte fields, split at the rightmost usable
    ``/``; None when impossible."""
    if len(name) <= 100:
        return b"", name
    limit = min(len(name) - 1, 155)
    pos = name.rfind(b"/", 0, limit + 1)
    while pos > 0:
        if len(name) - pos - 1 <= 100:
            return name[:pos], name[pos + 1 :]
        pos = name.rfind(b"/", 0, pos)
    return None


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length).encode()) + len(body) != length:
        length = len(str(length).encode()) + len(body)
    return str(length).encode() + body


# Fixed header fields: uid and gid 0 (8 bytes each; others are given per entry) and, after the
# link name, magic "ustar\0", version "00", empty uname and gname (32 bytes each), devmajor and
# devminor (8 bytes each).
_UID_GID = b"0000000\0" * 2
_MAGIC_TO_DEV = b"ustar\x0000" + bytes(64) + b"0000000\0" * 2
# Their checksum contribution, plus the checksum field itself counted as eight spaces.
_CONST_SUM = sum(_MAGIC_TO_DEV) + 8 * 0x20
_ZERO_IDS_SUM = sum(_UID_GID)


def _ustar_block(
    name: bytes,
    prefix: bytes,
    *,
    mode: int,
    size: int,
    mtime: int,
    typeflag: bytes,
    linkname: bytes,
    owner: tuple[int, int] = (0, 0),
) -> bytes:
    mode_f = b"%07o\0" % mode
    size_f = b"%011o\0" % size
    mtime_f = b"%011o\0" % mtime
    if owner == (0, 0):
        ids, ids_sum = _UID_GID, _ZERO_IDS_SUM
    else:
        ids = b"%07o\0%07o\0" % owner
        ids_sum = sum(ids)
    checksum = (
        _CONST_SUM
        + ids_sum
        + sum(name)
        + sum(prefix)
        + sum(linkname)
        + sum(mode_f)
        + sum(size_f)
        + sum(mtime_f)
        + typeflag[0]
    )
    return b"".join(
        (
            name.ljust(100, b"\0"),
            mode_f,
            ids,
            size_f,
            mtime_f,
            b"%06o\0 " % checksum,
            typeflag,
            linkname.ljust(100, b"\0"),
            _MAGIC_TO_DEV,
            prefix.ljust(155, b"\0"),
            bytes(12),
        )
    )


def tar_header(
    name: bytes,
    *,
    mode: int,
    size: int,
    mtime: int,
    typeflag: bytes,
    linkname: bytes = b"",
    owner: tuple[int, int] = (0, 0),
) -> bytes:
    """The header block(s) of one entry: a PAX header first when ustar cannot hold it."""
    records: list[bytes] = []
    split = _split_ustar_name(name) if name.isascii() else None
    pax_link = bool(linkname) and (len(linkname) > 100 or not linkname.isascii())
    if not (_is_utf8(name) or split is not None) or (pax_link and not _is_utf8(linkname)):
        records.append(_pax_record(b"hdrcharset", b"BINARY"))
    if pax_link:
        records.append(_pax_record(b"linkpath", linkname))
        linkname = linkname[:100] if linkname.isascii() else b""
    if split is None:
        records.append(_pax_record(b"path", name))
        # A readable fallback for ustar-only readers: the tail of the name, ASCII if possible.
        split = (b"", name[-100:] if name.isascii() else b"@PaxName")
    if size > _MAX_OCTAL_11:
        records.append(_pax_record(b"size", str(size).encode()))
        ustar_size = 0
    else:
        ustar_size = size
    entry = _ustar_block(
        split[1],
        split[0],
        mode=mode,
        size=ustar_size,
        mtime=mtime,
        typeflag=typeflag,
        linkname=linkname,
        owner=owner,
    )
    if not records:
        return entry
    data = b"".join(records)
    pax = _ustar_block(
        _PAX_NAME, b"", mode=0o644, size=len(data), mtime=mtime, typeflag=_PAXTYPE, linkname=b""
    )
    return pax + data + _padding(len(data)) + entry


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _padding(size: int) -> bytes:
    return _ZERO_BLOCK[: -size % _BLOCK]


@dataclass(frozen=True, slots=True)
class _Entry:
    """One tar entry before writing: where its bytes come from and what its header says."""

    name: bytes  # without trailing slash; sort key
    kind: Literal["dir", "file", "symlink"]
    mode: int
    size: int = 0
    source: bytes | None = None  # host path of a file's content
    data: bytes | None = None  # in-memory content of a file
    target: bytes = b""  # symlink target
    inode: tuple[int, int] | None = None  # (dev, ino) of a file that has other hard links
    owner: tuple[int, int] = (0, 0)  # (uid, gid)


def _entry_from_stat(name: bytes, host: bytes, st: os.stat_result) -> _Entry:
    fmt = stat.S_IFMT(st.st_mode)
    if fmt == stat.S_IFDIR:
        return _Entry(name, "dir", st.st_mode & 0o777)
    if fmt == stat.S_IFREG:
        inode = (st.st_dev, st.st_ino) if st.st_nlink > 1 else None
        return _Entry(name, "file", st.st_mode & 0o777, st.st_size, source=host, inode=inode)
    if fmt == stat.S_IFLNK:
        try:
            target = os.readlink(host)
        except OSError as exc:
            raise StoreError(f"{os.fsdecode(host)}: cannot read symlink: {exc.strerror}") from exc
        return _Entry(name, "symlink", 0o777, target=target)
    kind = _KIND_NAMES.get(fmt, "an unsupported file type")
    raise StoreError(
        f"{os.fsdecode(host)}: is {kind}; store items may hold only files, directories and symlinks"
    )


def _walk(name: bytes, host: bytes, out: list[_Entry]) -> None:
    """Append ``host`` (tar name ``name``) and everything below it, unsorted."""
    stack = [(name, host)]
    while stack:
        name, host = stack.pop()
        try:
            st = os.lstat(host)
        except OSError as exc:
            raise StoreError(f"{os.fsdecode(host)}: cannot read: {exc.strerror}") from exc
        entry = _entry_from_stat(name, host, st)
        out.append(entry)
        if entry.kind != "dir":
            continue
        try:
            children = os.listdir(host)
        except OSError as exc:
            raise StoreError(f"{os.fsdecode(host)}: cannot list: {exc.strerror}") from exc
        stack.extend((name + b"/" + child, host + b"/" + child) for child in children)


def _parents(names: Iterable[bytes]) -> set[bytes]:
    parents: set[bytes] = set()
    for name in names:
        parts = name.split(b"/")
        for i in range(1, len(parts)):
            parents.add(b"/".join(parts[:i]))
    return parents


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


def _with_perms(entry: _Entry, perms: Perms) -> _Entry:
    path = "/" + os.fsdecode(entry.name)
    mode, owner = perms.apply(path, entry.kind, entry.mode, entry.owner)
    if (mode, owner) == (entry.mode, entry.owner):
        return entry
    return dataclasses.replace(entry, mode=mode, owner=owner)


class _TarWriter:
    def __init__(self, out: Writable, mtime: int, perms: Perms | None = None) -> None:
        if not 0 <= mtime <= _MAX_OCTAL_11:
            raise OptionError(f"mtime {mtime} is out of range 0-{_MAX_OCTAL_11}")
        self._out = out
        #: the stream's own file reader, looked up once rather than for every file
        self._write_from = getattr(out, "write_from", None)
        self._mtime = mtime
        self._perms = perms if perms is not None and not perms.is_empty else None
        #: the read buffer of files over _READ_CHUNK, made when the first one comes (a stream
        #: with ``write_from`` reads into its own: a layer build never needs this MiB)
        self._view: memoryview | None = None
        self._first_names: dict[tuple[int, int, int, tuple[int, int]], bytes] = {}

    def write_all(self, entries: list[_Entry]) -> None:
        if self._perms is not None:
            perms = self._perms
            entries = [_with_perms(entry, perms) for entry in entries]
        # Component-wise order (GNU tar's): "/" sorts below every byte of a name. No name
        # holds a NUL, so replacing "/" by NUL gives that order as one bytes comparison.
        entries.sort(key=lambda e: e.name.replace(b"/", b"\0"))
        previous: bytes | None = None
        for entry in entries:
            if entry.name == previous:
                raise OptionError(f"{os.fsdecode(entry.name)}: given twice in one layer")
            previous = entry.name
            _check_entry_name(entry.name)
            self._write(entry)
        self._out.write(_ZERO_BLOCK * 2)

    def _write(self, entry: _Entry) -> None:
        out = self._out
        if entry.kind == "dir":
            out.write(
                tar_header(
                    entry.name + b"/",
                    mode=entry.mode,
                    size=0,
                    mtime=self._mtime,
                    typeflag=_DIRTYPE,
                    owner=entry.owner,
                )
            )
            return
        if entry.kind == "symlink":
            out.write(
                tar_header(
                    entry.name,
                    mode=0o777,
                    size=0,
                    mtime=self._mtime,
                    typeflag=_SYMTYPE,
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
                out.write(
                    tar_header(
                        entry.name,
                        mode=entry.mode,
                        size=0,
                        mtime=self._mtime,
                        typeflag=_LNKTYPE,
                        linkname=first,
                        owner=entry.owner,
                    )
                )
                return
            self._first_names[link_key] = entry.name
        if entry.data is not None:
            out.write(
                tar_header(
                    entry.name,
                    mode=entry.mode,
                    size=len(entry.data),
                    mtime=self._mtime,
                    typeflag=_REGTYPE,
                    owner=entry.owner,
                )
            )
            out.write(entry.data)
            out.write(_padding(len(entry.data)))
            return
        assert entry.source is not None
        self._write_file(entry, entry.source)

    def _write_file(self, entry: _Entry, source: bytes) -> None:
        where = os.fsdecode(source)
        size = entry.size
        header = tar_header(
            entry.name,
            mode=entry.mode,
            size=size,
            mtime=self._mtime,
            typeflag=_REGTYPE,
            owner=entry.owner,
        )
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise StoreError(f"{where}: cannot open: {exc.strerror}") from exc
        try:
            write_from = self._write_from
            if write_from is not None:
                # straight into the stream's buffer (see layerbuild._Pipe.write_from)
                self._out.write(header)
                if write_from(fd, size) != size or os.read(fd, 1):
                    raise StoreError(f"{where}: changed size while being archived")
            elif size <= _READ_CHUNK:
                # small file: one read (one byte more to notice growth), one write
                data = os.read(fd, size + 1)
                if len(data) != size:
                    raise StoreError(f"{where}: changed size while being archived")
                self._out.write(header + data + _padding(size))
                return
            else:
                self._out.write(header)
                remaining = size
                view = self._view
                if view is None:
                    view = self._view = memoryview(bytearray(_READ_CHUNK))
                while remaining:
                    n = os.readv(fd, [view[: min(remaining, _READ_CHUNK)]])
                    if not n:
                        raise StoreError(f"{where}: changed size while being archived")
                    self._out.write(view[:n])
                    remaining -= n
                if os.read(fd, 1):
                    raise StoreError(f"{where}: changed size while being archived")
        except OSError as exc:
            raise StoreError(f"{where}: cannot read: {exc.strerror}") from exc
        finally:
            os.close(fd)
        self._out.write(_padding(size))


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
    entries: list[_Entry] = []
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
        _walk(name, host, entries)
        names.append(name)
    entries.extend(_Entry(parent, "dir", _DIR_MODE) for parent in sorted(_parents(names)))
    _TarWriter(out, mtime, perms).write_all(entries)


@dataclass(frozen=True, slots=True)
class TreeEntry:
    """One entry of a customisation layer: a directory, a file or a symlink.

    ``name`` is relative to the image root (``etc/passwd``; a leading ``/`` is ignored).
    A file's content is ``data``, or the host file ``source`` read when the tar is written.
    ``mode`` defaults to 0o755 for directories and 0o644 for files; ``uid`` and ``gid`` to 0.
    """

    name: str
    kind: Literal["dir", "file", "symlink"]
    mode: int | None = None
    data: bytes = b""
    target: str = ""
    source: Path | None = None
    uid: int = 0
    gid: int = 0

    def __post_init__(self) -> None:
        parts = self.name.strip("/").split("/")
        if not self.name.strip("/") or any(p in ("", ".", "..") for p in parts):
            raise OptionError(f"{self.name!r}: invalid path in image (empty, '.' or '..' part)")
        if "\0" in self.name or "\0" in self.target:
            raise OptionError(f"{self.name!r}: path contains a NUL byte")
        if self.kind not in ("dir", "file", "symlink"):
            raise OptionError(f"{self.name}: unknown entry kind {self.kind!r}")
        if self.kind == "symlink" and not self.target:
            raise OptionError(f"{self.name}: symlink without a target")
        if self.mode is not None and not 0 <= self.mode <= 0o7777:
            raise OptionError(f"{self.name}: mode {self.mode:o} is out of range")
        for what, number in (("uid", self.uid), ("gid", self.gid)):
            if not 0 <= number <= MAX_ID:
                raise OptionError(f"{self.name}: {what} {number} is out of range 0-{MAX_ID}")

    def _to_entry(self) -> _Entry:
        name = os.fsencode(self.name.strip("/"))
        owner = (self.uid, self.gid)
        if self.kind == "dir":
            mode = _DIR_MODE if self.mode is None else self.mode
            return _Entry(name, "dir", mode, owner=owner)
        if self.kind == "symlink":
            return _Entry(name, "symlink", 0o777, target=os.fsencode(self.target), owner=owner)
        mode = 0o644 if self.mode is None else self.mode
        if self.source is None:
            return _Entry(name, "file", mode, len(self.data), data=self.data, owner=owner)
        host = os.fsencode(self.source)
        try:
            size = os.stat(host).st_size
        except OSError as exc:
            raise StoreError(f"{self.source}: cannot read: {exc.strerror}") from exc
        return _Entry(name, "file", mode, size, source=host, owner=owner)


def scan_host_tree(
    directory: Path, *, dest: str = "", owner: tuple[int, int] = (0, 0)
) -> list[TreeEntry]:
    """Entries copying the host tree below ``directory`` to ``dest`` in the image (the image
    root by default), sorted, every one owned by ``owner`` (uid, gid); modes are the on-disk
    permission bits (0o777), hard links become separate files, and a fifo, socket or device
    raises StoreError.
    """
    uid, gid = owner
    top = os.fsencode(directory)
    if not os.path.isdir(top):
        raise StoreError(f"{directory}: not a directory")
    raw: list[_Entry] = []
    prefix = os.fsencode(dest.strip("/"))
    try:
        children = sorted(os.listdir(top))
    except OSError as exc:
        raise StoreError(f"{directory}: cannot list: {exc.strerror}") from exc
    for child in children:
        _walk(prefix + b"/" + child if prefix else child, top + b"/" + child, raw)
    result: list[TreeEntry] = []
    for entry in sorted(raw, key=lambda e: e.name):
        name = os.fsdecode(entry.name)  # surrogate-escaped: os.fsencode gives the bytes back
        if entry.kind == "dir":
            result.append(TreeEntry(name, "dir", entry.mode, uid=uid, gid=gid))
        elif entry.kind == "symlink":
            target = os.fsdecode(entry.target)
            result.append(TreeEntry(name, "symlink", target=target, uid=uid, gid=gid))
        else:
            assert entry.source is not None
            source = Path(os.fsdecode(entry.source))
            result.append(TreeEntry(name, "file", entry.mode, source=source, uid=uid, gid=gid))
    return result


def write_tree_tar(
    out: Writable, entries: Iterable[TreeEntry], *, mtime: int = 1, perms: Perms | None = None
) -> None:
    """Write a deterministic tar of ``entries`` (plus any missing parent directories, 0o755),
    modes and owners then set by ``perms``.

    A directory given twice keeps its first mode; any other name given twice is an OptionError.
    """
    seen_dirs: set[bytes] = set()
    raw: list[_Entry] = []
    for tree_entry in entries:
        entry = tree_entry._to_entry()
        if entry.kind == "dir":
            if entry.name in seen_dirs:
                continue
            seen_dirs.add(entry.name)
        raw.append(entry)
    kinds = {e.name: e.kind for e in raw}
    parents = _parents(kinds)
    for parent in sorted(parents):
        kind = kinds.get(parent, "dir")
        if kind != "dir":
            # a file or symlink with entries below it: extraction would write through it
            raise OptionError(f"{os.fsdecode(parent)}: is a {kind} but other entries are below it")
    raw.extend(_Entry(p, "dir", _DIR_MODE) for p in sorted(parents - kinds.keys()))
    _TarWriter(out, mtime, perms).write_all(raw)
