"""Guix's ``guix pack -f docker --max-layers``: the largest items alone, the rest in one layer.

Origin: ``size-sorted-store-items`` in Guix's ``guix/docker.scm`` (reimplemented). Guix sorts the
store items by disk usage, largest first, gives the first ``max-layers - 2`` of them a layer each
(or all but one when the closure has fewer items than ``max-layers``), puts the remaining items in
one layer and adds the customisation layer on top.

With a budget of ``B`` store layers (``B = max-layers - 1``): the first ``min(B, n) - 1`` items of
the size order get a layer each, bottom first, and the rest share the last layer. Size is the NAR
size; Guix's sort is stable over its input, ours breaks ties by path (ascending).
"""

from __future__ import annotations

from closurepack.graph import Closure
from closurepack.strategies._dag import singles_then_rest

__all__ = ["size"]


def size(closure: Closure, *, budget: int) -> list[tuple[str, ...]]:
    """Largest items first, one layer each, the rest together in the last layer."""
    keys = sorted([(-item.nar_size, path) for path, item in closure.items.items()])
    return singles_then_rest([path for _, path in keys], budget)
