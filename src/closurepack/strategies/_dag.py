"""Shared by the strategies: an index-based view of a closure, and the "singles, then the rest"."""

from __future__ import annotations

import gc
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import reduce
from itertools import repeat
from operator import attrgetter, or_

from closurepack.graph import Closure

__all__ = [
    "CORE_SIZE",
    "Dag",
    "bitset",
    "cyclic_gc_paused",
    "nixpkgs_name_key",
    "singles_then_rest",
]

#: How many items :meth:`Dag.closure_sums`' down counts keep as bits (the rest as sets).
CORE_SIZE = 4096


def nixpkgs_name_key(path: str) -> str:
    """nixpkgs' tie-break key: the path with its leading ``<store>/<hash>`` moved to the end.

    ``/nix/store/abc-foo-1.0`` becomes ``foo-1.0-/nix/store/abc`` (split on ``-``, first part
    moved last, joined with ``-``), so equal names sort by hash and the order never depends on
    anything but the path.
    """
    first, sep, rest = path.partition("-")
    return f"{rest}{sep}{first}" if sep else first


@dataclass(frozen=True)
class Dag:
    """A closure as integer-indexed adjacency lists, dependencies first.

    ``paths[i]`` is the i-th item in :meth:`Closure.topological_order` (references before
    referrers, ties by path), so every reference of ``i`` has an index below ``i``.
    ``refs[i]`` lists them in the order of the item's references (by path: sorting 63k tuples
    of indices took a third of the build), ``referrers[i]`` ascending.
    """

    paths: tuple[str, ...]
    refs: tuple[tuple[int, ...], ...]
    referrers: tuple[tuple[int, ...], ...]
    sizes: tuple[int, ...]
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)
    _down_bitsets: list[int] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def from_closure(cls, closure: Closure) -> Dag:
        """The closure's Dag, built once per closure (strategies and the planner share it)."""
        return closure.memoized("dag", lambda: cls._build(closure))

    @classmethod
    def _build(cls, closure: Closure) -> Dag:
        items = list(map(closure.items.__getitem__, closure.topological_order()))
        # The items' own path objects (the order holds reference strings too, other objects
        # of the same text): the groups made of them are then looked up in the closure's
        # dicts and sets by identity, without comparing the text (check_groups, sizes).
        order = tuple(map(attrgetter("path"), items))
        index = dict(zip(order, range(len(order)), strict=True))
        position = index.__getitem__
        with cyclic_gc_paused():  # 190k lists and tuples of ints: no cycle among them
            refs = tuple([tuple(map(position, item.references)) for item in items])
            referrers: list[list[int]] = [[] for _ in order]
            for i, rs in enumerate(refs):
                for r in rs:
                    referrers[r].append(i)  # i ascends: each list comes out sorted
            sizes = tuple(map(attrgetter("nar_size"), items))
            dag = cls(order, refs, tuple(map(tuple, referrers)), sizes)
        dag._index.update(index)
        return dag

    def __len__(self) -> int:
        return len(self.paths)

    def index(self) -> dict[str, int]:
        """``path -> i``, built on first use (the caller must not change it)."""
        found = self._index
        if not found:
            found.update((path, i) for i, path in enumerate(self.paths))
        return found

    def down_bitsets(self) -> list[int]:
        """Every item's down-set (it and all it reaches) as a bitset over the indices, built
        once on first use in one pass up the order (for small closures: ``n`` sets of ``n``
        bits; the caller must not change the list)."""
        sets = self._down_bitsets
        if not sets and self.paths:
            for i, refs in enumerate(self.refs):
                bits = 1 << i
                for r in refs:
                    bits |= sets[r]
                sets.append(bits)
        return sets

    def down_bitset(self, members: Collection[int]) -> int:
        """The down-set of ``members`` (them and all they reach) as a bitset over the indices.

        A set of more than half the items (the one last layer that collects everything the
        strategy did not place) is found from the few items outside it instead: one of them
        is reached exactly when a referrer is in the set or is itself reached, which a pass
        over them alone, referrers first, tells; the rest is everything."""
        n = len(self.paths)
        if 2 * len(members) <= n:
            return bitset(self.reach(members), n)
        return self.down_bitset_outside(set(range(n)).difference(members))

    def down_bitset_outside(self, outside: Collection[int]) -> int:
        """The down-set of every item but those of ``outside`` (few, for this to be quick),
        as :meth:`down_bitset` finds a large set's: one of them is reached exactly when a
        referrer is in the set or is itself reached."""
        n = len(self.paths)
        reached = set(range(n)).difference(outside)
        missed = []
        for i in sorted(set(outside), reverse=True):  # referrers first
            if reached.isdisjoint(self.referrers[i]):
                missed.append(i)
            else:
                reached.add(i)
        return ((1 << n) - 1) ^ bitset(missed, n)

    def graph_roots(self) -> list[int]:
        """Items no other item refers to, in index order."""
        return [i for i, rs in enumerate(self.referrers) if not rs]

    def reach(self, start: Iterable[int], *, up: bool = False) -> set[int]:
        """``start`` and everything it reaches (its referrers instead, when ``up``).

        Breadth first, a level at a time, so that the work per item is done by set operations
        in C rather than by Python steps."""
        edges = self.referrers if up else self.refs
        seen = set(start)
        level: Collection[int] = seen
        while level:
            following = set().union(*map(edges.__getitem__, level))
            following -= seen
            seen |= following
            level = following
        return seen

    def closure_sums(self, weights: Sequence[int] | None = None, *, up: bool = False) -> list[int]:
        """For every item, the sum of ``weights`` over it and every item it reaches (``up``:
        every item that reaches it); with no ``weights``, the number of those items.

        Exact, and linear in the size of the transitive closure rather than in the item
        count: no exact algorithm linear in the item count is known for sums over the
        reachable sets of a general DAG (those sets can hold ``n^2 / 4`` pairs between them,
        and how two children's sets overlap is not told by their sums). What keeps it fast
        on real closures (63k Debian packages: 4 million pairs, 264k references): each item's
        set starts from the largest of the sets it is made of (taken over, not copied, when
        no other item needs it) with that set's sum; another set whose own item is in already
        adds nothing (every set is closed under reaching, so their union is) and is skipped
        (on the Debian closure, half the items the differences walked); only the items the
        other sets add are looked at, in C set operations, and only they are added to the
        sum. A set is dropped once its last user is built. The plain down counts are found
        another way (:meth:`_down_counts`).
        """
        if weights is None and not up:
            return self._down_counts()
        n = len(self.paths)
        parts_of = self.referrers if up else self.refs
        users = self.refs if up else self.referrers
        remaining = list(map(len, users))
        gone: set[int] = set()  # shared by every slot not holding a needed set; never changed
        sets = [gone] * n
        held = [0] * n  # len(sets[i]) while sets[i] is needed: the largest is found in C
        sums = [0] * n
        weigh = weights.__getitem__ if weights is not None else None
        largest = held.__getitem__
        with cyclic_gc_paused():  # sets of ints hold no cycles: nothing for it to find
            for i in range(n - 1, -1, -1) if up else range(n):
                parts = parts_of[i]
                if not parts:
                    current: set[int] = set()
                    total = 0
                else:
                    biggest = max(parts, key=largest)
                    total = sums[biggest]
                    taken = sets[biggest]
                    if remaining[i]:
                        current = taken if remaining[biggest] == 1 else set(taken)
                        total += _gather(
                            parts, current, current, sets=sets, remaining=remaining, gone=gone,
                            weigh=weigh,
                        )  # fmt: skip
                    else:
                        # Nothing needs this item's set (half the items of a closure are its
                        # roots): count what the other parts add to the largest, uncopied.
                        current = gone
                        total += _gather(
                            parts, taken, set(), sets=sets, remaining=remaining, gone=gone,
                            weigh=weigh,
                        )  # fmt: skip
                sums[i] = total + (weigh(i) if weigh else 1)
                if remaining[i]:
                    current.add(i)
                    sets[i] = current
                    held[i] = len(current)
        return sums

    def _down_counts(self, core_size: int = CORE_SIZE) -> list[int]:
        """How many items every item reaches, itself included: :meth:`closure_sums` with
        neither ``weights`` nor ``up``.

        Each down-set is kept in two parts: its *core* items, as a bitset over the
        ``core_size`` items most likely to lie in many down-sets (by the number of paths
        from the roots to them, a cheap stand-in for the size of their up-sets), and the
        rest as a set. An item's parts are its references' parts joined in C (an OR of the
        bitsets, a union of the sets), with no Python step per reference; its count is the
        bitset's popcount plus the set's size. On the 63k Debian closure the core takes
        most of the 4 million pairs: the sets the unions copy hold 0.3 million elements
        between them. The result does not depend on which items make the core."""
        n = len(self.paths)
        referrers = self.referrers
        paths_to = [0] * n
        count = paths_to.__getitem__
        for i in range(n - 1, -1, -1):
            above = referrers[i]
            paths_to[i] = sum(map(count, above)) if above else 1
        bit = [0] * n
        for b, i in enumerate(sorted(range(n), key=count, reverse=True)[:core_size]):
            bit[i] = 1 << b
        cores = [0] * n
        empty: frozenset[int] = frozenset()
        rests: list[AbstractSet[int]] = [empty] * n
        core_of, rest_of = cores.__getitem__, rests.__getitem__
        counts = [0] * n
        with cyclic_gc_paused():  # sets of ints hold no cycles: nothing for it to find
            for i, parts in enumerate(self.refs):
                own = bit[i]
                core = reduce(or_, map(core_of, parts), own)
                rest = set().union(*map(rest_of, parts))
                if not own:
                    rest.add(i)
                counts[i] = core.bit_count() + len(rest)
                if referrers[i]:  # else nothing needs them (half the items are roots)
                    cores[i] = core
                    rests[i] = rest
        return counts


