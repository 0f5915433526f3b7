"""``stable``: layers planned for change, by the bytes an update is expected to ship.

Cost model. An update changes some items, and with them (Nix-style) every item above them:
their referrers, transitively, all get new store paths. A layer must be shipped again when any
of its items changed, that is when a changed item lies in the layer's *down-set* ``D(L)`` (the
layer's items and everything they reach). The model update changes :data:`CHANGES` of the ``n``
items, each item independently with probability ``q = CHANGES / n``; a layer of ``s(L)`` bytes
is then shipped with probability ``hit(L) = 1 - (1 - q) ** |D(L)|``, and this strategy
minimises the expected bytes shipped::

    cost(plan) = sum over layers L of s(L) * hit(L)

within the layer budget (the bytes that really changed do not depend on the plan, so this is
the expected update overhead). For one change (``q`` small) ``hit`` is ``|D(L)| / n``, the
random-update figure; several changes at once, as real updates make, saturate layers that
depend on much. One layer per item is the floor (overhead 1.0); merging layers ``A`` and ``B``
costs ``(s(A) + s(B)) * hit(A+B) - s(A) * hit(A) - s(B) * hit(B)``: small items whose down-sets
nearly coincide merge almost for free, a large item pays for every extra item that could change
beside it. :data:`CHANGES` is 3, chosen by measurement (``bench/economy_bench.py``): 1 gives the
best random-update figures, more serve the real updates better (Debian's point updates change
3 to 12 packages at once in these closures), 3 costs random updates least.

Several images. When the closure is several images' closures planned together (its graph
roots, up to :data:`MAX_IMAGES` of them, are taken for the images), each image gets every layer
restricted to its own items, and each distinct restriction is stored as a layer of its own. A
merge that makes a layer hold items of different sets of images therefore also costs the bytes
it duplicates, each byte as much as a byte shipped with every update.

Algorithm.

1. Coarsening, for closures of more than :data:`EXACT_LIMIT` items only: a cluster holds a *top*
   item and dependencies of it, so its down-set is the top's and its cost is known without sets.
   Every item is attached to its referrer with the smallest down-set among those of the same
   images; repeatedly the cluster whose absorption into the cluster that referrer is now in
   costs least in the one-change form of the cost, ``s(X) * (|down(top(C))| -
   |down(top(X))|)``, is absorbed (lazy heap: costs only grow), until ``min(COARSE_LIMIT,
   3 * budget)`` clusters remain or none can be absorbed so (when at least that many items
   have no referrer to join, as the graph roots of a large closure, every other item is
   absorbed whatever the order: each joins the cluster at the end of its chain of nearest
   referrers, found in one pass without the heap). Then the least valuable clusters
   left (by ``s * |down(top)|``) join the cluster of the nearest item below their top outside
   their own cluster with the largest down-set (items with no reference at all join each
   other).
2. Exact greedy: with the down-sets as bitsets, the pair of clusters whose merge costs least is
   merged (ties: by the clusters' first names) until the budget is met. A cluster's bitset
   holds only the items that another cluster's down-set holds too, its other items are
   counted (:func:`~closurepack.strategies.economy.shared_bitsets`: the same union sizes,
   and on a large closure most items lie below one cluster only).
3. Local search (:func:`~closurepack.strategies.refine.refine`): the greedy never undoes a
   merge, so each cluster, in name order, moves to the layer (or a layer of its own while the
   budget has room) where the plan's cost is least, while a move lowers it, at most
   :data:`~closurepack.strategies.refine.PASSES` passes; a cluster joins only a layer of
   clusters of the same images.
4. Order, bottom first, for Docker's ChainID rule (a layer is reused only with everything
   below it: :func:`~closurepack.strategies.refine.chain_order`): next the layer of least
   ``p / ((1 - p) * s(L))``, ``p`` its chance to break given that the layers below did not,
   so the large layers that few changes reach are at the bottom and a layer that changes
   only with the ones below it goes right above them.

Complexity: coarsening is ``O((n + edges) log n)`` (``O(n + edges)`` without the heap) plus
the down-set walk; every later step works on at most ``max(EXACT_LIMIT, COARSE_LIMIT)``
clusters with ``n``-bit sets, so it is linear in ``n`` (the exact greedy's pairs, the
search's moves and the order are bounded by the cluster count, not by ``n``).

Ties. Every tie is broken by names (:func:`nixpkgs_name_key`: the package name, then the hash),
never by hashes first: an update renames the items above a change, and the plan of the new
closure should have the same shape as the old one wherever nothing forces it to differ. Every
step depends only on the graph, sizes and paths, so a shuffled input gives the same plan.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import chain, repeat

from closurepack.graph import Closure
from closurepack.strategies._dag import Dag, nixpkgs_name_key
from closurepack.strategies.canonical import canonical_merges
from closurepack.strategies.coarsen import coarsen
from closurepack.strategies.economy import (
    CHANGES,
    MergeCosts,
    hit_table,
    shared_bitsets,
    union_of,
)
from closurepack.strategies.refine import chain_order, refine

__all__ = ["CHANGES", "COARSE_LIMIT", "EXACT_LIMIT", "MAX_IMAGES", "stable"]

#: Closures of up to this many items are planned by the exact greedy step alone; larger ones
#: are first coarsened to ``min(COARSE_LIMIT, 3 * budget)`` clusters (the exact step compares
#: every pair, so this bounds its time).
EXACT_LIMIT = 300
COARSE_LIMIT = 200
#: Up to this many graph roots, each is taken for an image planned together with the others.
MAX_IMAGES = 64


def stable(
    closure: Closure, *, budget: int, exact_limit: int = EXACT_LIMIT, canonical: int = 0
) -> list[tuple[str, ...]]:
    """Layers minimising ``sum of s(L) * hit(L)``, the expected bytes of an update (docstring).

    ``exact_limit`` is :data:`EXACT_LIMIT` (given by tests, to coarsen small closures too);
    ``canonical`` above 0, the clusters are first merged by
    :func:`~closurepack.strategies.canonical.canonical_merges` below that cost
    (``stable-canonical``; 0, the default, keeps today's plans)."""
    dag = Dag.from_closure(closure)
    n = len(dag)
    budget = max(budget, 1)
    # Kept per closure: the planner asks again with larger budgets (its refills), and what
    # follows depends on the budget only through the cluster count.
    rank, images = closure.memoized("stable ranks", lambda: (_name_ranks(dag), _images(dag)))
    if n <= max(budget, exact_limit):
        target = n
    else:
        target = max(budget, min(exact_limit, COARSE_LIMIT, 3 * budget))

    def down_counts() -> list[int]:  # (the same for every target: kept too)
        return closure.memoized("stable down counts", dag.closure_sums)

    def clustered() -> tuple[list[list[int]], list[int], list[int]]:
        clusters, sets, own = _clusters(dag, rank, images, target, down_counts)
        if not canonical:
            return clusters, sets, own
        return canonical_merges(
            clusters,
            sets,
            own=own,
            sizes=dag.sizes,
            refs=dag.refs,
            images=images,
            rank=rank,
            below=canonical,
        )

    key = f"{target} canonical {canonical}" if canonical else f"{target}"
    clusters, sets, own = closure.memoized(f"stable clusters {key}", clustered)
    log = closure.memoized(f"stable merges {key}", _MergeLog)
    layers = _merge_exactly(dag, rank, images, clusters, sets=sets, own=own, budget=budget, log=log)
    path = dag.paths.__getitem__
    most = max(range(len(layers)), key=lambda g: len(layers[g]), default=-1)
    if most < 0 or 2 * len(layers[most]) <= n:
        return [tuple(sorted(map(path, members))) for members in layers]
    # A layer of most items (a large closure's bottom) is every path but the others', in the
    # order the closure keeps (the small-layer merge sorts them anyway): no sort of its paths.
    others = [tuple(sorted(map(path, members))) for g, members in enumerate(layers) if g != most]
    whole = closure.paths_without(set(chain.from_iterable(others)))
    return [*others[:most], whole, *others[most:]]


def _name_ranks(dag: Dag) -> list[int]:
    """Each item's place in :func:`nixpkgs_name_key` order (every tie-break by name)."""
    keys = list(map(nixpkgs_name_key, dag.paths))
    by_name = sorted(range(len(dag)), key=keys.__getitem__)
    rank = [0] * len(dag)
    for position, i in enumerate(by_name):
        rank[i] = position
    return rank


def _clusters(
    dag: Dag,
    rank: list[int],
    images: list[int],
    target: int,
    down_counts: Callable[[], list[int]],
) -> tuple[list[list[int]], list[int], list[int]]:
    """At most ``target`` clusters (every item alone when that is the item count, else step 1
    of the module docstring), and each one's down-set: a bitset, and a count of the items no
    other cluster's down-set holds that are left out of it (none for items alone; for
    clusters, :func:`~closurepack.strategies.economy.shared_bitsets`)."""
    if target >= len(dag):
        return [[i] for i in range(len(dag))], dag.down_bitsets(), [0] * len(dag)
    clusters = coarsen(dag, rank, images, target, down_counts())
    sets, own = shared_bitsets([dag.reach(members) for members in clusters])
    return clusters, sets, own


def _images(dag: Dag) -> list[int]:
    """For each item, the bitmask of the graph roots above it (the images that hold it when
    several closures are planned together), or all zero past :data:`MAX_IMAGES` roots."""
    roots = dag.graph_roots()
    masks = [0] * len(dag)
    if not 1 < len(roots) <= MAX_IMAGES:
        return masks
    for bit, root in enumerate(roots):
        masks[root] = 1 << bit
    for i in range(len(dag) - 1, -1, -1):  # referrers have higher indices
        for r in dag.refs[i]:
            masks[r] |= masks[i]
    return masks


def _merge_exactly(
    dag: Dag,
    rank: list[int],
    images: list[int],
    clusters: list[list[int]],
    *,
    sets: list[int],
    own: list[int],
    budget: int,
    log: _MergeLog,
) -> list[list[int]]:
    """Step 2 then 3: greedy merges by exact cost down to ``budget`` clusters, then ordered
    (each layer's items in no particular order).

    The greedy's merges are the same whatever the budget, which only says when they stop: a
    ``log`` of a run down to a budget no larger than this one is replayed instead."""
    n = len(dag)
    sizes = [sum(map(dag.sizes.__getitem__, members)) for members in clusters]
    pieces: list[dict[int, int]] = []
    one_image = not any(images)  # every item's mask is 0
    for members, size in zip(clusters, sizes, strict=True):
        if one_image:
            pieces.append({0: size})
            continue
        piece: dict[int, int] = {}
        for i in members:
            piece[images[i]] = piece.get(images[i], 0) + dag.sizes[i]
        pieces.append(piece)
    groups: list[list[int] | None] = [[c] for c in range(len(clusters))]  # cluster ids
    unit_sizes, unit_sets = list(sizes), list(sets)
    unit_images = [tuple(sorted(piece)) for piece in pieces]
    alive = len(clusters)
    version = [0] * len(clusters)
    first = [min(map(rank.__getitem__, members)) for members in clusters]  # ties by name

    hit = hit_table(n)  # chance that one of CHANGES changes lies in d items
    merging = MergeCosts(hit, sizes, sets, pieces, own=own)

    def entry(a: int, b: int) -> _Entry:
        """The heap entry of merging ``a`` and ``b``: its cost, or a lower bound on it (last
        field False) that is made exact when it comes to the top. The merge order is the one
        of exact costs alone: an entry pops only when every other pair's bound, and so its
        cost, is no lower."""
        low, high = (a, b) if first[a] < first[b] else (b, a)
        floor = merging.floor(a, b)
        exact = floor is None
        value = merging.cost(a, b) if floor is None else floor
        return (value, first[low], first[high], low, high, version[low], version[high], exact)

    # One image and a rising hit[]: every pair has :meth:`MergeCosts.floor`, written out here
    # (the first heap holds every pair's: two calls each were most of a small closure's
    # greedy). Its value exactly: ``s(b) * (hit[c(a)] - hit[c(b)])`` for ``c(a) >= c(b)``.
    floors = one_image and merging.rising
    counts, weights = merging.counts, merging.sizes

    def floor_entries(a: int, others: Iterable[int]) -> list[_Entry]:
        """:func:`entry` of ``a`` with each of ``others`` (all bounds: ``floors`` holds)."""
        fa, va, ca, sa = first[a], version[a], counts[a], weights[a]
        ha = hit[ca]
        made: list[_Entry] = []
        for b in others:
            cb = counts[b]
            value = weights[b] * (ha - hit[cb]) if ca >= cb else sa * (hit[cb] - ha)
            if fa < first[b]:
                made.append((value, fa, first[b], a, b, va, version[b], False))
            else:
                made.append((value, first[b], fa, b, a, version[b], va, False))
        return made

    if log.budget is not None and log.budget <= budget:
        for a, b in log.merges[: max(0, alive - budget)]:
            kept, gone = groups[a], groups[b]
            if kept is not None and gone is not None:  # always, as when they were logged
                kept.extend(gone)
                groups[b] = None
        alive = budget  # not used again: the greedy below does not run
    merges: list[tuple[int, int]] = []
    heap: list[_Entry] = []
    if alive > budget and floors:
        by_name = sorted(range(len(clusters)), key=first.__getitem__)
        for x, a in enumerate(by_name):
            heap += floor_entries(a, by_name[x + 1 :])
        heapq.heapify(heap)
    elif alive > budget:
        heap = [entry(a, b) for a in range(len(clusters)) for b in range(a + 1, len(clusters))]
        heapq.heapify(heap)
    while alive > budget and heap:
        _, first_a, first_b, a, b, va, vb, exact = heapq.heappop(heap)
        ga, gb = groups[a], groups[b]
        if ga is None or gb is None or version[a] != va or version[b] != vb:
            continue
        if not exact:
            cost = merging.cost(a, b)
            heapq.heappush(heap, (cost, first_a, first_b, a, b, va, vb, True))
            continue
        # Merge b into a (a has the first name): a's figures change, b is gone.
        ga.extend(gb)
        groups[b] = None
        merges.append((a, b))
        merging.merge(a, b)
        version[a] += 1
        alive -= 1
        if alive > budget:
            others = [c for c, group in enumerate(groups) if group is not None and c != a]
            for made in floor_entries(a, others) if floors else map(entry, repeat(a), others):
                heapq.heappush(heap, made)

    if log.budget is None or log.budget > budget:
        log.budget, log.merges = budget, merges
    # Layers and units in name order, so that renames leave the search (and its ties) as it was.
    named = sorted(
        (sorted(group, key=lambda c: first[c]) for group in groups if group is not None),
        key=lambda group: first[group[0]],
    )
    layers = refine(
        named,
        sizes=unit_sizes,
        downs=unit_sets,
        images=unit_images,
        hit=hit,
        budget=budget,
        visit=sorted(range(len(clusters)), key=lambda c: first[c]),
        own=own,
    )
    downs = [union_of(unit_sets, layer) for layer in layers]
    owns = [sum(own[c] for c in layer) for layer in layers]
    weights = [sum(unit_sizes[c] for c in layer) for layer in layers]
    keys = [f"{min(first[c] for c in layer):012d}" for layer in layers]
    return [
        list(chain.from_iterable(map(clusters.__getitem__, layers[g])))
        for g in chain_order(downs, weights, hit, keys, own=owns)
    ]


@dataclass
class _MergeLog:
    """The greedy's merges (kept, merged) for a closure's clusters, down to ``budget``."""

    budget: int | None = None
    merges: list[tuple[int, int]] = field(default_factory=list)


#: A pair in the greedy's heap: cost (or a bound on it), both first names, both clusters, their
#: versions, whether the cost is exact.
_Entry = tuple[float, int, int, int, int, int, int, bool]
