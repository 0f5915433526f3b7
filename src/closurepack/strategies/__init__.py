"""Layering strategies: pure functions from a closure and a layer budget to groups of paths.

A strategy is called as ``strategy(closure, budget=n)`` and returns groups of store paths,
bottom layer first: every item of the closure in exactly one group, no empty group, at most
``budget`` groups. ``budget`` counts the layers available for store items only (the planner keeps
one more for the image's customisation layer).

======================  =========================================================================
``auto``                nixpkgs' auto-layer: largest items anchor layers
``popularity``          nixpkgs' ``referencesByPopularity``: most depended-upon items alone
``size``                Guix ``--max-layers``: largest items alone
``stable``              planned for change: least expected bytes shipped per update (default)
``stable-canonical``    ``stable`` after merges every image makes alike (fleets; issue 8)
``dominator``           Nixery: dominator-tree subtrees merged by popularity times size
``single``              everything in one layer
``per-item``            one layer per item (fails if the budget is too small)
======================  =========================================================================

A strategy *spec* (``--strategy``) is one of those names, a JSON layering pipeline (text starting
with ``[``, see :mod:`closurepack.strategies.pipeline`) or ``@FILE`` holding one.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Protocol

from closurepack._lazy import lazy_exports
from closurepack.errors import PlanError
from closurepack.graph import Closure

if TYPE_CHECKING:  # (at run time each is imported on first use: a build needs one of them)
    from closurepack.strategies.auto import auto
    from closurepack.strategies.dominator import dominator
    from closurepack.strategies.pipeline import load_pipeline, parse_pipeline
    from closurepack.strategies.popularity import popularity, popularity_order, popularity_scores
    from closurepack.strategies.simple import per_item, single
    from closurepack.strategies.size import size
    from closurepack.strategies.stable import stable
    from closurepack.strategies.stablecanonical import stable_canonical

__all__ = [
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "Strategy",
    "auto",
    "check_groups",
    "dominator",
    "get_strategy",
    "load_pipeline",
    "parse_pipeline",
    "per_item",
    "popularity",
    "popularity_order",
    "popularity_scores",
    "single",
    "size",
    "stable",
    "stable_canonical",
]


class Strategy(Protocol):
    """``(closure, *, budget) -> groups of paths``, bottom layer first."""

    def __call__(self, closure: Closure, *, budget: int) -> list[tuple[str, ...]]: ...


#: Each exported function by the submodule that defines it. They are imported on first use
#: (a build plans with one strategy; importing all of them cost its start-up ~10 ms, issue 11).
_EXPORTS = {
    "auto": "auto",
    "dominator": "dominator",
    "load_pipeline": "pipeline",
    "parse_pipeline": "pipeline",
    "per_item": "simple",
    "popularity": "popularity",
    "popularity_order": "popularity",
    "popularity_scores": "popularity",
    "single": "simple",
    "size": "size",
    "stable": "stable",
    "stable_canonical": "stablecanonical",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


class _Package(types.ModuleType):
    """This package, whose strategy names stay the functions: importing a submodule sets the
    package's attribute of its name (``strategies.stable``) to the module, which would hide
    the function of that name; that attribute becomes the function instead, as it was when
    the package imported every strategy itself (``from closurepack.strategies.stable import
    ...`` still finds the module, in ``sys.modules``)."""

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


#: Each strategy's function by the name ``--strategy`` gives it.
_FUNCTIONS = {
    "auto": "auto",
    "dominator": "dominator",
    "per-item": "per_item",
    "popularity": "popularity",
    "single": "single",
    "size": "size",
    "stable": "stable",
    "stable-canonical": "stable_canonical",
}


class _Strategies(Mapping[str, "Strategy"]):
    """The strategies by name, each imported when it is first looked up."""

    def __getitem__(self, name: str) -> Strategy:
        function: Strategy = __getattr__(_FUNCTIONS[name])
        return function

    def __iter__(self) -> Iterator[str]:
        return iter(_FUNCTIONS)

    def __len__(self) -> int:
        return len(_FUNCTIONS)


STRATEGIES: Mapping[str, Strategy] = _Strategies()

DEFAULT_STRATEGY = "stable"


def get_strategy(spec: str) -> Strategy:
    """The strategy for a name, a JSON pipeline (``[...]``) or ``@FILE``; PlanError if unknown."""
    if not isinstance(spec, str) or not spec.strip():
        raise PlanError(f"empty strategy; known: {', '.join(sorted(STRATEGIES))}")
    text = spec.strip()
    if text.startswith(("[", "@")):
        from closurepack.strategies.pipeline import load_pipeline  # noqa: PLC0415 - when given

        return load_pipeline(text)
    try:
        return STRATEGIES[text]
    except KeyError:
        raise PlanError(
            f"unknown strategy {text!r}; known: {', '.join(sorted(STRATEGIES))},"
            " a JSON pipeline or @FILE"
        ) from None


def check_groups(
    closure: Closure, groups: list[tuple[str, ...]], *, budget: int, name: str
) -> list[tuple[str, ...]]:
    """Check a strategy's result against the contract; PlanError naming the strategy if broken."""
    if len(groups) > budget:
        raise PlanError(f"strategy {name}: made {len(groups)} layers, more than {budget}")
    placed: set[str] = set()
    placed.update(*groups)  # in C; the walk below only runs to name what is wrong
    if (
        all(groups)
        and len(placed) == sum(map(len, groups)) == len(closure)
        and closure.items.keys() >= placed  # (a set's issubset would copy the keys first)
    ):
        return groups
    seen: set[str] = set()
    for number, group in enumerate(groups, 1):
        if not group:
            raise PlanError(f"strategy {name}: layer {number} is empty")
        for path in group:
            if path not in closure.items:
                raise PlanError(f"strategy {name}: {path} is not in the closure")
            if path in seen:
                raise PlanError(f"strategy {name}: {path} is in more than one layer")
            seen.add(path)
    if len(seen) != len(closure):
        missing = next(p for p in closure.items if p not in seen)
        raise PlanError(f"strategy {name}: {missing} is in no layer")
    return groups
