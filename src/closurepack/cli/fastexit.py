"""Ending the ``closurepack`` process without the interpreter's teardown.

A command's last tens of milliseconds go to CPython freeing every module, object and
thread state one by one, work that the kernel does at once when the process ends; for a
re-push that needs nothing uploaded this is a sixth of the run. :func:`exit_process` runs
what the program asked to run at exit (``atexit`` handlers), flushes the standard
streams, and ends the process straight away; whenever that would not be safe (another
thread still alive, a standard stream that cannot be flushed) it ends the usual way."""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn

__all__ = [
    "exit_process",
]


def _flushed() -> bool:
    """Flush stdout and stderr; False when either cannot take what it holds."""
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        try:
            stream.flush()
        except (OSError, ValueError):
            return False
    return True


def exit_process(status: int) -> NoReturn:
    """End the process with *status*, skipping the interpreter's teardown when it is safe."""
    if threading.active_count() != 1 or not _flushed():
        # Another thread may still be writing (a file, a socket), or a stream is broken
        # (its error belongs to the usual exit's report): the usual way, with every check.
        sys.exit(status)
    atexit._run_exitfuncs()
    if not _flushed():
        sys.exit(status)
    os._exit(status)
