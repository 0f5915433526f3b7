"""The fleet's floor: a lower bound on the bytes that any plan of several images, each within
its layer budget, stores (what ``bench/economy_bench.py``'s ``floor`` column reports)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from closurepack.fleetregions import image_masks, mask_bits
from closurepack.graph import Closure

__all__ = ["FleetFloor", "fleet_floor"]

#: Subgradient rounds of :func:`fleet_floor`'s Lagrangian bound.
FLOOR_ROUNDS = 300


@dataclass(frozen=True)
class FleetFloor:
    """What any plan of a fleet within its budget must store.

    ``total``: bytes of the distinct items; ``duplicated``: a lower bound on the bytes stored
    more than once; ``regions``: per image, how many regions it holds; ``need``: per image, how
    many of them must be stored twice at least (its regions beyond the budget).
    """

    total: int
    duplicated: int
    regions: tuple[int, ...]
    need: tuple[int, ...]

    @property
    def overhead(self) -> float:
        """The floor of the fleet overhead: ``(total + duplicated) / total`` (1.0 if empty)."""
        return (self.total + self.duplicated) / self.total if self.total else 1.0


def fleet_floor(closures: Sequence[Closure], budget: int) -> FleetFloor:
    """A lower bound on the bytes of distinct layers of any plan giving each of ``closures`` at
    most ``budget`` layers (each image's layers a partition of its closure).

    Why it holds: an item in ``c`` distinct layers is stored ``c`` times. Take an image and one
    of its layers, held by the images ``S``; every item of it is held by all of ``S``. An item
    whose images are more than ``S`` is in another layer too (those other images hold it in
    one), so it is stored twice. The items stored once in that layer are therefore all held by
    exactly ``S``: one region. So an image with ``r`` regions and at most ``budget`` layers has
    at least ``r - budget`` regions wholly stored twice, none of them held by that image alone
    (an item of one image is in one layer), and the bytes stored twice are at least the least
    bytes of a set of shared regions holding, for every image, that many of its regions (a
    covering problem). That minimum is bounded below by the best of: the largest over the
    images of its ``need`` smallest regions, and the Lagrangian bound
    ``sum_k l_k need_k + sum_R min(0, b_R - sum_{k holds R} l_k)``, valid for every ``l >= 0``,
    improved by :data:`FLOOR_ROUNDS` subgradient steps. ``O(FLOOR_ROUNDS * regions * K)``.
    """
    masks = image_masks(closures)
    sizes = {p: item.nar_size for c in closures for p, item in c.items.items()}
    regions: dict[int, int] = {}
    for path, mask in masks.items():
        regions[mask] = regions.get(mask, 0) + sizes[path]
    count = len(closures)
    held = [[m for m in sorted(regions) if m >> k & 1] for k in range(count)]
    counts = tuple(len(h) for h in held)
    need = tuple(max(0, r - budget) for r in counts)
    total = sum(regions.values())
    if not any(need):
        return FleetFloor(total, 0, counts, need)
    # An item of one image only is in one layer of it, never stored twice: only shared
    # regions can be (the image's private items have fewer layers to go round).
    shared = {m: b for m, b in regions.items() if m.bit_count() > 1}
    single = max(
        sum(sorted(shared[m] for m in held[k] if m in shared)[: need[k]]) for k in range(count)
    )
    bound = max(single, _lagrangian(shared, need, upper=_greedy_cover(shared, need)))
    return FleetFloor(total, bound, counts, need)


def _greedy_cover(regions: dict[int, int], need: Sequence[int]) -> int:
    """Bytes of a feasible cover (an upper bound on the covering problem): regions taken by
    bytes per image still in need that holds them."""
    left = list(need)
    free = set(regions)
    taken = 0
    while any(left):
        helps = {m: sum(1 for k in mask_bits(m) if left[k]) for m in free}
        mask = min((m for m in free if helps[m]), key=lambda m: (regions[m] / helps[m], m))
        free.discard(mask)
        taken += regions[mask]
        for k in mask_bits(mask):
            left[k] = max(0, left[k] - 1)
    return taken


def _lagrangian(regions: dict[int, int], need: Sequence[int], *, upper: int) -> int:
    """The best Lagrangian lower bound found (see :func:`fleet_floor`), rounded up to bytes
    after allowing for float error (the covering problem's optimum is a whole number)."""
    members = {m: mask_bits(m) for m in regions}
    weights = [0.0] * len(need)
    best = 0.0
    scale = 2.0
    for _ in range(FLOOR_ROUNDS):
        value = sum(w * n for w, n in zip(weights, need, strict=True))
        gradient = [float(n) for n in need]
        for mask, size in regions.items():
            reduced = size - sum(weights[k] for k in members[mask])
            if reduced < 0:
                value += reduced
                for k in members[mask]:
                    gradient[k] -= 1
        best = max(best, value)
        norm = sum(g * g for g in gradient)
        if not norm or upper <= value:
            break
        step = scale * (upper - value) / norm
        weights = [max(0.0, w + step * g) for w, g in zip(weights, gradient, strict=True)]
        scale *= 0.98
    return max(0, math.ceil(best - 1e-9 * best - 1e-6))
