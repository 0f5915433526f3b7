"""bench/economy_bench.py: its overhead definitions on small closures with answers known by hand."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from benchload import bench_module
from closurepack.graph import Closure, StoreItem

STORE = "/nix/store"


eb = bench_module("economy_bench")


def p(number: int, name: str) -> str:
    return f"{STORE}/{number:032d}-{name}"


def closure_of(spec: dict[str, tuple[int, list[str]]]) -> Closure:
    items = [StoreItem(path, size, tuple(refs)) for path, (size, refs) in spec.items()]
    return Closure.from_items(items, source="test")


# x and y are independent, r refers to both; paths sort x < y < r (per-item's layer order).
X, Y, R = p(1, "x"), p(2, "y"), p(3, "r")
FORK = closure_of({X: (100, []), Y: (300, []), R: (10, [X, Y])})


def test_changing_an_item_renames_it_and_everything_above_it_as_nix_would() -> None:
    new = eb.change_item(FORK, X, tag="t")
    kept = set(new.items) & set(FORK.items)
    assert kept == {Y}
    assert len(new) == 3
    by_name = {item.package_name: item for item in new}
    assert by_name["r"].references == tuple(sorted([by_name["x"].path, Y]))
    assert [by_name[n].nar_size for n in "xyr"] == [100, 300, 10]
    for item in new:
        assert len(item.hash_part) == 32
        assert set(item.hash_part) <= set(eb._NIX_BASE32)
    # Deterministic for a tag, different for another tag.
    assert eb.change_item(FORK, X, tag="t").items.keys() == new.items.keys()
    assert eb.change_item(FORK, X, tag="u").items.keys() != new.items.keys()
    # Changing the top item renames it alone.
    top = eb.change_item(FORK, R, tag="t")
    assert set(top.items) & set(FORK.items) == {X, Y}
    assert eb.changed_bytes(FORK, top) == 10


def test_nix_base32_is_nix_s() -> None:
    # nix-hash --type sha256 --to-base32 of sha256("").
    assert (
        eb.nix_base32(hashlib.sha256(b"").digest())
        == "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
    )


@pytest.mark.parametrize("max_layers", [1, 5, 100])
def test_single_layer_ships_everything(max_layers: int) -> None:
    new = eb.change_item(FORK, X, tag="t")
    tallies = eb.update_tallies(FORK, new, "single", max_layers)
    # One layer holds everything: a change ships the whole image, 410 bytes, for 110 changed.
    for figure in ("update", "+prev", "chain", "chain+prev"):
        assert tallies[figure] == eb.Tally(410, 110)
    assert tallies["update"].overhead == pytest.approx(410 / 110)


def test_per_item_ships_what_changed_and_chainid_ships_what_lies_above() -> None:
    new = eb.change_item(FORK, X, tag="t")
    tallies = eb.update_tallies(FORK, new, "per-item", 100)
    assert tallies["update"] == eb.Tally(110, 110)
    assert tallies["+prev"] == eb.Tally(110, 110)
    # Layers bottom first: x, y, r. x changed, so y above it is shipped again under ChainID.
    assert tallies["chain"] == eb.Tally(410, 110)
    # The top item changed alone: ChainID keeps the two layers below it.
    top = eb.change_item(FORK, R, tag="t")
    assert eb.update_tallies(FORK, top, "per-item", 100)["chain"] == eb.Tally(10, 10)


def test_previous_keeps_old_layers() -> None:
    # popularity with two store layers: the most popular item alone, the rest together.
    # Changing r (top) alone: without --previous the plan is the same shape, so only the
    # layer holding r is new; with --previous the same.
    new = eb.change_item(FORK, R, tag="t")
    tallies = eb.update_tallies(FORK, new, "popularity", 3)
    assert tallies["update"].changed == 10
    assert tallies["+prev"].shipped <= tallies["update"].shipped


def test_fleet_counts_distinct_layers_against_distinct_items() -> None:
    a, b = p(4, "a"), p(5, "b")
    first = closure_of({X: (100, []), a: (10, [X])})
    second = closure_of({X: (100, []), b: (30, [X])})
    # One layer per item: the shared x is one layer, stored once.
    assert eb.fleet_tally([first, second], "per-item", 100) == eb.Tally(140, 140)
    assert eb.fleet_alone_tally([first, second], "per-item", 100) == eb.Tally(140, 140)
    # One layer per image: {x, a} and {x, b} are different layers, x is stored twice.
    assert eb.fleet_alone_tally([first, second], "single", 100) == eb.Tally(240, 140)
    assert eb.fleet_alone_tally([first, second], "single", 100).overhead == pytest.approx(240 / 140)


def test_random_updates_sum_bytes_over_draws() -> None:
    rng = random.Random(7)
    draws = []
    for _ in range(20):  # as random_tally draws: an item, then the bits of its tag
        draws.append(rng.choice(sorted(FORK.items)))
        rng.getrandbits(64)
    changed = sum({X: 110, Y: 310, R: 10}[d] for d in draws)
    # single: every draw ships the whole 410 bytes.
    assert eb.random_tally(FORK, "single", 100, random.Random(7), 20) == eb.Tally(20 * 410, changed)
    # per-item: every draw ships exactly what changed.
    assert eb.random_tally(FORK, "per-item", 100, random.Random(7), 20) == eb.Tally(
        changed, changed
    )


def test_overhead_of_nothing() -> None:
    assert eb.Tally().overhead == 1.0
    assert eb.Tally(5, 0).overhead == float("inf")
    assert (eb.Tally(3, 2) + eb.Tally(1, 2)).overhead == 1.0


def write_closure(path: Path, closure: Closure) -> None:
    entries = [
        {"path": i.path, "narSize": i.nar_size, "references": list(i.references)} for i in closure
    ]
    path.write_text(json.dumps(entries))


def test_the_script_runs_on_a_data_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_closure(tmp_path / "fork.base.json", FORK)
    write_closure(tmp_path / "fork.updated.json", eb.change_item(FORK, Y, tag="real"))
    code = eb.main(
        [
            "--data",
            str(tmp_path),
            "--strategy",
            "single",
            "--strategy",
            "per-item",
            "--max-layers",
            "10",
            "--draws",
            "3",
            "--seed",
            "5",
            "--verbose",
            "--held-out",
            "2",
        ]
    )
    out = capsys.readouterr().out
    tuned, held_out = out.split("held out (generated, never tuned on):")
    assert "gen01" in held_out
    assert "gen01" not in tuned.split("held out:")[0]
    out = tuned
    assert code == 0
    assert "at commit " in out
    assert "seed 5" in out
    assert "3 draws per app" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if "     10 " in line}
    # single: y changed (310 of 410 bytes) and the one layer is shipped: 410 / 310.
    assert rows["single"][2] == "dflt"  # closurepack's default --min-layer-size
    assert float(rows["single"][3]) == pytest.approx(410 / 310, abs=1e-3)
    assert float(rows["per-item"][3]) == 1.0
    assert "fork" in out  # the per-app table


def test_a_base_without_its_update_is_refused(tmp_path: Path) -> None:
    write_closure(tmp_path / "fork.base.json", FORK)
    with pytest.raises(SystemExit, match=r"fork\.updated\.json: missing"):
        eb.load_pairs(tmp_path)
    with pytest.raises(SystemExit, match=r"no APP\.base\.json"):
        eb.load_pairs(tmp_path / "empty")


def test_generated_pairs_are_updates_of_one_distribution_and_repeatable() -> None:
    pairs = eb.generated_pairs(4, 7)
    assert [p.name for p in pairs] == ["gen00", "gen01", "gen02", "gen03"]
    again = eb.generated_pairs(4, 7)
    assert [sorted(p.base.items) for p in pairs] == [sorted(p.base.items) for p in again]
    assert [sorted(p.base.items) for p in eb.generated_pairs(4, 8)] != [
        sorted(p.base.items) for p in pairs
    ]
    for pair in pairs:
        assert len(pair.base.roots) == 1
        assert len(pair.updated) == len(pair.base)
        changed = set(pair.updated.items) - set(pair.base.items)
        # Whatever changed renamed everything above it: the app's root is among the new paths.
        if changed:
            assert set(pair.updated.roots) <= changed
    shared = set(pairs[0].base.items) & set(pairs[1].base.items)
    assert shared  # apps of one distribution share items, as the fleet figure needs
    assert any(set(p.updated.items) != set(p.base.items) for p in pairs)


def test_verdicts_compare_each_figure_with_its_goal_unrounded() -> None:
    totals = {
        "update": eb.Tally(1014, 1000),
        "+prev": eb.Tally(10101, 10000),  # 1.0101: printed as 1.010, still over 1.01
        "random": eb.Tally(1020, 1000),
        "fleet": eb.Tally(1500, 1000),
        "chain": eb.Tally(9000, 1000),  # no goal
    }
    row = eb.Row("stable", 100, totals, {}, 0.0)
    line = eb.verdicts(row)
    assert line.startswith("goals, stable (default) at 100 layers: ")
    assert "update 1.014 <= 1.02 PASS" in line
    assert "+prev 1.010 <= 1.01 FAIL" in line
    assert "random 1.020 <= 1.02 PASS" in line
    assert "fleet 1.500 <= 1.01 FAIL" in line
    assert "chain" not in line
    assert eb.verdicts(eb.Row("auto", 30, {"update": eb.Tally(1105, 1000)}, {}, 0.0)) == (
        "goals, auto at 30 layers: update 1.105 <= 1.10 FAIL"
    )
    assert eb.verdicts(eb.Row("auto", 50, totals, {}, 0.0)) == ""
