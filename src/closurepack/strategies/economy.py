"""The update-cost model the economy-minded steps share (``stable``, the small-layer merge).

An update changes some items and, Nix-style, every item above them. A layer is shipped again
when a changed item lies in its down-set ``D(L)`` (its items and all they reach). With
:data:`CHANGES` of ``n`` items changing, each independently with chance ``q = CHANGES / n``, a
layer of ``s`` bytes costs ``s * hit(|D(L)|)`` expected bytes per update, ``hit(d) = 1 - (1 -
q) ** d``. When several images are planned together, each image gets every layer restricted to
its own items and every distinct restriction is stored: :func:`stored_bytes` counts them.

Down-sets are bitsets over the item indices, or, for units whose down-sets are weighed against
each other many times (``stable``'s clusters), in the narrower form :func:`shared_bitsets`
makes: bits for the items two or more of them hold, and a count of each one's *own* items.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet

from closurepack.graph import Closure
from closurepack.strategies._dag import Dag, bitset

__all__ = [
    "CHANGES",
    "MergeCosts",
    "bitset",
    "expected_shipped",
    "hit_rises",
    "hit_table",
    "image_signatures",
    "shared_bitsets",
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
    each image gets the layer restricted to its own items, every distinct restriction a layer.

    Two images get the same restriction exactly when the same pieces hold them both: each
    image's *signature* (a bit per piece holding it) names its restriction, counted once."""
    if len(pieces) == 1:
        return next(iter(pieces.values()))
    signatures, totals = image_signatures(pieces)
    restrictions = {signature: totals[bit] for bit, signature in signatures.items()}
    return sum(restrictions.values())


def image_signatures(pieces: Mapping[int, int]) -> tuple[dict[int, int], dict[int, int]]:
    """For a layer of ``pieces`` (image mask -> bytes), per image bit that holds any of it: its
    *signature* (a bit per piece holding it, in ``pieces``' order) and the bytes of its
    restriction. Images of one signature get the same restriction (:func:`stored_bytes`)."""
    signatures: dict[int, int] = {}
    totals: dict[int, int] = {}
    flag = 1
    for mask, size in pieces.items():
        rest = mask
        while rest:
            bit = rest & -rest
            rest ^= bit
            signatures[bit] = signatures.get(bit, 0) | flag
            totals[bit] = totals.get(bit, 0) + size
        flag <<= 1
    return signatures, totals


def shared_bitsets(downs: Sequence[AbstractSet[int]]) -> tuple[list[int], list[int]]:
    """The down-sets ``downs`` (sets of item indices) in a narrower form with the same union
    sizes: each as a bitset over only the items that two or more of them hold, and a count of
    its *own* items, those no other one holds. The size of the union of some of them is the
    popcount of their bitsets' OR plus the sum of their own counts (two down-sets' own items
    are distinct items). On the 63k-item Debian closure's 200 ``stable`` clusters, 51.5k items
    lie in one down-set only: bitsets of 11.9k bits instead of 63k, and every OR and popcount
    of the merges and the search that weigh them as much cheaper."""
    seen: set[int] = set()
    shared: set[int] = set()
    for down in downs:
        shared |= seen.intersection(down)
        seen |= down
    position = dict(zip(sorted(shared), range(len(shared)), strict=True))
    width = len(position)
    bits, own = [], []
    for down in downs:
        held = shared.intersection(down)
        bits.append(bitset(map(position.__getitem__, held), width))
        own.append(len(down) - len(held))
    return bits, own


class MergeCosts:
    """Layers being merged pairwise (``stable``'s greedy, the small-layer merge): each one's
    bytes, down-set (a bitset, and a count of ``own`` items left out of it: see
    :func:`shared_bitsets`; none when not given) and bytes per image mask, and what merging
    two of them costs in the model: the expected update bytes it adds plus the bytes it
    stores twice."""

    def __init__(
        self,
        hit: Sequence[float],
        sizes: Sequence[int],
        sets: Sequence[int],
        pieces: Sequence[dict[int, int]],
        *,
        own: Sequence[int] | None = None,
    ) -> None:
        self.hit = hit
        self.sizes = list(sizes)
        self.sets = list(sets)
        self.own = list(own) if own is not None else [0] * len(sets)
        self.counts = [bits.bit_count() + extra for bits, extra in zip(sets, self.own, strict=True)]
        self.pieces = list(pieces)
        self.stored = [stored_bytes(piece) for piece in pieces]
        self.rising = hit_rises(hit)  # which :meth:`floor` needs to be a bound

    def cost(self, a: int, b: int) -> float:
        """What merging layers ``a`` and ``b`` adds to the model's cost."""
        hit, sizes, counts = self.hit, self.sizes, self.counts
        both = hit[(self.sets[a] | self.sets[b]).bit_count() + self.own[a] + self.own[b]]
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
        self.own[into] += self.own[other]
        self.counts[into] = self.sets[into].bit_count() + self.own[into]
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
