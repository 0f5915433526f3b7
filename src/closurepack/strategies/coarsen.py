"""``stable``'s step 1: a large closure coarsened to a few clusters, each a top item and
dependencies of it (see :mod:`closurepack.strategies.stable`, "Algorithm")."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from closurepack.strategies._dag import Dag

__all__ = ["coarsen"]

#: Union-find over cluster ids: ``find(i)`` is the top item of the cluster ``i`` is in.
_Find = Callable[[int], int]


def coarsen(
    dag: Dag, rank: list[int], images: list[int], limit: int, down: Sequence[int]
) -> list[list[int]]:
    """At most ``limit`` clusters, each a list of item indices, ascending, the clusters in
    order of their top item (``rank``: each item's place by name; ``images``: each item's
    image bitmask; ``down``: each item's down-set size, :meth:`Dag.closure_sums`)."""
    via = _nearest_referrers(dag, rank, images, down)
    forest = _Forest.of_items(dag.sizes)
    roots = via.count(-1)
    if roots >= limit:
        # The absorptions would run out before the cluster count came down to ``limit``:
        # every item with a referrer to join is absorbed, whatever the order, so each ends
        # in the cluster of the top of its ``via`` chain (31k of the 63k Debian items do).
        _join_via_trees(forest, via)
    else:
        _absorb_cheapest(forest, via, rank=rank, down=down, limit=limit)
    if forest.count > limit:
        _join_least_valuable(forest, dag, rank=rank, down=down, limit=limit)
    return forest.clusters()


@dataclass
class _Forest:
    """Clusters as a union-find forest over the items: a cluster is named by its top item,
    ``parent[top] == top``, and ``weight[top]`` is its bytes; ``grown[top]`` tells whether
    it holds more than its top; ``count`` clusters in all."""

    parent: list[int]
    weight: list[int]
    grown: list[bool]
    count: int

    @classmethod
    def of_items(cls, sizes: Sequence[int]) -> _Forest:
        """Every item a cluster of its own."""
        return cls(list(range(len(sizes))), list(sizes), [False] * len(sizes), len(sizes))

    def find(self, i: int) -> int:
        """The top of the cluster ``i`` is in (halving the path walked)."""
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def join(self, top: int, target: int) -> None:
        """The cluster of ``top`` absorbed into that of ``target`` (both tops)."""
        self.parent[top] = target
        self.weight[target] += self.weight[top]
        self.grown[target] = True
        self.count -= 1

    def clusters(self) -> list[list[int]]:
        """Each cluster's items, ascending, the clusters in order of their top."""
        parent, find = self.parent, self.find
        members: dict[int, list[int]] = {}
        for i in range(len(parent)):
            # Two steps up reach the top unless i's cluster joined one that joined another:
            # then find() it, which also points every item on the way at the top.
            c = parent[parent[i]]
            if parent[c] != c:
                c = find(i)
            members.setdefault(c, []).append(i)
        return [members[c] for c in sorted(members)]


def _nearest_referrers(
    dag: Dag, rank: list[int], images: list[int], down: Sequence[int]
) -> list[int]:
    """Each item's referrer of the same images with the smallest down-set (ties by name), or
    -1 (none): the cluster it joins, wherever that referrer's cluster has gone. A cluster of
    the same images, so a layer of items of different images (stored once per distinct part)
    is not made here."""
    n = len(dag)
    order_key = [d * n + r for d, r in zip(down, rank, strict=True)]  # (down, rank) in one int
    nearest = order_key.__getitem__
    if not any(images):  # one image: every referrer is of the same images
        return [min(rs, key=nearest) if rs else -1 for rs in dag.referrers]
    return [
        min((r for r in rs if images[r] == images[i]), key=nearest, default=-1)
        for i, rs in enumerate(dag.referrers)
    ]


def _join_via_trees(forest: _Forest, via: list[int]) -> None:
    """Every item with a ``via`` referrer joins the cluster of the top of its ``via`` chain
    (its parent set to that top directly): what :func:`_absorb_cheapest` ends with when it
    runs out of absorptions, in one pass and without its heap."""
    parent, weight, grown = forest.parent, forest.weight, forest.grown
    joined = 0
    for i in range(len(via) - 1, -1, -1):  # a referrer has a higher index: its top is known
        target = via[i]
        if target >= 0:
            top = parent[target]
            parent[i] = top
            weight[top] += weight[i]
            grown[top] = True
            joined += 1
    forest.count -= joined


def _absorb_cheapest(
    forest: _Forest, via: list[int], *, rank: list[int], down: Sequence[int], limit: int
) -> None:
    """Repeatedly the cluster whose absorption into its ``via`` referrer's cluster costs least,
    ``s(X) * (|down(top(C))| - |down(top(X))|)``, is absorbed (lazy heap: costs only grow),
    until ``limit`` clusters remain or none can be absorbed."""
    parent, weight, find = forest.parent, forest.weight, forest.find
    # (cost of absorbing top's cluster into target's, rank[top], target, top); parents are
    # all still themselves here, so every target is its own cluster.
    heap = [(weight[i] * (down[t] - down[i]), rank[i], t, i) for i, t in enumerate(via) if t >= 0]
    heapq.heapify(heap)
    pop, push = heapq.heappop, heapq.heappush
    while heap and forest.count > limit:
        cost, order, _, top = pop(heap)
        target = via[top]
        if parent[target] != target:  # (most targets are still their own cluster)
            target = find(target)
        fresh = weight[top] * (down[target] - down[top])
        if fresh > cost or (heap and (fresh, order, target, top) > heap[0]):
            push(heap, (fresh, order, target, top))
            continue
        forest.join(top, target)


def _join_least_valuable(
    forest: _Forest, dag: Dag, *, rank: list[int], down: Sequence[int], limit: int
) -> None:
    """Down to ``limit`` clusters when only root-topped ones are left to merge: the least
    valuable join the cluster of their top's largest reference outside their own (isolated
    items, with no reference, join each other). By (weight * down, rank): ranks differ, so
    the tops themselves are never compared."""
    n = len(dag)
    parent, weight, grown, find = forest.parent, forest.weight, forest.grown, forest.find
    tops = sorted([(weight[c] * down[c], rank[c], c) for c in range(n) if parent[c] == c])
    largest = [d * n + (n - 1 - r) for d, r in zip(down, rank, strict=True)]  # (down, -rank)
    alone: int | None = None
    for _, _, top in tops:
        if forest.count <= limit:
            break
        # A cluster of its top alone (most of them) has all the top's references outside.
        outside = dag.refs[top] if not grown[top] else _nearest_outside(dag, top, find)
        if outside:
            target = parent[parent[nearest := max(outside, key=largest.__getitem__)]]
            if parent[target] != target:  # (most clusters are still where phase 1 left them)
                target = find(nearest)
        elif alone is None:
            alone = top
            continue
        else:
            target = find(alone)
        if target != top:
            forest.join(top, target)


def _nearest_outside(dag: Dag, top: int, find: _Find) -> list[int]:
    """The first items below ``top`` (breadth first) that lie outside its own cluster."""
    level = list(dag.refs[top])
    seen = set(level)
    while level:
        outside = [r for r in level if find(r) != top]
        if outside:
            return outside
        following = []
        for r in level:
            for d in dag.refs[r]:
                if d not in seen:
                    seen.add(d)
                    following.append(d)
        level = following
    return []
