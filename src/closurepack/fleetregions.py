"""The fleet's regions (the items held by exactly the same images) and the atoms laid on them:
the state that :func:`closurepack.fleet.plan_jointly` merges, splits and orders (the steps are in
:mod:`closurepack.fleet`'s docstring)."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from closurepack.graph import Closure
from closurepack.strategies._dag import Dag
from closurepack.strategies.economy import bitset

__all__ = ["Atom", "JointState", "image_masks", "mask_bits"]


def image_masks(closures: Sequence[Closure]) -> dict[str, int]:
    """For each path, the bitmask of the closures (images) holding it."""
    masks: dict[str, int] = {}
    for bit, closure in enumerate(closures):
        for path in closure.items:
            masks[path] = masks.get(path, 0) | 1 << bit
    return masks


def mask_bits(mask: int) -> list[int]:
    """The images (bit numbers) of an image mask, lowest first."""
    found = []
    while mask:
        low = mask & -mask
        found.append(low.bit_length() - 1)
        mask ^= low
    return found


@dataclass
class Atom:
    """Items that end up in one layer: held by the images ``owner`` (a bitmask)."""

    owner: int
    members: list[int]
    size: int
    down: int  # the down-set, as a bitset over the union's Dag
    reach: int  # its size

    @property
    def cost(self) -> int:
        return self.size * self.reach


class JointState:
    """The state of :func:`~closurepack.fleet.plan_jointly`: atoms by region, per image its count
    and cost."""

    def __init__(self, dag: Dag, alone: Sequence[Sequence[tuple[str, ...]]], room: int) -> None:
        self.dag = dag
        self.room = room
        self.index = dag.index()
        self.alone = alone
        self.where: list[dict[int, int]] = [
            {self.index[p]: number for number, layer in enumerate(layers) for p in layer}
            for layers in alone
        ]
        self.atoms: dict[int, Atom] = {}
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
        atom = Atom(owner, members, size, down, down.bit_count())
        ident = self.next_id
        self.next_id += 1
        self.atoms[ident] = atom
        for k in mask_bits(owner):
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

    def remove(self, ident: int) -> Atom:
        atom = self.atoms.pop(ident)
        self.regions[atom.owner].discard(ident)
        for k in mask_bits(atom.owner):
            self.count[k] -= 1
            self.spent[k] -= atom.cost
        return atom

    def delta(self, a: int, b: int) -> int:
        first, second = self.atoms[a], self.atoms[b]
        both = (first.down | second.down).bit_count()
        return (first.size + second.size) * both - first.cost - second.cost

    def slack(self, owner: int) -> int:
        return min(self.limit[k] - self.spent[k] for k in mask_bits(owner))

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
        return sum(1 / self.items[k] for k in mask_bits(owner))

    def over(self) -> list[int]:
        return [k for k, c in enumerate(self.count) if c > self.room]

    def step(self) -> bool:
        """One merge of step 2 of :mod:`closurepack.fleet`'s docstring; False when none is
        allowed."""
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
        """Step 3 of :mod:`closurepack.fleet`'s docstring for image ``k``."""
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
        """Step 4 of :mod:`closurepack.fleet`'s docstring."""
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
        """Step 5 of :mod:`closurepack.fleet`'s docstring: each image's layers, bottom first."""
        order = sorted(
            self.atoms.values(), key=lambda a: (-a.owner.bit_count(), min(a.members), a.owner)
        )
        images: list[list[tuple[str, ...]]] = [[] for _ in range(count)]
        for atom in order:
            layer = tuple(sorted(self.dag.paths[i] for i in atom.members))
            for k in mask_bits(atom.owner):
                images[k].append(layer)
        return images
