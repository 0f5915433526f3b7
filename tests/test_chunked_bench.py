"""bench/chunked_bench.py: the update it makes (who moves, what is rewritten, what changes), the
file floor and the goals, on a tiny store with answers known by hand."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import chunked_bench as cb

S = "/nix/store/"
LIBC = S + "1" * 32 + "-libc-1"
LIB = S + "2" * 32 + "-libfoo-1"
MID = S + "3" * 32 + "-mid-1"
APP = S + "4" * 32 + "-app-1"
OTHER = S + "5" * 32 + "-other-1"
REFS = {LIBC: [], LIB: [LIBC], MID: [LIB, LIBC], APP: [MID, LIB], OTHER: [LIBC]}


def _closure() -> list[dict[str, object]]:
    return [
        {"path": p, "narSize": 100 * (i + 1), "narHash": "x", "references": sorted({*r, p})}
        for i, (p, r) in enumerate(REFS.items())
    ]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    for path in REFS:
        top = root / path.lstrip("/")
        (top / "lib").mkdir(parents=True)
        (top / "lib" / "big").write_bytes(bytes(range(256)) * 400)  # 100 KiB
        (top / "small").write_text(path.rsplit("-", 2)[-2] + "\n")
        (top / "lib" / "link").symlink_to("big")
    (root / "closure.json").write_text(json.dumps(_closure()))
    return root


def test_referrers_are_transitive() -> None:
    assert cb.referrers(_closure(), LIB) == {MID, APP}
    assert cb.referrers(_closure(), LIBC) == {LIB, MID, APP, OTHER}
    assert cb.referrers(_closure(), APP) == set()


def test_pick_library_by_name_or_by_items_above() -> None:
    assert cb.pick_library(_closure(), "mid") == MID
    assert cb.pick_library(_closure(), None, above=2) == LIB
    with pytest.raises(SystemExit):
        cb.pick_library(_closure(), "nothing-like-it")


def test_make_update_renames_rewrites_and_replaces(store: Path, tmp_path: Path) -> None:
    before, after = cb.make_update(store, _closure(), tmp_path / "work", LIB)
    assert set(after.renamed) == {LIB, MID, APP}
    new_lib, new_mid, new_app = (after.renamed[p] for p in (LIB, MID, APP))
    # before: the big files above the library name its moved references; nothing else changed
    big_mid = (before.root / MID.lstrip("/") / "lib" / "big").read_bytes()
    assert big_mid.count(LIB.encode()) == 2
    assert big_mid.count(MID.encode()) == 0
    big_app = (before.root / APP.lstrip("/") / "lib" / "big").read_bytes()
    assert big_app.count(MID.encode()) == 2
    assert big_app.count(LIB.encode()) == 2
    original = (store / LIBC.lstrip("/") / "lib" / "big").read_bytes()
    assert (before.root / LIBC.lstrip("/") / "lib" / "big").read_bytes() == original
    assert (before.root / LIB.lstrip("/") / "lib" / "big").read_bytes() == original
    # after: old hashes rewritten to new ones, sizes kept; the library's own bytes replaced
    new_big_app = (after.root / new_app.lstrip("/") / "lib" / "big").read_bytes()
    assert len(new_big_app) == len(big_app)
    assert new_big_app.count(new_mid.encode()) == 2
    assert new_big_app.count(new_lib.encode()) == 2
    assert MID.encode() not in new_big_app
    new_big_lib = (after.root / new_lib.lstrip("/") / "lib" / "big").read_bytes()
    changed_bytes = sum(a != b for a, b in zip(new_big_lib, original, strict=True))
    assert changed_bytes == len(range(0, len(original), 4096))
    assert os.readlink(after.root / new_app.lstrip("/") / "lib" / "link") == "big"
    assert not (after.root / APP.lstrip("/")).exists()
    assert (after.root / OTHER.lstrip("/") / "small").read_text() == "other\n"
    # the closure names the new paths, and references follow
    closure = {o["path"]: o for o in json.loads(after.closure_file.read_text())}
    assert set(closure) == {LIBC, new_lib, new_mid, new_app, OTHER}
    assert sorted(closure[new_app]["references"]) == sorted([new_app, new_lib, new_mid])
    assert closure[new_app]["narHash"] != "x"
    assert closure[OTHER]["narHash"] == "x"
    # the changed files: the library's (3, one empty-free each) and the big files of mid and
    # app; the small files of mid and app are unchanged
    old = [str(o["path"]) for o in _closure()]
    count, floor = cb.file_floor(before.root, old, after.root, list(closure))
    cctx = zstandard.ZstdCompressor(level=3, write_checksum=True)
    expected = [
        new_big_lib,
        (after.root / new_lib.lstrip("/") / "small").read_bytes(),
        (after.root / new_mid.lstrip("/") / "lib" / "big").read_bytes(),
        new_big_app,
    ]
    assert count == len(expected)
    assert floor == sum(len(cctx.compress(d)) for d in expected)


def test_goals_pass_at_their_bounds_and_each_can_fail() -> None:
    good = cb.check_goals(
        fetched=110, storage_writer=100, floor=100, changed_layers=0, chunked_s=1.3, zstd_s=1.0
    )
    assert [g.verdict for g in good] == ["PASS", "PASS", "PASS"]
    bad = cb.check_goals(
        fetched=111, storage_writer=100, floor=90, changed_layers=0, chunked_s=1.31, zstd_s=1.0
    )
    assert [g.verdict for g in bad] == ["FAIL", "FAIL", "FAIL"]
    allowance = cb.check_goals(
        fetched=100 + 65536, storage_writer=10**9, floor=100 / 1.15, changed_layers=1,
        chunked_s=1, zstd_s=1,
    )  # fmt: skip
    assert allowance[1].verdict == "PASS"


def test_render_shows_every_row_against_the_floor() -> None:
    report = {
        "file_floor_bytes": 200,
        "rows": [["ours", 100], ["theirs", 400]],
        "goals": [{"name": "g", "verdict": "PASS", "detail": "d"}],
    }
    text = cb.render(report)
    assert "| ours | 100 | 0.00 | 0.50x |" in text
    assert "| theirs | 400 | 0.00 | 2.00x |" in text
    assert "| g | PASS | d |" in text
