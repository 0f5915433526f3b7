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

import bisect
import heapq
from collections.abc import Sequence

from closurepack.strategies.economy import hit_rises, union_of

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
    own: Sequence[int] | None = None,
) -> list[list[int]]:
    """``layers`` (lists of unit ids) after moving units while the model cost falls.

    ``sizes[u]``, ``downs[u]`` (the down-set of unit ``u`` as a bitset, less its ``own[u]``
    items that no other unit's holds, counted instead: see
    :func:`~closurepack.strategies.economy.shared_bitsets`; none when not given) and
    ``images[u]`` (the images of its items) describe the units; ``visit`` lists every unit in
    the order they are visited (by name, so that an update's renames do not change the
    search); ``hit[d]`` is the chance that an update breaks a layer whose down-set has ``d``
    items. The result keeps every
    unit in exactly one layer, at most ``max(budget, len(layers))`` layers, none empty."""
    own = own if own is not None else [0] * len(sizes)
    search = _Search(sizes, downs, images, hit, max(budget, len(layers)), own=own)
    for layer in layers:
        search.add(layer)
    for _ in range(PASSES):
        moved = [search.move(u) for u in visit]
        if not any(moved):
            break
    return [sorted(layer) for layer in search.groups if layer]


class _Search:
    """The layers being refined, with each one's bytes and down-set kept up to date.

    What a move weighs is kept between moves, as only the two layers a move changes have other
    figures after it: for each layer and unit, the size of their joined down-sets (an OR and a
    popcount of ``n``-bit sets, the search's main cost), and for each unit the down-set of its
    layer without it; both are keyed by the layer's version, bumped when its units change. Each
    layer's images are kept too (those of all its units, or :data:`_MIXED`). A layer's count
    is its bitset's popcount plus its units' ``own`` counts (kept per layer)."""

    def __init__(
        self,
        sizes: Sequence[int],
        downs: Sequence[int],
        images: Sequence[object],
        hit: Sequence[float],
        limit: int,
        *,
        own: Sequence[int],
    ) -> None:
        self.sizes, self.downs, self.own = sizes, downs, own
        self.images, self.hit, self.limit = images, hit, limit
        self.groups: list[set[int]] = []
        self.bytes_of: list[int] = []
        self.down_of: list[int] = []
        self.own_of: list[int] = []  # the own counts of g's units, summed
        self.count_of: list[int] = []  # |D(g)|, kept to spare a popcount per move weighed
        self.images_of: list[object] = []  # the images of every unit of g, or _MIXED
        self.version: list[int] = []  # bumped whenever g's units change
        self.where: dict[int, int] = {}
        self.filled = 0  # layers that hold a unit
        self.joined: dict[tuple[int, int], tuple[int, int]] = {}  # (g, u) -> (version, count)
        self.without: dict[int, tuple[int, int, int, int]] = {}  # u -> (g, version, down, count)
        self.alone = [bits.bit_count() + extra for bits, extra in zip(downs, own, strict=True)]
        # Lower bounds on a move's figure are used only if hit[] never falls (it rises with
        # the count in exact arithmetic; this checks the floating point table too).
        self.bounded = hit_rises(hit)
        self.changed: list[int] = []  # the layers each move changed, in order (two a move)
        # u -> (its layer, that layer's version, len(changed)) when u last found no move.
        self.settled: dict[int, tuple[int, int, int]] = {}

    def add(self, units: Sequence[int]) -> None:
        for u in units:
            self.where[u] = len(self.groups)
        self.groups.append(set(units))
        self.bytes_of.append(sum(self.sizes[u] for u in units))
        self.down_of.append(union_of(self.downs, units))
        self.own_of.append(sum(self.own[u] for u in units))
        self.count_of.append(self.down_of[-1].bit_count() + self.own_of[-1])
        self.images_of.append(self._images(self.groups[-1]))
        self.version.append(0)
        self.filled += bool(units)

    def _images(self, units: set[int]) -> object:
        found = {self.images[u] for u in units}
        return found.pop() if len(found) == 1 else _MIXED

    def cost(self, size: int, count: int) -> float:
        return size * self.hit[count]

    def _joined_count(self, b: int, u: int) -> int:
        """The count of layer ``b`` and unit ``u`` joined, computed once per version of ``b``."""
        known = self.joined.get((b, u))
        if known is not None and known[0] == self.version[b]:
            return known[1]
        count = (self.down_of[b] | self.downs[u]).bit_count() + self.own_of[b] + self.own[u]
        self.joined[b, u] = (self.version[b], count)
        return count

    def _rest(self, a: int, u: int) -> tuple[int, int]:
        """The down-set of layer ``a`` without unit ``u`` (which it holds), and its size."""
        known = self.without.get(u)
        if known is not None and known[0] == a and known[1] == self.version[a]:
            return known[2], known[3]
        rest_down = union_of(self.downs, self.groups[a] - {u})
        rest_count = rest_down.bit_count() + self.own_of[a] - self.own[u]
        self.without[u] = (a, self.version[a], rest_down, rest_count)
        return rest_down, rest_count

    def move(self, u: int) -> bool:
        """Move unit ``u`` where the plan costs least, if that saves more than EPSILON.

        The layer found is the one of least figure, ties to the lowest index, as a scan of
        every layer finds it; three shortcuts leave out layers that cannot be it, none of
        them changing a figure that is weighed. If ``u`` found no move when last weighed and
        its layer is as it was, every layer unchanged since has the figure it had then, not
        below the threshold: only the layers changed since are weighed (none when no unit
        has moved since). Else joining a layer of ``c`` items costs at least ``out + s(u) *
        hit[max(c, alone)]`` (the joined down-set holds both, and the layer's bytes break at
        least as often as before), the figure of ``u`` alone for ``c <= alone``: only layers
        of fewer items than :func:`_hopeless_count` are weighed, none when that count is
        ``u``'s own (a unit alone in its layer, most of them, never moves). And in the scan,
        a layer whose figure is bounded below by the best so far is not weighed exactly."""
        a, size = self.where[u], self.sizes[u]
        settled = self.settled.get(u)
        if settled is not None and settled[0] == a and settled[1] == self.version[a]:
            if settled[2] == len(self.changed):  # no move since: nothing to weigh again
                return False
        else:
            settled = None
        here = self.groups[a]
        rest_down, rest_count = self._rest(a, u)
        out = self.cost(self.bytes_of[a] - size, rest_count) - self.cost(
            self.bytes_of[a], self.count_of[a]
        )
        best, target = -EPSILON * max(size, 1), -2
        mine, alone, bounded = self.images[u], self.alone[u], self.bounded
        hit, bytes_of, count_of, images_of = self.hit, self.bytes_of, self.count_of, self.images_of
        if settled is not None:
            candidates: Sequence[int] = sorted(set(self.changed[settled[2] :]))
        elif bounded:
            hopeless = _hopeless_count(
                out, size, hit=hit, most_bytes=max(bytes_of), best=best, alone=alone
            )
            if hopeless <= alone:
                self.settled[u] = (a, self.version[a], len(self.changed))
                return False
            candidates = [b for b, count in enumerate(count_of) if count < hopeless]
        else:
            candidates = range(len(self.groups))
        groups = self.groups
        for b in candidates:
            there = groups[b]
            if b == a or not there or images_of[b] != mine:
                continue
            # The figures of self.cost, written out (this loop is the search's inner one).
            # The joined down-set has at least the larger count: a move that could not win
            # even so is not weighed exactly (hit[] rises with the count, so in floating
            # point too this bound is never above the exact figure).
            held, count = bytes_of[b], count_of[b]
            stay = held * hit[count]
            grown = held + size
            if bounded and out + grown * hit[max(count, alone)] - stay >= best:
                continue
            delta = out + grown * hit[self._joined_count(b, u)] - stay
            if delta < best:
                best, target = delta, b
        if len(here) > 1 and self.filled < self.limit:
            delta = out + self.cost(size, self.alone[u])
            if delta < best:
                target = -1
        if target == -2:
            self.settled[u] = (a, self.version[a], len(self.changed))
            return False
        if target == -1:
            target = next((g for g, layer in enumerate(self.groups) if not layer), -1)
            if target < 0:
                self.add([])
                target = len(self.groups) - 1
        if not self.groups[target]:
            self.filled += 1
        here.discard(u)
        if not here:
            self.filled -= 1
        self.bytes_of[a] -= size
        self.own_of[a] -= self.own[u]
        self.down_of[a], self.count_of[a] = rest_down, rest_count
        self.images_of[a] = self._images(here)
        self.version[a] += 1
        self.groups[target].add(u)
        self.bytes_of[target] += size
        self.down_of[target] |= self.downs[u]
        self.own_of[target] += self.own[u]
        self.count_of[target] = self.down_of[target].bit_count() + self.own_of[target]
        self.images_of[target] = self._images(self.groups[target])
        self.version[target] += 1
        self.where[u] = target
        self.changed += (a, target)
        return True


