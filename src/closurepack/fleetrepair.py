"""One image of a fleet repaired: moved back within its cost alone at the fewest bytes stored.

Step 4 of :mod:`closurepack.fleetshare`. An image whose layers (restrictions of the fleet's)
ship more per update than its plan alone has items moved between its own layers, or to a new
one while it has room, one at a time: of the moves lowering its cost (``sum of s(L) *
|D(L)|``), the one adding the fewest stored bytes per unit of cost it saves (plus one byte, so
that a free move that saves more wins) first. A layer another image also holds stays stored
for that image, so changing it adds the new layer's bytes; changing a layer only this image
holds frees its bytes. The caller stops when the image is within its limit or no move lowers
its cost, and compares what this stored with the image's plan alone.

Each move weighs every item against every layer: ``O(items * layers * N / 64)`` for ``N``
items in the union.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from closurepack.strategies._dag import Dag
from closurepack.strategies.economy import union_of

__all__ = ["ImageRepair"]


class ImageRepair:
    """One image's layers (sets of item indices) repaired: see the module docstring.
    ``stored`` counts, for every distinct layer of the fleet, how many images hold it; the
    repair keeps it up to date."""

    def __init__(
        self,
        dag: Dag,
        downs: Sequence[int],
        own: Sequence[set[int]],
        stored: dict[frozenset[int], int],
        room: int,
    ) -> None:
        self.dag, self.downs, self.room, self.stored = dag, downs, room, stored
        self.own = [set(layer) for layer in own]
        self.own.extend(set() for _ in range(room - len(own)))
        self.size = [sum(dag.sizes[i] for i in layer) for layer in self.own]
        self.down = [union_of(downs, layer) for layer in self.own]
        self.where = {i: g for g, layer in enumerate(self.own) for i in layer}
        self.by_size: dict[int, int] = {}
        for key in stored:
            total = sum(dag.sizes[i] for i in key)
            self.by_size[total] = self.by_size.get(total, 0) + 1

    def cost(self) -> int:
        return sum(s * d.bit_count() for s, d in zip(self.size, self.down, strict=True))

    def _new_bytes(self, members: Iterable[int], size: int) -> int:
        """``size`` if no image holds a layer of ``members`` yet, else 0 (sizes checked
        first: most layers of a new size are new)."""
        if size and self.by_size.get(size) and frozenset(members) in self.stored:
            return 0
        return size

    def _swap(self, g: int, new: set[int], size: int) -> None:
        if self.own[g]:
            old = frozenset(self.own[g])
            self.stored[old] -= 1
            if not self.stored[old]:
                del self.stored[old]
                self.by_size[self.size[g]] -= 1
        if new:
            key = frozenset(new)
            if key not in self.stored:
                self.by_size[size] = self.by_size.get(size, 0) + 1
            self.stored[key] = self.stored.get(key, 0) + 1
        self.own[g] = new
        self.size[g] = size
        self.down[g] = union_of(self.downs, new)

    def step(self) -> bool:
        """The best move (class docstring); False when no move lowers the cost."""
        sizes, downs = self.dag.sizes, self.downs
        layers = sum(1 for layer in self.own if layer)
        empty = next((g for g, layer in enumerate(self.own) if not layer), -1)
        costs = [s * d.bit_count() for s, d in zip(self.size, self.down, strict=True)]
        # Bytes freed when this image's layer changes: none if another image holds it too.
        freed = [
            self.size[g] if layer and self.stored[frozenset(layer)] == 1 else 0
            for g, layer in enumerate(self.own)
        ]
        best: tuple[float, int, int] | None = None
        for a, here in enumerate(self.own):
            order = sorted(here)
            # The down-set of the layer without its j-th item: the items before | those after.
            before = [0]
            for i in order:
                before.append(before[-1] | downs[i])
            after = [0]
            for i in reversed(order):
                after.append(after[-1] | downs[i])
            after.reverse()
            for j, i in enumerate(order):
                rest_size = self.size[a] - sizes[i]
                out = rest_size * (before[j] | after[j + 1]).bit_count() - costs[a]
                if out + sizes[i] * downs[i].bit_count() >= 0:
                    continue  # no layer takes it for less than a layer of its own would
                rest = here - {i}
                removed = self._new_bytes(rest, rest_size) if rest else 0
                removed -= freed[a]
                for b, there in enumerate(self.own):
                    if b == a or (not there and (b != empty or not rest or layers >= self.room)):
                        continue
                    joined = self.size[b] + sizes[i]
                    gain = out + joined * (self.down[b] | downs[i]).bit_count() - costs[b]
                    if gain >= 0:
                        continue
                    extra = removed - freed[b]
                    if best is not None and (max(extra, 0) + 1) / -gain >= best[0]:
                        continue  # adding the new layer's bytes only makes it worse
                    extra += self._new_bytes(there | {i}, joined)
                    score = (max(extra, 0) + 1) / -gain
                    if best is None or score < best[0]:
                        best = (score, i, b)
        if best is None:
            return False
        _, i, b = best
        a = self.where[i]
        self._swap(a, self.own[a] - {i}, self.size[a] - sizes[i])
        self._swap(b, self.own[b] | {i}, self.size[b] + sizes[i])
        self.where[i] = b
        return True

    def release(self) -> None:
        """This image's layers no longer count as held (it gets others)."""
        for g, layer in enumerate(self.own):
            if layer:
                self._swap(g, set(), 0)
