"""Properties of every layering strategy on random closures, and each strategy's own behaviour."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from closurepack.errors import PlanError
from closurepack.graph import Closure, StoreItem
from closurepack.strategies import (
    DEFAULT_STRATEGY,
    STRATEGIES,
    auto,
    check_groups,
    dominator,
    get_strategy,
    per_item,
    popularity,
    popularity_order,
    popularity_scores,
    single,
    size,
)

DATA = Path(__file__).parent / "data" / "strategies"
STORE = "/nix/store"


def store_path(number: int, name: str) -> str:
    return f"{STORE}/{number:032d}-{name}"


def make_closure(edges: dict[str, list[str]], sizes: dict[str, int] | None = None) -> Closure:
    sizes = sizes or {}
    items = [StoreItem(p, sizes.get(p, 0), tuple(refs)) for p, refs in edges.items()]
    return Closure.from_items(items, source="test")


def load_json_closure(name: str) -> Closure:
    entries = json.loads((DATA / name).read_text())
    items = [StoreItem(e["path"], e["narSize"], tuple(e["references"])) for e in entries]
    return Closure.from_items(items, source=name)


@st.composite
def dag_closures(draw: st.DrawFn, max_items: int = 24) -> Closure:
    """Random acyclic closures: item i refers only to items before it; names and sizes collide."""
    count = draw(st.integers(1, max_items))
    numbers = draw(st.lists(st.integers(0, 10**9), min_size=count, max_size=count, unique=True))
    names = draw(
        st.lists(
            st.sampled_from(["a", "b", "lib-1.0", "lib-1.0.1"]), min_size=count, max_size=count
        )
    )
    paths = [store_path(n, name) for n, name in zip(numbers, names, strict=True)]
    items = []
    for i, path in enumerate(paths):
        refs = draw(st.lists(st.sampled_from(paths[:i]), max_size=4, unique=True)) if i else []
        nar_size = draw(st.sampled_from([0, 1000, 1000, 5 * 10**8, draw(st.integers(0, 10**7))]))
        items.append(StoreItem(path, nar_size, tuple(refs)))
    return Closure.from_items(items, source="random")


def check_contract(closure: Closure, groups: list[tuple[str, ...]], budget: int) -> None:
    assert len(groups) <= budget
    assert all(groups), "no empty layer"
    placed = [p for group in groups for p in group]
    assert sorted(placed) == sorted(closure.items), "every item exactly once"


def respects_dependencies(closure: Closure, groups: list[tuple[str, ...]]) -> bool:
    layer_of = {p: i for i, group in enumerate(groups) for p in group}
    return all(layer_of[r] <= layer_of[item.path] for item in closure for r in item.references)


@pytest.mark.parametrize("spec", sorted(STRATEGIES))
@settings(max_examples=60, deadline=None)
@given(closure=dag_closures(), budget=st.integers(1, 30), seed=st.integers(0, 2**32))
def test_every_strategy_keeps_the_contract(
    spec: str, closure: Closure, budget: int, seed: int
) -> None:
    strategy = get_strategy(spec)
    if spec == "per-item" and len(closure) > budget:
        with pytest.raises(PlanError, match="per-item"):
            strategy(closure, budget=budget)
        return
    groups = strategy(closure, budget=budget)
    check_contract(closure, groups, budget)
    assert check_groups(closure, groups, budget=budget, name=spec) is groups
    # Same plan for the same closure given in another order.
    items = list(closure)
    random.Random(seed).shuffle(items)
    shuffled = Closure.from_items(items, source="shuffled")
    assert strategy(shuffled, budget=budget) == groups
    if spec in ("auto", "single", "per-item"):
        assert respects_dependencies(closure, groups)


@settings(max_examples=150, deadline=None)
@given(
    closure=dag_closures(),
    budget=st.integers(1, 12),
    data=st.data(),
    split=st.sampled_from(["subcomponent_out", "subcomponent_in", "split_paths", "children_of"]),
)
def test_pipelines_keep_the_contract(
    closure: Closure, budget: int, data: st.DataObject, split: str
) -> None:
    target = data.draw(st.sampled_from(sorted(closure.items)))
    first = (
        ["split_paths", [{"children_of": target}]] if split == "children_of" else [split, [target]]
    )
    spec = json.dumps(
        [
            first,
            ["over", "rest", ["pipe", [["popularity_contest"], ["limit_layers", 3]]]],
            ["over", "main", ["split_every", 2]],
            ["over", "common", ["pipe", [["popularity_contest"], ["reverse"]]]],
        ]
    )
    groups = get_strategy(spec)(closure, budget=budget)
    check_contract(closure, groups, budget)
    if split == "subcomponent_out" and budget >= len(closure):
        # main (target and all it reaches) comes first, in chunks of two.
        reach = closure.requisites([target])
        chunks = -(-len(reach) // 2)
        assert set().union(*groups[:chunks]) == reach


@settings(max_examples=100, deadline=None)
@given(closure=dag_closures())
def test_popularity_score_is_the_tree_expansion_count(closure: Closure) -> None:
    # Brute force: expand the graph into the tree nixpkgs builds (every path from a root is a
    # node) and count, for every item, the tree nodes that have a copy of it below or at them.
    roots = [p for p in closure.items if not closure.referrers(p)]
    expected = dict.fromkeys(closure.items, 0)

    def expand(path: str) -> set[str]:
        below = {path}
        for ref in closure.items[path].references:
            below |= expand(ref)
        for item in below:
            expected[item] += 1
        return below

    for root in roots:
        expand(root)
    assert popularity_scores(closure) == expected


def test_popularity_example_from_nixpkgs_docs() -> None:
    # A - B - C - D - F, B - E - F, C - E, A - G (the diagram in closure-graph.py)
    p = {x: store_path(i, x) for i, x in enumerate("ABCDEFG")}
    edges = {
        p["A"]: [p["B"], p["G"]],
        p["B"]: [p["C"], p["E"]],
        p["C"]: [p["D"], p["E"]],
        p["D"]: [p["F"]],
        p["E"]: [p["F"]],
        p["F"]: [],
        p["G"]: [],
    }
    closure = make_closure(edges)
    scores = popularity_scores(closure)
    assert {x: scores[p[x]] for x in "ABCDEFG"} == {
        "A": 1,
        "B": 2,
        "C": 3,
        "D": 4,
        "E": 5,
        "F": 9,
        "G": 2,
    }
    assert popularity_order(closure) == [p[x] for x in "FEDCBGA"]


def test_popularity_ties_are_by_name_then_hash() -> None:
    paths = [store_path(2, "b"), store_path(1, "b"), store_path(0, "c"), store_path(3, "a")]
    closure = make_closure({p: [] for p in paths})
    assert popularity_order(closure) == [paths[3], paths[1], paths[0], paths[2]]
    # '-' sorts before '.', so "lib-1.0-..." comes before "lib-1.0.1-..." as in nixpkgs.
    short, longer = store_path(9, "lib-1.0"), store_path(1, "lib-1.0.1")
    assert popularity_order(make_closure({longer: [], short: []})) == [short, longer]


@pytest.mark.parametrize("name", ["python3", "nginx", "git", "postgresql-15"])
def test_popularity_matches_nixpkgs_on_real_closures(name: str) -> None:
    closure = load_json_closure(f"{name}.base.json")
    golden = (DATA / f"{name}.base.popularity.txt").read_text().split()
    assert popularity_order(closure) == golden
    groups = popularity(closure, budget=10)
    assert groups[:9] == [(p,) for p in golden[:9]]
    assert sorted(groups[9]) == sorted(golden[9:])


@pytest.mark.parametrize("name", ["python3", "nginx", "git", "postgresql-15"])
@pytest.mark.parametrize("limit", [5, 20, 99])
def test_auto_matches_nixpkgs_auto_layer(name: str, limit: int) -> None:
    closure = load_json_closure(f"{name}.base.json")
    golden = json.loads((DATA / f"{name}.base.auto-{limit}.json").read_text())
    groups = auto(closure, budget=limit)
    assert sorted(sorted(g) for g in groups) == sorted(sorted(g) for g in golden)
    assert respects_dependencies(closure, groups)


def test_auto_primaries_by_size_and_the_layer_limit() -> None:
    big, app, lib, libc = (store_path(i, n) for i, n in enumerate(["big", "app", "lib", "libc"]))
    other = store_path(9, "other")
    closure = make_closure(
        {app: [big, other], big: [lib], lib: [libc], other: [libc], libc: []},
        {big: 1000, app: 10, lib: 5, libc: 50, other: 1},
    )
    # Budget 2: primary "big" labels all its dependencies (nixpkgs' code only subtracts
    # *primary* users, so libc joins big although "other" uses it too); next primary libc
    # would make a third label, so the algorithm stops.
    assert auto(closure, budget=2) == [(big, lib, libc), (app, other)]
    # Budget 3: libc becomes a primary; app too (it adds no label: "other" joins it); lib
    # would make a fourth label.
    assert auto(closure, budget=3) == [(libc,), (big, lib), (app, other)]
    assert auto(closure, budget=1) == [tuple(sorted(closure.items))]


def test_size_follows_guix() -> None:
    paths = [store_path(i, f"p{i}") for i in range(5)]
    sizes = {paths[0]: 10, paths[1]: 50, paths[2]: 30, paths[3]: 30, paths[4]: 1}
    closure = make_closure({p: [] for p in paths}, sizes)
    assert size(closure, budget=3) == [(paths[1],), (paths[2],), (paths[3], paths[0], paths[4])]
    # Fewer items than the budget: every item alone, the smallest last.
    assert size(closure, budget=10) == [(paths[i],) for i in (1, 2, 3, 0, 4)]
    assert size(closure, budget=1) == [(paths[1], paths[2], paths[3], paths[0], paths[4])]


def test_dominator_splits_popular_subtrees_and_merges_the_lowest_rated() -> None:
    root, a, b, c, d = (store_path(i, n) for i, n in enumerate(["root", "a", "b", "c", "d"]))
    closure = make_closure(
        {root: [a, b], a: [c], b: [c], c: [d], d: []},
        {root: 1, a: 1, b: 1, c: 100, d: 100},
    )
    # c is popular (two referrers): it and what it dominates (d) form their own layer.
    groups = dominator(closure, budget=5)
    assert sorted(map(sorted, groups)) == [sorted([a, b, root]), sorted([c, d])]
    assert dominator(closure, budget=1) == [tuple(sorted(closure.items))]


def test_single_and_per_item() -> None:
    a, b = store_path(1, "a"), store_path(2, "b")
    closure = make_closure({a: [b], b: []})
    assert single(closure, budget=1) == [(b, a)]
    assert per_item(closure, budget=2) == [(b,), (a,)]
    with pytest.raises(PlanError, match="needs 2 layers but only 1"):
        per_item(closure, budget=1)


def test_registry() -> None:
    assert DEFAULT_STRATEGY in STRATEGIES
    assert get_strategy("popularity") is popularity
    with pytest.raises(PlanError, match="unknown strategy 'nope'; known: auto, dominator"):
        get_strategy("nope")
    with pytest.raises(PlanError, match="empty strategy"):
        get_strategy(" ")


def test_check_groups_rejects_broken_results() -> None:
    a, b = store_path(1, "a"), store_path(2, "b")
    closure = make_closure({a: [b], b: []})
    with pytest.raises(PlanError, match="more than 1"):
        check_groups(closure, [(a,), (b,)], budget=1, name="x")
    with pytest.raises(PlanError, match="empty"):
        check_groups(closure, [(a, b), ()], budget=2, name="x")
    with pytest.raises(PlanError, match="more than one layer"):
        check_groups(closure, [(a, b), (b,)], budget=2, name="x")
    with pytest.raises(PlanError, match="in no layer"):
        check_groups(closure, [(a,)], budget=2, name="x")
    with pytest.raises(PlanError, match="not in the closure"):
        check_groups(closure, [(a, b, "/nix/store/x-y")], budget=2, name="x")


def test_dominator_gives_big_closures_their_own_subtree_ordered_by_rating() -> None:
    root, app, big = (store_path(i, n) for i, n in enumerate(["root", "app", "big"]))
    closure = make_closure({root: [app], app: [big], big: []}, {root: 2, app: 1, big: 2 * 10**8})
    # Every closure here exceeds 100 MB, so each item hangs from the synthetic root; ratings
    # (popularity 1 x summed closure sizes) grow from big to root.
    assert dominator(closure, budget=5) == [(big,), (app,), (root,)]
    assert dominator(closure, budget=2) == [tuple(sorted([big, app])), (root,)]
    small = make_closure({root: [app], app: [big], big: []}, {root: 2, app: 1, big: 2})
    assert dominator(small, budget=5) == [tuple(sorted([root, app, big]))]
