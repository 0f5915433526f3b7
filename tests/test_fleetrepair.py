"""One image's repair (closurepack.fleetrepair) and the stored-bytes count it and the
across-regions planner rest on, each against a plain reference: the incremental bookkeeping
must choose exactly the moves a full scan of every item and layer chooses."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from closurepack.fleetrepair import ImageRepair
from closurepack.graph import Closure, StoreItem
from closurepack.strategies._dag import Dag
from closurepack.strategies.economy import stored_bytes, union_of

STORE = "/nix/store"


def path(k: int) -> str:
    return f"{STORE}/{k:032d}-p{k}"


def restrictions_stored(pieces: dict[int, int]) -> int:
    """Each image's restriction (the set of pieces it holds) named once, its bytes summed."""
    images = 0
    for mask in pieces:
        images |= mask
    distinct = {
        frozenset(m for m in pieces if m >> k & 1)
        for k in range(images.bit_length())
        if images >> k & 1
    }
    return sum(sum(pieces[m] for m in key) for key in distinct)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.integers(1, 255), st.integers(0, 10**6), min_size=1, max_size=8))
def test_stored_bytes_counts_each_distinct_restriction_once(pieces: dict[int, int]) -> None:
    assert stored_bytes(pieces) == restrictions_stored(pieces)


def test_stored_bytes_by_hand() -> None:
    # Images 0 and 1 hold the 10 bytes, image 1 alone the 5: restrictions {10} and {10, 5}.
    assert stored_bytes({0b11: 10, 0b10: 5}) == 10 + 15
    # Both images hold both pieces: one restriction.
    assert stored_bytes({0b11: 10, 0b111: 5}) == 15 + 5


def reference_step(
    dag: Dag,
    downs: Sequence[int],
    own: list[set[int]],
    stored: dict[frozenset[int], int],
    room: int,
) -> bool:
    """The repair's move found by scanning every item of every layer against every layer."""
    sizes = dag.sizes

    def size(layer: set[int]) -> int:
        return sum(sizes[i] for i in layer)

    def cost(layer: set[int]) -> int:
        return size(layer) * union_of(downs, layer).bit_count()

    def new_bytes(layer: set[int]) -> int:
        return 0 if layer and frozenset(layer) in stored else size(layer)

    def freed(layer: set[int]) -> int:
        return size(layer) if layer and stored[frozenset(layer)] == 1 else 0

    layers = sum(1 for layer in own if layer)
    empty = next((g for g, layer in enumerate(own) if not layer), -1)
    best: tuple[float, int, int, int] | None = None
    for a, here in enumerate(own):
        for i in sorted(here):
            rest = here - {i}
            out = cost(rest) - cost(here)
            removed = (new_bytes(rest) if rest else 0) - freed(here)
            for b, there in enumerate(own):
                if b == a or (not there and (b != empty or not rest or layers >= room)):
                    continue
                gain = out + cost(there | {i}) - cost(there)
                if gain >= 0:
                    continue
                extra = removed - freed(there) + new_bytes(there | {i})
                score = (max(extra, 0) + 1) / -gain
                if best is None or score < best[0]:
                    best = (score, a, i, b)
    if best is None:
        return False
    _, a, i, b = best
    for old, new in ((own[a], own[a] - {i}), (own[b], own[b] | {i})):
        if old:
            stored[frozenset(old)] -= 1
            if not stored[frozenset(old)]:
                del stored[frozenset(old)]
        if new:
            stored[frozenset(new)] = stored.get(frozenset(new), 0) + 1
    own[a], own[b] = own[a] - {i}, own[b] | {i}
    return True


@st.composite
def repairs(
    draw: st.DrawFn,
) -> tuple[Closure, list[set[int]], list[frozenset[int]], int]:
    """A random DAG of up to 14 items, an image's layers over some of them, other images'
    layers (some the same as the image's, some one item off, so that moves find layers held
    already), and a budget."""
    count = draw(st.integers(2, 14))
    items = []
    for k in range(count):
        refs = draw(st.lists(st.integers(0, k - 1), max_size=2, unique=True)) if k else []
        size = draw(st.sampled_from([0, 10, 1000, 10**6, draw(st.integers(0, 10**6))]))
        items.append(StoreItem(path(k), size, tuple(path(r) for r in refs)))
    closure = Closure.from_items(items, source="repair")
    room = draw(st.integers(1, 6))
    blocks = [draw(st.integers(0, room - 1)) for _ in range(count)]
    own = [{i for i in range(count) if blocks[i] == b} for b in range(room)]
    own = [layer for layer in own if layer]
    others = []
    for layer in own:
        if draw(st.booleans()):
            others.append(frozenset(layer))
        extra = draw(st.integers(0, count - 1))
        others.append(frozenset(layer ^ {extra}) or frozenset([extra]))
    return closure, own, [layer for layer in others if layer], room


@settings(max_examples=300, deadline=None)
@given(repairs(), st.integers(1, 12))
def test_each_step_makes_the_move_a_full_scan_makes(
    case: tuple[Closure, list[set[int]], list[frozenset[int]], int], steps: int
) -> None:
    closure, own, others, room = case
    dag = Dag.from_closure(closure)
    index = dag.index()
    order = {i: index[path(i)] for i in range(len(dag))}  # item k's index in the Dag
    own = [{order[i] for i in layer} for layer in own]
    others = [frozenset(order[i] for i in layer) for layer in others]
    downs = dag.down_bitsets()
    stored: dict[frozenset[int], int] = {}
    for layer in [*others, *(frozenset(layer) for layer in own)]:
        stored[layer] = stored.get(layer, 0) + 1
    expected_stored = dict(stored)
    expected = [set(layer) for layer in own] + [set() for _ in range(room - len(own))]
    repair = ImageRepair(dag, downs, own, stored, room)
    for _ in range(steps):
        moved = reference_step(dag, downs, expected, expected_stored, room)
        assert repair.step() == moved
        assert repair.own == expected
        assert stored == expected_stored
        if not moved:
            break
    cost = sum(
        sum(dag.sizes[i] for i in layer) * union_of(downs, layer).bit_count() for layer in expected
    )
    assert repair.cost() == cost
