"""Random fleets for the joint planner's property tests (test_fleet, test_fleetshare,
test_planner): a few images over one random DAG of store items."""

from __future__ import annotations

from hypothesis import strategies as st

from closurepack.graph import Closure, StoreItem

STORE = "/nix/store"
#: The item sizes drawn from, besides one random size up to 10 MB.
SIZES = (0, 10, 1000, 5 * 10**5)


def path(k: int, names: int | None = None) -> str:
    """Item ``k``'s store path, named p<k>, or p<k % names> (names that repeat)."""
    return f"{STORE}/{k:032d}-p{k if names is None else k % names}"


@st.composite
def fleets(
    draw: st.DrawFn,
    *,
    least: int = 2,
    most: int = 26,
    images: int = 4,
    sizes: tuple[int, ...] = SIZES,
    names: int | None = None,
) -> list[Closure]:
    """2 to ``images`` images over one random DAG of ``least`` to ``most`` items (of ``sizes``
    or a random one, named as :func:`path` does), each the closure of a few of its items."""
    count = draw(st.integers(least, most))
    paths = [path(k, names) for k in range(count)]
    items = []
    for k, name in enumerate(paths):
        refs = draw(st.lists(st.sampled_from(paths[:k]), max_size=3, unique=True)) if k else []
        size = draw(st.sampled_from([*sizes, draw(st.integers(0, 10**7))]))
        items.append(StoreItem(name, size, tuple(refs)))
    whole = Closure.from_items(items, source="fleet")
    chosen = []
    for _ in range(draw(st.integers(2, images))):
        tops = draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3, unique=True))
        chosen.append(whole.restrict(whole.requisites(tops), source="image"))
    return chosen