def _gather(
    parts: Iterable[int],
    base: set[int],
    into: set[int],
    *,
    sets: list[set[int]],
    remaining: list[int],
    gone: set[int],
    weigh: Callable[[int], int] | None,
) -> int:
    """Add to ``into`` what the sets of ``parts`` hold beyond ``base`` (one of them, unchanged
    unless it is ``into`` itself) and ``into``; the weight added. Each part's set is dropped
    once its last user is done."""
    added = 0
    for r in parts:
        remaining[r] -= 1
        # Every set here is closed (an item's holds all it reaches), so is their union: one
        # that holds r holds all of r's set already.
        if r not in base and r not in into:
            new = sets[r] - base
            if into is not base:
                new -= into
            if new:
                into |= new
                added += sum(map(weigh, new)) if weigh else len(new)
        if not remaining[r]:
            sets[r] = gone
    return added


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: building many sets or tuples of ints otherwise
    starts collections that walk every object alive (the closure's too) and find nothing.
    Also a decorator (``@cyclic_gc_paused()``), as every ``contextmanager`` is: the planner
    runs so, its strategies building hundreds of thousands of tuples, lists and sets of ints
    (63k Debian items: 0.25 to 0.4 CPU s of each plan's 1 to 2.4 s, finding nothing).

    At the end every object still young (what was made inside among them) is moved to the
    oldest generation as it is (``gc.freeze``, then ``gc.unfreeze``, both a splice of the
    generations' lists, when nothing else holds objects frozen): else the first allocation
    after the pause starts a collection of the youngest generation, which walks every object
    made inside (on the 63k Debian closure, the Dag's 127k tuples among them: 50 to 90 ms at
    the end of each plan, finding nothing). The next full collection looks at them, as at
    every object that lives on; young garbage cycles wait for it too.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            if not gc.get_freeze_count():
                gc.freeze()
                gc.unfreeze()
            gc.enable()


def bitset(indices: Iterable[int], width: int) -> int:
    """The set ``indices`` (each below ``width``) as an integer with those bits set.

    Written as a string of binary digits that ``int`` parses, so the work per index is done in
    C (a map over the indices), not by a Python step each."""
    if not width:
        return 0
    digits = bytearray(b"0") * width
    deque(map(digits.__setitem__, indices, repeat(ord("1"))), maxlen=0)
    digits.reverse()  # bit i is the i-th digit from the right
    return int(digits, 2)


def singles_then_rest(order: Sequence[str], budget: int) -> list[tuple[str, ...]]:
    """The first ``budget - 1`` paths of ``order`` alone, bottom first, and the rest in one last
    group (so every path has a group of its own when ``budget`` is at least ``len(order)``)."""
    singles = max(budget - 1, 0)
    groups: list[tuple[str, ...]] = [(path,) for path in order[:singles]]
    if order[singles:]:
        groups.append(tuple(order[singles:]))
    return groups