def _hopeless_count(
    out: float, size: int, *, hit: Sequence[float], most_bytes: int, best: float, alone: int
) -> int:
    """The least count ``c >= alone`` at which ``out + size * hit[c]``, less a bound on the
    rounding of any layer's figure, is not below ``best`` (``len(hit)`` if none is): no layer
    of ``c`` items or more has a figure below ``best`` (:meth:`_Search.move`). A layer of ``H
    <= most_bytes`` bytes and ``c`` items has the figure ``out + (H + size) * hit[j] - H *
    hit[c]`` with ``j >= max(c, alone)``: in exact arithmetic at least ``out + size *
    hit[max(c, alone)]`` (``hit[]`` never falls), computed with four roundings of at most
    2**-53 of terms no larger than ``|out| + 2 * (H + size)``, and the test's own sum with
    two: the figures computed are above ``out + size * hit[c] - 3e-15 * (|out| + most_bytes
    + size)``, and 4e-15 leaves room for the rounding of the test itself. The test rises
    with ``c`` in floating point too, so the count is found by bisection."""
    slack = 4e-15 * (abs(out) + most_bytes + size)

    def hopeless(count: int) -> bool:
        return out + size * hit[count] - slack >= best

    return bisect.bisect_left(range(len(hit)), True, lo=alone, key=hopeless)


