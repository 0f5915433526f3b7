"""A fleet's plan improved by adoption: images take up layers other images store.

:func:`closurepack.fleet.plan_jointly` builds its candidates region by region or across
regions; each image must stay within its budget and ship no more per random one-item update
than its plan alone (its *cost*, ``sum of s(L) * |D(L)|`` over its layers, at most its
*limit*, that cost alone). :func:`adopt_layers` then lowers the bytes stored by coordinate
descent over the images, never breaking either rule:

1. For image ``k``, every layer ``L`` that other images hold (or the part of one inside
   ``k``'s closure) is a candidate, largest first (ties: by items). The images that are to
   hold ``L`` are ``k``, the other holders of the layer it came from, and, transitively, every
   holder of a layer that one of them holds and ``L`` cuts (they all cut it the same way, so
   what is left of it stays shared); a candidate some of them do not hold whole is skipped.
2. Each of them is refitted: ``L`` and what is left of its shared layers are fixed, its own
   layers (held by no other image) lose ``L``'s items and are free. While it has more layers
   than its budget, the two free layers whose merge adds the least cost are merged; then each
   free item, in index order, moves to the free layer (or a new one while there is room) where
   its cost is least, while that lowers it, at most :data:`PASSES` passes. The refit must be
   within the image's limit, in integers, else the candidate is dropped.
3. The candidate is taken when the bytes of the distinct layers fall (counted exactly); then
   ``k``'s candidates are listed again. Rounds over every image go on while one took a
   candidate, at most :data:`ROUNDS`, and at most :data:`TRIALS` candidates are weighed in all
   (a refit is ``O(layers^2 + PASSES * items * layers)`` ORs and popcounts of ``N``-bit sets).

So the result stores no more than the plan it started from, and every image keeps both rules.
"""

from __future__ import annotations

from collections.abc import Sequence

from closurepack.strategies._dag import Dag
from closurepack.strategies.economy import union_of

__all__ = ["PASSES", "ROUNDS", "TRIALS", "adopt_layers"]

#: Passes of a refit's local search over its free items (step 2).
PASSES = 3
#: Rounds over every image (step 3).
ROUNDS = 4
#: Candidates weighed at most, over all rounds (bounds the time on large fleets).
TRIALS = 4000

Layer = frozenset[int]


def adopt_layers(
    dag: Dag,
    downs: Sequence[int],
    *,
    items: Sequence[frozenset[int]],
    start: Sequence[Sequence[Layer]],
    limits: Sequence[int],
    room: int,
) -> list[list[Layer]]:
    """Each image's layers after adoption (module docstring).

    ``downs[i]``: item ``i``'s down-set as a bitset; ``items[k]``: image ``k``'s items;
    ``start[k]``: its layers to begin with (within ``room`` and ``limits[k]``)."""
    fleet = _Fleet(dag, downs, items=items, start=start, limits=limits, room=room)
    for _ in range(ROUNDS):
        changed = False
        for k in range(len(items)):
            while fleet.trials < TRIALS and fleet.adopt_one(k):
                changed = True
        if not changed or fleet.trials >= TRIALS:
            break
    return [sorted(layers, key=min) for layers in fleet.images]


