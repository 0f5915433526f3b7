"""``stable-canonical``: ``stable`` after the canonical merges, for fleets (issue 8).

The same plan as :func:`~closurepack.strategies.stable.stable`, its clusters first merged by
:func:`~closurepack.strategies.canonical.canonical_merges` below
:data:`~closurepack.strategies.canonical.CANONICAL_BELOW`: merges every image makes alike, so
that images planned together (several ``--closure``) store the items there once. Off by
default (``stable`` itself keeps its plans) until it is better on every figure; what it gains
and costs is measured in DEVELOPERS.md, "Layer economy".
"""

from __future__ import annotations

from closurepack.graph import Closure
from closurepack.strategies.canonical import CANONICAL_BELOW
from closurepack.strategies.stable import stable

__all__ = ["stable_canonical"]


def stable_canonical(closure: Closure, *, budget: int) -> list[tuple[str, ...]]:
    """``stable``'s layers with the canonical merges below :data:`CANONICAL_BELOW` first."""
    return stable(closure, budget=budget, canonical=CANONICAL_BELOW)
