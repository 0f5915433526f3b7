"""Joint planning across regions: the union's layers, merged at the bytes they store twice.

:mod:`closurepack.fleet` lays each layer inside one region (items held by the same images), so
nothing is stored twice; but a strategy whose plans alone are already near the least expected
update bytes (``stable``) leaves no room for that: inside regions its images ship more per
update than alone (at 30 layers, on the Debian closures of ``bench/economy_bench.py``, a
greedy and local search inside regions for each image by itself gave gimp 1.31 and
libreoffice 1.86 times its expected bytes alone, measured by hand), and the guarantee then
gives most of them their plans alone, storing each shared item once per image.
:func:`plan_across` plans the fleet as one set of layers over the union instead, where a
layer may mix regions at a price: each image gets every layer restricted to its own items,
and every distinct restriction is stored once
(:func:`~closurepack.strategies.economy.stored_bytes`).

An image's *cost* is ``sum of s(L) * |D(L)|`` over its layers (its expected bytes shipped per
random one-item update, times its ``n_k`` items; ``D(L)`` is the same in every image, as a
closure holds all its items reach); its *limit* is that cost planned alone. For weights
``w_k``, one per image, the layers minimise::

    stored bytes + sum over images k of w_k * cost_k / n_k

1. Units are the atoms of :mod:`closurepack.fleet` (items split by region and by their layer in
   each holder's plan alone).
2. Greedy: while some image has more layers than its budget, of the pairs of layers that such
   an image holds both of, the merge that adds the least to the objective, over the images over
   budget it helps, is made (a lazy heap: that count only falls, so scores only rise).
3. Local search: each item, in index order, moves to the layer (or a new one, where every image
   of it has room) where the objective is least, while that lowers it, at most :data:`PASSES`
   passes; no image goes over budget.
4. Each image above its limit is repaired by itself (:class:`~closurepack.fleetrepair.
   ImageRepair`: items moved between its own layers at the fewest stored bytes per unit of
   cost saved, at most :data:`REPAIR_STEPS` moves per layer of budget, none when it is more
   than :data:`REPAIR_WITHIN` above its limit); where that fails, or stores more than its plan
   alone would, it gets its plan alone.
5. Steps 2 to 4 run again, with the weights of the images that were above their limit times
   :data:`RAISE`, :data:`ROUNDS` times at most (until none is); the round storing the fewest
   bytes is kept (ties: the least cost summed).

So every image is within its budget and its limit, exactly, in integers, and the caller
(:func:`closurepack.fleet.plan_jointly`) keeps this only when it stores less than the others.
Complexity: per round ``O(A^2 (log A + K N / 64))`` for the greedy (``A`` atoms, ``K``
images, ``N`` items in the union), ``O(PASSES * N * layers * K * N / 64)`` for the search;
fleets of more than :data:`MAX_UNITS` atoms are not planned here.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from closurepack.fleetregions import mask_bits
from closurepack.fleetrepair import ImageRepair
from closurepack.strategies._dag import Dag
from closurepack.strategies.economy import stored_bytes, union_of

__all__ = ["MAX_UNITS", "PASSES", "RAISE", "REPAIR_STEPS", "REPAIR_WITHIN", "ROUNDS", "plan_across"]

#: Rounds of steps 2 to 4 (step 5 of the module docstring).
ROUNDS = 4
#: How much an image's weight grows after a round that left it above its limit.
RAISE = 4.0
#: Passes of the local search over every item (step 3).
PASSES = 4
#: Moves of one image's repair (step 4), per layer of its budget.
REPAIR_STEPS = 1
#: Images further above their limit than this share of it get their plans alone unrepaired.
REPAIR_WITHIN = 0.05
#: Fleets of more atoms than this are left to :mod:`closurepack.fleet` alone.
MAX_UNITS = 1500


@dataclass(frozen=True)
class _Merge:
    """What merging two layers adds, but for the weights: the bytes stored of the merged layer
    and of the two apart, and per image holding both, the cost it adds."""

    together: int
    apart: int
    added: tuple[tuple[int, int], ...]


class _Union:
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
        known: dict[tuple[frozenset[int], frozenset[int]], _Merge],
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
        ``constant + size * count``, both kept per layer and mask (:func:`_growth`)."""
        shares = self.shares[g]
        found = shares.get(mask)
        if found is None:
            found = shares[mask] = _growth(self.pieces[g], mask, self.stored[g])
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
            merge = _Merge(
                _stored_together(self.pieces[a], self.pieces[b]),
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
        """Step 3 for item ``i``: move it where the objective is least, if that lowers it."""
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


def _growth(pieces: dict[int, int], mask: int, stored: int) -> tuple[int, int]:
    """For a layer of ``pieces`` (image mask -> bytes; ``stored`` bytes stored) and ``s`` more
    bytes of image mask ``mask``: ``(c, n)`` such that its stored bytes grow by ``c + n s``.

    Each image's restriction is named by its *signature*, the pieces holding it (as
    :func:`~closurepack.strategies.economy.stored_bytes` counts them). The images of ``mask``
    get the new bytes: each of their distinct restrictions grows by ``s`` (those holding no
    piece yet share one new restriction), and a restriction that images outside ``mask``
    share with images in it is split off for them, its bytes stored once more."""
    signatures: dict[int, int] = {}
    totals: dict[int, int] = {}
    flag = 1
    for held, size in pieces.items():
        rest = held
        while rest:
            bit = rest & -rest
            rest ^= bit
            signatures[bit] = signatures.get(bit, 0) | flag
            totals[bit] = totals.get(bit, 0) + size
        flag <<= 1
    inside: dict[int, int] = {}
    outside: dict[int, int] = {}
    present = 0
    for bit, signature in signatures.items():
        present |= bit
        (inside if bit & mask else outside)[signature] = totals[bit]
    if mask & ~present:
        inside[0] = 0
    return sum(outside.values()) + sum(inside.values()) - stored, len(inside)


def _stored_together(first: dict[int, int], second: dict[int, int]) -> int:
    """Stored bytes of one layer of both ``first``'s and ``second``'s items (image mask ->
    bytes): their sum when all are of one image mask (nothing is stored twice)."""
    if len(first) == 1 and first.keys() == second.keys():
        return sum(first.values()) + sum(second.values())
    joined = dict(first)
    for mask, size in second.items():
        joined[mask] = joined.get(mask, 0) + size
    return stored_bytes(joined)


def _greedy(layers: _Union) -> None:
    """Step 2 of the module docstring."""
    over = layers.over()
    heap: list[tuple[float, int, int]] = []
    alive = [g for g, group in enumerate(layers.groups) if group]
    for x, a in enumerate(alive):
        for b in alive[x + 1 :]:
            helped = (layers.held[a] & layers.held[b] & over).bit_count()
            if helped:
                heap.append((layers.delta(a, b) / helped, a, b))
    heapq.heapify(heap)
    while over and heap:
        score, a, b = heapq.heappop(heap)
        if not layers.groups[a] or not layers.groups[b]:
            continue
        helped = (layers.held[a] & layers.held[b] & over).bit_count()
        if not helped:
            continue
        fresh = layers.delta(a, b) / helped
        if fresh > score and heap and (fresh, a, b) > heap[0]:
            heapq.heappush(heap, (fresh, a, b))
            continue
        layers.merge(a, b)
        over = layers.over()
        for other, group in enumerate(layers.groups):
            if other != a and group:
                helped = (layers.held[a] & layers.held[other] & over).bit_count()
                if helped:
                    low, high = min(a, other), max(a, other)
                    heapq.heappush(heap, (layers.delta(low, high) / helped, low, high))


def _cost(dag: Dag, downs: Sequence[int], own: Iterable[Iterable[int]]) -> int:
    total = 0
    for layer in own:
        members = list(layer)
        total += sum(dag.sizes[i] for i in members) * union_of(downs, members).bit_count()
    return total


def _adds(dag: Dag, stored: dict[frozenset[int], int], own: Iterable[set[int]]) -> int:
    """Bytes of the layers ``own`` that no image holds yet."""
    return sum(sum(dag.sizes[i] for i in layer) for layer in own if frozenset(layer) not in stored)


def _hold(stored: dict[frozenset[int], int], own: Iterable[set[int]]) -> None:
    for layer in own:
        key = frozenset(layer)
        stored[key] = stored.get(key, 0) + 1


@dataclass(frozen=True)
class _Fleet:
    """What every round plans from: the union's graph and items' down-sets (bitsets), the
    images holding each item, the atoms, each image's plan alone, its limit and budget."""

    dag: Dag
    masks: Sequence[int]
    downs: Sequence[int]
    units: Sequence[list[int]]
    alone: Sequence[Sequence[list[int]]]
    limits: Sequence[int]
    room: int
    known: dict[tuple[frozenset[int], frozenset[int]], _Merge]


def _round(fleet: _Fleet, weights: Sequence[float]) -> tuple[list[list[set[int]]], list[int]]:
    """Steps 2 to 4 of the module docstring: each image's layers, and the images that were
    above their limit before step 4."""
    dag, downs, limits, room = fleet.dag, fleet.downs, fleet.limits, fleet.room
    layers = _Union(dag, fleet.masks, downs, weights, room, known=fleet.known)
    for members in fleet.units:
        layers.new(members)
    _greedy(layers)
    for _ in range(PASSES):
        if not sum(layers.move(i) for i in range(len(dag))):  # every item, each pass
            break
    planned = layers.images()
    stored: dict[frozenset[int], int] = {}
    for own in planned:
        _hold(stored, own)
    failing = []
    for k, own in enumerate(planned):
        repair = ImageRepair(dag, downs, own, stored, room)
        if repair.cost() <= limits[k]:
            continue
        failing.append(k)
        hopeless = repair.cost() > limits[k] * (1 + REPAIR_WITHIN)
        for _ in range(0 if hopeless else REPAIR_STEPS * room):
            if repair.cost() <= limits[k] or not repair.step():
                break
        fits = repair.cost() <= limits[k]
        repaired = [layer for layer in repair.own if layer]
        repair.release()  # what each choice adds is counted against the others' layers
        fallback = [set(layer) for layer in fleet.alone[k]]
        if not fits or _adds(dag, stored, repaired) > _adds(dag, stored, fallback):
            repaired = fallback
        planned[k] = repaired
        _hold(stored, planned[k])
    return planned, failing


def plan_across(
    dag: Dag,
    masks: Sequence[int],
    units: Sequence[list[int]],
    alone: Sequence[Sequence[list[int]]],
    room: int,
) -> list[list[list[int]]] | None:
    """Each image's layers (lists of items of ``dag``) for the fleet planned on the union
    (module docstring); ``None`` for fleets of more than :data:`MAX_UNITS` units.

    ``masks[i]``: the images holding item ``i``; ``units``: the atoms (a partition of the
    union); ``alone[k]``: image ``k``'s layers planned alone; ``room``: each image's budget."""
    if len(units) > MAX_UNITS:
        return None
    downs = dag.down_bitsets()
    limits = [_cost(dag, downs, own) for own in alone]
    weights = [1.0 / max(sum(len(layer) for layer in own), 1) for own in alone]
    fleet = _Fleet(dag, masks, downs, units, alone, limits, room, {})
    best: tuple[int, int, list[list[set[int]]]] | None = None
    for _ in range(ROUNDS):
        planned, failing = _round(fleet, weights)
        distinct = {frozenset(layer) for own in planned for layer in own}
        total = sum(sum(dag.sizes[i] for i in layer) for layer in distinct)
        spent = sum(_cost(dag, downs, own) for own in planned)
        if best is None or (total, spent) < best[:2]:
            best = (total, spent, planned)
        if not failing:
            break
        for k in failing:
            weights[k] *= RAISE
    assert best is not None
    return [[sorted(layer) for layer in own] for own in best[2]]
