"""The ``stable`` strategy: its contract on random closures (coarsened too), its cost model, its
stability under the renames an update makes, and images planned together kept apart."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from closurepack.graph import Closure, StoreItem
from closurepack.planner import plan_closures
from closurepack.strategies import STRATEGIES, get_strategy, stable
from closurepack.strategies._dag import Dag
from closurepack.strategies.coarsen import (
    _absorb_cheapest,
    _Forest,
    _join_via_trees,
    _nearest_referrers,
)
from closurepack.strategies.stable import CHANGES, _images, _name_ranks
from test_strategies import check_contract, dag_closures, make_closure, store_path


def model_cost(closure: Closure, groups: list[tuple[str, ...]]) -> float:
    """The cost stable minimises: sum over layers of bytes times the chance that one of
    ``CHANGES`` random changes lies in the layer's down-set."""
    keep = 1 - min(CHANGES, len(closure)) / len(closure)
    return sum(
        sum(closure.items[p].nar_size for p in group) * (1 - keep ** len(closure.requisites(group)))
        for group in groups
    )


def test_registered() -> None:
    assert STRATEGIES["stable"] is stable
    assert get_strategy("stable") is stable


@settings(max_examples=80, deadline=None)
@given(
    closure=dag_closures(max_items=30),
    budget=st.integers(1, 12),
    limit=st.integers(1, 10),
    seed=st.integers(0, 2**32),
)
def test_coarsened_plans_keep_the_contract(
    closure: Closure, budget: int, limit: int, seed: int
) -> None:
    # A small exact limit makes every closure of more items go through the coarsening step.
    groups = stable(closure, budget=budget, exact_limit=limit)
    check_contract(closure, groups, budget)
    items = list(closure)
    random.Random(seed).shuffle(items)
    shuffled = Closure.from_items(items, source="shuffled")
    assert stable(shuffled, budget=budget, exact_limit=limit) == groups


@settings(max_examples=150, deadline=None)
@given(closure=dag_closures(max_items=40), data=st.data())
def test_coarsening_without_the_heap_ends_where_the_heap_does(
    closure: Closure, data: st.DataObject
) -> None:
    # With at least `limit` items that have no referrer to join, the heap of absorptions runs
    # dry before the cluster count comes down to `limit`: the one pass over the `via` trees
    # must leave the same clusters, weights and "grown" marks as the heap run to its end.
    dag = Dag.from_closure(closure)
    rank, images, down = _name_ranks(dag), _images(dag), dag.closure_sums()
    via = _nearest_referrers(dag, rank, images, down)
    limit = data.draw(st.integers(0, via.count(-1)))
    by_heap, by_trees = _Forest.of_items(dag.sizes), _Forest.of_items(dag.sizes)
    _absorb_cheapest(by_heap, via, rank=rank, down=down, limit=limit)
    _join_via_trees(by_trees, via)
    clusters = by_heap.clusters()
    assert by_trees.clusters() == clusters
    assert by_trees.count == by_heap.count == len(clusters) == via.count(-1)
    tops = [by_heap.find(c[0]) for c in clusters]
    assert [by_trees.weight[t] for t in tops] == [by_heap.weight[t] for t in tops]
    assert [sum(dag.sizes[i] for i in c) for c in clusters] == [by_heap.weight[t] for t in tops]
    assert [by_trees.grown[t] for t in tops] == [by_heap.grown[t] for t in tops]
    assert [by_heap.grown[t] for t in tops] == [len(c) > 1 for c in clusters]


@settings(max_examples=60, deadline=None)
@given(closure=dag_closures(max_items=7))
def test_the_first_merge_is_the_cheapest_pair(closure: Closure) -> None:
    # One merge short of one layer per item: the greedy's only step must be the best pair, by
    # brute force over every pair, under the documented cost.
    top = StoreItem(store_path(10**10, "top"), 7, tuple(closure.roots))
    closure = Closure.from_items([*closure, top], source="rooted")  # one root: one image
    paths = sorted(closure.items)
    best = min(
        model_cost(closure, [(a, b), *((p,) for p in paths if p not in (a, b))])
        for a, b in itertools.combinations(paths, 2)
    )
    groups = stable(closure, budget=len(paths) - 1)
    assert len(groups) == len(paths) - 1
    assert model_cost(closure, groups) == pytest.approx(best, rel=1e-9, abs=1e-6)


