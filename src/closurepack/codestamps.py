"""Stamps of files as ``PATH SIZE MTIME_NS`` lines: what the keys that depend on closurepack's
own code (push records, kept plans) are made from, so another closurepack makes other keys."""

from __future__ import annotations

import contextlib
import functools
import os
import stat
from pathlib import Path

__all__ = ["file_stamps", "package_stamps"]


def file_stamps(root: str) -> list[str]:
    """``PATH SIZE MTIME_NS`` of each regular file under ``root`` (symbolic links followed to
    files, not to directories), sorted; ``__pycache__`` directories are not entered (their
    directory's mtime moves when bytecode is first written, and the files are derived)."""
    stamps: list[str] = []
    directories = [root]
    while directories:
        with os.scandir(directories.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "__pycache__":
                        directories.append(entry.path)
                    continue
                with contextlib.suppress(FileNotFoundError):  # (a dangling link)
                    st = entry.stat()
                    if stat.S_ISREG(st.st_mode):
                        stamps.append(f"{entry.path} {st.st_size} {st.st_mtime_ns}")
    return sorted(stamps)


@functools.cache
def package_stamps() -> tuple[str, ...]:
    """:func:`file_stamps` of this package's directory, taken once per process."""
    return tuple(file_stamps(str(Path(__file__).parent)))
