"""Joint planning of several images (closurepack.fleet): the floor, invariants, the guarantee."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from closurepack.fleetfloor import fleet_floor
from closurepack.fleetregions import image_masks
from closurepack.graph import Closure, StoreItem
from closurepack.plan import LayerPlan
from closurepack.planner import plan_closures, store_budget
from fleetgen import fleets, path
from slowcount import one_change_average


def stored(plan: LayerPlan, closures: Sequence[Closure]) -> int:
    """Bytes of the distinct layers of ``plan`` (a layer is its set of items)."""
    sizes = {p: item.nar_size for c in closures for p, item in c.items.items()}
    distinct = {frozenset(layer.paths) for image in plan.images for layer in image.layers}
    return sum(sizes[p] for layer in distinct for p in layer)


def partitions(items: list[str], most: int) -> Iterator[list[frozenset[str]]]:
    """Every partition of ``items`` into at most ``most`` blocks."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for smaller in partitions(rest, most):
        for k in range(len(smaller)):
            yield [*smaller[:k], smaller[k] | {first}, *smaller[k + 1 :]]
        if len(smaller) < most:
            yield [*smaller, frozenset([first])]


def least_stored(closures: Sequence[Closure], budget: int) -> int:
    """The fewest bytes of distinct layers of any plan within ``budget``, by brute force."""
    sizes = {p: item.nar_size for c in closures for p, item in c.items.items()}
    options = [list(partitions(sorted(c.items), budget)) for c in closures]
    best = None
    for choice in itertools.product(*options):
        distinct = {block for layers in choice for block in layers}
        total = sum(sizes[p] for block in distinct for p in block)
        best = total if best is None else min(best, total)
    assert best is not None
    return best


@settings(max_examples=80, deadline=None)
@given(closures=fleets(most=5, images=3), budget=st.integers(1, 3))
def test_the_floor_is_a_lower_bound_on_what_any_plan_stores(
    closures: list[Closure], budget: int
) -> None:
    floor = fleet_floor(closures, budget)
    assert floor.total == sum(
        item.nar_size for item in Closure.union(closures, source="u").items.values()
    )
    assert floor.total + floor.duplicated <= least_stored(closures, budget)
    # The planner stores at least the floor too.
    if len(closures) > 1:
        plan = plan_closures(closures, max_layers=budget + 1)
        assert stored(plan, closures) >= floor.total + floor.duplicated


def test_the_floor_counts_regions_and_the_cheapest_duplication() -> None:
    # a and b hold x and y; b and c hold z; each image also has its own item. Regions of b:
    # {x, y} (a, b), {z} (b, c), {b's own}: three, against a budget of 2.
    x, y, z = path(1), path(2), path(3)
    own_a, own_b, own_c = path(4), path(5), path(6)
    items = {
        x: StoreItem(x, 500, ()),
        y: StoreItem(y, 100, ()),
        z: StoreItem(z, 70, ()),
        own_a: StoreItem(own_a, 1, (x, y)),
        own_b: StoreItem(own_b, 2, (x, y, z)),
        own_c: StoreItem(own_c, 4, (z,)),
    }
    whole = Closure.from_items(list(items.values()), source="three")
    a, b, c = (
        whole.subclosure([own], source=n) for own, n in ((own_a, "a"), (own_b, "b"), (own_c, "c"))
    )
    floor = fleet_floor([a, b, c], 2)
    assert floor.regions == (2, 3, 2)
    assert floor.need == (0, 1, 0)
    # b cannot store its own item twice (only b holds it): its cheapest shared region is z.
    assert floor.duplicated == 70
    assert floor.total == 677
    assert floor.overhead == (677 + 70) / 677
    assert least_stored([a, b, c], 2) == 747  # the floor is reached here
    assert fleet_floor([a, b, c], 3).duplicated == 0
    assert fleet_floor([a, b, c], 1).need == (1, 2, 1)
    assert image_masks([a, b]) == {x: 3, y: 3, z: 2, own_a: 1, own_b: 2}


@settings(max_examples=120, deadline=None)
@given(
    closures=fleets(),
    strategy=st.sampled_from(["auto", "popularity", "size", "stable", "dominator", "single"]),
    max_layers=st.integers(1, 9),
    min_layer_size=st.sampled_from([None, 0, 600_000]),
)
def test_joint_plans_keep_every_invariant(
    closures: list[Closure], strategy: str, max_layers: int, min_layer_size: int | None
) -> None:
    plan = plan_closures(
        closures, strategy=strategy, max_layers=max_layers, min_layer_size=min_layer_size
    )
    budget = store_budget(max_layers)
    assert len(plan.images) == len(closures)
    separate = []
    for image, closure in zip(plan.images, closures, strict=True):
        # Each image's layers cover exactly its closure, once, within its budget.
        assert sorted(image.paths) == sorted(closure.items)
        assert len(image.layers) <= budget
        for layer in image.layers:
            assert layer.paths
            assert layer.paths == tuple(sorted(layer.paths))
            assert layer.size == sum(closure.items[p].nar_size for p in layer.paths)
        # No image ships more per update than planned alone (counted by brute force).
        alone = plan_closures(
            [closure], strategy=strategy, max_layers=max_layers, min_layer_size=min_layer_size
        )
        separate.append(alone.images[0])
        together = one_change_average(closure, [layer.paths for layer in image.layers])
        by_itself = one_change_average(closure, [layer.paths for layer in alone.images[0].layers])
        assert together <= by_itself * (1 + 1e-12) + 1e-9
    # Never below the floor, never above the images planned alone; deterministic, also for
    # the closures' items in another order.
    floor = fleet_floor(closures, budget)
    assert stored(plan, closures) >= floor.total + floor.duplicated
    alone_plan = LayerPlan(tuple(separate), plan.store_dir)
    assert stored(plan, closures) <= stored(alone_plan, closures)
    again = plan_closures(
        [Closure.from_items(list(reversed(list(c))), source="again") for c in closures],
        strategy=strategy,
        max_layers=max_layers,
        min_layer_size=min_layer_size,
    )
    assert [i.layers for i in again.images] == [i.layers for i in plan.images]


def test_images_sharing_a_base_store_every_item_once() -> None:
    # A base of four libraries, two apps on it: each image's budget holds its regions, so
    # the base's layers are the same layers in both images and nothing is stored twice.
    libs = [StoreItem(path(k), 10_000 * (k + 1), (path(k - 1),) if k else ()) for k in range(4)]
    apps = [
        StoreItem(path(10), 5_000, (path(3),)),
        StoreItem(path(11), 7_000, (path(3), path(1))),
    ]
    whole = Closure.from_items([*libs, *apps], source="base")
    first = whole.subclosure([path(10)], source="first")
    second = whole.subclosure([path(11)], source="second")
    for strategy in ("auto", "single", "size"):
        plan = plan_closures([first, second], strategy=strategy, max_layers=4)
        assert stored(plan, [first, second]) == whole.total_size
        shared = set(plan.images[0].layers) & set(plan.images[1].layers)
        assert {p for layer in shared for p in layer.paths} == {path(k) for k in range(4)}
        # Shared layers at the bottom, in the same order in both images.
        assert list(plan.images[0].layers[: len(shared)]) == list(
            plan.images[1].layers[: len(shared)]
        )
