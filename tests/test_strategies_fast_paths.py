"""The fast planning paths against straightforward reference implementations kept here.

Planning speed (issue 11: every strategy linear or n log n, 63k items under 1 s) is measured
by ``bench/plan_bench.py``, never by timed tests; what is tested is that the fast code gives
exactly what the obvious code gives: reachable-set sums, reach, bitsets, down-set bitsets, the
small-layer merge (also when the planner asks again on the same closure) and the strategy check.
"""

from __future__ import annotations

import gc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from closurepack.errors import PlanError
from closurepack.graph import Closure
from closurepack.strategies import STRATEGIES, check_groups
from closurepack.strategies._dag import Dag, cyclic_gc_paused
from closurepack.strategies.economy import bitset, hit_table
from closurepack.strategies.minsize import merge_small_layers
from test_strategies import dag_closures


def reference_reach(closure: Closure, path: str, *, up: bool) -> set[str]:
    """``path`` and every item it reaches (every item that reaches it, when ``up``)."""
    found = {path}
    todo = [path]
    while todo:
        p = todo.pop()
        for q in closure.referrers(p) if up else closure.items[p].references:
            if q not in found:
                found.add(q)
                todo.append(q)
    return found


@settings(max_examples=150, deadline=None)
@given(closure=dag_closures(), up=st.booleans(), weighted=st.booleans())
def test_closure_sums_are_the_sums_over_the_reachable_sets(
    closure: Closure, up: bool, weighted: bool
) -> None:
    dag = Dag.from_closure(closure)
    weights = [i * 7 + 3 for i in range(len(dag))]  # distinct, so a missed item shows
    got = dag.closure_sums(weights if weighted else None, up=up)
    for i, path in enumerate(dag.paths):
        reached = [dag.index()[p] for p in reference_reach(closure, path, up=up)]
        assert got[i] == (sum(weights[j] for j in reached) if weighted else len(reached))


@settings(max_examples=150, deadline=None)
@given(closure=dag_closures(), data=st.data())
def test_down_counts_are_the_reachable_set_sizes_whatever_the_core(
    closure: Closure, data: st.DataObject
) -> None:
    # Small closures fit the default core whole: the sets for the items outside it are
    # tested with every smaller core, none included.
    dag = Dag.from_closure(closure)
    core_size = data.draw(st.integers(0, len(dag) + 1))
    got = dag._down_counts(core_size)
    for i, path in enumerate(dag.paths):
        assert got[i] == len(reference_reach(closure, path, up=False))


@settings(max_examples=100, deadline=None)
@given(closure=dag_closures(), data=st.data(), up=st.booleans())
def test_reach_is_the_union_of_the_reachable_sets(
    closure: Closure, data: st.DataObject, up: bool
) -> None:
    dag = Dag.from_closure(closure)
    start = data.draw(st.lists(st.sampled_from(dag.paths), max_size=4))
    expected: set[str] = set()
    for path in start:
        expected |= reference_reach(closure, path, up=up)
    got = dag.reach([dag.index()[p] for p in start], up=up)
    assert {dag.paths[i] for i in got} == expected


@settings(max_examples=150, deadline=None)
@given(closure=dag_closures(), data=st.data())
def test_down_bitset_is_the_reachable_set_of_small_and_large_sets(
    closure: Closure, data: st.DataObject
) -> None:
    dag = Dag.from_closure(closure)
    # Any subset: those of more than half the items are found from the items outside them.
    members = data.draw(st.sets(st.integers(0, len(dag) - 1)))
    expected: set[str] = set()
    for i in members:
        expected |= reference_reach(closure, dag.paths[i], up=False)
    got = dag.down_bitset(members)
    assert got == sum(1 << dag.index()[p] for p in expected)


@given(indices=st.sets(st.integers(0, 300)), extra=st.integers(1, 70))
def test_bitset_sets_exactly_those_bits(indices: set[int], extra: int) -> None:
    width = max(indices, default=0) + extra
    assert bitset(indices, width) == sum(1 << i for i in indices)
    assert bitset([], 0) == 0


