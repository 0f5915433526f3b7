"""The update-cost model the economy-minded steps share (``stable``, the small-layer merge).

An update changes some items and, Nix-style, every item above them. A layer is shipped again
when a changed item lies in its down-set ``D(L)`` (its items and all they reach). With
:data:`CHANGES` of ``n`` items changing, each independently with chance ``q = CHANGES / n``, a
layer of ``s`` bytes costs ``s * hit(|D(L)|)`` expected bytes per update, ``hit(d) = 1 - (1 -
q) ** d``. When several images are planned together, each image gets every layer restricted to
its own items and every distinct restriction is stored: :func:`stored_bytes` counts them.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable, Mapping, Sequence

from closurepack.graph import Closure
from closurepack.strategies._dag import Dag, bitset

__all__ = [
    "CHANGES",
    "MergeCosts",
    "bitset",
    "expected_shipped",
    "hit_rises",
    "hit_table",
    "stored_bytes",
    "union_of",
]

#: How many items the model update changes at once (see ``strategies/stable.py``).
CHANGES = 3


@functools.lru_cache(maxsize=4)
def hit_table(n: int, changes: int = CHANGES) -> tuple[float, ...]:
    """``hit[d]``: the chance that one of ``changes`` random changes among ``n`` items lies
    in a down-set of ``d`` items, for ``d`` in ``0..n``; kept for the next caller (the
    planner's refills ask again for the same ``n``)."""
    keep = 1 - min(changes, n) / n if n else 1.0
    return tuple([1 - keep**d for d in range(n + 1)])


def hit_rises(hit: Sequence[float]) -> bool:
    """Whether ``hit[]`` never falls in floating point too (it rises in exact arithmetic),
    which lower bounds on merge costs need; kept for the tables :func:`hit_table` made (the
    small-layer merge and the search ask at each run: a pass over 63k floats)."""
    return _rises(hit) if isinstance(hit, tuple) else all(map(operator.le, hit, hit[1:]))


@functools.lru_cache(maxsize=4)
def _rises(hit: tuple[float, ...]) -> bool:
    return all(map(operator.le, hit, hit[1:]))


def stored_bytes(pieces: Mapping[int, int]) -> int:
    """Bytes stored for a layer whose items lie in images ``pieces`` (image mask -> bytes):
    each image gets the layer restricted to its own items, every distinct restriction a layer."""
    if len(pieces) == 1:
        return next(iter(pieces.values()))
    restrictions: dict[tuple[int, ...], int] = {}
    union = 0
    for mask in pieces:
        union |= mask
    while union:
        bit = union & -union
        union ^= bit
        key = tuple(sorted(m for m in pieces if m & bit))
        if key not in restrictions:
            restrictions[key] = sum(pieces[m] for m in key)
    return sum(restrictions.values())


class MergeCosts:
    """Layers being merged pairwise (``stable``'s greedy, the small-layer merge): each one's
    bytes, down-set (a bitset) and bytes per image mask, and what merging two of them costs in
    the model: the expected update bytes it adds plus the bytes it stores twice."""

    def __init__(
        self,
        hit: Sequence[float],
        sizes: Sequence[int],
        sets: Sequence[int],
        pieces: Sequence[dict[int, int]],
    ) -> None:
        self.hit = hit
        self.sizes = list(sizes)
        self.sets = list(sets)
        self.counts = [bits.bit_count() for bits in sets]
        self.pieces = list(pieces)
        self.stored = [stored_bytes(piece) for piece in pieces]
        self.rising = hit_rises(hit)  # which :meth:`floor` needs to be a bound

    def cost(self, a: int, b: int) -> float:
        """What merging layers ``a`` and ``b`` adds to the model's cost."""
        hit, sizes, counts = self.hit, self.sizes, self.counts
        both = hit[(self.sets[a] | self.sets[b]).bit_count()]
        update = sizes[a] * (both - hit[counts[a]]) + sizes[b] * (both - hit[counts[b]])
        pa, pb = self.pieces[a], self.pieces[b]
        if len(pa) == 1 and pa.keys() == pb.keys():
            return update
        joined = dict(pa)
        for mask, size in pb.items():
            joined[mask] = joined.get(mask, 0) + size
        return update + (stored_bytes(joined) - self.stored[a] - self.stored[b])

    def floor(self, a: int, b: int) -> float | None:
        """A lower bound on :meth:`cost` that needs no OR and popcount of the down-sets (the
        merged one has at least the larger count, and ``hit`` never falls), or ``None`` for
        layers of several images (whose stored bytes it does not bound)."""
        pa, pb = self.pieces[a], self.pieces[b]
        if not self.rising or len(pa) != 1 or pa.keys() != pb.keys():
            return None
        hit, sizes, counts = self.hit, self.sizes, self.counts
        both = hit[max(counts[a], counts[b])]
        return sizes[a] * (both - hit[counts[a]]) + sizes[b] * (both - hit[counts[b]])

    def merge(self, into: int, other: int) -> None:
        """Layer ``other`` joins layer ``into`` (whose figures change; ``other``'s are stale)."""
        self.sets[into] |= self.sets[other]
        self.counts[into] = self.sets[into].bit_count()
        self.sizes[into] += self.sizes[other]
        piece = self.pieces[into]
        for mask, size in self.pieces[other].items():
            piece[mask] = piece.get(mask, 0) + size
        self.stored[into] = stored_bytes(piece)


def union_of(sets: Sequence[int], members: Iterable[int]) -> int:
    """The union of the bitsets ``sets[i]`` of ``members``."""
    joined = 0
    for i in members:
        joined |= sets[i]
    return joined


def expected_shipped(closure: Closure, layers: Iterable[Iterable[str]]) -> float:
    """Bytes an image of these ``layers`` (a partition of ``closure``) ships, on average, for
    an update of one item drawn uniformly from ``closure``: a layer ships when the item lies in
    its down-set, so this is ``sum of s(L) * |D(L)| / n`` exactly."""
    dag = Dag.from_closure(closure)
    if not len(dag):
        return 0.0
    index = dag.index()
    total = 0
    for layer in layers:
        members = [index[p] for p in layer]
        total += sum(dag.sizes[i] for i in members) * len(dag.reach(members))
    return total / len(dag)
