"""The two trivial strategies: everything in one layer, or one layer per item."""

from __future__ import annotations

from closurepack.errors import PlanError
from closurepack.graph import Closure

__all__ = ["per_item", "single"]


def single(closure: Closure, *, budget: int) -> list[tuple[str, ...]]:
    """One layer holding every item (dependencies first); any budget of at least 1 fits."""
    del budget
    return [tuple(closure.topological_order())]


def per_item(closure: Closure, *, budget: int) -> list[tuple[str, ...]]:
    """One layer per item, dependencies first (ties by path).

    Raises PlanError when the closure has more items than the budget: silently merging would make
    this strategy a worse copy of ``popularity``, so the user is told to pick another one.
    """
    if len(closure) > budget:
        raise PlanError(
            f"{closure.source}: strategy 'per-item' needs {len(closure)} layers but only {budget}"
            " are available; raise --max-layers or use another strategy (e.g. popularity)"
        )
    return [(path,) for path in closure.topological_order()]
