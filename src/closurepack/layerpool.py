"""Layers built on builder threads, started in the order a build needs: largest first (the
last to finish are small, so no core idles long at the end), or for a stream bottom first
with the few that would end last started early (:func:`stream_order`). The first failure
stops the layers not started by then. A single layer is built on the calling thread; no
more than ``jobs`` start at once, each on a thread of its own, with no pool."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

__all__ = [
    "run_layers",
    "stream_order",
]

_T = TypeVar("_T")


def run_layers(
    work: Mapping[int, Callable[[], _T]],
    *,
    sizes: Sequence[int],
    jobs: int,
    bottom_first: bool = False,
    thread_name: str = "layer",
) -> dict[int, _T]:
    """Each of ``work``'s functions (by layer index into ``sizes``, the planned sizes of every
    layer of the image) called, ``jobs`` at a time on builder threads (named
    ``THREAD_NAME_N``), started largest first or, with ``bottom_first``, in
    :func:`stream_order`; their results by index. A single one runs on this thread, and no
    more than ``jobs`` a thread each (no pool to start). The first failure is raised (the
    first in layer order when several failed), and the functions not started by then never
    start."""
    if len(work) == 1:
        ((index, only),) = work.items()
        return {index: only()}
    if not work:
        return {}
    if len(work) <= jobs:
        return _all_at_once(work, thread_name)
    from concurrent.futures import (  # noqa: PLC0415 - a pool only for several layers
        FIRST_EXCEPTION,
        CancelledError,
        ThreadPoolExecutor,
        wait,
    )

    failed = threading.Event()

    def guarded(index: int) -> _T:
        if failed.is_set():
            raise CancelledError
        try:
            return work[index]()
        except BaseException:
            failed.set()
            raise

    jobs = max(1, min(jobs, len(work)))
    order = list(range(len(sizes)))
    if bottom_first:
        order = stream_order(sizes, jobs=jobs)
    else:
        order.sort(key=lambda i: -sizes[i])  # (a stable sort: ties bottom first)
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix=thread_name) as pool:
        submitted = {i: pool.submit(guarded, i) for i in order if i in work}
        indexes = sorted(submitted)
        futures = [submitted[i] for i in indexes]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:
                if future.done() and not future.cancelled():
                    error = future.exception()
                    if error is not None and not isinstance(error, CancelledError):
                        raise error
            return {i: future.result() for i, future in zip(indexes, futures, strict=True)}
        finally:
            failed.set()
            for future in futures:
                future.cancel()


def _all_at_once(work: Mapping[int, Callable[[], _T]], thread_name: str) -> dict[int, _T]:
    """Every one of ``work``'s functions started at once, each on a thread of its own (the
    pool's module and its queue cost more than these few threads: a warm rebuild's layout
    places its new config and manifest so); their results by index, the first failure in
    layer order raised once all have ended."""
    results: dict[int, _T] = {}
    errors: dict[int, BaseException] = {}

    def run(index: int) -> None:
        try:
            results[index] = work[index]()
        except BaseException as exc:  # (raised on the calling thread below)
            errors[index] = exc

    threads = [
        threading.Thread(target=run, args=(index,), name=f"{thread_name}_{n}")
        for n, index in enumerate(sorted(work))
    ]
    try:
        for thread in threads:
            thread.start()
    finally:  # (an interrupt here still waits for what has started, as a pool does)
        for thread in threads:
            if thread.ident is not None:
                thread.join()
    if errors:
        raise errors[min(errors)]
    return results


def stream_order(sizes: Sequence[int], *, jobs: int) -> list[int]:
    """The order to start layers of these planned ``sizes`` (bottom first) in when they are
    streamed: the bottom one first (the stream can start), then every layer that, started in
    its turn, would still be building after the layers above it are done (larger than they
    are together, shared among the other ``jobs - 1`` builders), largest first; then the
    rest bottom first. Bottom first alone ends with the top layers (often the largest: an
    application over its libraries) built one at a time while the other builders idle; one
    builder takes them early instead, while the others feed the stream from the bottom. With
    one job the order is bottom first."""
    count = len(sizes)
    if jobs < 2 or count < 3:
        return list(range(count))
    early: list[int] = []
    above = 0
    for index in range(count - 1, 0, -1):
        if sizes[index] * (jobs - 1) > above:
            early.append(index)
        above += sizes[index]
    early.sort(key=lambda i: -sizes[i])  # (stable: ties top first, as found)
    chosen = set(early)
    return [0, *early, *(i for i in range(1, count) if i not in chosen)]
