"""Work directories held by an flock while they exist, and the sweep of those a killed process
left; :func:`fs_now`, the clock file times come from."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "fs_now",
    "locked_temp_dir",
    "sweep_stale_temp_dirs",
]

#: Linux's CLOCK_REALTIME_COARSE (not in the time module): the clock file times come from.
_COARSE_CLOCK = 5


def fs_now() -> float:
    """Now as the kernel stamps files, which can be a clock tick behind :func:`time.time`: a
    file made after this call has an mtime not before it."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            return time.clock_gettime(_COARSE_CLOCK)
    return time.time() - 0.1


#: A half-made temp directory (killed between creating and naming it) this old is swept even
#: without a pid to check; and so is an unlocked one of an older closurepack (no pid in its name).
_STALE_TEMP_AGE = 86400.0


@contextlib.contextmanager
def locked_temp_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A new directory ``parent/<prefix><pid>-<random>``, removed when the block ends.

    An exclusive flock on the directory is held for as long as it exists, so
    :func:`sweep_stale_temp_dirs` can tell a live one from one left by a killed process (the lock
    dies with its process). It is made under a hidden name, locked, then renamed: a sweeper
    never sees a visible one that is not locked yet.
    """
    hidden = Path(tempfile.mkdtemp(dir=parent, prefix=f".{prefix}{os.getpid()}-"))
    fd = os.open(hidden, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):  # no flock here: sweepers go by the pid instead
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        work = parent / hidden.name[1:]
        try:
            os.rename(hidden, work)
        except BaseException:
            shutil.rmtree(hidden, ignore_errors=True)
            raise
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        os.close(fd)


def _owner_gone(path: Path, pid: int | None) -> bool:
    """Whether ``path``'s flock can be taken (its owner is dead), or, where flock is not
    supported, whether process ``pid`` is gone (no pid: yes). A lock taken dies with the fd."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        if pid is None:
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False
    finally:
        os.close(fd)
    return True


def sweep_stale_temp_dirs(parent: Path, prefix: str, *, before: float) -> list[Path]:
    """Remove the temp directories of :func:`locked_temp_dir` under ``parent`` that a killed
    process left: those named ``<prefix><pid>-...``, last changed before ``before`` (the start
    of the running command), owned by this user, and whose flock can be taken (or whose pid is
    gone where flock is not supported). Half-made hidden ones and unlocked ones of older
    versions (``<prefix>`` without a pid) go when older than :data:`_STALE_TEMP_AGE`. Return
    what was removed; anything that cannot be read or removed is left alone."""
    pattern = re.compile(rf"(\.?){re.escape(prefix)}(?:(\d+)-)?[A-Za-z0-9_]+")
    removed: list[Path] = []
    try:
        names = sorted(os.listdir(parent))
    except OSError:
        return removed
    now = time.time()
    for name in names:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        path = parent / name
        try:
            st = path.lstat()
        except OSError:
            continue
        if st.st_uid != os.geteuid() or not stat.S_ISDIR(st.st_mode):
            continue
        hidden, pid = match.group(1), match.group(2)
        old = now - st.st_mtime > _STALE_TEMP_AGE
        if st.st_mtime >= before or ((hidden or pid is None) and not old):
            continue
        owner = int(pid) if pid else None
        if (owner is None or owner > 0) and _owner_gone(path, owner):
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                removed.append(path)
    return removed
