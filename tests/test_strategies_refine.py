"""``stable``'s local search and ChainID order (strategies/refine.py): the cost model it lowers,
a local optimum by brute force, its invariants on random units, and --previous layers kept."""

from __future__ import annotations

import hashlib
import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from closurepack.graph import Closure, StoreItem
from closurepack.planner import plan_closures
from closurepack.strategies import refine as refine_module
from closurepack.strategies import stable
from closurepack.strategies.economy import MergeCosts, hit_table, shared_bitsets, union_of
from closurepack.strategies.refine import chain_order, refine
from test_strategies import check_contract, dag_closures, make_closure, store_path


def cost(layers: list[list[int]], sizes: list[int], downs: list[int], hit: list[float]) -> float:
    """The model, spelled out again: bytes of each layer times hit(|union of its down-sets|)."""
    total = 0.0
    for layer in layers:
        down = 0
        for u in layer:
            down |= downs[u]
        total += sum(sizes[u] for u in layer) * hit[down.bit_count()]
    return total


@st.composite
def unit_problems(draw: st.DrawFn) -> tuple[list[list[int]], list[int], list[int], list[float]]:
    """Units with sizes and down-sets over ``n`` items (unit ``u`` always reaches item ``u``),
    split into some layers."""
    count = draw(st.integers(1, 14))
    n = count + draw(st.integers(0, 6))
    sizes = draw(st.lists(st.integers(0, 10**6), min_size=count, max_size=count))
    downs = [1 << u | draw(st.integers(0, 2**n - 1)) for u in range(count)]
    slots = draw(st.lists(st.integers(0, count - 1), min_size=count, max_size=count))
    layers = [[u for u in range(count) if slots[u] == s] for s in sorted(set(slots))]
    changes = draw(st.integers(1, 4))
    return layers, sizes, downs, hit_table(n, changes)


@settings(max_examples=150, deadline=None)
@given(problem=unit_problems(), extra=st.integers(0, 3), seed=st.integers(0, 2**32))
def test_refine_keeps_a_partition_within_budget_and_never_costs_more(
    problem: tuple[list[list[int]], list[int], list[int], list[float]], extra: int, seed: int
) -> None:
    layers, sizes, downs, hit = problem
    budget = len(layers) + extra
    order = list(range(len(sizes)))
    random.Random(seed).shuffle(order)
    images = [0] * len(sizes)
    result = refine(
        layers, sizes=sizes, downs=downs, images=images, hit=hit, budget=budget, visit=order
    )
    assert sorted(u for layer in result for u in layer) == list(range(len(sizes)))
    assert all(result)
    assert len(result) <= budget
    assert cost(result, sizes, downs, hit) <= cost(layers, sizes, downs, hit) * (1 + 1e-12)
    again = refine(
        layers, sizes=sizes, downs=downs, images=images, hit=hit, budget=budget, visit=order
    )
    assert again == result  # deterministic


@settings(max_examples=100, deadline=None)
@given(problem=unit_problems())
def test_refine_ends_where_no_single_move_helps(
    problem: tuple[list[list[int]], list[int], list[int], list[float]],
) -> None:
    # Brute force under the model spelled out above: once the search has stopped for want of
    # a move (passes unbounded here), moving any one unit to any other layer, or alone into a
    # free slot, saves nothing. A search that weighed moves by any other cost would leave
    # some of these on the table.
    layers, sizes, downs, hit = problem
    budget = len(layers) + 1
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(refine_module, "PASSES", 10_000)
        result = refine(
            layers,
            sizes=sizes,
            downs=downs,
            images=[0] * len(sizes),
            hit=hit,
            budget=budget,
            visit=range(len(sizes)),
        )
    found = cost(result, sizes, downs, hit)
    slack = 1e-9 * (1 + found)
    for g, layer in enumerate(result):
        for u in layer:
            rest = [[v for v in other if v != u] for other in result]
            for h in range(len(result)):
                if h != g:
                    moved = [list(x) for x in rest]
                    moved[h].append(u)
                    assert cost([x for x in moved if x], sizes, downs, hit) >= found - slack
            if len(layer) > 1 and len(result) < budget:
                alone = [x for x in rest if x] + [[u]]
                assert cost(alone, sizes, downs, hit) >= found - slack


def indices(bits: int) -> set[int]:
    return {i for i in range(bits.bit_length()) if bits >> i & 1}


@settings(max_examples=150, deadline=None)
@given(problem=unit_problems(), data=st.data())
def test_shared_bitsets_keep_every_union_size(
    problem: tuple[list[list[int]], list[int], list[int], list[float]], data: st.DataObject
) -> None:
    _, _, downs, _ = problem
    bits, own = shared_bitsets([indices(down) for down in downs])
    for _ in range(5):
        units = data.draw(st.sets(st.integers(0, len(downs) - 1)))
        whole = union_of(downs, units).bit_count()
        assert union_of(bits, units).bit_count() + sum(own[u] for u in units) == whole


