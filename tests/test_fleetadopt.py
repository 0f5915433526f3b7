"""Adoption (closurepack.fleetadopt): images take up layers others store, within both rules."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from closurepack.fleetadopt import PASSES, _Refits, adopt_layers
from closurepack.graph import Closure, StoreItem
from closurepack.strategies._dag import Dag
from closurepack.strategies.economy import bitset, union_of

STORE = "/nix/store"


def path(k: int) -> str:
    return f"{STORE}/{k:032d}-p{k}"


def cost(dag: Dag, downs: Sequence[int], layers: Sequence[frozenset[int]]) -> int:
    """``sum of s(L) * |D(L)|``: an image's expected bytes per one-item update, times n."""
    return sum(
        sum(dag.sizes[i] for i in layer) * union_of(downs, layer).bit_count() for layer in layers
    )


def stored(dag: Dag, images: Sequence[Sequence[frozenset[int]]]) -> int:
    distinct = {layer for layers in images for layer in layers}
    return sum(dag.sizes[i] for layer in distinct for i in layer)


def setup(closure: Closure) -> tuple[Dag, list[int], dict[str, int]]:
    dag = Dag.from_closure(closure)
    downs = [bitset(dag.reach([i]), len(dag)) for i in range(len(dag))]
    return dag, downs, dag.index()


def test_an_image_with_room_takes_up_the_layer_another_stores() -> None:
    # Image A holds two libraries, one layer each (its limit is that plan's cost); B holds them
    # and an app of its own, with the libraries in one layer. B can hold A's layer of x and
    # put y with its app: it ships less per update than before, and y is stored once less.
    x, y, app = path(1), path(2), path(3)
    closure = Closure.from_items(
        [StoreItem(x, 1000, ()), StoreItem(y, 1000, ()), StoreItem(app, 10, ())], source="two"
    )
    dag, downs, index = setup(closure)
    first = [frozenset([index[x]]), frozenset([index[y]])]
    second = [frozenset([index[x], index[y]]), frozenset([index[app]])]
    items = [frozenset(index[p] for p in (x, y)), frozenset(index.values())]
    limits = [cost(dag, downs, first), cost(dag, downs, second)]
    found = adopt_layers(dag, downs, items=items, start=[first, second], limits=limits, room=2)
    assert sorted(found[0], key=min) == sorted(first, key=min)
    assert len(found[1]) == 2
    assert set(found[1]) & set(first)
    assert stored(dag, found) == 3010 < stored(dag, [first, second])


@st.composite
def fleets(draw: st.DrawFn) -> tuple[Closure, list[list[list[str]]], int]:
    """A random DAG of up to 14 items, 2 or 3 images of it, each partitioned at random."""
    count = draw(st.integers(2, 14))
    paths = [path(k) for k in range(count)]
    items = []
    for k, name in enumerate(paths):
        refs = draw(st.lists(st.sampled_from(paths[:k]), max_size=2, unique=True)) if k else []
        items.append(StoreItem(name, draw(st.sampled_from([0, 10, 1000, 10**6])), tuple(refs)))
    whole = Closure.from_items(items, source="fleet")
    room = draw(st.integers(1, 5))
    images = []
    for _ in range(draw(st.integers(2, 3))):
        tops = draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3, unique=True))
        held = sorted(whole.requisites(tops))
        blocks = [draw(st.integers(0, room - 1)) for _ in held]
        layers = [[p for p, b in zip(held, blocks, strict=True) if b == n] for n in range(room)]
        images.append([layer for layer in layers if layer])
    return whole, images, room


@settings(max_examples=150, deadline=None)
@given(fleet=fleets())
def test_adoption_keeps_each_image_whole_within_budget_and_cost_and_stores_no_more(
    fleet: tuple[Closure, list[list[list[str]]], int],
) -> None:
    closure, plans, room = fleet
    dag, downs, index = setup(closure)
    start = [[frozenset(index[p] for p in layer) for layer in layers] for layers in plans]
    items = [frozenset(i for layer in layers for i in layer) for layers in start]
    limits = [cost(dag, downs, layers) for layers in start]
    found = adopt_layers(dag, downs, items=items, start=start, limits=limits, room=room)
    for layers, own, limit in zip(found, items, limits, strict=True):
        assert sorted(i for layer in layers for i in layer) == sorted(own)
        assert all(layers)
        assert len(layers) <= room
        assert cost(dag, downs, layers) <= limit
    assert stored(dag, found) <= stored(dag, start)


def reference_refit(
    dag: Dag,
    downs: Sequence[int],
    fixed: list[frozenset[int]],
    free: list[frozenset[int]],
    *,
    room: int,
    limit: int,
) -> set[frozenset[int]] | None:
    """Step 2 of the module docstring by a full scan of every free item against every layer."""
    sizes = dag.sizes

    def cost(group: set[int]) -> int:
        return sum(sizes[i] for i in group) * union_of(downs, group).bit_count()

    groups = [set(layer) for layer in sorted(free, key=min)]
    while len(fixed) + len(groups) > room:
        if len(groups) < 2:
            return None
        pairs = [(a, b) for a in range(len(groups)) for b in range(a + 1, len(groups))]
        a, b = min(
            pairs,
            key=lambda p: (
                cost(groups[p[0]] | groups[p[1]]) - cost(groups[p[0]]) - cost(groups[p[1]])
            ),
        )
        groups[a] |= groups.pop(b)
    where = {i: g for g, group in enumerate(groups) for i in group}
    for _ in range(PASSES):
        moved = False
        for i in sorted(where):
            a = where[i]
            rest = groups[a] - {i}
            out = cost(rest) - cost(groups[a])
            best, target = -1, -2
            for b, group in enumerate(groups):
                if b != a and group and out + cost(group | {i}) - cost(group) < best:
                    best, target = out + cost(group | {i}) - cost(group), b
            filled = len(fixed) + sum(1 for group in groups if group)
            if rest and filled < room and out + cost({i}) < best:
                target = -1
            if target == -2:
                continue
            moved = True
            groups[a] = rest
            if target == -1:
                groups.append(set())
                target = len(groups) - 1
            groups[target].add(i)
            where[i] = target
        if not moved:
            break
    found = [*fixed, *(frozenset(group) for group in groups if group)]
    return set(found) if sum(cost(set(layer)) for layer in found) <= limit else None


@settings(max_examples=200, deadline=None)
@given(fleets(), st.data())
def test_a_refit_is_the_full_scans_refit(
    case: tuple[Closure, list[list[list[str]]], int], data: st.DataObject
) -> None:
    whole, images, room = case
    dag, downs, index = setup(whole)
    layers = [frozenset(index[p] for p in layer) for layer in images[0]]
    fixed = [layer for layer in layers if data.draw(st.booleans())]
    free = [layer for layer in layers if layer not in fixed]
    limit = data.draw(st.sampled_from([cost(dag, downs, layers), 10**18, 0]))
    refits = _Refits(dag, downs, room)
    for _ in range(2):  # the second time from what the first remembered
        found = refits.refit(fixed, free, limit)
        expected = reference_refit(dag, downs, fixed, free, room=room, limit=limit)
        assert (None if found is None else set(found)) == expected