class _Fleet:
    """Every image's layers, who holds each distinct layer, and the candidates tried."""

    def __init__(
        self,
        dag: Dag,
        downs: Sequence[int],
        *,
        items: Sequence[frozenset[int]],
        start: Sequence[Sequence[Layer]],
        limits: Sequence[int],
        room: int,
    ) -> None:
        self.dag, self.downs, self.items, self.limits, self.room = dag, downs, items, limits, room
        self.images = [set(layers) for layers in start]
        self.holders: dict[Layer, set[int]] = {}
        for k, layers in enumerate(self.images):
            for layer in layers:
                self.holders.setdefault(layer, set()).add(k)
        self.failed: set[tuple[Layer, int]] = set()
        self.trials = 0

    def size(self, layer: Layer) -> int:
        sizes = self.dag.sizes
        return sum(sizes[i] for i in layer)

    def candidates(self, k: int) -> dict[Layer, set[int]]:
        """Step 1: each candidate layer for image ``k`` with the images it came from."""
        mine = self.items[k]
        found: dict[Layer, set[int]] = {}
        for layer, who in self.holders.items():
            if k in who:
                continue
            part = layer & mine
            if part and part not in self.images[k] and (part, k) not in self.failed:
                found.setdefault(part, set()).update(who)
        return found

    def adopt_one(self, k: int) -> bool:
        """Take the first candidate for image ``k`` that stores fewer bytes (steps 1 to 3)."""
        found = self.candidates(k)
        for part in sorted(found, key=lambda layer: (-self.size(layer), sorted(layer))):
            if self.trials >= TRIALS:
                return False
            self.trials += 1
            taken = self._try(k, part, found[part])
            if taken:
                self.failed.clear()
                return True
            self.failed.add((part, k))
        return False

    def _try(self, k: int, part: Layer, sources: set[int]) -> bool:
        adopters = self._adopters({k} | sources, part)
        if adopters is None:
            return False
        refitted: dict[int, set[Layer]] = {}
        for a in sorted(adopters):
            fixed: list[Layer] = [part]
            free: list[Layer] = []
            for layer in self.images[a]:
                rest = layer - part
                if layer != part and rest:
                    (fixed if len(self.holders[layer]) > 1 else free).append(rest)
            found = _refit(self.dag, self.downs, fixed, free, room=self.room, limit=self.limits[a])
            if found is None:
                return False
            refitted[a] = set(found)
        before = {layer for a in adopters for layer in self.images[a]}
        freed = {layer for layer in before if self.holders[layer] <= adopters}
        after = {layer for a in adopters for layer in refitted[a]}
        kept = {layer for layer in after if not self.holders.get(layer, adopters) <= adopters}
        if sum(map(self.size, after - kept)) >= sum(map(self.size, freed)):
            return False
        for a in adopters:
            for layer in self.images[a]:
                holders = self.holders[layer]
                holders.discard(a)
                if not holders:
                    del self.holders[layer]
        for a, chosen in refitted.items():
            self.images[a] = chosen
            for layer in chosen:
                self.holders.setdefault(layer, set()).add(a)
        return True

    def _adopters(self, start: set[int], part: Layer) -> set[int] | None:
        """The images to hold ``part`` (step 1), or None if one of them lacks some of it."""
        adopters = set(start)
        frontier = sorted(adopters)
        while frontier:
            a = frontier.pop()
            if not part <= self.items[a]:
                return None
            for layer in self.images[a]:
                if layer != part and layer & part:
                    for b in self.holders[layer] - adopters:
                        adopters.add(b)
                        frontier.append(b)
        return adopters


def _refit(
    dag: Dag,
    downs: Sequence[int],
    fixed: list[Layer],
    free: list[Layer],
    *,
    room: int,
    limit: int,
) -> list[Layer] | None:
    """Step 2: ``fixed`` and ``free`` within ``room`` layers and ``limit``, or None."""
    sizes = dag.sizes
    groups = [set(layer) for layer in sorted(free, key=min)]
    weight = [sum(sizes[i] for i in group) for group in groups]
    down = [union_of(downs, group) for group in groups]
    while len(fixed) + len(groups) > room:
        if len(groups) < 2:
            return None
        best: tuple[int, int, int] | None = None
        for a in range(len(groups)):
            alone_a = weight[a] * down[a].bit_count()
            for b in range(a + 1, len(groups)):
                joined = (weight[a] + weight[b]) * (down[a] | down[b]).bit_count()
                added = joined - alone_a - weight[b] * down[b].bit_count()
                if best is None or added < best[0]:
                    best = (added, a, b)
        assert best is not None
        _, a, b = best
        groups[a] |= groups.pop(b)
        weight[a] += weight.pop(b)
        down[a] |= down.pop(b)
    where = {i: g for g, group in enumerate(groups) for i in group}
    for _ in range(PASSES):
        moved = False
        for i in sorted(where):
            a = where[i]
            rest = groups[a] - {i}
            rest_down = union_of(downs, rest)
            out = (weight[a] - sizes[i]) * rest_down.bit_count() - weight[a] * down[a].bit_count()
            best_delta, target = -1, -2
            for b, group in enumerate(groups):
                if b == a or not group:
                    continue
                grown = (weight[b] + sizes[i]) * (down[b] | downs[i]).bit_count()
                delta = out + grown - weight[b] * down[b].bit_count()
                if delta < best_delta:
                    best_delta, target = delta, b
            filled = len(fixed) + sum(1 for group in groups if group)
            if rest and filled < room and out + sizes[i] * downs[i].bit_count() < best_delta:
                target = -1
            if target == -2:
                continue
            moved = True
            groups[a], weight[a], down[a] = rest, weight[a] - sizes[i], rest_down
            if target == -1:
                groups.append(set())
                weight.append(0)
                down.append(0)
            groups[target].add(i)
            weight[target] += sizes[i]
            down[target] |= downs[i]
            where[i] = target if target >= 0 else len(groups) - 1
        if not moved:
            break
    total = sum(weight[g] * down[g].bit_count() for g, group in enumerate(groups) if group)
    for layer in fixed:
        total += sum(sizes[i] for i in layer) * union_of(downs, layer).bit_count()
    if total > limit:
        return None
    return [*fixed, *(frozenset(group) for group in groups if group)]
