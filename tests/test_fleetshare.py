"""Joint planning across regions (closurepack.fleetshare): the guarantee, and what it stores."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from closurepack.fleetregions import image_masks
from closurepack.fleetshare import plan_across
from closurepack.graph import Closure, StoreItem
from closurepack.planner import plan_closures, store_budget
from closurepack.strategies._dag import Dag
from slowcount import shipped_per_change

STORE = "/nix/store"


def path(k: int) -> str:
    return f"{STORE}/{k:032d}-p{k}"


@st.composite
def fleets(draw: st.DrawFn) -> list[Closure]:
    """2 to 4 images over one random DAG of up to 30 items, each the closure of a few."""
    count = draw(st.integers(3, 30))
    paths = [path(k) for k in range(count)]
    items = []
    for k, name in enumerate(paths):
        refs = draw(st.lists(st.sampled_from(paths[:k]), max_size=3, unique=True)) if k else []
        size = draw(st.sampled_from([0, 10, 1000, 5 * 10**5, draw(st.integers(0, 10**7))]))
        items.append(StoreItem(name, size, tuple(refs)))
    whole = Closure.from_items(items, source="fleet")
    chosen = []
    for _ in range(draw(st.integers(2, 4))):
        tops = draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3, unique=True))
        chosen.append(whole.restrict(whole.requisites(tops), source="image"))
    return chosen


@settings(max_examples=60, deadline=None)
@given(closures=fleets(), max_layers=st.integers(2, 9))
def test_every_image_is_within_its_budget_and_ships_no_more_than_alone(
    closures: list[Closure], max_layers: int
) -> None:
    union = Closure.union(closures, source="union")
    dag = Dag.from_closure(union)
    index = dag.index()
    masks = image_masks(closures)
    room = store_budget(max_layers)
    alone = [
        [
            list(layer.paths)
            for layer in plan_closures([c], strategy="stable", max_layers=max_layers)
            .images[0]
            .layers
        ]
        for c in closures
    ]
    found = plan_across(
        dag,
        [masks[p] for p in dag.paths],
        [[i] for i in range(len(dag))],
        [[[index[p] for p in layer] for layer in own] for own in alone],
        room,
    )
    assert found is not None
    for closure, own, layers in zip(closures, alone, found, strict=True):
        paths = [[dag.paths[i] for i in layer] for layer in layers]
        assert sorted(p for layer in paths for p in layer) == sorted(closure.items)
        assert all(paths)
        assert len(paths) <= room
        assert shipped_per_change(closure, paths) <= shipped_per_change(closure, own)
    again = plan_across(
        dag,
        [masks[p] for p in dag.paths],
        [[i] for i in range(len(dag))],
        [[[index[p] for p in layer] for layer in own] for own in alone],
        room,
    )
    assert again == found


def _generated(count: int, seed: int) -> list[Closure]:
    """The base closures of ``bench/economy_bench.py``'s held-out apps."""
    bench = Path(__file__).parent.parent / "bench" / "economy_bench.py"
    spec = importlib.util.spec_from_file_location("economy_bench", bench)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["economy_bench"] = module
    spec.loader.exec_module(module)
    return [pair.base for pair in module.generated_pairs(count, seed)]


def test_stable_images_planned_together_store_each_item_nearly_once() -> None:
    # The economy bench's held-out fleet (seed 1) at 100 layers: planned inside regions only,
    # stable's images kept their plans alone and stored 1.253 times their distinct items.
    closures = _generated(8, 1)
    plan = plan_closures(closures, strategy="stable", max_layers=100)
    sizes = {p: item.nar_size for c in closures for p, item in c.items.items()}
    distinct = {frozenset(layer.paths) for image in plan.images for layer in image.layers}
    stored = sum(sizes[p] for layer in distinct for p in layer)
    assert stored <= 1.01 * sum(sizes.values())
    for image, closure in zip(plan.images, closures, strict=True):
        alone = plan_closures([closure], strategy="stable", max_layers=100).images[0]
        assert len(image.layers) <= 99
        assert shipped_per_change(closure, [layer.paths for layer in image.layers]) <= (
            shipped_per_change(closure, [layer.paths for layer in alone.layers])
        )
