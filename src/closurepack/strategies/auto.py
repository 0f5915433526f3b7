"""nixpkgs' auto-layer: the largest items anchor layers, shared dependencies get layers by user set.

Origin: ``pkgs/build-support/docker/auto-layer.py`` in nixpkgs (PR 355189), used by
``dockerTools`` when ``layeringPipeline`` is not given. This is an independent reimplementation
with the same result, made fast with integer bitsets.

Algorithm. Every item carries a *label*: the set of *primary* items whose layer it belongs to.
At first there are no primaries and every label is empty (one layer). Then, repeatedly, the
largest remaining item ``P`` (by NAR size; equal sizes: the greatest path first, which is the
order nixpkgs pops them from its size-sorted input) becomes a primary:

* ``P``'s label becomes ``{P}``;
* for every strict dependency ``d`` of ``P``: primaries that (transitively) use ``P`` are removed
  from ``d``'s label, since ``P`` now stands for them; then, unless ``d``'s label still holds a
  primary that is itself a dependency of ``P``, ``P`` is added to it.

If the number of distinct labels would exceed the budget, that step is undone and the algorithm
stops. Items with the same label form one layer.

Order. nixpkgs sorts layers by the total NAR size of their closure (the layer's items and
everything they reach), meaning to put every layer after the layers it depends on; that is not
always enough (a dependency layer can hold other, larger items), so we order the layers
topologically (a layer after every layer it refers to) and break ties by that closure size, then
by the layer's smallest path. The layers themselves are exactly nixpkgs'.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from closurepack.graph import Closure
from closurepack.strategies._dag import Dag

__all__ = ["auto"]


def auto(closure: Closure, *, budget: int) -> list[tuple[str, ...]]:
    """Group items by the minimal set of large "primary" items that use them (module docstring)."""
    dag = Dag.from_closure(closure)
    # The labelling for a budget is the one for any smaller budget, continued: it only stops
    # later. The planner asks again with larger budgets (its refills), so the run stopped at
    # the largest budget so far is kept per closure and continued from where it stopped.
    kept: dict[str, _Labelling] = closure.memoized("auto labelling", dict)
    known = kept.get("run")
    resumed = known is not None and known.budget <= budget
    run = known if known is not None and resumed else _Labelling.start(dag)
    run.advance(dag, budget)  # (in place: only the labels it ends with are read below)
    if known is None or resumed:
        kept["run"] = run
    labels = run.labels

    groups: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    layers = list(groups.values())
    closure_size = _closure_sizes_of_groups(
        dag, layers, closure.memoized("auto group closure sizes", dict)
    )
    path_of = dag.paths.__getitem__
    keys = [(closure_size[g], min(map(path_of, layer))) for g, layer in enumerate(layers)]
    order = _dependencies_first(dag, labels, layers, keys)
    return [tuple(sorted(map(path_of, layers[g]))) for g in order]


@dataclass
class _Labelling:
    """The primaries chosen so far, every item's label, and where in the size order the
    run stopped (the next candidate) for ``budget``."""

    by_size: list[int]
    labels: list[int]  # bit k set: the k-th primary
    counts: dict[int, int]  # label -> how many items carry it
    primaries: list[int]  # item index of each primary, by ordinal
    used_by: list[int]  # per item: bit k set when the k-th primary (transitively) uses it
    bit_of: dict[int, int]  # a primary's item -> its bit
    next: int = 0
    budget: int = 0

    @classmethod
    def start(cls, dag: Dag) -> _Labelling:
        n = len(dag)
        by_size = sorted(range(n), key=lambda i: (dag.sizes[i], dag.paths[i]), reverse=True)
        return cls(by_size, [0] * n, {0: n}, [], [0] * n, {})

    def advance(self, dag: Dag, budget: int) -> None:
        """Make primaries in size order while the labels fit in ``budget`` (docstring)."""
        labels, primaries = self.labels, self.primaries
        used_by, bit_of = self.used_by, self.bit_of
        self.budget = budget
        while self.next < len(self.by_size):
            new = self.by_size[self.next]
            deps = dag.reach(dag.refs[new])
            bit = 1 << len(primaries)
            # The primaries that use ``new``, and those among its dependencies (none is both:
            # the graph has no cycle); the second from whichever of the two is shorter.
            users_mask = used_by[new]
            deps_mask = 0
            if len(deps) < len(primaries):
                for d in deps:
                    deps_mask |= bit_of.get(d, 0)
            else:
                for k, item in enumerate(primaries):
                    if item in deps:
                        deps_mask |= 1 << k
            changes: list[tuple[int, int]] = [(new, bit)]
            for d in deps:
                label = labels[d] & ~users_mask
                if not label & deps_mask:
                    label |= bit
                if label != labels[d]:
                    changes.append((d, label))
            trial = dict(self.counts)
            for item, label in changes:
                old = labels[item]
                trial[old] -= 1
                if not trial[old]:
                    del trial[old]
                trial[label] = trial.get(label, 0) + 1
            if len(trial) > budget:
                return
            self.counts = trial
            for item, label in changes:
                labels[item] = label
            for d in deps:
                used_by[d] |= bit
            bit_of[new] = bit
            primaries.append(new)
            self.next += 1


def _dependencies_first(
    dag: Dag, labels: list[int], layers: list[list[int]], keys: list[tuple[int, str]]
) -> list[int]:
    """Layer indices so that a layer comes after every layer it refers to; ties by ``keys``.

    Items with one label never form a cycle between two layers (an item's label is derived from
    the primaries that reach it), but if one ever appeared the rest is appended by ``keys``.
    """
    layer_of = {label: g for g, label in enumerate(labels[layer[0]] for layer in layers)}
    depends: list[set[int]] = [set() for _ in layers]
    for g, layer in enumerate(layers):
        for i in layer:
            for r in dag.refs[i]:
                other = layer_of[labels[r]]
                if other != g:
                    depends[g].add(other)
    users: list[list[int]] = [[] for _ in layers]
    for g, deps in enumerate(depends):
        for d in deps:
            users[d].append(g)
    waiting = [len(deps) for deps in depends]
    ready = [(keys[g], g) for g in range(len(layers)) if not waiting[g]]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        _, g = heapq.heappop(ready)
        order.append(g)
        for u in users[g]:
            waiting[u] -= 1
            if not waiting[u]:
                heapq.heappush(ready, (keys[u], u))
    if len(order) < len(layers):
        placed = set(order)
        order.extend(
            sorted((g for g in range(len(layers)) if g not in placed), key=keys.__getitem__)
        )
    return order


def _closure_sizes_of_groups(
    dag: Dag, groups: list[list[int]], known: dict[tuple[int, ...], int]
) -> list[int]:
    """Total NAR size of the closure of each group (the group's items and all they reach).
    Kept in ``known`` by the group's items (the planner's refills ask again for the same
    closure, and a larger budget leaves most groups as they were: the bench store's 145
    items: 99, 110 and 120 groups, of which 90 and 100 were there before)."""
    sizes = []
    for group in groups:
        members = tuple(group)
        size = known.get(members)
        if size is None:
            size = known[members] = sum(map(dag.sizes.__getitem__, dag.reach(group)))
        sizes.append(size)
    return sizes
