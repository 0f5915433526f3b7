"""What a tar holds, before it is written: entries read from the host's files (a store item
walked, a host tree scanned) or given as :class:`TreeEntry` (a customisation layer's files).

No bytes of a tar are made here; :mod:`closurepack.tarstream` sorts and writes these entries."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from closurepack.errors import OptionError, StoreError
from closurepack.perms import MAX_ID

__all__ = [
    "DIR_MODE",
    "TarEntry",
    "TreeEntry",
    "parent_dirs",
    "scan_host_tree",
    "walk_host",
]

#: The mode of a directory no one gave a mode for (the store's parents, missing parents).
DIR_MODE = 0o755

_KIND_NAMES = {
    stat.S_IFIFO: "a fifo",
    stat.S_IFCHR: "a char device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


class TarEntry(NamedTuple):
    """One tar entry before writing: where its bytes come from and what its header says.

    (A named tuple: one is made for every file of a layer, three times faster than a frozen
    dataclass.)"""

    name: bytes  # without trailing slash; sort key
    kind: Literal["dir", "file", "symlink"]
    mode: int
    size: int = 0
    source: bytes | None = None  # host path of a file's content
    data: bytes | None = None  # in-memory content of a file
    target: bytes = b""  # symlink target
    inode: tuple[int, int] | None = None  # (dev, ino) of a file that has other hard links
    owner: tuple[int, int] = (0, 0)  # (uid, gid)


def _entry_from_stat(name: bytes, host: bytes, st: os.stat_result) -> TarEntry:
    fmt = stat.S_IFMT(st.st_mode)
    if fmt == stat.S_IFDIR:
        return TarEntry(name, "dir", st.st_mode & 0o777)
    if fmt == stat.S_IFREG:
        inode = (st.st_dev, st.st_ino) if st.st_nlink > 1 else None
        return TarEntry(name, "file", st.st_mode & 0o777, st.st_size, source=host, inode=inode)
    if fmt == stat.S_IFLNK:
        try:
            target = os.readlink(host)
        except OSError as exc:
            raise StoreError(f"{os.fsdecode(host)}: cannot read symlink: {exc.strerror}") from exc
        return TarEntry(name, "symlink", 0o777, target=target)
    kind = _KIND_NAMES.get(fmt, "an unsupported file type")
    raise StoreError(
        f"{os.fsdecode(host)}: is {kind}; store items may hold only files, directories and symlinks"
    )


def walk_host(name: bytes, host: bytes, out: list[TarEntry]) -> None:
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


def parent_dirs(names: Iterable[bytes]) -> set[bytes]:
    """Every directory above one of ``names`` (``a`` and ``a/b`` for ``a/b/c``)."""
    parents: set[bytes] = set()
    for name in names:
        parts = name.split(b"/")
        for i in range(1, len(parts)):
            parents.add(b"/".join(parts[:i]))
    return parents


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

    def to_tar_entry(self) -> TarEntry:
        """This entry as the writer takes it (a ``source`` file's size read now)."""
        name = os.fsencode(self.name.strip("/"))
        owner = (self.uid, self.gid)
        if self.kind == "dir":
            mode = DIR_MODE if self.mode is None else self.mode
            return TarEntry(name, "dir", mode, owner=owner)
        if self.kind == "symlink":
            return TarEntry(name, "symlink", 0o777, target=os.fsencode(self.target), owner=owner)
        mode = 0o644 if self.mode is None else self.mode
        if self.source is None:
            return TarEntry(name, "file", mode, len(self.data), data=self.data, owner=owner)
        host = os.fsencode(self.source)
        try:
            size = os.stat(host).st_size
        except OSError as exc:
            raise StoreError(f"{self.source}: cannot read: {exc.strerror}") from exc
        return TarEntry(name, "file", mode, size, source=host, owner=owner)


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
    raw: list[TarEntry] = []
    prefix = os.fsencode(dest.strip("/"))
    try:
        children = sorted(os.listdir(top))
    except OSError as exc:
        raise StoreError(f"{directory}: cannot list: {exc.strerror}") from exc
    for child in children:
        walk_host(prefix + b"/" + child if prefix else child, top + b"/" + child, raw)
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
