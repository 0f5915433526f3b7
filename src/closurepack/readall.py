"""Reading a whole input file that may be a pipe, a fifo or standard input, so that Ctrl-C
always ends the wait.

A read that blocks (a pipe whose writer is slow or never ends) is interrupted by SIGINT only
when the signal arrives during the ``read`` call itself. One that arrives a moment before
(after the file was opened, before the read began) has been noted by Python's C handler but
not yet acted on, and the read then waits until data comes, maybe forever. So a file that is
not a regular file is read after ``poll`` says it is ready, waiting at most
:data:`POLL_SECONDS` at a time: between two waits Python runs the pending signal's handler.
Regular files are read in one call, as before."""

from __future__ import annotations

import io
import os
import select
import stat
import sys
from pathlib import Path

__all__ = [
    "POLL_SECONDS",
    "read_all",
    "read_all_fd",
]

#: The longest a wait for input lasts before Python looks at the signals that came meanwhile.
POLL_SECONDS = 0.2
_CHUNK = 1 << 20


def read_all(path: Path | None) -> bytes:
    """Every byte of ``path`` (standard input for None); raises OSError as ``open`` does."""
    if path is None:
        stdin = sys.stdin.buffer
        try:
            fd = stdin.fileno()
        except (AttributeError, ValueError, io.UnsupportedOperation):
            return stdin.read()  # (replaced by a stream of no descriptor, as by an embedding)
        return read_all_fd(fd)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return read_all_fd(fd)
    finally:
        os.close(fd)


def read_all_fd(fd: int) -> bytes:
    """Every byte left on the open descriptor ``fd``, which stays open."""
    if stat.S_ISREG(os.fstat(fd).st_mode):
        with open(fd, "rb", closefd=False) as file:
            return file.read()
    waiter = select.poll()
    waiter.register(fd, select.POLLIN | select.POLLPRI)
    chunks: list[bytes] = []
    while True:
        # (poll ends early for a signal whose handler raises; else Python runs it on return)
        if not waiter.poll(POLL_SECONDS * 1000):
            continue
        chunk = os.read(fd, _CHUNK)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
