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

from closurepack.fleetrepair import ImageRepair
from closurepack.fleetunion import Merge, UnionLayers
from closurepack.strategies._dag import Dag
from closurepack.strategies.economy import union_of

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


def _greedy(layers: UnionLayers) -> None:
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
    known: dict[tuple[frozenset[int], frozenset[int]], Merge]


def _round(fleet: _Fleet, weights: Sequence[float]) -> tuple[list[list[set[int]]], list[int]]:
    """Steps 2 to 4 of the module docstring: each image's layers, and the images that were
    above their limit before step 4."""
    dag, downs, limits, room = fleet.dag, fleet.downs, fleet.limits, fleet.room
    layers = UnionLayers(dag, fleet.masks, downs, weights, room, known=fleet.known)
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
