"""nixpkgs' ``referencesByPopularity`` ordering: the most depended-upon items get their own layers.

Origin: ``pkgs/build-support/references-by-popularity/closure-graph.py`` in nixpkgs (Graham
Christensen, 2018), used by ``dockerTools.buildLayeredImage`` / ``streamLayeredImage``. This is
an independent reimplementation that produces exactly the same order (checked against the real
script's output on real closures in ``tests/data/strategies/``).

Score. nixpkgs expands the graph into a tree from the roots (items nothing refers to) and
counts, for each item ``y``, every tree node that lies on a path to a copy of ``y``. That equals::

    score(y) = sum of P(z) over every item z that reaches y, y itself included

where ``P(z)`` is the number of distinct paths from the roots to ``z`` (``P(root) = 1``). ``P`` is a
dynamic programme over the topological order (exact Python integers). The score is not a path
count (a path count would be a second such programme): it sums ``P`` over the *distinct* items
above ``y``, which are the nodes of the trie of all root-to-``y`` paths, and two referrers of
``y`` share the items above both, so it cannot be had from the referrers' scores. It is summed
exactly by :meth:`Dag.closure_sums` over the items that reach each item, which is linear in the
size of the transitive closure, not in the closure's (no exact algorithm linear in the item
count is known for sums over reachable sets of a general DAG); on real closures most of that
work is C set operations (63k Debian packages: well under a second), where the original tree
expansion runs out of memory.

Roots are always the items no other item refers to, as in nixpkgs, even when the closure was
given explicit roots.

Order. Score descending; equal scores by :func:`nixpkgs_name_key` ascending (the path with the
``<store>/<hash>`` prefix moved to the end, i.e. by name, then by hash), exactly as nixpkgs'
``order_by_popularity``.

Layers. With a budget of ``B`` layers, the first ``B - 1`` items of the order get a layer each
and every other item shares the last one, most popular at the bottom. This is what
``streamLayeredImage`` does with ``maxLayers = B + 1`` (``[["popularity_contest"],
["limit_layers", B]]``): ``B - 1`` single layers, one shared layer, one customisation layer.
"""

from __future__ import annotations

from itertools import groupby

from closurepack.graph import Closure
from closurepack.strategies._dag import Dag, nixpkgs_name_key, singles_then_rest

__all__ = ["popularity", "popularity_order", "popularity_scores"]


def popularity_scores(closure: Closure) -> dict[str, int]:
    """nixpkgs' popularity score of every item (see the module docstring)."""
    dag = Dag.from_closure(closure)
    return dict(zip(dag.paths, _scores(dag), strict=True))


def _scores(dag: Dag) -> list[int]:
    """The score of every item, by index."""
    n = len(dag)
    paths_to = [0] * n
    count = paths_to.__getitem__
    for i in range(n - 1, -1, -1):
        referrers = dag.referrers[i]
        paths_to[i] = sum(map(count, referrers)) if referrers else 1
    return dag.closure_sums(paths_to, up=True)


def popularity_order(closure: Closure) -> list[str]:
    """Every path, most popular first, ties by name then hash (nixpkgs' exact order); computed
    once per closure (the planner may ask for several budgets)."""

    def order() -> list[str]:
        # By score, then each run of equal scores by name: only the items that tie (the
        # roots, which all score 1, and a few others) need their name key.
        dag = Dag.from_closure(closure)
        scores = _scores(dag)
        by_score = sorted(range(len(dag)), key=scores.__getitem__, reverse=True)
        path = dag.paths.__getitem__
        ordered: list[str] = []
        for _, equal in groupby(by_score, key=scores.__getitem__):
            run = list(map(path, equal))
            if len(run) > 1:
                run.sort(key=nixpkgs_name_key)
            ordered.extend(run)
        return ordered

    return list(closure.memoized("popularity order", order))


def popularity(closure: Closure, *, budget: int) -> list[tuple[str, ...]]:
    """The first ``budget - 1`` items of :func:`popularity_order` alone, the rest together."""
    return singles_then_rest(popularity_order(closure), budget)