def test_budget_for_every_item_gives_every_item_its_layer_stable_ones_at_the_bottom() -> None:
    libc, lib, app = store_path(1, "libc"), store_path(2, "lib"), store_path(3, "app")
    closure = make_closure({libc: [], lib: [libc], app: [lib]}, {libc: 5, lib: 5, app: 5})
    # Bottom first by how many items can change them: libc (1), lib (2), app (3).
    assert stable(closure, budget=3) == [(libc,), (lib,), (app,)]
    assert stable(closure, budget=1) == [tuple(sorted([libc, lib, app]))]


def test_a_large_item_is_kept_apart_from_what_changes_often() -> None:
    # big (1 GB) is used by app; small tools t1..t3 hang off app. With 3 layers: big alone (it
    # would otherwise be shipped whenever a tool changes), the rest merged by cost.
    big, app = store_path(1, "big"), store_path(2, "app")
    tools = [store_path(10 + k, f"t{k}") for k in range(3)]
    edges: dict[str, list[str]] = {big: [], app: [big, *tools]}
    sizes = {big: 10**9, app: 1000}
    for tool in tools:
        edges[tool] = []
        sizes[tool] = 10
    closure = make_closure(edges, sizes)
    groups = stable(closure, budget=3)
    assert (big,) in groups
    assert model_cost(closure, groups) <= model_cost(
        closure, get_strategy("auto")(closure, budget=3)
    )


def rename_hashes(closure: Closure, seed: int) -> tuple[Closure, dict[str, str]]:
    """Every item gets a new hash (names kept), as if all of them were rebuilt."""
    rng = random.Random(seed)
    new = {
        p: f"{closure.store_dir}/{rng.getrandbits(128):032x}-{item.package_name}"
        for p, item in closure.items.items()
    }
    items = [
        StoreItem(new[p], item.nar_size, tuple(new[r] for r in item.references))
        for p, item in closure.items.items()
    ]
    return Closure.from_items(items, source="renamed"), new


@settings(max_examples=60, deadline=None)
@given(
    closure=dag_closures(max_items=20),
    budget=st.integers(1, 8),
    limit=st.sampled_from([3, 200]),
    seed=st.integers(0, 2**32),
)
def test_new_hashes_with_the_same_names_give_the_same_layers(
    closure: Closure, budget: int, limit: int, seed: int
) -> None:
    # Ties are broken by names, not hashes: an update that renames items does not reshuffle
    # the layers (names must be unique for that: make them so).
    unique = {p: f"{closure.store_dir}/{k:032d}-n{k}" for k, p in enumerate(sorted(closure.items))}
    closure = Closure.from_items(
        [
            StoreItem(unique[p], i.nar_size, tuple(unique[r] for r in i.references))
            for p, i in closure.items.items()
        ],
        source="unique",
    )
    renamed, new = rename_hashes(closure, seed)
    groups = stable(closure, budget=budget, exact_limit=limit)
    expected = [tuple(sorted(new[p] for p in group)) for group in groups]
    assert [tuple(sorted(g)) for g in stable(renamed, budget=budget, exact_limit=limit)] == [
        tuple(sorted(g)) for g in expected
    ]


def test_images_planned_together_store_every_item_once() -> None:
    # Two apps share libc and libssl; each has private libraries. Planned together in 2 store
    # layers, each image gets the union's layers restricted to its items: no item may end up in
    # two different restrictions (stored twice), as it would in a layer mixing shared and
    # private items. (Without the images term of the cost, 20 of these 70 bytes are stored
    # twice.)
    libc, ssl = store_path(1, "libc"), store_path(2, "libssl")
    a, a1, a2 = store_path(3, "a"), store_path(4, "liba1"), store_path(5, "liba2")
    b, b1 = store_path(6, "b"), store_path(7, "libb1")
    edges = {libc: [], ssl: [libc], a1: [libc], a2: [a1], a: [a2, ssl], b1: [ssl], b: [b1]}
    closure = make_closure(edges, dict.fromkeys(edges, 10))
    plan = plan_closures(
        [closure.subclosure([a]), closure.subclosure([b])], strategy="stable", max_layers=3
    )
    distinct = {layer.paths for image in plan.images for layer in image.layers}
    assert sum(len(layer) for layer in distinct) == len(edges)
