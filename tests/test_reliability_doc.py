"""docs/reliability.md gives the figures scripts/reliability_counts.py computes (those that
change only with the compression and fuzz tests; the rest are dated by the page)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import test_fuzz_parsers

ROOT = Path(__file__).resolve().parents[1]


def test_damage_and_fuzz_figures_match_the_suite() -> None:
    spec = importlib.util.spec_from_file_location("counts", ROOT / "scripts/reliability_counts.py")
    assert spec is not None
    assert spec.loader is not None
    counts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(counts)
    doc = (ROOT / "docs" / "reliability.md").read_text()
    damaged = counts.damaged_bytes()
    for what, label in (("flipped bytes", "single-byte flips"), ("truncations", "truncations")):
        # zstd's blob is the same on every machine: its count is exact; the gzip blob's length
        # follows the CPU's ISA-L kernels, so the total is the page's within 1%.
        row = re.search(rf"\| {label} [^|]*\| ([\d,]+) \(zstd ([\d,]+), gzip [^|]*\) \|", doc)
        assert row, f"no row for {what} in docs/reliability.md"
        total, zstd = (int(group.replace(",", "")) for group in row.groups())
        assert zstd == damaged[f"zstd {what}"]
        assert abs(total - damaged[what]) <= total // 100
    assert f"{test_fuzz_parsers.NORMAL} examples per fuzzer" in doc
    assert f"{test_fuzz_parsers.SLOW:,} in the `slow` run" in doc
