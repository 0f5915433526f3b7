"""``--min-layer-size``: small layers folded where their change-set lies, never reused ones,
images planned together kept apart, freed budget handed back to the strategy; the CLI option."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clistore import run
from closurepack import planner
from closurepack.fleetregions import image_masks
from closurepack.graph import Closure, StoreItem
from closurepack.planner import DEFAULT_MIN_LAYER_SIZE, min_size_for, plan_closures
from closurepack.strategies import get_strategy, minsize
from closurepack.strategies.economy import MergeCosts, hit_table, stored_bytes
from closurepack.strategies.minsize import merge_small_layers
from test_strategies import dag_closures, store_path

KIB = 1024
MIB = 1024 * 1024


def closure(spec: dict[str, tuple[int, list[str]]]) -> tuple[Closure, dict[str, str]]:
    """Items named in ``spec`` (name -> size, references by name); also name -> path."""
    paths = {name: store_path(number, name) for number, name in enumerate(spec, 1)}
    items = [
        StoreItem(paths[name], size, tuple(paths[r] for r in refs))
        for name, (size, refs) in spec.items()
    ]
    return Closure.from_items(items, source="test"), paths


def sizes(c: Closure, groups: list[tuple[str, ...]]) -> list[int]:
    return [sum(c.items[p].nar_size for p in g) for g in groups]


def test_a_tiny_layer_joins_the_layer_that_depends_on_it() -> None:
    # "conf" is tiny and only "app" refers to it: merged into app's layer it ships only when
    # app ships anyway (app changes whenever conf does); in "other" it would make other ship
    # with every change of conf, in "base" it would ship with every change of base.
    c, p = closure(
        {
            "base": (40 * MIB, []),
            "conf": (2 * KIB, ["base"]),
            "app": (30 * MIB, ["conf", "base"]),
            "other": (30 * MIB, ["base"]),
        }
    )
    groups = [(p["base"],), (p["conf"],), (p["other"],), (p["app"],)]
    merged = merge_small_layers(c, groups, min_size=100 * KIB)
    assert merged == [(p["base"],), (p["other"],), tuple(sorted((p["conf"], p["app"])))]


def test_nothing_to_do_leaves_the_plan_as_it_is() -> None:
    c, p = closure({"a": (5, []), "b": (7, ["a"])})
    groups = [(p["a"],), (p["b"],)]
    assert merge_small_layers(c, groups, min_size=0) == groups
    assert merge_small_layers(c, groups, min_size=5) == groups
    assert merge_small_layers(c, [(p["a"], p["b"])], min_size=10**9) == [(p["a"], p["b"])]
    assert merge_small_layers(c, groups, min_size=10**9) == [(p["a"], p["b"])]


@settings(max_examples=80, deadline=None)
@given(
    c=dag_closures(max_items=20),
    min_size=st.sampled_from([1, 1000, 10**6, 10**7, 10**9]),
    seed=st.integers(0, 10**6),
)
def test_merged_plans_keep_every_item_once_and_no_small_layer(
    c: Closure, min_size: int, seed: int
) -> None:
    paths = sorted(c.items)
    count = 1 + seed % len(paths)
    groups = [tuple(paths[k::count]) for k in range(count)]
    merged = merge_small_layers(c, groups, min_size=min_size)
    assert sorted(p for g in merged for p in g) == paths
    assert all(merged)
    assert len(merged) <= len(groups)
    if len(merged) > 1:
        assert min(sizes(c, merged)) >= min_size
    # The layers left untouched keep their order.
    untouched = [g for g in groups if g in merged]
    assert [g for g in merged if g in untouched] == untouched


@given(
    c=dag_closures(max_items=20),
    min_size=st.sampled_from([1, 1000, 10**6, 10**7, 10**9]),
    seed=st.integers(0, 10**6),
)
def test_one_image_merges_as_the_general_rule_does(c: Closure, min_size: int, seed: int) -> None:
    # One image takes a written-out loop (no image masks); every item held by one image of a
    # fleet goes the general way (partners by image, MergeCosts.cost): the same merges.
    paths = sorted(c.items)
    count = 1 + seed % len(paths)
    groups = [tuple(paths[k::count]) for k in range(count)]
    alone = merge_small_layers(c, groups, min_size=min_size)
    assert alone == merge_small_layers(c, groups, min_size=min_size, images=dict.fromkeys(paths, 1))


@given(
    c=dag_closures(max_items=20),
    min_size=st.sampled_from([1, 1000, 10**6, 10**7]),
    seed=st.integers(0, 10**6),
)
def test_small_closures_find_the_layers_down_sets_as_large_ones_do(
    c: Closure, min_size: int, seed: int
) -> None:
    # Up to SMALL_CLOSURE items a layer's down-set is the union of its items' bitsets; above
    # it, a walk from the layer's items: the same sets, so the same merges.
    paths = sorted(c.items)
    count = 1 + seed % len(paths)
    groups = [tuple(paths[k::count]) for k in range(count)]
    small = merge_small_layers(c, groups, min_size=min_size)
    fresh = Closure.from_items(list(c.items.values()), source="test")  # (no memo kept)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(minsize, "SMALL_CLOSURE", 0)
        assert merge_small_layers(fresh, groups, min_size=min_size) == small


def test_equal_costs_go_to_the_nearer_layer_then_the_lower() -> None:
    # Four unrelated items: merging the tiny one into any other costs the same, so it joins
    # its nearer neighbour, of two as near the lower one.
    c, p = closure({"a": (50 * KIB, []), "b": (50 * KIB, []), "t": (1, []), "d": (50 * KIB, [])})
    groups = [(p["a"],), (p["b"],), (p["t"],), (p["d"],)]
    merged = merge_small_layers(c, groups, min_size=2)
    assert merged == [(p["a"],), tuple(sorted((p["b"], p["t"]))), (p["d"],)]


def test_layers_reused_from_previous_are_never_merged() -> None:
    c, p = closure(
        {
            "tiny": (10, []),
            "big": (10 * MIB, ["tiny"]),
            "app": (10 * MIB, ["big"]),
        }
    )
    old = plan_closures([c], strategy="per-item", max_layers=10, min_layer_size=0)
    assert next(layer.paths for layer in old.images[0].layers) == (p["tiny"],)
    again = plan_closures([c], strategy="per-item", max_layers=10, previous=[old])
    assert [layer.paths for layer in again.images[0].layers] == [
        layer.paths for layer in old.images[0].layers
    ]
    fresh = plan_closures([c], strategy="per-item", max_layers=10, min_layer_size=MIB)
    assert all(layer.size >= MIB for layer in fresh.images[0].layers)


def test_a_tiny_layer_of_one_image_does_not_join_a_layer_shared_with_another() -> None:
    # "mine" is tiny and held by image A only. The layer "lib" is shared by A and B, "a" by A
    # only; "mine" refers to lib, so the cost model alone would put it in lib's layer, but that
    # would split lib's shared layer into two distinct ones (lib, lib + mine).
    c_a, p = closure(
        {
            "lib": (20 * MIB, []),
            "mine": (KIB, ["lib"]),
            "a": (20 * MIB, ["lib"]),
        }
    )
    b_item = StoreItem(store_path(99, "b"), 20 * MIB, (p["lib"],))
    union = Closure.from_items([*c_a, b_item], source="both")
    images = {p["lib"]: 0b11, p["mine"]: 0b01, p["a"]: 0b01, b_item.path: 0b10}
    groups = [(p["lib"],), (p["mine"],), (b_item.path,), (p["a"],)]
    merged = merge_small_layers(union, groups, min_size=100 * KIB, images=images)
    assert merged == [(p["lib"],), (b_item.path,), (p["mine"], p["a"])]
    # Without the images, a and b cost the same and mine would join b, the nearer: a layer of
    # image B's, which would leave image A's piece of it as small as before.
    alone = merge_small_layers(union, groups, min_size=100 * KIB)
    assert alone == [(p["lib"],), tuple(sorted((p["mine"], b_item.path))), (p["a"],)]


def popular_tiny_closure() -> tuple[Closure, dict[str, str]]:
    """Three tiny items every app refers to, six large apps: popularity gives each tiny item
    a layer of its own."""
    spec: dict[str, tuple[int, list[str]]] = {f"t{k}": (10, []) for k in range(3)}
    for k in range(6):
        spec[f"a{k}"] = ((k + 1) * MIB, ["t0", "t1", "t2"])
    return closure(spec)


def test_layers_freed_by_merging_go_back_to_the_strategy() -> None:
    c, _ = popular_tiny_closure()
    plan = plan_closures([c], strategy="popularity", max_layers=6, min_layer_size=KIB)
    layers = plan.images[0].layers
    # Budget 5: popularity alone makes t0, t1, t2, a5 and the rest; merged that is two layers,
    # and asked again for 8 the strategy fills all 5 with the tiny ones folded in.
    assert len(layers) == 5
    assert all(layer.size >= KIB for layer in layers)


def test_without_refill_the_freed_layers_stay_unused(monkeypatch: pytest.MonkeyPatch) -> None:
    c, _ = popular_tiny_closure()
    monkeypatch.setattr(planner, "REFILL_ROUNDS", 0)
    plan = plan_closures([c], strategy="popularity", max_layers=6, min_layer_size=KIB)
    assert len(plan.images[0].layers) < 5


def test_the_default_is_lowered_for_small_images() -> None:
    assert min_size_for(10**12, 99) == DEFAULT_MIN_LAYER_SIZE
    assert min_size_for(4 * 99 * 1000, 99) == 1000
    assert min_size_for(0, 99) == 0
    assert min_size_for(10**12, 99, items=99) == 0  # every item fits a layer of its own
    assert min_size_for(10**12, 99, items=100) == DEFAULT_MIN_LAYER_SIZE
    c, _ = popular_tiny_closure()  # 21 MiB in 5 layers: the default is 256 KiB here
    default = plan_closures([c], strategy="popularity", max_layers=6)
    assert all(layer.size >= DEFAULT_MIN_LAYER_SIZE for layer in default.images[0].layers)
    none = plan_closures([c], strategy="popularity", max_layers=6, min_layer_size=0)
    assert min(layer.size for layer in none.images[0].layers) == 10


@pytest.mark.parametrize("bad", [-1, True, 1.5, "1K"])
def test_bad_minimum_is_refused(bad: object) -> None:
    c, _ = popular_tiny_closure()
    with pytest.raises(planner.PlanError, match="minimum layer size"):
        plan_closures([c], min_layer_size=bad)  # type: ignore[arg-type]


def write(path: Path, c: Closure) -> Path:
    entries = [{"path": i.path, "narSize": i.nar_size, "references": list(i.references)} for i in c]
    path.write_text(json.dumps(entries))
    return path


def test_cli_plan_and_build_take_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c, _ = popular_tiny_closure()
    file = write(tmp_path / "c.json", c)
    argv = ["plan", "--closure", file, "--strategy", "popularity", "--max-layers", "6", "--json"]
    code, out, err = run([*argv, "--min-layer-size", "1K"], capsys)
    assert code == 0, err
    layers = json.loads(out)["images"][0]["layers"]
    assert len(layers) == 5
    assert min(layer["size"] for layer in layers) >= 1024
    code, out, err = run([*argv, "--min-layer-size", "none"], capsys)
    assert code == 0, err
    assert min(layer["size"] for layer in json.loads(out)["images"][0]["layers"]) == 10

    code, out, err = run([*argv, "--min-layer-size", "lots"], capsys)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert "--min-layer-size 'lots'" in err

    plan_file = tmp_path / "plan.json"
    plan_file.write_text(out or json.dumps(layers))
    dest = tmp_path / "img.tar"
    code, out, err = run(
        ["build", "--plan", plan_file, "--min-layer-size", "1K", "-o", f"docker-archive:{dest}"],
        capsys,
    )
    assert code == 2
    assert "--min-layer-size" in err
    assert err.count("\n") == 1
    assert not dest.exists()


def two_disjoint_images() -> list[Closure]:
    images = []
    for image in range(2):
        items = [
            StoreItem(store_path(10 * image + k, f"i{image}x{k}"), (k + 1 + 7 * image) * MIB, ())
            for k in range(6)
        ]
        images.append(Closure.from_items(items, source=f"image{image}"))
    return images


def per_image_counts(images: list[Closure]) -> list[int]:
    """Layers each image gets of the union's plan (planner step 4, the path taken when several
    closures reuse ``--previous`` layers): the layers holding one of its items."""
    groups = planner._plan_rest(
        Closure.union(images),
        get_strategy("stable"),
        room=4,
        name="stable",
        min_size=0,
        images=image_masks(images),
    )
    return [sum(1 for g in groups if set(g) & set(image.items)) for image in images]


def test_images_planned_together_get_more_of_their_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The union has 12 items; planned for 4 layers, each image holds only some of them. The
    # strategy is asked again with more layers as long as every image stays within 4.
    images = two_disjoint_images()
    counts = per_image_counts(images)
    monkeypatch.setattr(planner, "REFILL_ROUNDS", 0)
    first = per_image_counts(images)
    assert max(counts) == 4
    assert sum(counts) > sum(first)


def test_merge_costs_are_the_model_cost_it_adds() -> None:
    """MergeCosts (shared by stable's greedy and this merge): the cost of merging two layers is
    the model cost after minus before, stored bytes included, and a merge updates the figures."""
    hit = hit_table(6)
    sizes, sets = [100, 40, 7], [0b000011, 0b000110, 0b110000]
    pieces = [{1: 100}, {1: 30, 3: 10}, {2: 7}]

    def model(layers: list[tuple[int, int, dict[int, int]]]) -> float:
        return sum(s * hit[d.bit_count()] + stored_bytes(p) for s, d, p in layers)

    merging = MergeCosts(hit, sizes, sets, pieces)
    before = model([(100, 0b11, {1: 100}), (40, 0b110, {1: 30, 3: 10}), (7, 0b110000, {2: 7})])
    after = model([(140, 0b111, {1: 130, 3: 10}), (7, 0b110000, {2: 7})])
    assert merging.cost(0, 1) == pytest.approx(after - before)
    # A layer of image 1's items joined with one held by images 1 and 2: image 1's part of
    # it (110 bytes) and image 2's (10 bytes) are stored apart, 10 bytes once more.
    shared = MergeCosts(hit, [100, 10], [0b1, 0b10], [{1: 100}, {3: 10}])
    assert shared.cost(0, 1) == pytest.approx(110 * hit[2] - 110 * hit[1] + 10)
    merging.merge(0, 1)
    assert (merging.sizes[0], merging.sets[0], merging.counts[0]) == (140, 0b111, 3)
    assert merging.pieces[0] == {1: 130, 3: 10}
    assert merging.stored[0] == stored_bytes({1: 130, 3: 10})
