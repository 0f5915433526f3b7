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
   (a refit is ``O(layers^2 + PASSES * items * layers)`` ORs and popcounts of ``N``-bit sets;
   the free layers' search is remembered, as the same image is often refitted with the same
   candidate again after one was taken elsewhere).

So the result stores no more than the plan it started from, and every image keeps both rules.
"""

from __future__ import annotations

import bisect
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
        self.refits = _Refits(dag, downs, room)

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
            found = self.refits.refit(fixed, free, self.limits[a])
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


class _Refits:
    """Step 2, remembered: a refit depends on the fixed layers only through their number and
    their cost, so the free layers' search is kept by ``(number fixed, free layers)`` and
    only the limit is checked anew (adoption tries the same image with the same candidate
    again after every candidate taken elsewhere)."""

    def __init__(self, dag: Dag, downs: Sequence[int], room: int) -> None:
        self.dag, self.downs, self.room = dag, downs, room
        self.searched: dict[tuple[int, frozenset[Layer]], tuple[list[Layer], int] | None] = {}
        self.costs: dict[Layer, int] = {}

    def refit(self, fixed: list[Layer], free: list[Layer], limit: int) -> list[Layer] | None:
        """``fixed`` and ``free`` within the budget and ``limit``, or None."""
        key = (len(fixed), frozenset(free))
        if key not in self.searched:
            self.searched[key] = _search(self.dag, self.downs, len(fixed), free, room=self.room)
        found = self.searched[key]
        if found is None:
            return None
        groups, total = found
        for layer in fixed:
            total += self.cost(layer)
        if total > limit:
            return None
        return [*fixed, *groups]

    def cost(self, layer: Layer) -> int:
        cost = self.costs.get(layer)
        if cost is None:
            sizes = self.dag.sizes
            cost = sum(sizes[i] for i in layer) * union_of(self.downs, layer).bit_count()
            self.costs[layer] = cost
        return cost


def _search(
    dag: Dag, downs: Sequence[int], fixed: int, free: list[Layer], *, room: int
) -> tuple[list[Layer], int] | None:
    """Step 2 for the ``free`` layers beside ``fixed`` fixed ones: the free layers found and
    their cost, or None when they cannot be merged into the room left.

    The local search skips what cannot win, exactly: moving item ``i`` (bytes ``s``, down-set
    ``d``) out of its layer changes the cost by ``out``, and into layer ``b`` (bytes ``W``,
    down-set ``D``) by ``(W + s) |D | d| - W |D|``, at least ``s max(|D|, |d|)``; so an item
    with ``out + s |d|`` not below the first bar moves nowhere (a layer of its own costs that
    much), and a layer whose bound is not below the best so far is passed over. The down-set
    of a layer without one of its items comes from the ORs of the items before and after it,
    kept until the layer changes."""
    sizes = dag.sizes
    groups = [set(layer) for layer in sorted(free, key=min)]
    weight = [sum(sizes[i] for i in group) for group in groups]
    down = [union_of(downs, group) for group in groups]
    while fixed + len(groups) > room:
        if len(groups) < 2:
            return None
        reach = [d.bit_count() for d in down]
        best: tuple[int, int, int] | None = None
        for a in range(len(groups)):
            weight_a, down_a = weight[a], down[a]
            alone_a = weight_a * reach[a]
            for b in range(a + 1, len(groups)):
                joined = (weight_a + weight[b]) * (down_a | down[b]).bit_count()
                added = joined - alone_a - weight[b] * reach[b]
                if best is None or added < best[0]:
                    best = (added, a, b)
        assert best is not None
        _, a, b = best
        groups[a] |= groups.pop(b)
        weight[a] += weight.pop(b)
        down[a] |= down.pop(b)
    reach = [d.bit_count() for d in down]
    cost = [w * r for w, r in zip(weight, reach, strict=True)]
    filled = fixed + sum(1 for group in groups if group)
    without: dict[int, dict[int, int]] = {}  # per layer: item -> the layer's down-set without it
    where = {i: g for g, group in enumerate(groups) for i in group}
    # Every layer a move changed, in order, and per item how many there were when it last
    # stayed: only the layers changed since can take it now, unless its own changed.
    changes: list[int] = []
    seen: dict[int, int] = {}
    by_reach = sorted((r, g) for g, r in enumerate(reach) if groups[g])
    for _ in range(PASSES):
        moved = False
        for i in sorted(where):
            a = where[i]
            size, mine = sizes[i], downs[i]
            rests = without.get(a)
            if rests is None:
                rests = without[a] = _without_each(downs, groups[a])
            rest_down = rests[i]
            out = (weight[a] - size) * rest_down.bit_count() - cost[a]
            single = size * mine.bit_count()
            if out + single >= -1:
                continue  # no layer takes it for less than a layer of its own (or not at all)
            best_delta, target = -1, -2
            since = seen.get(i)
            recent = since is not None and len(changes) - since < len(groups)
            touched = set(changes[since:]) if recent else {a}
            if a not in touched:
                # The others did not take it for less than the bar then, nor do they now.
                for b in sorted(touched):
                    if b == a or not groups[b] or out + size * reach[b] >= best_delta:
                        continue
                    delta = out + (weight[b] + size) * (down[b] | mine).bit_count() - cost[b]
                    if delta < best_delta:
                        best_delta, target = delta, b
            else:
                # Layers by their down-sets' sizes, smallest first, until the bound passes the
                # best: the lowest layer among those of the least cost, as a scan in order.
                for r, b in by_reach:
                    if out + size * r > best_delta:
                        break
                    if b == a:
                        continue
                    delta = out + (weight[b] + size) * (down[b] | mine).bit_count() - cost[b]
                    if delta < best_delta or (delta == best_delta and b < target):
                        best_delta, target = delta, b
            if len(groups[a]) > 1 and filled < room and out + single < best_delta:
                target = -1
            if target == -2:
                seen[i] = len(changes)
                continue
            moved = True
            changes.append(a)
            del by_reach[bisect.bisect_left(by_reach, (reach[a], a))]
            if target >= 0:
                del by_reach[bisect.bisect_left(by_reach, (reach[target], target))]
            groups[a].discard(i)
            weight[a] -= size
            down[a] = rest_down
            reach[a] = rest_down.bit_count()
            cost[a] = weight[a] * reach[a]
            without.pop(a, None)
            if target == -1:
                groups.append(set())
                weight.append(0)
                down.append(0)
                reach.append(0)
                cost.append(0)
                target = len(groups) - 1
                filled += 1
            elif not groups[a]:
                filled -= 1
            groups[target].add(i)
            weight[target] += size
            down[target] |= mine
            reach[target] = down[target].bit_count()
            cost[target] = weight[target] * reach[target]
            without.pop(target, None)
            changes.append(target)
            if groups[a]:
                bisect.insort(by_reach, (reach[a], a))
            bisect.insort(by_reach, (reach[target], target))
            where[i] = target
        if not moved:
            break
    total = sum(c for c, group in zip(cost, groups, strict=True) if group)
    return [frozenset(group) for group in groups if group], total


def _without_each(downs: Sequence[int], group: set[int]) -> dict[int, int]:
    """For each member of ``group``: the union of the others' down-sets."""
    order = sorted(group)
    after = [0] * (len(order) + 1)
    for j in range(len(order) - 1, -1, -1):
        after[j] = after[j + 1] | downs[order[j]]
    found: dict[int, int] = {}
    before = 0
    for j, i in enumerate(order):
        found[i] = before | after[j + 1]
        before |= downs[i]
    return found
