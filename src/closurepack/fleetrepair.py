"""One image of a fleet repaired: moved back within its cost alone at the fewest bytes stored.

Step 4 of :mod:`closurepack.fleetshare`. An image whose layers (restrictions of the fleet's)
ship more per update than its plan alone has items moved between its own layers, or to a new
one while it has room, one at a time: of the moves lowering its cost (``sum of s(L) *
|D(L)|``), the one adding the fewest stored bytes per unit of cost it saves (plus one byte, so
that a free move that saves more wins) first. A layer another image also holds stays stored
for that image, so changing it adds the new layer's bytes; changing a layer only this image
holds frees its bytes. The caller stops when the image is within its limit or no move lowers
its cost, and compares what this stored with the image's plan alone.

The first move weighs every item against every layer, ``O(items * layers * N / 64)`` for
``N`` items in the union; each later one only the moves out of and into the two layers the
last one changed (and into a new layer, when the first empty slot or the room changes): the
best move per pair of layers is kept, and every other is as it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from closurepack.strategies._dag import Dag
from closurepack.strategies.economy import union_of

__all__ = ["ImageRepair"]


class _Row:
    """The moves out of one layer that may lower the cost (item, the cost change of taking it
    out, the bytes that adds less those it frees) and, per target layer, the best of them."""

    def __init__(self) -> None:
        self.moves: list[tuple[int, int, int]] = []
        self.entries: dict[int, tuple[float, int]] = {}
        self.best: tuple[float, int, int, int] | None = None

    def settle(self, a: int) -> None:
        """``best``: (score, ``a``, item, target) of the best move, the first in the order of
        the original scan on a tie (layer, item, target)."""
        self.best = None
        for b, (score, i) in self.entries.items():
            if self.best is None or (score, a, i, b) < self.best:
                self.best = (score, a, i, b)


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
        self._rows: list[_Row] = []  # per layer, its moves: filled by the first step
        self._layers, self._empty = 0, -1
        self._costs: list[int] = []
        self._freed: list[int] = []
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
        if not self._rows:
            self._layers = sum(1 for layer in self.own if layer)
            self._empty = next((g for g, layer in enumerate(self.own) if not layer), -1)
            self._costs = [s * d.bit_count() for s, d in zip(self.size, self.down, strict=True)]
            self._freed = [self._freed_by(g) for g in range(len(self.own))]
            self._rows = [_Row() for _ in self.own]
            for a in range(len(self.own)):
                self._fill(a)
        best = min((row.best for row in self._rows if row.best is not None), default=None)
        if best is None:
            return False
        _, a, i, b = best
        sizes = self.dag.sizes
        self._swap(a, self.own[a] - {i}, self.size[a] - sizes[i])
        self._swap(b, self.own[b] | {i}, self.size[b] + sizes[i])
        self.where[i] = b
        self._moved(a, b)
        return True

    def _freed_by(self, g: int) -> int:
        """Bytes freed when layer ``g`` changes: none if another image holds it too."""
        layer = self.own[g]
        return self.size[g] if layer and self.stored[frozenset(layer)] == 1 else 0

    def _moved(self, a: int, b: int) -> None:
        """The rows and columns a move from layer ``a`` to ``b`` changed, weighed again.

        Only those: the other layers, their bytes, down-sets and the layers their moves would
        make are disjoint from ``a``'s and ``b``'s items, before and after, so nothing of
        theirs was touched; but every layer's moves into ``a`` and ``b`` change, and so do the
        moves into a new layer when the first empty slot, or whether there is room, changes."""
        old_empty = self._empty
        self._layers = sum(1 for layer in self.own if layer)
        self._empty = next((g for g, layer in enumerate(self.own) if not layer), -1)
        for g in (a, b):
            self._costs[g] = self.size[g] * self.down[g].bit_count()
            self._freed[g] = self._freed_by(g)
        columns = sorted({a, b, old_empty, self._empty} - {-1})
        for c, row in enumerate(self._rows):
            if c in (a, b):
                self._fill(c)
                continue
            if not row.moves:
                continue
            for d in columns:
                entry = self._column(c, row.moves, d)
                if entry is None:
                    row.entries.pop(d, None)
                else:
                    row.entries[d] = entry
            row.settle(c)

    def _fill(self, a: int) -> None:
        """Row ``a``: the moves out of layer ``a`` that may lower the cost, and per target
        layer the best of them."""
        sizes, downs = self.dag.sizes, self.downs
        row = self._rows[a] = _Row()
        here = self.own[a]
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
            out = rest_size * (before[j] | after[j + 1]).bit_count() - self._costs[a]
            if out + sizes[i] * downs[i].bit_count() >= 0:
                continue  # no layer takes it for less than a layer of its own would
            rest = here - {i}
            removed = self._new_bytes(rest, rest_size) if rest else 0
            row.moves.append((i, out, removed - self._freed[a]))
        if row.moves:
            for b in range(len(self.own)):
                entry = self._column(a, row.moves, b)
                if entry is not None:
                    row.entries[b] = entry
        row.settle(a)

    def _column(
        self, a: int, moves: list[tuple[int, int, int]], b: int
    ) -> tuple[float, int] | None:
        """The best of ``moves`` (out of layer ``a``) into layer ``b``: its score (the bytes
        it adds, plus one, per unit of cost it saves) and item, the lower item on a tie."""
        there = self.own[b]
        if b == a or (
            not there and (b != self._empty or len(self.own[a]) < 2 or self._layers >= self.room)
        ):
            return None
        sizes, downs = self.dag.sizes, self.downs
        size_b, down_b, cost_b, freed_b = self.size[b], self.down[b], self._costs[b], self._freed[b]
        reach_b = down_b.bit_count()
        best: tuple[float, int] | None = None
        for i, out, removed in moves:
            size = sizes[i]
            if out + size * reach_b >= 0:
                continue  # |D(b | i)| >= |D(b)|: the gain below is not negative
            joined = size_b + size
            gain = out + joined * (down_b | downs[i]).bit_count() - cost_b
            if gain >= 0:
                continue
            extra = removed - freed_b
            if best is not None and (max(extra, 0) + 1) / -gain >= best[0]:
                continue  # adding the new layer's bytes only makes it worse
            extra += self._new_bytes(there | {i}, joined)
            score = (max(extra, 0) + 1) / -gain
            if best is None or score < best[0]:
                best = (score, i)
        return best

    def release(self) -> None:
        """This image's layers no longer count as held (it gets others)."""
        for g, layer in enumerate(self.own):
            if layer:
                self._swap(g, set(), 0)
