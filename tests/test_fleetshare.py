"""Joint planning across regions (closurepack.fleetshare): the guarantee, and what it stores."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from benchload import bench_module
from closurepack.fleetregions import image_masks
from closurepack.fleetshare import plan_across
from closurepack.fleetunion import growth
from closurepack.graph import Closure
from closurepack.planner import plan_closures, store_budget
from closurepack.strategies._dag import Dag
from closurepack.strategies.economy import stored_bytes
from fleetgen import fleets
from slowcount import shipped_per_change


@settings(max_examples=60, deadline=None)
@given(closures=fleets(least=3, most=30), max_layers=st.integers(2, 9))
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

    def planned() -> list[list[list[int]]] | None:  # fresh inputs for each call
        return plan_across(
            dag,
            [masks[p] for p in dag.paths],
            [[i] for i in range(len(dag))],
            [[[index[p] for p in layer] for layer in own] for own in alone],
            room,
        )

    found = planned()
    assert found is not None
    for closure, own, layers in zip(closures, alone, found, strict=True):
        paths = [[dag.paths[i] for i in layer] for layer in layers]
        assert sorted(p for layer in paths for p in layer) == sorted(closure.items)
        assert all(paths)
        assert len(paths) <= room
        assert shipped_per_change(closure, paths) <= shipped_per_change(closure, own)
    assert planned() == found


def _generated(count: int, seed: int) -> list[Closure]:
    """The base closures of ``bench/economy_bench.py``'s held-out apps."""
    return [pair.base for pair in bench_module("economy_bench").generated_pairs(count, seed)]


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


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.integers(1, 63), st.integers(0, 10**6), min_size=1, max_size=6),
    st.integers(1, 63),
    st.integers(0, 10**6),
)
def test_a_layers_growth_is_what_its_stored_bytes_gain(
    pieces: dict[int, int], mask: int, size: int
) -> None:
    # Checked against the stored bytes counted afresh (themselves checked against a brute
    # count of restrictions in tests/test_fleetrepair.py).
    joined = dict(pieces)
    joined[mask] = joined.get(mask, 0) + size
    constant, count = growth(pieces, mask, stored_bytes(pieces))
    assert constant + count * size == stored_bytes(joined) - stored_bytes(pieces)