def reference_merge(
    closure: Closure, groups: list[tuple[str, ...]], min_size: int
) -> list[tuple[str, ...]]:
    """merge_small_layers for one image, as its docstring states the rule, the slow way."""
    size = {p: item.nar_size for p, item in closure.items.items()}
    layers = [set(g) for g in groups]
    hit = hit_table(len(closure))

    def down(layer: set[str]) -> set[str]:
        return set().union(*(reference_reach(closure, p, up=False) for p in layer))

    def weight(layer: set[str]) -> int:
        return sum(size[p] for p in layer)

    def cost(a: set[str], b: set[str]) -> float:
        both = hit[len(down(a) | down(b))]
        return weight(a) * (both - hit[len(down(a))]) + weight(b) * (both - hit[len(down(b))])

    if min_size <= 0 or len(layers) < 2 or min(map(weight, layers)) >= min_size:
        return list(groups)  # as they came

    while len(layers) > 1:
        small = min(range(len(layers)), key=lambda g: (weight(layers[g]), g))
        if weight(layers[small]) >= min_size:
            break
        others = [g for g in range(len(layers)) if g != small]
        partner = min(others, key=lambda g: (cost(layers[small], layers[g]), abs(g - small), g))
        low, high = sorted((small, partner))
        layers[high] |= layers[low]
        del layers[low]
    return [tuple(sorted(layer)) for layer in layers]


@pytest.mark.parametrize("spec", sorted(STRATEGIES))
@settings(max_examples=25, deadline=None)
@given(
    closure=dag_closures(),
    budget=st.integers(2, 12),
    min_size=st.sampled_from([1, 1001, 10**6, 10**9]),
)
def test_the_small_layer_merge_equals_the_reference(
    spec: str, closure: Closure, budget: int, min_size: int
) -> None:
    if spec == "per-item" and len(closure) > budget:
        return
    groups = STRATEGIES[spec](closure, budget=budget)
    expected = reference_merge(closure, groups, min_size)
    assert merge_small_layers(closure, groups, min_size=min_size) == expected
    # Asked again on the same closure (the planner's refills), kept down-sets included.
    assert merge_small_layers(closure, groups, min_size=min_size) == expected
    wider = STRATEGIES[spec](closure, budget=budget + 3) if spec != "per-item" else groups
    fresh = Closure(closure.store_dir, closure.items, closure.roots, closure.source)
    assert merge_small_layers(closure, wider, min_size=min_size) == merge_small_layers(
        fresh, wider, min_size=min_size
    )


@settings(max_examples=60, deadline=None)
@given(closure=dag_closures(), data=st.data())
def test_check_groups_names_what_is_wrong_after_the_fast_check(
    closure: Closure, data: st.DataObject
) -> None:
    paths = sorted(closure.items)
    groups = [tuple(paths)]
    assert check_groups(closure, groups, budget=1, name="x") is groups
    broken = data.draw(st.sampled_from(["duplicate", "missing", "foreign", "empty"]))
    if broken == "duplicate":
        bad, message = [tuple(paths), (paths[0],)], "in more than one layer"
    elif broken == "missing" and len(paths) > 1:
        bad, message = [tuple(paths[1:])], f"{paths[0]} is in no layer"
    elif broken == "foreign":
        bad, message = [(*paths, "/nix/store/zzz-x")], "/nix/store/zzz-x is not in the closure"
    else:
        bad, message = [tuple(paths), ()], "layer 2 is empty"
    with pytest.raises(PlanError, match=f"^strategy x: .*{message}"):
        check_groups(closure, bad, budget=2, name="x")


def test_the_gc_pause_moves_what_it_made_to_the_oldest_generation() -> None:
    """Objects made inside the pause leave it in the oldest generation (no collection of the
    youngest at the next allocation), the collector's state is as it was, and objects
    someone else froze stay frozen."""
    gc.collect()
    assert gc.isenabled()
    collections: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    try:
        with cyclic_gc_paused():
            assert not gc.isenabled()
            made = [[i] for i in range(5000)]
            gc.callbacks.append(seen)
        # Fewer allocations than start a collection, unless the 5000 were left young.
        junk = [[i] for i in range(gc.get_threshold()[0] // 2)]
        gc.callbacks.remove(seen)
        assert gc.isenabled()
        assert collections == []
        assert any(o is made[-1] for o in gc.get_objects(generation=2))
        assert gc.get_freeze_count() == 0
        gc.disable()
        with cyclic_gc_paused():
            pass
        assert not gc.isenabled()  # left disabled, as it was
        gc.enable()
        gc.freeze()
        frozen = gc.get_freeze_count()
        with cyclic_gc_paused():
            more = [[i] for i in range(100)]
        assert gc.get_freeze_count() == frozen  # another's freeze is kept
        assert gc.get_count()[0] >= 100  # and what was made is left where it was
    finally:
        gc.unfreeze()
        gc.enable()
    assert len(made) + len(more) == 5100
    assert junk