@settings(max_examples=150, deadline=None)
@given(problem=unit_problems(), extra=st.integers(0, 3), seed=st.integers(0, 2**32))
def test_the_search_merges_and_order_weigh_shared_bitsets_as_whole_ones(
    problem: tuple[list[list[int]], list[int], list[int], list[float]], extra: int, seed: int
) -> None:
    # The narrow form (bits for the items two units' down-sets hold, the rest counted) must
    # give every figure the whole down-sets give: the same moves, costs and order.
    layers, sizes, downs, hit = problem
    bits, own = shared_bitsets([indices(down) for down in downs])
    order = list(range(len(sizes)))
    random.Random(seed).shuffle(order)
    common = {"sizes": sizes, "images": [0] * len(sizes), "hit": hit, "visit": order}
    result = refine(layers, downs=downs, budget=len(layers) + extra, **common)
    assert refine(layers, downs=bits, own=own, budget=len(layers) + extra, **common) == result
    pieces = [{0: size} for size in sizes]
    whole, narrow = (
        MergeCosts(hit, sizes, downs, pieces),
        MergeCosts(hit, sizes, bits, pieces, own=own),
    )
    for a in range(len(sizes)):
        for b in range(a + 1, len(sizes)):
            assert narrow.cost(a, b) == whole.cost(a, b)
    if len(sizes) > 1:
        whole.merge(0, 1)
        narrow.merge(0, 1)
        assert narrow.counts == whole.counts
    keys = [f"{g:03d}" for g in range(len(result))]
    weights = [sum(sizes[u] for u in layer) for layer in result]
    layer_downs = [union_of(downs, layer) for layer in result]
    layer_bits = [union_of(bits, layer) for layer in result]
    layer_own = [sum(own[u] for u in layer) for layer in result]
    assert chain_order(layer_bits, weights, hit, keys, own=layer_own) == chain_order(
        layer_downs, weights, hit, keys
    )


def test_a_misplaced_unit_moves_to_the_layer_that_already_changes_with_it() -> None:
    # Items 0..3; unit 0 (1 byte, reaches only item 0) was merged with unit 1 (1000 bytes,
    # reaches item 1); unit 2 (10 bytes) reaches items 0 and 2. With a budget of 2 layers
    # unit 0 belongs with unit 2, whose down-set already holds item 0: there it adds only its
    # own byte's share, next to the 1000-byte unit it makes break on item 0's changes too.
    sizes = [1, 1000, 10]
    downs = [0b001, 0b010, 0b101]
    hit = hit_table(4, 1)
    result = refine(
        [[0, 1], [2]],
        sizes=sizes,
        downs=downs,
        images=[0, 0, 0],
        hit=hit,
        budget=2,
        visit=[0, 1, 2],
    )
    assert result == [[1], [0, 2]]
    # A unit of other images is never moved next to units of another image set.
    kept = refine(
        [[0, 1], [2]],
        sizes=sizes,
        downs=downs,
        images=[1, 1, 2],
        hit=hit,
        budget=2,
        visit=[0, 1, 2],
    )
    assert kept == [[0, 1], [2]]


def test_chain_order_puts_the_large_rarely_changing_layer_at_the_bottom() -> None:
    # Layer 0: 10 bytes, changes with 1 of 10 items; layer 1: 1000 bytes, changes with 2;
    # layer 2: 5 bytes reaching what layer 1 does and more. Sorting by down-set size alone
    # puts layer 0 first (the old rule); the exchange argument puts the big layer first:
    # p/((1-p)s) is 0.1/(0.9*10) for layer 0 and 0.2/(0.8*1000) for layer 1.
    hit = hit_table(10, 1)
    downs = [0b1, 0b110, 0b1110]
    order = chain_order(downs, [10, 1000, 5], hit, ["a", "b", "c"])
    assert order[0] == 1
    # Expected ChainID bytes of that order are below those of the down-set-size order.

    def chain_cost(order: list[int]) -> float:
        below, total = 0, 0.0
        for g in order:
            below |= downs[g]
            total += [10, 1000, 5][g] * hit[below.bit_count()]
        return total

    assert chain_cost(order) < chain_cost([0, 1, 2])
    assert chain_cost(order) == min(
        chain_cost(list(p))
        for p in ([0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0])
    )


