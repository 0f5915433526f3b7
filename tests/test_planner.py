"""The planner: budgets, several images sharing layers, reuse of previous plans, the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from closurepack.errors import PlanError
from closurepack.graph import Closure, StoreItem
from closurepack.plan import LayerPlan
from closurepack.planner import plan_closures, store_budget
from closurepack.plantable import format_plan_table, human_size
from closurepack.strategies import STRATEGIES
from fleetgen import fleets
from slowcount import one_change_average

DATA = Path(__file__).parent / "data" / "strategies"


def load(name: str) -> Closure:
    entries = json.loads((DATA / name).read_text())
    items = [StoreItem(e["path"], e["narSize"], tuple(e["references"])) for e in entries]
    return Closure.from_items(items, source=name)


def item_named(closure: Closure, prefix: str) -> str:
    return next(p for p, item in closure.items.items() if item.package_name.startswith(prefix))


def check_image(plan: LayerPlan, index: int, closure: Closure) -> None:
    image = plan.images[index]
    assert len(image.layers) <= store_budget(plan.max_layers)
    assert sorted(image.paths) == sorted(closure.items)
    for layer in image.layers:
        assert layer.paths
        assert layer.size == sum(closure.items[p].nar_size for p in layer.paths)


@pytest.mark.parametrize("bad", [0, 128, -1, True, "3"])
def test_max_layers_is_checked(bad: object) -> None:
    with pytest.raises(PlanError, match="--max-layers must be between 1 and 127"):
        plan_closures([load("git.base.json")], max_layers=bad)  # type: ignore[arg-type]


def test_errors() -> None:
    git = load("git.base.json")
    with pytest.raises(PlanError, match="unknown strategy 'zzz'"):
        plan_closures([git], strategy="zzz")
    with pytest.raises(PlanError, match="no closure"):
        plan_closures([])
    with pytest.raises(PlanError, match="2 image names given for 1 closures"):
        plan_closures([git], names=["a", "b"])
    with pytest.raises(PlanError, match="per-item"):
        plan_closures([git], strategy="per-item", max_layers=10)


def test_one_layer_budget_and_metadata() -> None:
    git = load("git.base.json")
    assert store_budget(1) == 1
    assert store_budget(2) == 1
    assert store_budget(100) == 99
    plan = plan_closures([git], max_layers=1, names=["git"])
    assert len(plan.images[0].layers) == 1
    check_image(plan, 0, git)
    plan = plan_closures([git], strategy="popularity", max_layers=7)
    assert (plan.strategy, plan.max_layers, plan.store_dir) == ("popularity", 7, "/nix/store")
    assert len(plan.images[0].layers) == 6
    assert plan.images[0].roots == git.roots
    check_image(plan, 0, git)
    # The plan survives its JSON round trip.
    assert LayerPlan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize("strategy", sorted(set(STRATEGIES) - {"per-item"}))
def test_a_sub_closure_gets_the_same_or_restricted_layers(strategy: str) -> None:
    git = load("git.base.json")
    perl = git.subclosure([item_named(git, "perl-5")], source="perl")
    plan = plan_closures([git, perl], strategy=strategy, max_layers=20, names=["git", "perl"])
    check_image(plan, 0, git)
    check_image(plan, 1, perl)
    assert [image.name for image in plan.images] == ["git", "perl"]
    # perl's layers restricted from git's would ship more per update than perl planned alone
    # (fewer layers for perl's items), so perl is planned itself (step 6): keeping the git
    # layers it holds whole, in git's order, when that ships no more than its plan alone.
    inside = [layer for layer in plan.images[0].layers if set(layer.paths) <= set(perl.items)]
    shared = [layer for layer in plan.images[1].layers if layer in plan.images[0].layers]
    assert set(inside) >= set(shared)
    if not shared:
        alone = plan_closures([perl], strategy=strategy, max_layers=20)
        assert plan.images[1].layers == alone.images[0].layers


@pytest.mark.parametrize("strategy", ["auto", "popularity", "size", "dominator"])
def test_two_overlapping_closures_share_identical_layers(strategy: str) -> None:
    python3 = load("python3.base.json")
    git = load("git.base.json")
    both = set(python3.items) & set(git.items)
    # No small-layer merge: it weighs the images a layer serves, which a union planned as one
    # closure cannot (tests/test_minsize.py covers the joint merge).
    plan = plan_closures([python3, git], strategy=strategy, max_layers=40, min_layer_size=0)
    check_image(plan, 0, python3)
    check_image(plan, 1, git)
    shared = set(plan.images[0].layers) & set(plan.images[1].layers)
    assert shared
    assert all(set(layer.paths) <= both for layer in shared)
    # Every layer of the union's plan that lies wholly inside both closures is, unchanged, a
    # layer of each image that kept its joint layers (an image whose joint layers would ship
    # more per update than alone is planned itself, step 6).
    union = plan_closures(
        [Closure.union([python3, git])], strategy=strategy, max_layers=40, min_layer_size=0
    )
    inside_both = [layer for layer in union.images[0].layers if set(layer.paths) <= both]
    assert inside_both
    for image in plan.images:
        if set(image.layers) & set(union.images[0].layers) == set(inside_both):
            assert set(inside_both) <= set(image.layers)


def test_images_planned_together_share_their_common_items_as_identical_layers() -> None:
    python3 = load("python3.base.json")
    nginx = load("nginx.base.json")
    shared = set(python3.items) & set(nginx.items)
    assert shared, "the two closures share libc and friends"
    # Alone, `single` puts each image in one layer, and libc and friends are stored twice.
    # Together, the items both hold are layers of both, and nothing is stored twice.
    plan = plan_closures([python3, nginx], strategy="single", max_layers=5)
    check_image(plan, 0, python3)
    check_image(plan, 1, nginx)
    common = set(plan.images[0].layers) & set(plan.images[1].layers)
    assert {p for layer in common for p in layer.paths} == shared
    distinct = {layer for image in plan.images for layer in image.layers}
    assert sum(layer.size for layer in distinct) == Closure.union([python3, nginx]).total_size


def test_update_reuses_unchanged_layers() -> None:
    base = load("git.base.json")
    updated = load("git.updated.json")
    old = plan_closures([base], max_layers=30)
    new = plan_closures([updated], max_layers=30, previous=[old])
    check_image(new, 0, updated)
    unchanged = [
        layer for layer in old.images[0].layers if all(p in updated.items for p in layer.paths)
    ]
    assert len(unchanged) >= 5
    reused = [layer for layer in new.images[0].layers if layer.origin == "previous"]
    assert [layer.paths for layer in reused] == [layer.paths for layer in unchanged]
    # Reused layers sit at the bottom, in their old order.
    assert list(new.images[0].layers[: len(reused)]) == reused


def test_reuse_is_capped_and_leaves_room_for_the_strategy() -> None:
    base = load("git.base.json")
    updated = load("git.updated.json")
    old = plan_closures([base], strategy="popularity", max_layers=60)
    new = plan_closures([updated], strategy="popularity", max_layers=5, previous=[old])
    check_image(new, 0, updated)
    reused = [layer for layer in new.images[0].layers if layer.origin == "previous"]
    assert len(reused) == 3
    # The largest reusable layers were kept.
    candidates = sorted(
        (layer for layer in old.images[0].layers if all(p in updated.items for p in layer.paths)),
        key=lambda layer: -layer.size,
    )
    assert sorted(layer.size for layer in reused) == sorted(c.size for c in candidates[:3])
    # With 29 store layers for 50 items, 28 one-item layers are reused and one is left for
    # the strategy; with room for all of them, the old plan comes back unchanged.
    again = plan_closures([base], strategy="auto", max_layers=30, previous=[old])
    origins = [layer.origin for layer in again.images[0].layers]
    assert origins == ["previous"] * 28 + [""]
    same = plan_closures([base], max_layers=60, previous=[old])
    assert [layer.paths for layer in same.images[0].layers] == [
        layer.paths for layer in old.images[0].layers
    ]


@st.composite
def closure_pairs(draw: st.DrawFn) -> tuple[Closure, Closure]:
    count = draw(st.integers(2, 20))
    paths = [f"/nix/store/{i:032d}-p{i}" for i in range(count)]
    items = []
    for i, path in enumerate(paths):
        refs = draw(st.lists(st.sampled_from(paths[:i]), max_size=3, unique=True)) if i else []
        items.append(StoreItem(path, draw(st.integers(0, 10**6)), tuple(refs)))
    whole = Closure.from_items(items, source="whole")
    part = whole.subclosure(draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3)))
    return whole, part


@settings(max_examples=60, deadline=None)
@given(
    pair=closure_pairs(),
    max_layers=st.integers(1, 12),
    strategy=st.sampled_from(sorted(set(STRATEGIES) - {"per-item"})),
)
def test_random_plans_keep_every_image_within_budget(
    pair: tuple[Closure, Closure], max_layers: int, strategy: str
) -> None:
    whole, part = pair
    plan = plan_closures([whole, part], strategy=strategy, max_layers=max_layers)
    check_image(plan, 0, whole)
    check_image(plan, 1, part)
    again = plan_closures([part], strategy=strategy, max_layers=max_layers, previous=[plan])
    check_image(again, 0, part)


def test_table() -> None:
    git = load("git.base.json")
    plan = plan_closures([git], strategy="size", max_layers=4, names=["git"])
    table = format_plan_table(plan, [git])
    lines = table.splitlines()
    assert lines[0].startswith("strategy size, max 4 layers")
    assert "image 0 git: 3 store layers, 50 items" in table
    biggest = max(git, key=lambda item: item.nar_size)
    assert lines[4].split() == [
        "1",
        "1",
        *human_size(biggest.nar_size).split(),
        biggest.package_name,
    ]
    assert lines[6].split()[:2] == ["3", "48"]
    assert lines[6].endswith(", ...")
    assert [human_size(n) for n in (0, 1023, 1536, 5 * 2**30)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "5.0 GiB",
    ]


@settings(max_examples=60, deadline=None)
@given(
    images=fleets(least=3, sizes=(10, 1000, 5 * 10**5, 3 * 10**6), names=5),
    strategy=st.sampled_from(["auto", "popularity", "size", "stable", "dominator"]),
    max_layers=st.integers(2, 8),
)
def test_no_image_ships_more_per_update_planned_jointly_than_alone(
    images: list[Closure], strategy: str, max_layers: int
) -> None:
    joint = plan_closures(images, strategy=strategy, max_layers=max_layers)
    for index, closure in enumerate(images):
        alone = plan_closures([closure], strategy=strategy, max_layers=max_layers)
        together = [layer.paths for layer in joint.images[index].layers]
        by_itself = [layer.paths for layer in alone.images[0].layers]
        assert one_change_average(closure, together) <= one_change_average(closure, by_itself) * (
            1 + 1e-12
        )
        check_image(joint, index, closure)