#: The images of a layer whose units do not all belong to the same images.
_MIXED = object()


def chain_order(
    downs: Sequence[int],
    sizes: Sequence[int],
    hit: Sequence[float],
    keys: Sequence[str],
    *,
    own: Sequence[int] | None = None,
) -> list[int]:
    """The layers (their down-sets, bytes and tie-break keys) in ChainID order, bottom first:
    their indices (module docstring). Each layer's place (:func:`_rank`) is kept in a heap and
    made again only when the layer placed last held items of its down-set not placed before
    (else its count outside those placed is as it was): a lazy heap, a layer's older places
    left in it are skipped (a place only falls as more is placed). ``own[g]`` counts items of
    layer ``g``'s down-set left out of its bitset that no other layer's holds
    (:func:`~closurepack.strategies.economy.shared_bitsets`): never among those placed, so
    always fresh."""
    own = own if own is not None else [0] * len(downs)
    counts = [bits.bit_count() + extra for bits, extra in zip(downs, own, strict=True)]
    place = [
        _rank(g, counts[g], counts=counts, sizes=sizes, hit=hit, keys=keys)
        for g in range(len(downs))
    ]
    heap = [(rank, g) for g, rank in enumerate(place)]
    heapq.heapify(heap)
    left = set(range(len(downs)))
    below = 0
    order: list[int] = []
    while heap:
        rank, chosen = heapq.heappop(heap)
        if chosen not in left or place[chosen] is not rank:
            continue  # placed already, or an older place of a layer
        left.discard(chosen)
        order.append(chosen)
        placed = downs[chosen] & ~below
        if not placed:
            continue
        below |= placed
        free = ~below
        for g in [g for g in left if downs[g] & placed]:
            fresh = (downs[g] & free).bit_count() + own[g]
            place[g] = _rank(g, fresh, counts=counts, sizes=sizes, hit=hit, keys=keys)
            heapq.heappush(heap, (place[g], g))
    return order


def _rank(
    g: int,
    fresh: int,
    *,
    counts: Sequence[int],
    sizes: Sequence[int],
    hit: Sequence[float],
    keys: Sequence[str],
) -> tuple[float, int, int, str]:
    """Layer ``g``'s place in :func:`chain_order` when ``fresh`` items of its down-set are
    outside those already placed."""
    chance = hit[fresh]
    ratio = chance / ((1 - chance) * sizes[g]) if chance < 1 and sizes[g] else float("inf")
    return ratio, counts[g], -sizes[g], keys[g]