def change(closure: Closure, path: str, tag: str) -> Closure:
    """``path`` and every item above it get new hashes (names and sizes kept), Nix-style."""
    renamed = {path}
    for p in closure.topological_order():
        if any(r in renamed for r in closure.items[p].references):
            renamed.add(p)
    new = {
        p: p
        if p not in renamed
        else f"{closure.store_dir}/{hashlib.sha256((p + tag).encode()).hexdigest()[:32]}"
        f"-{closure.items[p].package_name}"
        for p in closure.items
    }
    items = [
        StoreItem(new[p], item.nar_size, tuple(new[r] for r in item.references))
        for p, item in closure.items.items()
    ]
    return Closure.from_items(items, source="changed")


@settings(max_examples=60, deadline=None)
@given(closure=dag_closures(max_items=20), max_layers=st.integers(2, 8), data=st.data())
def test_previous_layers_whose_items_are_all_present_are_kept(
    closure: Closure, max_layers: int, data: st.DataObject
) -> None:
    old = plan_closures([closure], strategy="stable", max_layers=max_layers)
    target = data.draw(st.sampled_from(sorted(closure.items)))
    new = change(closure, target, "t")
    again = plan_closures([new], strategy="stable", max_layers=max_layers, previous=[old])
    layers = {layer.paths for layer in again.images[0].layers}
    for layer in old.images[0].layers:
        if all(p in new.items for p in layer.paths):
            assert layer.paths in layers
    placed = [p for layer in again.images[0].layers for p in layer.paths]
    assert sorted(placed) == sorted(new.items)
    assert len(again.images[0].layers) <= max(1, max_layers - 1)


def test_stable_moves_what_the_greedy_misplaced() -> None:
    # The plan stable makes is a local optimum of its own cost: no item of a small closure
    # can move to another layer for fewer expected bytes (brute force over every move).
    libc = store_path(1, "libc")
    libs = [store_path(10 + k, f"lib{k}") for k in range(6)]
    apps = [store_path(20 + k, f"app{k}") for k in range(4)]
    edges: dict[str, list[str]] = {libc: []}
    for k, lib in enumerate(libs):
        edges[lib] = [libc] + ([libs[k - 1]] if k % 2 else [])
    for k, app in enumerate(apps):
        edges[app] = [libs[k], libs[k + 2]]
    edges[store_path(30, "top")] = apps  # one root: one image (several roots are images)
    sizes = {p: 1000 * (1 + k * 7 % 5) for k, p in enumerate(edges)}
    closure = make_closure(edges, sizes)
    groups = stable(closure, budget=4)
    check_contract(closure, groups, 4)
    n = len(closure)
    hit = hit_table(n)

    def model(groups: list[tuple[str, ...]]) -> float:
        return sum(sum(sizes[p] for p in g) * hit[len(closure.requisites(g))] for g in groups if g)

    found = model(groups)
    for g, group in enumerate(groups):
        for p in group:
            for h in range(len(groups)):
                if h != g:
                    moved = [tuple(x for x in other if x != p) for other in groups]
                    moved[h] = (*moved[h], p)
                    assert model(moved) >= found * (1 - 1e-9) or not moved[g], (p, h)


def reference_refine(
    layers: list[list[int]],
    *,
    sizes: list[int],
    downs: list[int],
    own: list[int],
    images: list[int],
    hit: tuple[float, ...],
    budget: int,
    visit: list[int],
) -> list[list[int]]:
    """The search spelled out with no shortcut: every unit weighs every layer at every pass,
    each figure made from scratch in the same floating point steps as the search's own."""
    groups = [set(layer) for layer in layers]
    limit = max(budget, len(layers))

    def count(units: set[int]) -> int:
        return union_of(downs, units).bit_count() + sum(own[u] for u in units)

    def weight(units: set[int]) -> int:
        return sum(sizes[u] for u in units)

    for _ in range(refine_module.PASSES):
        moved = False
        for u in visit:
            a = next(g for g, layer in enumerate(groups) if u in layer)
            here, size = groups[a], sizes[u]
            out = (weight(here) - size) * hit[count(here - {u})] - weight(here) * hit[count(here)]
            best, target = -refine_module.EPSILON * max(size, 1), -2
            for b, there in enumerate(groups):
                if b == a or not there or {images[v] for v in there} != {images[u]}:
                    continue
                held = weight(there)
                delta = out + (held + size) * hit[count(there | {u})] - held * hit[count(there)]
                if delta < best:
                    best, target = delta, b
            filled = sum(map(bool, groups))
            if len(here) > 1 and filled < limit and out + size * hit[count({u})] < best:
                target = -1
            if target == -2:
                continue
            if target == -1:
                target = next((g for g, layer in enumerate(groups) if not layer), len(groups))
                if target == len(groups):
                    groups.append(set())
            here.discard(u)
            groups[target].add(u)
            moved = True
        if not moved:
            break
    return [sorted(layer) for layer in groups if layer]


