"""docs/reliability.md gives the figures scripts/reliability_counts.py computes (those that
change only with the compression and fuzz tests; the rest are dated by the page)."""

from __future__ import annotations

import importlib.util
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
    assert f"| {damaged['flipped bytes']:,} |" in doc
    assert f"| {damaged['truncations']:,} |" in doc
    assert f"{test_fuzz_parsers.NORMAL} examples per fuzzer" in doc
    assert f"{test_fuzz_parsers.SLOW:,} in the `slow` run" in doc
