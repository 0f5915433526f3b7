"""Several images planned together: layers on the regions of the fleet, and the fleet's floor.

A *region* is the set of items held by exactly the same images (the same image mask). An item
can only be in a layer shared by images that all hold it, so a layer that mixes two regions is
a different layer in some image, its items stored twice; a fleet whose layers each lie inside
one region stores every item once (fleet overhead 1.0).

:func:`plan_jointly` optimises, in this order: (1) every image within its layer budget; (2) no
image's expected bytes shipped per random one-item update (the model of
:func:`~closurepack.strategies.economy.expected_shipped`: a layer ships when the changed item
lies in its down-set) above its plan alone, exactly, in integers; (3) the fewest bytes stored
twice; (4) the least expected update bytes, summed over the images. How:

1. *Atoms*: the items are split by region and, within it, by the layer each image holding them
   has them in when planned alone. Every image's atoms refine its plan alone, so none ships more
   per update than alone (splitting a layer never ships more: each part's down-set lies in the
   whole's). A second attempt starts from one atom per item (the cheapest layering of all,
   free to be merged along the fleet's regions rather than along each image's plan); of the
   two results and the images' plans alone, the one storing fewer bytes is kept (ties: the
   fewer expected bytes summed, then the first), so a fleet never stores more than alone.
   When that one still stores more than :data:`ACROSS_ABOVE` of the items twice, a fourth
   candidate is planned across regions (:func:`closurepack.fleetshare.plan_across`: layers
   of the union that may mix regions at the bytes that stores twice, each image repaired or
   given its plan alone where it would ship more than alone), kept on the same terms; this
   is what lets ``stable``'s images, whose plans alone leave no room for merges inside
   regions, share most of their layers.
2. While some image has more atoms than its budget, two atoms of one region are merged: of the
   regions that hold an image over budget, the pair whose merge adds the least expected bytes
   (``(s_a + s_b) |D(a | b)| - s_a |D(a)| - s_b |D(b)|``, over each holder's item count, summed
   over the holders, per image over budget that it helps; ties: the lower region mask, then the
   lower atoms), if every holder's expected bytes stay within its plan alone. A merge within a
   region keeps every layer whole in every image that holds it.
3. When no such merge is left, the image most over budget (ties: the lower) gets a copy of its
   own of its smallest shared atom (in bytes; ties: the lower): those items are then stored
   twice, the cheapest duplication first, the atom as it was (so no image ships more), now free
   to merge with the image's own atoms (across regions) at the cost of that image alone.
   An image with no shared atom left that still cannot merge gets its plan alone.
4. Atoms smaller than ``min_size`` bytes are merged, smallest first, into the atom of their
   region that adds the least expected bytes, within the same guarantee.
5. Layers are ordered bottom first by how many images hold them (most first), then by their
   lowest item in the union's topological order (dependencies first), so shared and stable
   layers sit at the bottom, as Docker's ChainID reuse wants.

Complexity: with ``A_R`` atoms ever in region ``R`` (an image's own region also receives the
copies of step 3), ``N`` items in the union and ``K`` images,
``O(sum_R A_R^2 (log A_R + N / 64) + A N)``: every pair of atoms of a region is costed once,
a merge costs the new atom against its region's others; the per-item attempt has ``A_R`` the
region's items. Quadratic in the largest region's items, then: real fleets (8 images, 500
items, 42 regions, the largest of 150 items) take about half a second beyond their plans alone;
a single image never comes here.

:func:`fleet_floor` is the lower bound on the bytes any plan of the images within the budget
stores: see its docstring.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

from closurepack.fleetshare import plan_across
from closurepack.graph import Closure
from closurepack.strategies._dag import Dag
from closurepack.strategies.economy import bitset

__all__ = ["ACROSS_ABOVE", "FleetFloor", "fleet_floor", "image_masks", "plan_jointly"]

#: A fleet whose best plan of steps 1 to 4 stores more than this share of its items twice is
#: also planned across regions (:mod:`closurepack.fleetshare`).
ACROSS_ABOVE = 0.01
#: Subgradient rounds of :func:`fleet_floor`'s Lagrangian bound.
FLOOR_ROUNDS = 300


def image_masks(closures: Sequence[Closure]) -> dict[str, int]:
    """For each path, the bitmask of the closures (images) holding it."""
    masks: dict[str, int] = {}
    for bit, closure in enumerate(closures):
        for path in closure.items:
            masks[path] = masks.get(path, 0) | 1 << bit
    return masks


def _bits(mask: int) -> list[int]:
    found = []
    while mask:
        low = mask & -mask
        found.append(low.bit_length() - 1)
        mask ^= low
    return found


# -- the floor ------------------------------------------------------------------------------------


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
        helps = {m: sum(1 for k in _bits(m) if left[k]) for m in free}
        mask = min((m for m in free if helps[m]), key=lambda m: (regions[m] / helps[m], m))
        free.discard(mask)
        taken += regions[mask]
        for k in _bits(mask):
            left[k] = max(0, left[k] - 1)
    return taken


def _lagrangian(regions: dict[int, int], need: Sequence[int], *, upper: int) -> int:
    """The best Lagrangian lower bound found (see :func:`fleet_floor`), rounded up to bytes
    after allowing for float error (the covering problem's optimum is a whole number)."""
    members = {m: _bits(m) for m in regions}
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


# -- joint planning -------------------------------------------------------------------------------


@dataclass
class _Atom:
    """Items that end up in one layer: held by the images ``owner`` (a bitmask)."""

    owner: int
    members: list[int]
    size: int
    down: int  # the down-set, as a bitset over the union's Dag
    reach: int  # its size

    @property
    def cost(self) -> int:
        return self.size * self.reach


class _Joint:
    """The state of :func:`plan_jointly`: atoms by region, per image its count and cost."""

    def __init__(self, dag: Dag, alone: Sequence[Sequence[tuple[str, ...]]], room: int) -> None:
        self.dag = dag
        self.room = room
        self.index = dag.index()
        self.alone = alone
        self.where: list[dict[int, int]] = [
            {self.index[p]: number for number, layer in enumerate(layers) for p in layer}
            for layers in alone
        ]
        self.atoms: dict[int, _Atom] = {}
        self.regions: dict[int, set[int]] = {}
        self.heaps: dict[int, list[tuple[int, int, int]]] = {}
        self.count = [0] * len(alone)
        self.spent = [0] * len(alone)
        self.limit = [sum(self._cost(layer) for layer in layers) for layers in alone]
        self.items = [len(where) for where in self.where]
        self.next_id = 0

    def _cost(self, layer: Sequence[str]) -> int:
        members = [self.index[p] for p in layer]
        return sum(self.dag.sizes[i] for i in members) * len(self.dag.reach(members))

    def add(
        self, owner: int, members: list[int], *, pair: bool = True, down: int | None = None
    ) -> int:
        if down is None:
            down = bitset(self.dag.reach(members), len(self.dag))
        size = sum(self.dag.sizes[i] for i in members)
        atom = _Atom(owner, members, size, down, down.bit_count())
        ident = self.next_id
        self.next_id += 1
        self.atoms[ident] = atom
        for k in _bits(owner):
            self.count[k] += 1
            self.spent[k] += atom.cost
        region = self.regions.setdefault(owner, set())
        heap = self.heaps.setdefault(owner, [])
        if pair:
            for other in region:
                low, high = sorted((ident, other))
                heapq.heappush(heap, (self.delta(ident, other), low, high))
        region.add(ident)
        return ident

    def remove(self, ident: int) -> _Atom:
        atom = self.atoms.pop(ident)
        self.regions[atom.owner].discard(ident)
        for k in _bits(atom.owner):
            self.count[k] -= 1
            self.spent[k] -= atom.cost
        return atom

    def delta(self, a: int, b: int) -> int:
        first, second = self.atoms[a], self.atoms[b]
        both = (first.down | second.down).bit_count()
        return (first.size + second.size) * both - first.cost - second.cost

    def slack(self, owner: int) -> int:
        return min(self.limit[k] - self.spent[k] for k in _bits(owner))

    def best_pair(self, owner: int) -> tuple[int, int, int] | None:
        heap = self.heaps.get(owner, [])
        while heap and (heap[0][1] not in self.atoms or heap[0][2] not in self.atoms):
            heapq.heappop(heap)
        return heap[0] if heap else None

    def merge(self, a: int, b: int) -> int:
        first, second = self.remove(a), self.remove(b)
        down = first.down | second.down
        return self.add(first.owner, first.members + second.members, down=down)

    def weight(self, owner: int) -> float:
        return sum(1 / self.items[k] for k in _bits(owner))

    def over(self) -> list[int]:
        return [k for k, c in enumerate(self.count) if c > self.room]

    def step(self) -> bool:
        """One merge of step 2 of the module docstring; False when none is allowed."""
        over = 0
        for k in self.over():
            over |= 1 << k
        chosen: tuple[float, int, int, int] | None = None
        for owner in sorted(self.regions):
            helped = (owner & over).bit_count()
            top = self.best_pair(owner) if helped else None
            if top is None or top[0] > self.slack(owner):
                continue
            score = top[0] * self.weight(owner) / helped
            if chosen is None or (score, owner) < chosen[:2]:
                chosen = (score, owner, top[1], top[2])
        if chosen is None:
            return False
        self.merge(chosen[2], chosen[3])
        return True

    def split_off(self, k: int) -> None:
        """Step 3 of the module docstring for image ``k``."""
        bit = 1 << k
        shared = [o for o in self.regions if o & bit and o != bit and self.regions[o]]
        if not shared:
            for ident in list(self.regions.get(bit, ())):
                self.remove(ident)
            for layer in self.alone[k]:
                self.add(bit, [self.index[p] for p in layer], pair=False)
            self.limit[k] = self.spent[k]  # its plan alone: nothing may be merged into it
            return

        atoms = [i for o in shared for i in self.regions[o]]
        ident = min(atoms, key=lambda i: (self.atoms[i].size, i))
        atom = self.remove(ident)
        self.add(atom.owner & ~bit, atom.members, down=atom.down)
        self.add(bit, atom.members, down=atom.down)

    def fold_small(self, min_size: int) -> None:
        """Step 4 of the module docstring."""
        stuck: set[int] = set()
        while True:
            small = [i for i, a in self.atoms.items() if a.size < min_size and i not in stuck]
            if not small:
                return
            ident = min(small, key=lambda i: (self.atoms[i].size, i))
            owner = self.atoms[ident].owner
            room = self.slack(owner)
            options = [
                (self.delta(ident, other), other) for other in self.regions[owner] if other != ident
            ]
            allowed = [o for o in options if o[0] <= room]
            if not allowed:
                stuck.add(ident)
                continue
            merged = self.merge(ident, min(allowed)[1])
            stuck.discard(merged)

    def stored(self) -> int:
        """Bytes of the distinct layers (two images' own copies of the same items are one)."""
        distinct = {tuple(sorted(a.members)): a.size for a in self.atoms.values()}
        return sum(distinct.values())

    def layers(self, count: int) -> list[list[tuple[str, ...]]]:
        """Step 5 of the module docstring: each image's layers, bottom first."""
        order = sorted(
            self.atoms.values(), key=lambda a: (-a.owner.bit_count(), min(a.members), a.owner)
        )
        images: list[list[tuple[str, ...]]] = [[] for _ in range(count)]
        for atom in order:
            layer = tuple(sorted(self.dag.paths[i] for i in atom.members))
            for k in _bits(atom.owner):
                images[k].append(layer)
        return images


def plan_jointly(
    closures: Sequence[Closure],
    union: Closure,
    alone: Sequence[Sequence[tuple[str, ...]]],
    *,
    room: int,
    min_size: int = 0,
) -> list[list[tuple[str, ...]]]:
    """Each image's layers (bottom first) for ``closures`` planned together (module docstring);
    ``union`` is their union, ``alone[k]`` image ``k``'s layers planned alone (at most
    ``room``), ``room`` each image's layer budget."""
    dag = Dag.from_closure(union)
    masks = image_masks(closures)
    tries = [_attempt(dag, masks, alone, room, min_size, fine=fine) for fine in (False, True)]
    separate = _Joint(dag, alone, room)  # each image its plan alone, if that stores less
    for k, layers in enumerate(alone):
        for layer in layers:
            separate.add(1 << k, [separate.index[p] for p in layer], pair=False)
    tries.append(separate)
    if min(joint.stored() for joint in tries) > sum(dag.sizes) * (1 + ACROSS_ABOVE):
        across = _across(dag, masks, alone, room, min_size)
        if across is not None:
            tries.append(across)
    best = min(tries, key=lambda joint: (joint.stored(), sum(joint.spent)))
    return best.layers(len(closures))


def _across(
    dag: Dag,
    masks: dict[str, int],
    alone: Sequence[Sequence[tuple[str, ...]]],
    room: int,
    min_size: int,
) -> _Joint | None:
    """The fleet planned across regions (:func:`closurepack.fleetshare.plan_across`) from the
    atoms of step 1, as a :class:`_Joint` for the comparison and the order of step 5."""
    joint = _Joint(dag, alone, room)
    atoms: dict[tuple[int, ...], list[int]] = {}
    for i, path in enumerate(dag.paths):
        mask = masks[path]
        atoms.setdefault((mask, *(joint.where[k][i] for k in _bits(mask))), []).append(i)
    found = plan_across(
        dag,
        [masks[path] for path in dag.paths],
        [atoms[key] for key in sorted(atoms)],
        [[[joint.index[p] for p in layer] for layer in layers] for layers in alone],
        room,
    )
    if found is None:
        return None
    owners: dict[tuple[int, ...], int] = {}
    for k, layers in enumerate(found):
        for layer in layers:
            owners[tuple(layer)] = owners.get(tuple(layer), 0) | 1 << k
    for members in sorted(owners):
        joint.add(owners[members], list(members), pair=False)
    if min_size > 0:
        joint.fold_small(min_size)
    return joint


def _attempt(
    dag: Dag,
    masks: dict[str, int],
    alone: Sequence[Sequence[tuple[str, ...]]],
    room: int,
    min_size: int,
    *,
    fine: bool,
) -> _Joint:
    """Steps 1 to 4 of the module docstring from the atoms of the plans alone, or (``fine``)
    from one atom per item."""
    joint = _Joint(dag, alone, room)
    atoms: dict[tuple[int, ...], list[int]] = {}
    for i, path in enumerate(dag.paths):
        mask = masks[path]
        key = (mask, i) if fine else (mask, *(joint.where[k][i] for k in _bits(mask)))
        atoms.setdefault(key, []).append(i)
    for key in sorted(atoms):
        joint.add(key[0], atoms[key])
    while joint.over():
        if not joint.step():
            over = joint.over()
            excess = max(joint.count[k] for k in over)
            joint.split_off(next(k for k in over if joint.count[k] == excess))
    if min_size > 0:
        joint.fold_small(min_size)
    return joint
