"""``stable``'s last steps: local search on the update-cost model, then the ChainID order.

The model is :mod:`closurepack.strategies.economy`'s: a layer ``L`` of ``s(L)`` bytes costs
``s(L) * hit(|D(L)|)`` expected bytes per update, ``D(L)`` its down-set, and a plan costs the
sum over its layers. The greedy merges that make a plan never undo a merge; :func:`refine`
moves one *unit* (an item, or one of ``stable``'s clusters for large closures) at a time to the
layer, or a layer of its own while the budget has room, where the plan costs least, as long as
a move lowers the cost by more than :data:`EPSILON` of the unit's bytes: so the cost falls at
every move and the search ends. Units are visited in a fixed order (the caller's), at most
:data:`PASSES` times over. A unit joins only a layer all of whose units belong to the same
images as it (several closures planned together store each distinct restriction of a layer, so
this never stores a byte twice that was stored once).

:func:`chain_order` then orders the layers bottom first for Docker's ChainID rule, under which
a layer is reused only with every layer below it: an update then ships every layer from the
lowest one it breaks up. With ``U`` the down-sets of the layers already placed, the next layer
breaks (given that none below did) with chance ``p = hit(|D(L) - U|)``; placing the layer of
least ``p / ((1 - p) * s(L))`` next is the exchange argument's order for independent layers (a
layer whose down-set lies within ``U`` costs nothing more and goes next), so the large layers
that rarely change, those with the fewest items that can change them, are at the bottom.
Ties: by ``|D(L)|``, larger first, then the caller's key.

Cost: every move is weighed against every layer with one OR and popcount of ``n``-bit sets:
``O(PASSES * units * (layers + layer size) * n / 64)`` word operations, linear in ``n`` for the
bounded number of units ``stable`` hands here; the order is ``O(layers^2 * n / 64)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["EPSILON", "PASSES", "chain_order", "refine"]

#: At most this many passes over the units (each lowers the cost or ends the search).
PASSES = 8
#: A move must save more than this share of the moved unit's bytes.
EPSILON = 1e-9


def refine(
    layers: Sequence[Sequence[int]],
    *,
    sizes: Sequence[int],
    downs: Sequence[int],
    images: Sequence[object],
    hit: Sequence[float],
    budget: int,
    visit: Sequence[int],
) -> list[list[int]]:
    """``layers`` (lists of unit ids) after moving units while the model cost falls.

    ``sizes[u]``, ``downs[u]`` (the down-set of unit ``u`` as a bitset) and ``images[u]`` (the
    images of its items) describe the units; ``visit`` lists every unit in the order they are
    visited (by name, so that an update's renames do not change the search); ``hit[d]`` is the
    chance that an update breaks a layer whose down-set has ``d`` items. The result keeps every
    unit in exactly one layer, at most ``max(budget, len(layers))`` layers, none empty."""
    search = _Search(sizes, downs, images, hit, max(budget, len(layers)))
    for layer in layers:
        search.add(layer)
    for _ in range(PASSES):
        moved = [search.move(u) for u in visit]
        if not any(moved):
            break
    return [sorted(layer) for layer in search.groups if layer]


class _Search:
    """The layers being refined, with each one's bytes and down-set kept up to date."""

    def __init__(
        self,
        sizes: Sequence[int],
        downs: Sequence[int],
        images: Sequence[object],
        hit: Sequence[float],
        limit: int,
    ) -> None:
        self.sizes, self.downs, self.images, self.hit, self.limit = sizes, downs, images, hit, limit
        self.groups: list[set[int]] = []
        self.bytes_of: list[int] = []
        self.down_of: list[int] = []
        self.count_of: list[int] = []  # |down_of[g]|, kept to spare a popcount per move weighed
        self.where: dict[int, int] = {}

    def add(self, units: Sequence[int]) -> None:
        for u in units:
            self.where[u] = len(self.groups)
        self.groups.append(set(units))
        self.bytes_of.append(sum(self.sizes[u] for u in units))
        self.down_of.append(_union(self.downs, units))
        self.count_of.append(self.down_of[-1].bit_count())

    def cost(self, size: int, count: int) -> float:
        return size * self.hit[count]

    def move(self, u: int) -> bool:
        """Move unit ``u`` where the plan costs least, if that saves more than EPSILON."""
        a, size = self.where[u], self.sizes[u]
        here = self.groups[a]
        rest_down = _union(self.downs, here - {u})
        rest_count = rest_down.bit_count()
        out = self.cost(self.bytes_of[a] - size, rest_count) - self.cost(
            self.bytes_of[a], self.count_of[a]
        )
        best, target = -EPSILON * max(size, 1), -2
        for b, there in enumerate(self.groups):
            if b == a or not there or any(self.images[v] != self.images[u] for v in there):
                continue
            delta = (
                out
                + self.cost(self.bytes_of[b] + size, (self.down_of[b] | self.downs[u]).bit_count())
                - self.cost(self.bytes_of[b], self.count_of[b])
            )
            if delta < best:
                best, target = delta, b
        if len(here) > 1 and sum(1 for g in self.groups if g) < self.limit:
            delta = out + self.cost(size, self.downs[u].bit_count())
            if delta < best:
                target = -1
        if target == -2:
            return False
        if target == -1:
            target = next((g for g, layer in enumerate(self.groups) if not layer), -1)
            if target < 0:
                self.add([])
                target = len(self.groups) - 1
        here.discard(u)
        self.bytes_of[a] -= size
        self.down_of[a], self.count_of[a] = rest_down, rest_count
        self.groups[target].add(u)
        self.bytes_of[target] += size
        self.down_of[target] |= self.downs[u]
        self.count_of[target] = self.down_of[target].bit_count()
        self.where[u] = target
        return True


def _union(downs: Sequence[int], units: Iterable[int]) -> int:
    joined = 0
    for u in units:
        joined |= downs[u]
    return joined


def chain_order(
    downs: Sequence[int], sizes: Sequence[int], hit: Sequence[float], keys: Sequence[str]
) -> list[int]:
    """The layers (their down-sets, bytes and tie-break keys) in ChainID order, bottom first:
    their indices (module docstring)."""
    left = list(range(len(downs)))
    below = 0
    order: list[int] = []
    while left:
        chosen = min(
            left, key=lambda g: _rank(g, below, downs=downs, sizes=sizes, hit=hit, keys=keys)
        )
        left.remove(chosen)
        order.append(chosen)
        below |= downs[chosen]
    return order


def _rank(
    g: int,
    below: int,
    *,
    downs: Sequence[int],
    sizes: Sequence[int],
    hit: Sequence[float],
    keys: Sequence[str],
) -> tuple[float, int, int, str]:
    """Layer ``g``'s place in :func:`chain_order` when ``below`` is already placed."""
    chance = hit[(downs[g] & ~below).bit_count()]
    ratio = chance / ((1 - chance) * sizes[g]) if chance < 1 and sizes[g] else float("inf")
    return ratio, downs[g].bit_count(), -sizes[g], keys[g]
