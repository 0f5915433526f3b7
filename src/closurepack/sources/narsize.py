"""Exact NAR serialisation size of a file tree, computed from a walk without serialising."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Protocol

from closurepack.errors import StoreError

__all__ = ["NarVisitor", "nar_size"]


def _string_size(length: int) -> int:
    """Bytes a NAR string of ``length`` bytes takes: a 64-bit length, then the bytes padded to 8."""
    return 8 + ((length + 7) & ~7)


_S = _string_size
# "nix-archive-1" magic; "(" "type" <type> ... ")" around every node.
_MAGIC = _S(len(b"nix-archive-1"))
_NODE_FRAME = _S(1) + _S(4) + _S(1)  # "(", "type", ")"
_REGULAR = _S(len(b"regular")) + _S(len(b"contents"))
_EXECUTABLE = _S(len(b"executable")) + _S(0)
_SYMLINK = _S(len(b"symlink")) + _S(len(b"target"))
_DIRECTORY = _S(len(b"directory"))
#: Per directory entry, beside the name and the child node: "entry" "(" "name" <name> "node" ")".
_DIRECTORY_ENTRY = _S(5) + _S(1) + _S(4) + _S(4) + _S(1)


def _node_size(mode: int, *, size: int = 0, target_length: int = 0) -> int:
    """NAR bytes of one node, without a directory's entries (see :data:`_DIRECTORY_ENTRY`).

    ``size`` is a regular file's length, ``target_length`` a symlink target's length in bytes.
    Raises ValueError for file types NAR cannot hold.
    """
    if stat.S_ISREG(mode):
        extra = _EXECUTABLE if mode & stat.S_IXUSR else 0
        return _NODE_FRAME + _REGULAR + extra + _S(size)
    if stat.S_ISLNK(mode):
        return _NODE_FRAME + _SYMLINK + _S(target_length)
    if stat.S_ISDIR(mode):
        return _NODE_FRAME + _DIRECTORY
    kind = _KINDS.get(stat.S_IFMT(mode), f"file type {stat.S_IFMT(mode):o}")
    raise ValueError(f"is a {kind}, which cannot be stored in a NAR")


_KINDS = {
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
}


class NarVisitor(Protocol):
    """Shown, during a :func:`nar_size` walk, the parts of the NAR that hold other bytes than
    its framing (what Nix scans for references)."""

    def data(self, data: bytes) -> None:
        """A symlink's target, or a directory's entry names joined by ``/``."""

    def file(self, path: bytes) -> None:
        """A regular file of at least one byte, whose contents are for the visitor to read."""


def nar_size(path: Path | str | bytes, visitor: NarVisitor | None = None) -> int:
    """The size of ``nix-store --dump path``: the NAR of a file, symlink or directory tree.

    Hard links count once per name, as in NAR. ``visitor``, when given, is shown every symlink
    target, directory listing and file on the way. Raises StoreError for an unreadable tree or
    a file that is not a regular file, directory or symlink.
    """
    top = os.fsencode(path)
    try:
        return _MAGIC + _tree_size(top, os.lstat(top), visitor)
    except OSError as exc:
        raise StoreError(f"{os.fsdecode(exc.filename or top)}: {exc.strerror}") from exc


def _tree_size(path: bytes, st: os.stat_result, visitor: NarVisitor | None) -> int:
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        target = os.readlink(path)
        if visitor is not None:
            visitor.data(target)
        return _node_size(mode, target_length=len(target))
    try:
        total = _node_size(mode, size=st.st_size)
    except ValueError as exc:
        raise StoreError(f"{os.fsdecode(path)}: {exc}") from None
    if stat.S_ISREG(mode):
        if visitor is not None and st.st_size:
            visitor.file(path)
        return total
    with os.scandir(path) as entries:
        children = [(e.name, e.path, e.stat(follow_symlinks=False)) for e in entries]
    if visitor is not None:
        # Separated by "/", which no name holds, so that no hash spans two names.
        visitor.data(b"/".join(name for name, _, _ in children))
    for name, child, child_st in children:
        total += _DIRECTORY_ENTRY + _S(len(name)) + _tree_size(child, child_st, visitor)
    return total
