"""Run under ``fakeroot`` by :mod:`closurepack.fakeroot` (standard library only, so that it
starts quickly in ``python -I``): ``own ROOT FILE`` gives the tree's entries the owners and
modes FILE lists; ``list ROOT`` writes every entry below ROOT, as fakeroot reports it, to
standard output as JSON."""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Sequence

__all__ = ["list_tree", "main", "set_owners"]

_KINDS = {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink"}
_OTHER = {
    stat.S_IFIFO: "a fifo",
    stat.S_IFCHR: "a char device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def set_owners(root: str, entries: Sequence[Sequence[object]]) -> None:
    """For each ``[name, uid, gid, mode or None]``: chown (not following a symlink), then
    chmod (after the chown, which may clear setuid bits)."""
    for name, uid, gid, mode in entries:
        path = os.path.join(root, str(name))
        os.lchown(path, int(str(uid)), int(str(gid)))
        if mode is not None:
            os.chmod(path, int(str(mode)))


def list_tree(root: str) -> list[list[object]]:
    """``[name, kind, mode, uid, gid, link target]`` of every entry below ``root``, sorted by
    name; ``kind`` is dir, file, symlink or what else it is (``a char device``)."""
    found: list[list[object]] = []
    stack = [""]
    while stack:
        prefix = stack.pop()
        directory = os.path.join(root, prefix) if prefix else root
        for child in os.listdir(directory):
            name = f"{prefix}/{child}" if prefix else child
            st = os.lstat(os.path.join(root, name))
            fmt = stat.S_IFMT(st.st_mode)
            kind = _KINDS.get(fmt) or _OTHER.get(fmt, "an unsupported file type")
            target = os.readlink(os.path.join(root, name)) if kind == "symlink" else ""
            found.append([name, kind, st.st_mode & 0o7777, st.st_uid, st.st_gid, target])
            if kind == "dir":
                stack.append(name)
    found.sort(key=lambda entry: str(entry[0]))
    return found


def main(argv: Sequence[str]) -> int:
    if len(argv) == 3 and argv[0] == "own":
        with open(argv[2], encoding="utf-8", errors="surrogateescape") as handle:
            set_owners(argv[1], json.load(handle))
        return 0
    if len(argv) == 2 and argv[0] == "list":
        sys.stdout.write(json.dumps(list_tree(argv[1])))
        return 0
    sys.stderr.write("usage: _fakeroot_helper.py own ROOT FILE | list ROOT\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
