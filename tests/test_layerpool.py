"""Layers (or layout blobs) run by layerpool: one on the calling thread, a few a thread each
at once, more through a pool; results by index, the first failure in layer order raised."""

from __future__ import annotations

import threading
import time

import pytest

from closurepack.layerpool import run_layers


def _named(value: int) -> tuple[int, str]:
    return value, threading.current_thread().name


def test_one_runs_here_and_a_few_on_a_thread_each() -> None:
    here = threading.current_thread().name
    assert run_layers({4: lambda: _named(4)}, sizes=[1] * 5, jobs=8) == {4: (4, here)}
    work = {i: (lambda i=i: _named(i)) for i in (0, 2, 3)}
    got = run_layers(work, sizes=[1, 1, 1, 1], jobs=3, thread_name="blob")
    assert {i: v for i, (v, _) in got.items()} == {0: 0, 2: 2, 3: 3}
    assert sorted(name for _, name in got.values()) == ["blob_0", "blob_1", "blob_2"]
    # more than jobs: a pool's threads, as ever
    many = {i: (lambda i=i: _named(i)) for i in range(5)}
    got = run_layers(many, sizes=[1] * 5, jobs=2, thread_name="blob")
    assert {i: v for i, (v, _) in got.items()} == {i: i for i in range(5)}
    assert {name.rsplit("_", 1)[0] for _, name in got.values()} == {"blob"}


def test_a_few_at_once_raise_the_first_failure_in_layer_order_after_all_ended() -> None:
    ended: list[int] = []

    def fail(index: int, delay: float) -> int:
        time.sleep(delay)
        ended.append(index)
        raise ValueError(f"layer {index}")

    def slow() -> int:
        time.sleep(0.2)
        ended.append(1)
        return 1

    work = {0: lambda: fail(0, 0.1), 1: slow, 2: lambda: fail(2, 0.0)}
    with pytest.raises(ValueError, match="layer 0"):
        run_layers(work, sizes=[1, 1, 1], jobs=4)
    assert sorted(ended) == [0, 1, 2]
