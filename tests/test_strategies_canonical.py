"""``stable-canonical``: the canonical merges (strategies/canonical.py) and the strategy made of
them and ``stable``: the cost threshold, merges whatever the budget, images kept apart, the
contract, and a fleet that stores the merged items once where ``stable`` stores them twice."""

from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from closurepack.graph import Closure, StoreItem
from closurepack.planner import plan_closures
from closurepack.strategies import STRATEGIES, get_strategy, stable, stable_canonical
from closurepack.strategies._dag import Dag, nixpkgs_name_key
from closurepack.strategies.canonical import CANONICAL_BELOW, canonical_merges
from test_strategies import check_contract, dag_closures, store_path

LIBC = store_path(1, "libc6-2.36")
LIBGCC = store_path(2, "libgcc-s1-12.2.0")
GCCBASE = store_path(3, "gcc-12-base-12.2.0")


def chain(*apps: tuple[str, int, tuple[str, ...]]) -> Closure:
    """libc6 -> libgcc-s1 -> gcc-12-base (as Debian's sizes) and ``apps`` above them."""
    items = [
        StoreItem(GCCBASE, 102_400, ()),
        StoreItem(LIBGCC, 143_360, (GCCBASE,)),
        StoreItem(LIBC, 13_313_024, (LIBGCC,)),
    ]
    items += [StoreItem(path, size, refs) for path, size, refs in apps]
    return Closure.from_items(items, source="chain")


def test_registered() -> None:
    assert STRATEGIES["stable-canonical"] is stable_canonical
    assert get_strategy("stable-canonical") is stable_canonical


def test_a_merge_at_the_threshold_is_made_and_one_above_it_is_not() -> None:
    # a refers to b: merging them costs (s_a + s_b) * 2 - s_a * 2 - s_b * 1 = s_b = 1000.
    args = {"sizes": [1000, 50_000], "refs": [[], [0]], "images": [0, 0], "rank": [0, 1]}
    sets = [0b01, 0b11]
    merged, downs, own = canonical_merges([[0], [1]], sets, below=1000, **args)
    assert (merged, downs, own) == ([[0, 1]], [0b11], [0])
    assert canonical_merges([[0], [1]], sets, below=999, **args) == ([[0], [1]], sets, [0, 0])


def test_own_counts_weigh_as_the_bits_they_stand_for() -> None:
    # The same two clusters with item 1 (below b alone) counted instead of kept as a bit:
    # the same merges at the same thresholds, the counts summed.
    args = {"sizes": [1000, 50_000], "refs": [[], [0]], "images": [0, 0], "rank": [0, 1]}
    merged = canonical_merges([[0], [1]], [0b1, 0b1], own=[0, 1], below=1000, **args)
    assert merged == ([[0, 1]], [0b1], [1])
    kept = canonical_merges([[0], [1]], [0b1, 0b1], own=[0, 1], below=999, **args)
    assert kept == ([[0], [1]], [0b1, 0b1], [0, 1])


def test_clusters_of_different_images_never_merge() -> None:
    args = {"sizes": [1, 1], "refs": [[], [0]], "rank": [0, 1]}
    sets = [0b01, 0b11]
    assert canonical_merges([[0], [1]], sets, below=10**9, images=[1, 2], **args)[0] == [[0], [1]]
    assert canonical_merges([[0], [1]], sets, below=10**9, images=[3, 3], **args)[0] == [[0, 1]]


def test_the_libc_chain_is_one_layer_whatever_the_budget() -> None:
    app = store_path(4, "app-1.0")
    closure = chain((app, 5_000_000, (LIBC,)))
    assert sorted(stable(closure, budget=4)) == sorted([(p,) for p in closure.items])
    for budget in (2, 3, 4, 10):
        groups = stable_canonical(closure, budget=budget)
        check_contract(closure, groups, budget)
        assert tuple(sorted((LIBC, LIBGCC, GCCBASE))) in groups
        assert (app,) in groups  # 5 MB above libc: far above the threshold


def test_a_fleet_stores_libc_once_where_stable_stores_it_twice() -> None:
    # A small image with room for every item and a large one that must merge: alone, stable
    # keeps libc6 apart in the small one and merged with its two dependencies in the large
    # one, and planned together neither may ship more than alone, so libc6 is stored twice.
    small = chain((store_path(10, "tool-1.0"), 2_000_000, (LIBC,)))
    libs = [(store_path(20 + k, f"lib{k}-1.0"), 300_000 * (k + 1), (LIBC,)) for k in range(8)]
    big = chain(*libs, (store_path(40, "big-1.0"), 4_000_000, tuple(p for p, _, _ in libs)))
    stored = {}
    for name in ("stable", "stable-canonical"):
        plan = plan_closures([small, big], strategy=name, max_layers=10)
        layers = {layer.paths for image in plan.images for layer in image.layers}
        stored[name] = sum(LIBC in paths for paths in layers)
    assert stored == {"stable": 2, "stable-canonical": 1}


