"""Canonical merges: the clusters every image merges alike, whatever its budget (issue 8).

Planned together, several images can share a layer only where their plans alone cut the same
way, since the fleet planner (:mod:`closurepack.fleet`) never lets an image's joint plan ship
more per update than its plan alone. ``stable``'s plans alone differ where the budget binds:
a large image merges ``libc6`` with ``libgcc-s1`` and ``gcc-12-base`` (nearly free), a small
one with room for every item keeps the three apart, and the fleet stores ``libc6`` twice.

Here clusters joined by a reference are merged, least cost first, while the merge costs at most
``below`` in the one-change form of ``stable``'s model, ``(s_a + s_b) |D(a | b)| - s_a |D(a)| -
s_b |D(b)|`` (bytes times items; ``D`` the down-set). Sizes and down-sets are the items' own,
the same in every closure that holds them, and no budget is read, so images holding the same
items make the same merges there: their plans alone, and with them the fleet's layers, then
coincide on those items. Ties go by the clusters' first names, as everywhere in ``stable``.

Complexity: one pass over the references to find the clusters each one refers to, then
``O(m * p)`` popcounts of ``n``-bit sets for ``m`` merges and ``p`` pairs of clusters joined
by a reference (every candidate costed again after each merge); the clusters are at most
``max(EXACT_LIMIT, COARSE_LIMIT)`` of ``stable``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

__all__ = ["CANONICAL_BELOW", "canonical_merges"]

#: The one-change cost (bytes times items) under which ``stable-canonical`` merges two clusters
#: joined by a reference in every image (measured with ``bench/economy_bench.py``: DEVELOPERS.md,
#: "Layer economy"): enough for ``libc6`` with ``libgcc-s1`` and ``gcc-12-base``.
CANONICAL_BELOW = 300_000


def canonical_merges(
    clusters: Sequence[Sequence[int]],
    sets: Sequence[int],
    *,
    own: Sequence[int] | None = None,
    sizes: Sequence[int],
    refs: Sequence[Sequence[int]],
    images: Sequence[int],
    rank: Sequence[int],
    below: int,
) -> tuple[list[list[int]], list[int], list[int]]:
    """``clusters`` (item indices) and their down-sets, ``sets`` (bitsets) with ``own`` counts
    (:func:`~closurepack.strategies.economy.shared_bitsets`; none when not given), after the
    canonical merges (module docstring): each merged cluster's items sorted, the clusters in
    the order of their first item's place in ``clusters``. ``sizes``, ``refs``, ``images``
    and ``rank`` are per item: bytes, references, image mask (clusters of different masks
    never merge) and place in name order."""
    members = [list(c) for c in clusters]
    downs = list(sets)
    extra = list(own) if own is not None else [0] * len(sets)
    owner = [0] * len(sizes)
    for k, cluster in enumerate(members):
        for i in cluster:
            owner[i] = k
    # The clusters each one's items refer to (the candidates it is weighed with), found in one
    # pass over the references and kept up to date as clusters merge.
    neighbours = [
        set(map(owner.__getitem__, chain.from_iterable(map(refs.__getitem__, cluster)))) - {k}
        for k, cluster in enumerate(members)
    ]
    weight = [sum(sizes[i] for i in cluster) for cluster in members]
    first = [min(rank[i] for i in cluster) for cluster in members]
    mask = [images[cluster[0]] for cluster in members]
    alive = [bool(cluster) for cluster in members]
    while True:
        best: tuple[int, int, int, int, int] | None = None
        for k in range(len(members)):
            if not alive[k]:
                continue
            for j in neighbours[k]:  # (any order: the best is the least tuple)
                if mask[j] != mask[k]:
                    continue
                together = (downs[k] | downs[j]).bit_count() + extra[k] + extra[j]
                cost = (
                    (weight[k] + weight[j]) * together
                    - weight[k] * (downs[k].bit_count() + extra[k])
                    - weight[j] * (downs[j].bit_count() + extra[j])
                )
                if cost > below:
                    continue
                low, high = (k, j) if first[k] < first[j] else (j, k)
                candidate = (cost, first[low], first[high], low, high)
                if best is None or candidate < best:
                    best = candidate
        if best is None:
            break
        _, _, _, kept, gone = best
        members[kept].extend(members[gone])
        downs[kept] |= downs[gone]
        extra[kept] += extra[gone]
        weight[kept] += weight[gone]
        first[kept] = min(first[kept], first[gone])
        members[gone] = []
        alive[gone] = False
        neighbours[kept] |= neighbours[gone]
        neighbours[kept] -= {kept, gone}
        neighbours[gone] = set()
        for others in neighbours:  # what referred to gone's items now refers to kept's
            if gone in others:
                others.discard(gone)
                others.add(kept)
    order = sorted((k for k in range(len(members)) if alive[k]), key=lambda k: min(members[k]))
    return (
        [sorted(members[k]) for k in order],
        [downs[k] for k in order],
        [extra[k] for k in order],
    )
