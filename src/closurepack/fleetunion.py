"""The union's layers as :mod:`closurepack.fleetshare`'s search holds them: per layer its items,
its bytes per image mask (for the bytes it stores) and, per image holding part of it, that
part's bytes, down-set and items; the merges and moves of its greedy and local search, costed
on its objective (stored bytes + weighted update cost, see its docstring)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from closurepack.fleetregions import mask_bits
from closurepack.strategies._dag import Dag
from closurepack.strategies.economy import image_signatures, stored_bytes, union_of

__all__ = ["Merge", "UnionLayers", "growth", "stored_together"]


@dataclass(frozen=True)
class Merge:
    """What merging two layers adds, but for the weights: the bytes stored of the merged layer
    and of the two apart, and per image holding both, the cost it adds."""

    together: int
    apart: int
    added: tuple[tuple[int, int], ...]


class UnionLayers:
    """The union's layers: per layer its items, its bytes per image mask (``pieces``, for the
    stored bytes) and, per image holding part of it, that part's bytes, down-set and items."""

    def __init__(
        self,
        dag: Dag,
        masks: Sequence[int],
        downs: Sequence[int],
        weights: Sequence[float],
        room: int,
        *,
        known: dict[tuple[frozenset[int], frozenset[int]], Merge],
    ) -> None:
        self.dag, self.masks, self.downs, self.weights, self.room = (
            dag,
            masks,
            downs,
            weights,
            room,
        )
        #: What merging two layers (by their items) adds before the weights, kept over the
        #: rounds: every round starts from the same atoms and makes many of the same merges.
        self.known = known
        self.keys: list[frozenset[int] | None] = []  # each layer's items, frozen when asked
        #: Per layer and image mask: what more bytes of that mask add to its stored bytes
        #: (:meth:`grown`), until the layer changes.
        self.shares: list[dict[int, tuple[int, int]]] = []
        self.groups: list[set[int]] = []
        self.pieces: list[dict[int, int]] = []
        self.parts: list[dict[int, tuple[int, int, int]]] = []
        self.stored: list[int] = []
        self.held: list[int] = []
        self.where: dict[int, int] = {}
        self.count = [0] * len(weights)

    def new(self, members: Iterable[int]) -> int:
        g = len(self.groups)
        self.groups.append(set())
        self.pieces.append({})
        self.parts.append({})
        self.stored.append(0)
        self.held.append(0)
        self.keys.append(None)
        self.shares.append({})
        for i in members:
            self._add(i, g)
        self.stored[g] = stored_bytes(self.pieces[g]) if self.pieces[g] else 0
        return g

    def put(self, i: int, g: int) -> None:
        self._add(i, g)
        self.stored[g] = stored_bytes(self.pieces[g])

    def _add(self, i: int, g: int) -> None:
        """Item ``i`` into layer ``g``, all but its stored bytes (the caller counts them)."""
        size, mask = self.dag.sizes[i], self.masks[i]
        self.groups[g].add(i)
        self.where[i] = g
        self._changed(g)
        pieces, parts = self.pieces[g], self.parts[g]
        pieces[mask] = pieces.get(mask, 0) + size
        for k in mask_bits(mask):
            part_size, down, held = parts.get(k, (0, 0, 0))
            if not held:
                self.count[k] += 1
                self.held[g] |= 1 << k
            parts[k] = (part_size + size, down | self.downs[i], held + 1)

    def take(self, i: int) -> None:
        size, mask = self.dag.sizes[i], self.masks[i]
        g = self.where.pop(i)
        group = self.groups[g]
        group.discard(i)
        self._changed(g)
        pieces, parts = self.pieces[g], self.parts[g]
        pieces[mask] -= size
        if not any(self.masks[v] == mask for v in group):
            del pieces[mask]
        for k in mask_bits(mask):
            part_size, _, held = parts[k]
            if held == 1:
                del parts[k]
                self.count[k] -= 1
                self.held[g] &= ~(1 << k)
                continue
            down = union_of(self.downs, (v for v in group if self.masks[v] >> k & 1))
            parts[k] = (part_size - size, down, held - 1)
        self.stored[g] = stored_bytes(pieces) if pieces else 0

    def merge(self, a: int, b: int) -> None:
        """Layer ``b``'s items into layer ``a``, as moving them one by one would leave both
        (``b`` empty), summed at once."""
        for k in mask_bits(self.held[b]):
            self.count[k] -= 1
        pieces, parts = self.pieces[a], self.parts[a]
        for mask, size in self.pieces[b].items():
            pieces[mask] = pieces.get(mask, 0) + size
        for k, (size, down, held) in self.parts[b].items():
            part = parts.get(k)
            if part is None:
                self.count[k] += 1
                self.held[a] |= 1 << k
                parts[k] = (size, down, held)
            else:
                parts[k] = (part[0] + size, part[1] | down, part[2] + held)
        for i in self.groups[b]:
            self.where[i] = a
        self.groups[a] |= self.groups[b]
        self.groups[b], self.pieces[b], self.parts[b] = set(), {}, {}
        self.stored[b], self.held[b] = 0, 0
        self.stored[a] = stored_bytes(pieces)
        self._changed(a)
        self._changed(b)

    def _changed(self, g: int) -> None:
        self.keys[g] = None
        if self.shares[g]:
            self.shares[g] = {}

    def _key(self, g: int) -> frozenset[int]:
        key = self.keys[g]
        if key is None:
            key = self.keys[g] = frozenset(self.groups[g])
        return key

    def grown(self, g: int, mask: int, size: int) -> int:
        """What ``size`` more bytes of image mask ``mask`` add to layer ``g``'s stored bytes:
        ``constant + size * count``, both kept per layer and mask (:func:`growth`)."""
        shares = self.shares[g]
        found = shares.get(mask)
        if found is None:
            found = shares[mask] = growth(self.pieces[g], mask, self.stored[g])
        return found[0] + size * found[1]

    def delta(self, a: int, b: int) -> float:
        """What merging layers ``a`` and ``b`` adds to the objective."""
        key = (self._key(a), self._key(b))
        merge = self.known.get(key)
        if merge is None:
            first, second = self.parts[a], self.parts[b]
            added = []
            for k in mask_bits(self.held[a] & self.held[b]):
                sa, da, _ = first[k]
                sb, db, _ = second[k]
                joined = (sa + sb) * (da | db).bit_count()
                added.append((k, joined - sa * da.bit_count() - sb * db.bit_count()))
            merge = Merge(
                stored_together(self.pieces[a], self.pieces[b]),
                self.stored[a] + self.stored[b],
                tuple(added),
            )
            self.known[key] = merge
        total = float(merge.together)
        total -= merge.apart
        for k, added_k in merge.added:
            total += self.weights[k] * added_k
        return total

    def over(self) -> int:
        mask = 0
        for k, count in enumerate(self.count):
            if count > self.room:
                mask |= 1 << k
        return mask

    def move(self, i: int) -> bool:
        """Step 3 of :mod:`closurepack.fleetshare` for item ``i``: move it where the objective
        is least, if that lowers it."""
        dag, masks, weights = self.dag, self.masks, self.weights
        a, size, mask, mine = self.where[i], dag.sizes[i], masks[i], self.downs[i]
        bits = mask_bits(mask)
        group = self.groups[a]
        pieces = dict(self.pieces[a])
        pieces[mask] -= size
        if not any(masks[v] == mask for v in group if v != i):
            del pieces[mask]
        out = float((stored_bytes(pieces) if pieces else 0) - self.stored[a])
        leaving = 0
        removed: dict[int, int] = {}
        for k in bits:
            old_size, old_down, held = self.parts[a][k]
            if held == 1:
                leaving |= 1 << k
                removed[k] = -old_size * old_down.bit_count()
                continue
            down = union_of(self.downs, (v for v in group if v != i and masks[v] >> k & 1))
            removed[k] = (old_size - size) * down.bit_count() - old_size * old_down.bit_count()
        full = 0
        for k in bits:
            if self.count[k] >= self.room and not leaving >> k & 1:
                full |= 1 << k
        single = mine.bit_count()
        best, target = -1e-9 * max(size, 1) - 1e-6, -2
        for b, there in enumerate(self.parts):
            if b == a or not self.held[b] & mask:
                continue
            delta = out
            for k in bits:
                part = there.get(k)
                if part is None:
                    if full >> k & 1:
                        break
                    added = removed[k] + size * single
                else:
                    old_size, old_down, _ = part
                    added = removed[k] + (
                        (old_size + size) * (old_down | mine).bit_count()
                        - old_size * old_down.bit_count()
                    )
                delta += weights[k] * added
            else:
                if delta >= best:
                    continue
                delta += self.grown(b, mask, size)
                if delta < best:
                    best, target = delta, b
        if len(group) > 1 and not full:
            delta = out + size
            for k in bits:
                added = removed[k] + size * single
                delta += weights[k] * added
            if delta < best:
                target = -1
        if target == -2:
            return False
        self.take(i)
        if target == -1:
            self.new([i])
        else:
            self.put(i, target)
        return True

    def images(self) -> list[list[set[int]]]:
        """Each image's layers: every layer restricted to its items."""
        planned: list[list[set[int]]] = [[] for _ in self.count]
        for group, held in zip(self.groups, self.held, strict=True):
            for k in mask_bits(held):
                planned[k].append({i for i in group if self.masks[i] >> k & 1})
        return planned


