"""Nixery's layering: top-level subtrees of the dominator tree, merged by popularity times size.

Origin: ``layers/layers.go`` in Nixery (Vincent Ambo; reimplemented). A synthetic root points to
the image's roots and to every item that is *big* (closure size above 100 MB) or *popular*; the
dominator tree of that graph is computed and every child of the synthetic root, with everything
it dominates, becomes a layer. Each layer gets a merge rating: the popularity of its top item
times the summed closure sizes of its members (Nixery sums its ``closureSize`` field). Layers
are sorted by rating, ascending, and while there are more than the budget the first layer is
merged into the second (so all the lowest-rated layers end up in one); the result keeps that
order, bottom first.

Popularity. Nixery uses a precomputed percentile of how many nixpkgs packages refer to each
package. We have only the closure, so the popularity of an item is the number of items in the
closure that refer to it directly (at least 1), and *popular* means a count at least that of the
item at the 90th percentile, and at least 2. (Nixery's cut is the top 1% of all nixpkgs; within
one closure that would flag only one or two items, and the dominator tree would collapse into a
single subtree for any image with one root.)

Ties. Ratings are compared, then the layers' smallest paths. The dominator tree is computed
with the Cooper-Harvey-Kennedy intersection in one pass over the topological order (on a DAG,
every predecessor of an item is final before the item is visited).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import compress

from closurepack.graph import Closure
from closurepack.strategies._dag import Dag

__all__ = ["BIG_CLOSURE_SIZE", "POPULAR_PERCENTILE", "dominator"]

#: Nixery's size threshold: an item whose closure is larger gets its own subtree.
BIG_CLOSURE_SIZE = 100 * 1000 * 1000
#: Items referred to by at least as many items as the one at this percentile are "popular".
POPULAR_PERCENTILE = 90


def dominator(closure: Closure, *, budget: int) -> list[tuple[str, ...]]:
    """Dominator-tree subtrees under a synthetic root, merged down to ``budget`` (docstring)."""
    dag = Dag.from_closure(closure)
    layers = closure.memoized("dominator subtrees", lambda: _subtrees(closure, dag))
    path = dag.paths.__getitem__
    if len(layers) <= budget:
        return [tuple(sorted(map(path, members))) for _, _, members in layers]
    # Nixery merges the first layer into the second until the budget is met, without
    # re-sorting: the lowest-rated ``len - budget + 1`` layers end up as one, at the bottom.
    # That one holds most items: it is picked out of every path in order, each with the
    # place of its subtree (kept per closure: the planner asks again with larger budgets),
    # rather than sorted anew.
    cut = len(layers) - max(budget, 1) + 1
    ordered, places = closure.memoized(
        "dominator path places", lambda: _places(closure, dag, layers)
    )
    bottom = tuple(compress(ordered, map(cut.__gt__, places)))
    return [bottom, *(tuple(sorted(map(path, members))) for _, _, members in layers[cut:])]


def _places(
    closure: Closure, dag: Dag, layers: list[tuple[int, str, list[int]]]
) -> tuple[Sequence[str], list[int]]:
    """Every path in order, and the place in ``layers`` of the subtree holding it. The paths
    in order are the closure's own (:meth:`Closure.sorted_paths`, shared with the small-layer
    merge; sorting its items, already in path order, is one pass), their indices looked up:
    no sort of 63k indices by path."""
    place = [0] * len(dag)
    for number, (_, _, members) in enumerate(layers):
        for i in members:
            place[i] = number
    ordered = closure.sorted_paths()
    return ordered, list(map(place.__getitem__, map(dag.index().__getitem__, ordered)))


def _subtrees(closure: Closure, dag: Dag) -> list[tuple[int, str, list[int]]]:
    """The rated subtrees under the synthetic root, lowest rating first (budget-free)."""
    n = len(dag)
    closure_size = dag.closure_sums(dag.sizes)
    popularity = [len(rs) or 1 for rs in dag.referrers]
    ranked = sorted(map(len, dag.referrers))
    popular_count = max(ranked[(POPULAR_PERCENTILE * n) // 100] if n else 0, 2)
    index = dag.index()
    roots = {index[p] for p in closure.roots}
    from_root = [
        i in roots
        or not dag.referrers[i]
        or closure_size[i] > BIG_CLOSURE_SIZE
        or len(dag.referrers[i]) >= popular_count
        for i in range(n)
    ]

    root = n  # the synthetic root
    idom = [root] * (n + 1)
    depth = [0] * (n + 1)
    for i in range(n - 1, -1, -1):  # referrers before references
        preds = dag.referrers[i]
        if from_root[i] or not preds:
            idom[i] = root
            depth[i] = 1
            continue
        current = preds[0]
        for p in preds[1:]:
            current = _intersect(current, p, idom, depth)
            if current == root:
                break
        idom[i] = current
        depth[i] = depth[current] + 1

    children: list[list[int]] = [[] for _ in range(n + 1)]
    for i in range(n):
        children[idom[i]].append(i)
    layers: list[tuple[int, str, list[int]]] = []
    path, size = dag.paths.__getitem__, closure_size.__getitem__
    for top in children[root]:
        if not children[top]:  # most subtrees are one item (48.5k of 54k on the Debian closure)
            layers.append((popularity[top] * size(top), path(top), [top]))
            continue
        members = [top]
        k = 0
        while k < len(members):
            members.extend(children[members[k]])
            k += 1
        rating = popularity[top] * sum(map(size, members))
        layers.append((rating, min(map(path, members)), members))
    layers.sort()  # by rating, then smallest path: no two layers share a path
    return layers


def _intersect(a: int, b: int, idom: list[int], depth: list[int]) -> int:
    """The nearest common dominator of ``a`` and ``b`` (walk the deeper one up)."""
    while a != b:
        if depth[a] >= depth[b]:
            a = idom[a]
        else:
            b = idom[b]
    return a
