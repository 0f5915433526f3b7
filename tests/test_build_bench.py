"""The helpers of bench/build_bench.py: CPU limits and per-round ratios, the goals, and the
measuring of a streamed command (bytes and first byte through a pipe). The benchmark itself is
never run here."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import build_bench as bb


def _run(tool: str, wall: float, cpu: float) -> bb.RunResult:
    return bb.RunResult(tool=tool, ok=True, wall_s=wall, cpu_s=cpu)


def _history() -> dict[str, list[bb.RunResult]]:
    """Two rounds; the second on a machine twice as busy."""
    return {
        "sha256 tar": [_run("", 1.0, 0.5), _run("", 2.0, 1.0)],
        "zstd -3 -T1": [_run("", 3.0, 3.0), _run("", 6.0, 6.0)],
        "sha256 zst": [_run("", 0.5, 0.5), _run("", 1.0, 1.0)],
        "closurepack zstd": [_run("", 2.5, 4.4), _run("", 4.0, 8.8)],
        "closurepack warm zstd": [_run("", 0.1, 0.1), _run("", 0.3, 0.2)],
    }


def test_the_cpu_limit_is_its_parts_cpu_seconds_over_the_cores() -> None:
    history = _history()
    assert bb.baseline("zstd", history, 0, 2) == 2.0
    assert bb.baseline("zstd", history, 1, 2) == 4.0
    assert bb.baseline("zstd@1", history, 0, 2) == 4.0
    assert bb.baseline("gzip", history, 0, 2) is None  # its parts did not run
    assert bb.baseline("closurepack zstd", history, 1, 2) == 4.0  # a row: its wall time
    assert bb.limits(history, 2) == {"zstd": [2.0, 4.0], "zstd@1": [4.0, 8.0]}


def test_ratios_are_taken_round_by_round() -> None:
    history = _history()
    rows = {name: bb._pick(runs, "median") for name, runs in history.items()}
    bb.fill_ratios(rows, history, 2)
    assert rows["closurepack zstd"].ratios == [1.25, 1.0]
    assert rows["closurepack zstd"].cpu_ratios == [1.1, 1.1]
    assert rows["closurepack warm zstd"].ratios == [0.1 / 2.5, 0.3 / 4.0]
    verdicts = {t.name: t.verdict for t in bb.check_targets(rows)}
    assert verdicts["cold zstd <= 1.25x its 2-core CPU limit"] == "PASS"  # median 1.125
    assert verdicts["warm rebuild <= 0.03x cold zstd"] == "FAIL"  # median 0.0575
    assert verdicts["cold gzip <= 1.25x its 2-core CPU limit"] == "SKIP"


def test_a_streamed_command_is_drained_and_its_first_byte_timed(tmp_path: Path) -> None:
    r = bb.measure("stream", "sleep 0.3; head -c 3000000 /dev/zero", workdir=tmp_path, stream=True)
    assert r.ok, r.note
    assert r.output_bytes == 3_000_000
    assert r.first_byte_s is not None
    assert 0.3 <= r.first_byte_s <= r.wall_s
    failed = bb.measure("fails", "exit 3", workdir=tmp_path)
    assert not failed.ok
    assert "exit 3" in failed.note
