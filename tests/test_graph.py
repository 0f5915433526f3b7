"""The closure graph: validation, topological order, and the derived closures."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from closurepack.errors import ClosureError
from closurepack.graph import Closure, StoreItem


def _p(name: str) -> str:
    return f"/nix/store/{name[0] * 32}-{name}"


A, B, C, D = _p("a-app"), _p("b-lib"), _p("c-libc"), _p("d-data")


def _closure(*items: StoreItem) -> Closure:
    return Closure.from_items(items, source="test.json")


def _diamond() -> Closure:
    return _closure(
        StoreItem(A, 10, (B, D, A)),
        StoreItem(B, 20, (C,)),
        StoreItem(C, 30, ()),
        StoreItem(D, 5, (C,)),
    )


def test_self_references_are_dropped_and_references_sorted() -> None:
    closure = _diamond()
    assert closure.items[A].references == (B, D)
    assert closure.roots == (A,)
    assert closure.total_size == 65
    assert closure.referrers(C) == (B, D)


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([StoreItem(A, 1, (B,))], "refers to " + B),
        ([StoreItem(A, 1, (D, B))], f"refers to {B}, which"),  # the first missing, by path
        ([StoreItem(5, 1)], "store path 5 is not a string"),  # type: ignore[arg-type]
        ([StoreItem(A, 1), StoreItem(A, 2)], "duplicate item " + A),
        ([StoreItem(A, -1)], "invalid size -1"),
        ([StoreItem("/nix/store/../etc", 1)], "'..'"),
        ([StoreItem("nix/store/x-y", 1)], "not absolute"),
        ([StoreItem("/nix/store/x\0y", 1)], "NUL"),
        ([StoreItem("/nix/store/", 1)], "not a direct child of a store"),
        ([StoreItem(A, 1), StoreItem("/gnu/store/x-y", 1)], "not a direct child of the store"),
        ([StoreItem(A, 1, (B,)), StoreItem(B, 1, (C,)), StoreItem(C, 1, (A,))], "cycle"),
        ([], "empty"),
    ],
)
def test_invalid_closures_name_the_file_and_item(items: list[StoreItem], message: str) -> None:
    with pytest.raises(ClosureError, match=r"^test\.json: ") as info:
        _closure(*items)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_cycle_is_named_item_by_item() -> None:
    with pytest.raises(ClosureError) as info:
        _closure(StoreItem(A, 1, (B,)), StoreItem(B, 1, (C,)), StoreItem(C, 1, (B,)))
    assert f"{B} -> {C} -> {B}" in str(info.value)


def test_without_drops_items_and_the_references_to_them() -> None:
    rest = _diamond().without({C, D})
    assert sorted(rest.items) == [A, B]
    assert rest.items[A].references == (B,)
    assert rest.items[B].references == ()
    assert rest.roots == (A,)
    assert rest.topological_order() == [B, A]
    assert len(_diamond().without(set(_diamond().items))) == 0


def test_restrict_keeps_the_induced_graph_and_recomputes_the_roots() -> None:
    part = _diamond().restrict([A, C, D], source="part")
    assert sorted(part.items) == [A, C, D]
    assert part.items[A].references == (D,)
    assert part.items[D].references == (C,)
    assert part.roots == (A,)
    assert part.source == "part"
    assert _diamond().restrict([B, D]).roots == (B, D)


def test_union_and_subclosure() -> None:
    closure = _diamond()
    sub = closure.subclosure([B])
    assert sorted(sub.items) == [B, C]
    with pytest.raises(ClosureError, match=f"^test.json: root {A}x is not in the closure$"):
        closure.subclosure([B, A + "x"])
    other = _closure(StoreItem(D, 5, (C,)), StoreItem(C, 30, ()))
    union = Closure.union([sub, other])
    assert sorted(union.items) == [B, C, D]
    assert union.roots == (B, D)
    clash = _closure(StoreItem(C, 30, (D,)), StoreItem(D, 5, ()))
    with pytest.raises(ClosureError, match="other references"):
        Closure.union([sub, clash])


@st.composite
def _dags(draw: st.DrawFn) -> list[StoreItem]:
    count = draw(st.integers(1, 40))
    paths = [f"/nix/store/{i:032d}-item{i}" for i in range(count)]
    items = []
    for i, path in enumerate(paths):
        refs = draw(st.lists(st.sampled_from(paths[:i]), max_size=4)) if i else []
        items.append(StoreItem(path, draw(st.integers(0, 1000)), tuple(refs)))
    return items


@settings(max_examples=60, deadline=None)
@given(_dags(), st.randoms(use_true_random=False))
def test_topological_order_puts_references_first_whatever_the_input_order(
    items: list[StoreItem], rng: random.Random
) -> None:
    order = _closure(*items).topological_order()
    position = {path: i for i, path in enumerate(order)}
    assert sorted(order) == sorted(item.path for item in items)
    for item in items:
        assert all(position[ref] < position[item.path] for ref in item.references)
    shuffled = list(items)
    rng.shuffle(shuffled)
    assert _closure(*shuffled).topological_order() == order


@settings(max_examples=60, deadline=None)
@given(items=_dags(), data=st.data())
def test_paths_without_is_the_sorted_rest(items: list[StoreItem], data: st.DataObject) -> None:
    closure = Closure.from_items(reversed(items), source="t")
    excluded = data.draw(st.sets(st.sampled_from(sorted(closure.items))))
    expected = tuple(sorted(set(closure.items) - excluded))
    assert closure.paths_without(excluded) == expected
    assert closure.paths_without(list(excluded)) == expected  # not a set: made one
    assert closure.paths_without(()) == tuple(sorted(closure.items))
    backwards = dict(reversed(list(closure.items.items())))  # a closure made directly
    assert Closure(closure.store_dir, backwards, closure.roots).paths_without(excluded) == expected
    assert closure.nar_sizes() == {p: item.nar_size for p, item in closure.items.items()}
    assert closure.total_size == sum(item.nar_size for item in closure.items.values())