def reference_chain_order(
    downs: list[int], sizes: list[int], hit: tuple[float, ...], keys: list[str], own: list[int]
) -> list[int]:
    """ChainID order as its docstring says it, with no kept figure: at each step, of the
    layers left, the one of least place for the items of its down-set not yet placed."""
    left, below, order = list(range(len(downs))), 0, []

    def place(g: int, below: int) -> tuple[float, int, int, str]:
        chance = hit[(downs[g] & ~below).bit_count() + own[g]]
        ratio = chance / ((1 - chance) * sizes[g]) if chance < 1 and sizes[g] else math.inf
        return ratio, downs[g].bit_count() + own[g], -sizes[g], keys[g]

    while left:
        chosen = min(left, key=lambda g: place(g, below))
        left.remove(chosen)
        order.append(chosen)
        below |= downs[chosen]
    return order


@st.composite
def search_problems(draw: st.DrawFn) -> dict[str, object]:
    """Units for the search, harder on its shortcuts than :func:`unit_problems`: sizes from
    a few bytes to terabytes side by side (roundings near the move threshold), own counts,
    several images, down-sets of every density."""
    count = draw(st.integers(1, 16))
    n = count + draw(st.integers(0, 10))
    scale = st.sampled_from([1, 10, 10**3, 10**6, 10**9, 10**12])
    sizes = [draw(st.integers(0, 9)) * draw(scale) + draw(st.integers(0, 3)) for _ in range(count)]
    density = draw(st.sampled_from([0.1, 0.5, 0.9]))
    rng = random.Random(draw(st.integers(0, 2**32)))
    downs = [1 << u | sum(1 << i for i in range(n) if rng.random() < density) for u in range(count)]
    own = [draw(st.integers(0, 3)) for _ in range(count)]
    images = [draw(st.integers(1, draw(st.integers(1, 3)))) for _ in range(count)]
    slots = draw(st.lists(st.integers(0, count - 1), min_size=count, max_size=count))
    layers = [[u for u in range(count) if slots[u] == s] for s in sorted(set(slots))]
    hit = hit_table(n + sum(own), draw(st.integers(1, 4)))
    visit = list(range(count))
    rng.shuffle(visit)
    budget = len(layers) + draw(st.integers(0, 3))
    return {"layers": layers, "sizes": sizes, "downs": downs, "own": own, "images": images,
            "hit": hit, "visit": visit, "budget": budget}  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(problem=search_problems())
def test_refine_makes_the_moves_of_a_search_without_shortcuts(problem: dict[str, Any]) -> None:
    # The search leaves out layers that cannot win (unchanged since the unit last found no
    # move, or bounded below by the threshold): it must end exactly where weighing every layer
    # every time ends, ties included, or plans would change.
    assert refine(**problem) == reference_refine(**problem)


@settings(max_examples=300, deadline=None)
@given(problem=search_problems(), data=st.data())
def test_chain_order_is_the_order_of_least_place_at_each_step(
    problem: dict[str, Any], data: st.DataObject
) -> None:
    layers = refine(**problem)
    downs, sizes, own = problem["downs"], problem["sizes"], problem["own"]
    layer_downs = [union_of(downs, layer) for layer in layers]
    weights = [sum(sizes[u] for u in layer) for layer in layers]
    owns = [sum(own[u] for u in layer) for layer in layers]
    # Keys from a small alphabet, so that some places tie up to the key (then the index).
    keys = [data.draw(st.sampled_from(["a", "b"])) for _ in layers]
    hit = problem["hit"]
    found = chain_order(layer_downs, weights, hit, keys, own=owns)
    assert found == reference_chain_order(layer_downs, weights, hit, keys, owns)


def test_refine_makes_even_the_moves_that_rounding_makes() -> None:
    # A 1-byte unit and a 3.4 TB one with the same down-set: merging them costs nothing in
    # exact arithmetic, and the figure computed rounds to about -1e-4, below the threshold
    # (-1e-9 of a byte), so the plain search merges them. The shortcuts (a unit alone in its
    # layer cannot gain, in exact arithmetic) must allow for rounding and merge them too.
    problem: dict[str, Any] = {
        "layers": [[0], [1]],
        "sizes": [1, 3_440_154_613_858],
        "downs": [0b11, 0b11],
        "own": [0, 0],
        "images": [0, 0],
        "hit": hit_table(3, 1),
        "budget": 2,
        "visit": [0, 1],
    }
    assert reference_refine(**problem) == [[0, 1]]
    assert refine(**problem) == [[0, 1]]