def growth(pieces: dict[int, int], mask: int, stored: int) -> tuple[int, int]:
    """For a layer of ``pieces`` (image mask -> bytes; ``stored`` bytes stored) and ``s`` more
    bytes of image mask ``mask``: ``(c, n)`` such that its stored bytes grow by ``c + n s``.

    Each image's restriction is named by its *signature*, the pieces holding it (as
    :func:`~closurepack.strategies.economy.stored_bytes` counts them). The images of ``mask``
    get the new bytes: each of their distinct restrictions grows by ``s`` (those holding no
    piece yet share one new restriction), and a restriction that images outside ``mask``
    share with images in it is split off for them, its bytes stored once more."""
    signatures, totals = image_signatures(pieces)
    inside: dict[int, int] = {}
    outside: dict[int, int] = {}
    present = 0
    for bit, signature in signatures.items():
        present |= bit
        (inside if bit & mask else outside)[signature] = totals[bit]
    if mask & ~present:
        inside[0] = 0
    return sum(outside.values()) + sum(inside.values()) - stored, len(inside)


def stored_together(first: dict[int, int], second: dict[int, int]) -> int:
    """Stored bytes of one layer of both ``first``'s and ``second``'s items (image mask ->
    bytes): their sum when all are of one image mask (nothing is stored twice)."""
    if len(first) == 1 and first.keys() == second.keys():
        return sum(first.values()) + sum(second.values())
    joined = dict(first)
    for mask, size in second.items():
        joined[mask] = joined.get(mask, 0) + size
    return stored_bytes(joined)
