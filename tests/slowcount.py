"""The bytes an update ships, counted the slow way, as the planner's tests check them against
its fast bitset arithmetic: independent of ``closurepack.strategies.economy``."""

from __future__ import annotations

from collections.abc import Sequence

from closurepack.graph import Closure


def shipped_per_change(closure: Closure, layers: Sequence[Sequence[str]]) -> int:
    """Bytes shipped summed over every one-item change of ``closure``: the change renames the
    item and everything above it (Nix-style), and a layer holding a renamed item ships."""
    total = 0
    for changed in closure.items:
        renamed = {changed}
        todo = [changed]
        while todo:
            for referrer in closure.referrers(todo.pop()):
                if referrer not in renamed:
                    renamed.add(referrer)
                    todo.append(referrer)
        total += sum(
            sum(closure.items[p].nar_size for p in layer)
            for layer in layers
            if renamed.intersection(layer)
        )
    return total


def one_change_average(closure: Closure, layers: Sequence[Sequence[str]]) -> float:
    """:func:`shipped_per_change` averaged over the items."""
    return shipped_per_change(closure, layers) / len(closure)