@settings(max_examples=40, deadline=None)
@given(
    closure=dag_closures(max_items=24),
    budget=st.integers(1, 30),
    below=st.integers(1, 10**7),
    seed=st.integers(0, 2**32),
)
def test_plans_keep_the_contract_and_every_canonical_cluster_whole(
    closure: Closure, budget: int, below: int, seed: int
) -> None:
    top = StoreItem(store_path(10**10, "top"), 7, tuple(closure.roots))
    closure = Closure.from_items([*closure, top], source="rooted")  # one root: one image
    groups = stable(closure, budget=budget, canonical=below, exact_limit=8)
    check_contract(closure, groups, budget)
    layer_of = {p: k for k, group in enumerate(groups) for p in group}
    dag = Dag.from_closure(closure)
    by_name = sorted(range(len(dag)), key=lambda i: nixpkgs_name_key(dag.paths[i]))
    rank = [0] * len(dag)
    for place, i in enumerate(by_name):
        rank[i] = place
    clusters, _, _ = canonical_merges(
        [[i] for i in range(len(dag))],
        dag.down_bitsets(),
        sizes=dag.sizes,
        refs=dag.refs,
        images=[0] * len(dag),
        rank=rank,
        below=below,
    )
    if budget >= len(closure):  # no coarsening: the clusters are the canonical ones
        for cluster in clusters:
            assert len({layer_of[dag.paths[i]] for i in cluster}) == 1
    items = list(closure)
    random.Random(seed).shuffle(items)
    shuffled = Closure.from_items(items, source="shuffled")
    assert stable(shuffled, budget=budget, canonical=below, exact_limit=8) == groups
    assert CANONICAL_BELOW > 0


def rescanned_merges(
    clusters: list[list[int]], sets: list[int], dag: Dag, rank: list[int], below: int
) -> list[list[int]]:
    """The canonical merges spelled out plainly: every round weighs every pair of clusters
    joined by a reference, found again from the references, and merges the least tuple."""
    members = [list(c) for c in clusters]
    downs = list(sets)
    while True:
        owner = {i: k for k, cluster in enumerate(members) for i in cluster}
        best = None
        for k, cluster in enumerate(members):
            for j in {owner[r] for i in cluster for r in dag.refs[i]} - {k}:
                wk = sum(dag.sizes[i] for i in cluster)
                wj = sum(dag.sizes[i] for i in members[j])
                cost = (
                    (wk + wj) * (downs[k] | downs[j]).bit_count()
                    - wk * downs[k].bit_count()
                    - wj * downs[j].bit_count()
                )
                fk, fj = min(rank[i] for i in cluster), min(rank[i] for i in members[j])
                low, high = (k, j) if fk < fj else (j, k)
                candidate = (cost, min(fk, fj), max(fk, fj), low, high)
                if cost <= below and (best is None or candidate < best):
                    best = candidate
        if best is None:
            return sorted(sorted(c) for c in members if c)
        kept, gone = best[3], best[4]
        members[kept] += members[gone]
        downs[kept] |= downs[gone]
        members[gone] = []


@settings(max_examples=300, deadline=None)
@given(closure=dag_closures(max_items=24), below=st.integers(0, 10**9), data=st.data())
def test_the_merges_are_those_of_a_rescan_every_round(
    closure: Closure, below: int, data: st.DataObject
) -> None:
    # Clusters of one or more items (consecutive indices), one image: the kept neighbour sets
    # must give the merges that finding every pair again from the references gives.
    dag = Dag.from_closure(closure)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(dag) - 1))) if len(dag) > 1 else set())
    bounds = [0, *cuts, len(dag)]
    clusters = [list(range(a, b)) for a, b in itertools.pairwise(bounds)]
    sets = [dag.down_bitset(c) for c in clusters]
    rank = list(range(len(dag)))
    data.draw(st.randoms()).shuffle(rank)
    merged, _, _ = canonical_merges(
        clusters, sets, sizes=dag.sizes, refs=dag.refs, images=[0] * len(dag), rank=rank,
        below=below,
    )  # fmt: skip
    assert sorted(merged) == rescanned_merges(clusters, sets, dag, rank, below)
