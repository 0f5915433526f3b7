"""``--min-layer-size``: fold layers smaller than a size into the neighbour they cost least in.

Tiny layers waste the layer budget and cost every pull a round trip or more per layer
(nix2container issue 31, Nix issue 13155: half of 100 layers under 100 KB). Merging them
anywhere would undo what the strategy planned for, so the merge follows the update-cost model of
:mod:`closurepack.strategies.economy`: folding layer ``A`` into ``B`` costs

    (s(A) + s(B)) * hit(|D(A) | D(B)|) - s(A) * hit(|D(A)|) - s(B) * hit(|D(B)|)

expected bytes per update, plus, for images planned together, the bytes the merged layer stores
in more distinct restrictions than the two did. A tiny layer therefore goes where its change-set
already lies: into a layer above it that depends on it (that layer changes whenever the tiny one
does, so it only adds the tiny layer's few bytes to what that layer ships), or, failing that,
into the neighbour whose down-set overlaps its own most.

Rule. While some layer is smaller than ``min_size`` and more than one layer is left, the
smallest (ties: the lower) is merged into the layer of least cost (ties: the nearer, then the
lower) among those held by every image that holds it (else those sharing an image with it,
else any: a layer of other images would leave its images' piece as small); the merged layer
takes the higher of the two positions, so every other layer keeps its order (and whatever the
strategy made of it for Docker's ChainID rule). Layers the planner
reused from ``--previous`` are never merged; the planner hands only the strategy's layers here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain

from closurepack.graph import Closure
from closurepack.strategies._dag import Dag
from closurepack.strategies.economy import MergeCosts, hit_table

__all__ = ["SMALL_CLOSURE", "group_sizes", "merge_small_layers"]

#: The most items for which every item's down-set is kept as a bitset (``n * n`` bits: 2 MiB
#: at 4096 items) to make the layers' down-sets from.
SMALL_CLOSURE = 4096


def merge_small_layers(
    closure: Closure,
    groups: Sequence[tuple[str, ...]],
    *,
    min_size: int,
    images: Mapping[str, int] | None = None,
) -> list[tuple[str, ...]]:
    """``groups`` (bottom first, a partition of ``closure``) with every layer below
    ``min_size`` bytes folded into another (module docstring); ``images`` maps a path to the
    bitmask of the images holding it, when several are planned together."""
    nar = closure.nar_sizes()
    sizes = group_sizes(closure, groups, nar)
    if min_size <= 0 or len(groups) < 2 or min(sizes) >= min_size:
        return list(groups)
    dag = Dag.from_closure(closure)
    n = len(dag)
    hit = hit_table(n)
    sets = _down_sets(closure, dag, groups)
    pieces: list[dict[int, int]] = []
    for number, group in enumerate(groups):
        if not images:
            pieces.append({0: sizes[number]})
            continue
        piece: dict[int, int] = {}
        for path in group:
            mask = images.get(path, 0)
            piece[mask] = piece.get(mask, 0) + nar[path]
        pieces.append(piece)
    layers = MergeCosts(hit, sizes, sets, pieces)
    alive = list(range(len(groups)))  # positions, bottom first
    joined = [[g] for g in range(len(groups))]  # the strategy's groups each position holds

    while len(alive) > 1:
        small = min(alive, key=layers.sizes.__getitem__)  # ties: the lower (alive ascends)
        if layers.sizes[small] >= min_size:
            break
        if images:
            partner = min(
                _partners(small, alive, layers.pieces),
                key=lambda g: (layers.cost(small, g), abs(g - small), g),
            )
        else:
            partner = _cheapest_partner(layers, small, alive)
        low, high = sorted((small, partner))
        joined[high].extend(joined[low])
        layers.merge(high, low)
        alive.remove(low)
    return _sorted_layers(
        closure, [list(chain.from_iterable(map(groups.__getitem__, joined[g]))) for g in alive]
    )


def _cheapest_partner(layers: MergeCosts, small: int, alive: list[int]) -> int:
    """The partner of least cost for ``small`` (ties: the nearer, then the lower) among
    ``alive`` (ascending), for one image: every layer may take it, and its cost is the
    update part of :meth:`MergeCosts.cost` alone, the same expression written out (one
    image's layers store nothing twice, and the small-layer merge gives it no ``own``
    counts, so the OR's popcount is the count). Each merge weighs every layer left, so this loop
    is most of a small closure's planning (145 items: ~6,000 costs over the planner's asks)."""
    hit, sizes, sets, counts = layers.hit, layers.sizes, layers.sets, layers.counts
    mine, size, own = sets[small], sizes[small], hit[counts[small]]
    best = -1
    least = 0.0
    for g in alive:
        if g == small:
            continue
        both = hit[(mine | sets[g]).bit_count()]
        cost = size * (both - own) + sizes[g] * (both - hit[counts[g]])
        # alive ascends: of equal costs and distances the first seen is the lower.
        if best < 0 or cost < least or (cost == least and abs(g - small) < abs(best - small)):
            best, least = g, cost
    return best


def _sorted_layers(closure: Closure, layers: list[list[str]]) -> list[tuple[str, ...]]:
    """Each of ``layers`` (a partition of ``closure``) in path order. One of more than half
    the items is every path but the others' (:meth:`Closure.paths_without`), not sorted: the
    strategies' rest layers come in their own order (popularity's: a sort of 60k paths at
    each of the planner's asks, most of the merge's time)."""
    longest = _majority(layers, len(closure))
    if longest < 0:
        return [tuple(sorted(layer)) for layer in layers]
    others = set(chain.from_iterable(layers[:longest] + layers[longest + 1 :]))
    return [
        closure.paths_without(others) if g == longest else tuple(sorted(layer))
        for g, layer in enumerate(layers)
    ]


def _majority(groups: Sequence[Sequence[str]], n: int) -> int:
    """The index of the group holding more than half of the ``n`` items that ``groups``
    partition, or -1 (none does, or ``groups`` do not cover the ``n`` items)."""
    longest = max(range(len(groups)), key=lambda g: len(groups[g]), default=-1)
    if longest < 0 or 2 * len(groups[longest]) <= n or sum(map(len, groups)) != n:
        return -1
    return longest


def _down_sets(closure: Closure, dag: Dag, groups: Sequence[tuple[str, ...]]) -> list[int]:
    """Each group's down-set as a bitset. A layer's is kept per closure (the planner's refills
    ask again for the same closure, and most layers come back the same), but for a group of
    more than half the items of a partition: that one is new at each budget (the rest of
    the strategy's order), and it is found from the items of the others, few, without
    looking up its own (on the 63k Debian closure, 60k paths looked up and the tuple hashed
    for the memo at each of the planner's asks)."""
    index = dag.index()
    known: dict[tuple[str, ...], int] = closure.memoized("layer down-sets", dict)
    longest = _majority(groups, len(dag))
    # Up to SMALL_CLOSURE items, a group's down-set is the union of its items' (built once per
    # Dag, n bitsets of n bits), not a walk and a bitset made from its indices.
    items = dag.down_bitsets() if len(dag) <= SMALL_CLOSURE else None
    sets = []
    for number, group in enumerate(groups):
        if number == longest:
            others = [index[p] for g in chain(groups[:number], groups[number + 1 :]) for p in g]
            sets.append(dag.down_bitset_outside(others))
            continue
        bits = known.get(group)
        if bits is None:
            members = list(map(index.__getitem__, group))
            if items is None:
                bits = dag.down_bitset(members)
            else:
                bits = 0
                for i in members:
                    bits |= items[i]
            known[group] = bits
        sets.append(bits)
    return sets


def group_sizes(
    closure: Closure, groups: Sequence[tuple[str, ...]], nar: Mapping[str, int]
) -> list[int]:
    """The bytes of each group of a partition of ``closure``: the largest group's are the
    closure's less the others' (often most of the items are in one group)."""
    if len(groups) < 2 or sum(map(len, groups)) != len(closure):
        return [sum(map(nar.__getitem__, group)) for group in groups]
    longest = max(range(len(groups)), key=lambda g: len(groups[g]))
    sizes = [
        0 if g == longest else sum(map(nar.__getitem__, group)) for g, group in enumerate(groups)
    ]
    sizes[longest] = closure.total_size - sum(sizes)
    return sizes


def _partners(small: int, alive: list[int], pieces: list[dict[int, int]]) -> list[int]:
    """The layers ``small`` may join: those held by every image that holds ``small`` (so that
    each of its images' small piece grows), else those sharing an image with it, else any."""
    others = [g for g in alive if g != small]
    mine = _union(pieces[small])
    unions = {g: _union(pieces[g]) for g in others}
    within = [g for g in others if unions[g] & mine == mine]
    if within:
        return within
    return [g for g in others if unions[g] & mine] or others


def _union(piece: dict[int, int]) -> int:
    union = 0
    for mask in piece:
        union |= mask
    return union
