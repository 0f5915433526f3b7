"""readall: whole inputs from regular files, pipes and fifos, and a signal that came early."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from closurepack.readall import POLL_SECONDS, read_all, read_all_fd


class SignalledError(Exception):
    pass


@pytest.fixture
def usr1_raises() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise SignalledError

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_regular_file_and_pipe_give_every_byte(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    (tmp_path / "f").write_bytes(data)
    assert read_all(tmp_path / "f") == data
    read_end, write_end = os.pipe()

    def write() -> None:
        with open(write_end, "wb") as out:
            for start in range(0, len(data), 70_000):
                out.write(data[start : start + 70_000])
                out.flush()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert read_all_fd(read_end) == data
    finally:
        writer.join()
        os.close(read_end)


def test_missing_file_is_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_all(tmp_path / "absent")


def test_signal_noted_before_the_read_still_ends_it(tmp_path: Path, usr1_raises: None) -> None:
    """The signal is taken by another thread, so the main thread's read never sees EINTR; only
    Python's pending flag is set (as when Ctrl-C comes just before the read). The read must end
    anyway; if it does not, the watchdog closes the writer after 20 s and the read returns."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    opened = threading.Event()
    done = threading.Event()

    def other_thread() -> None:
        writer = os.open(fifo, os.O_WRONLY)  # waits for the main thread's open
        opened.set()
        time.sleep(POLL_SECONDS * 2)  # the main thread now waits for data
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
        done.wait(20)
        os.close(writer)

    thread = threading.Thread(target=other_thread)
    thread.start()
    started = time.monotonic()
    try:
        with pytest.raises(SignalledError):
            read_all(fifo)
    finally:
        done.set()
        thread.join()
    assert opened.is_set()
    assert time.monotonic() - started < 10
