"""auto and dominator against simple, independent reference implementations on random graphs.

The references below follow the algorithms as described (nixpkgs' auto-layer of PR 355189, and
Nixery's dominator layering with its popularity x size merge rating), written the slow, obvious
way: sets of primaries instead of bitsets, dominators from their definition (remove a node; what
can no longer be reached from the root is dominated by it), merging one layer at a time. They
share nothing with closurepack.strategies but the closure they are given.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from closurepack.graph import Closure, StoreItem
from closurepack.strategies import auto, dominator

Edges = dict[str, tuple[str, ...]]
BIG = 100 * 1000 * 1000  # Nixery: a closure over 100 MB hangs from the root


@st.composite
def random_closures(draw: st.DrawFn, max_items: int = 18) -> Closure:
    """Random DAGs (item i refers only to items before it) whose sizes collide often, with
    hash parts and names that collide in their order too, and sometimes explicit roots."""
    count = draw(st.integers(1, max_items))
    hashes = draw(st.lists(st.integers(0, 999), min_size=count, max_size=count, unique=True))
    names = draw(st.lists(st.sampled_from(["a", "b", "lib"]), min_size=count, max_size=count))
    paths = [f"/nix/store/{h:032d}-{n}" for h, n in zip(hashes, names, strict=True)]
    items = []
    for i, path in enumerate(paths):
        refs = draw(st.lists(st.sampled_from(paths[:i]), max_size=4, unique=True)) if i else []
        nar_size = draw(st.sampled_from([0, 7, 1000, 1000, 3 * 10**7, 2 * 10**8]))
        items.append(StoreItem(path, nar_size, tuple(refs)))
    closure = Closure.from_items(items, source="random")
    if draw(st.booleans()):
        roots = draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3, unique=True))
        closure = Closure.from_items(items, source="random", roots=roots)
    return closure


def _edges(closure: Closure) -> Edges:
    return {p: tuple(item.references) for p, item in closure.items.items()}


def _reach(edges: Edges, starts: list[str] | tuple[str, ...]) -> set[str]:
    seen: set[str] = set()
    todo = list(starts)
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo.extend(edges[p])
    return seen


# auto ------------------------------------------------------------------------------------------


def reference_auto(closure: Closure, budget: int) -> list[tuple[str, ...]]:
    edges = _edges(closure)
    users_of = {p: {q for q in edges if q != p and p in _reach(edges, [q])} for p in edges}
    size = {p: closure.items[p].nar_size for p in edges}
    labels: dict[str, frozenset[str]] = dict.fromkeys(edges, frozenset())
    primaries: list[str] = []
    # Largest first; equal sizes: the greatest path first.
    for new in sorted(edges, key=lambda p: (size[p], p), reverse=True):
        deps = _reach(edges, edges[new])  # strict dependencies (a DAG: new is not among them)
        trial = dict(labels)
        trial[new] = frozenset([new])
        for d in deps:
            label = {q for q in labels[d] if q not in users_of[new]}
            if not any(q in deps for q in label):
                label.add(new)
            trial[d] = frozenset(label)
        if len(set(trial.values())) > budget:
            break
        labels = trial
        primaries.append(new)
    groups: dict[frozenset[str], set[str]] = {}
    for p, label in labels.items():
        groups.setdefault(label, set()).add(p)
    layers = list(groups.values())

    def key(layer: set[str]) -> tuple[int, str]:
        return sum(size[p] for p in _reach(edges, sorted(layer))), min(layer)

    # Dependencies first; among the layers whose dependencies are all placed, the smallest key.
    order: list[set[str]] = []
    placed: set[str] = set()
    while len(order) < len(layers):
        ready = [
            layer
            for layer in layers
            if layer not in order and _reach(edges, sorted(layer)) - layer <= placed
        ]
        nxt = min(ready, key=key)
        order.append(nxt)
        placed |= nxt
    return [tuple(sorted(layer)) for layer in order]


# dominator -------------------------------------------------------------------------------------


def reference_dominator(closure: Closure, budget: int) -> list[tuple[str, ...]]:
    edges = _edges(closure)
    referrers = {p: [q for q in edges if p in edges[q]] for p in edges}
    closure_size = {p: sum(closure.items[q].nar_size for q in _reach(edges, [p])) for p in edges}
    counts = sorted(len(rs) for rs in referrers.values())
    popular = max(counts[(90 * len(counts)) // 100], 2)
    root = "<root>"
    graph: Edges = dict(edges)
    graph[root] = tuple(
        p
        for p in edges
        if p in closure.roots
        or not referrers[p]
        or closure_size[p] > BIG
        or len(referrers[p]) >= popular
    )

    def reachable_without(removed: str) -> set[str]:
        seen: set[str] = set()
        todo = [root]
        while todo:
            p = todo.pop()
            if p not in seen and p != removed:
                seen.add(p)
                todo.extend(graph[p])
        return seen

    everything = reachable_without("")
    assert everything == set(graph), "every item hangs from the root"
    dominated_by = {d: everything - reachable_without(d) for d in edges}  # d's dominated set
    dominators = {v: {d for d in edges if v in dominated_by[d] and d != v} for v in edges}
    # The root's children in the dominator tree: items no other item dominates.
    tops = [v for v in edges if not dominators[v]]
    layers = []
    for top in tops:
        members = dominated_by[top]
        popularity = max(len(referrers[top]), 1)
        rating = popularity * sum(closure_size[m] for m in members)
        layers.append((rating, min(members), set(members)))
    layers.sort(key=lambda layer: (layer[0], layer[1]))
    merged = [layer[2] for layer in layers]
    while len(merged) > budget:  # the first into the second, never re-sorted
        merged[1] = merged[0] | merged[1]
        del merged[0]
    return [tuple(sorted(layer)) for layer in merged]


# The comparisons -------------------------------------------------------------------------------

Strategy = Callable[..., list[tuple[str, ...]]]


@settings(max_examples=300, deadline=None)
@given(closure=random_closures(), budget=st.integers(1, 12))
def test_auto_equals_the_reference(closure: Closure, budget: int) -> None:
    assert auto(closure, budget=budget) == reference_auto(closure, budget)


@settings(max_examples=300, deadline=None)
@given(closure=random_closures(), budget=st.integers(1, 12))
def test_dominator_equals_the_reference(closure: Closure, budget: int) -> None:
    assert dominator(closure, budget=budget) == reference_dominator(closure, budget)


def test_the_references_on_a_hand_checked_graph() -> None:
    """The references themselves, on a graph worked out by hand (so they can be wrong too)."""
    p = {x: f"/nix/store/{i:032d}-{x}" for i, x in enumerate(["root", "a", "b", "c", "d"])}
    items = [
        StoreItem(p["root"], 1, (p["a"], p["b"])),
        StoreItem(p["a"], 1, (p["c"],)),
        StoreItem(p["b"], 1, (p["c"],)),
        StoreItem(p["c"], 100, (p["d"],)),
        StoreItem(p["d"], 100, ()),
    ]
    closure = Closure.from_items(items, source="hand")
    # dominator: c is popular (two referrers) and dominates d; root dominates a and b.
    # Ratings: {c, d}: 2 x (200 + 100) = 600; {root, a, b}: 1 x (203 + 201 + 201) = 605.
    assert reference_dominator(closure, 5) == [(p["c"], p["d"]), (p["root"], p["a"], p["b"])]
    # auto, budget 2: d (largest, greatest path among 100s) is the first primary, labelling
    # nothing else (it has no dependencies); c next would make three labels: stop.
    assert reference_auto(closure, 2) == [
        (p["d"],),
        tuple(sorted(p[x] for x in ["root", "a", "b", "c"])),
    ]
