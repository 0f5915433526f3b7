"""nixpkgs' auto-layer: the largest items anchor layers, shared dependencies get layers by user set.

Origin: ``pkgs/build-support/docker/auto-layer.py`` in nixpkgs (PR 355189), used by
``dockerTools`` when ``layeringPipeline`` is not given. This is an independent reimplementation
with the same result, made fast with integer bitsets.

Algorithm. Every item carries a *label*: the set of *primary* items whose layer it belongs to.
At first there are no primaries and every label is empty (one layer). Then, repeatedly, the
largest remaining item ``P`` (by NAR size; equal sizes: the greatest path first, which is the
order nixpkgs pops them from its size-sorted input) becomes a primary:

* ``P``'s label becomes ``{P}``;
* for every strict dependency ``d`` of ``P``: primaries that (transitively) use ``P`` are removed
  from ``d``'s label, since ``P`` now stands for them; then, unless ``d``'s label still holds a
  primary that is itself a dependency of ``P``, ``P`` is added to it.

If the number of distinct labels would exceed the budget, that step is undone and the algorithm
stops. Items with the same label form one layer.

Order. Layers are sorted by the total NAR size of their closure (the layer's items and
everything they reach), which puts every layer after the layers it depends on; equal sizes (which
nixpkgs leaves to set iteration order) by their smallest path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection

from closurepack.graph import Closure
from closurepack.strategies._dag import Dag

__all__ = ["auto"]


def auto(closure: Closure, *, budget: int) -> list[tuple[str, ...]]:
    """Group items by the minimal set of large "primary" items that use them (module docstring)."""
    dag = Dag.from_closure(closure)
    n = len(dag)
    labels = [0] * n  # bit k set: the k-th primary
    counts: Counter[int] = Counter({0: n})
    primaries: list[int] = []  # item index of each primary, by ordinal
    by_size = sorted(range(n), key=lambda i: (dag.sizes[i], dag.paths[i]), reverse=True)

    for new in by_size:
        deps = dag.reach(dag.refs[new])
        users = dag.reach(dag.referrers[new], up=True)
        bit = 1 << len(primaries)
        users_mask = 0
        deps_mask = 0
        for k, item in enumerate(primaries):
            if item in users:
                users_mask |= 1 << k
            elif item in deps:
                deps_mask |= 1 << k
        changes: list[tuple[int, int]] = [(new, bit)]
        for d in deps:
            label = labels[d] & ~users_mask
            if not label & deps_mask:
                label |= bit
            if label != labels[d]:
                changes.append((d, label))
        trial = counts.copy()
        for item, label in changes:
            old = labels[item]
            trial[old] -= 1
            if not trial[old]:
                del trial[old]
            trial[label] += 1
        if len(trial) > budget:
            break
        counts = trial
        for item, label in changes:
            labels[item] = label
        primaries.append(new)

    groups: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    layers = list(groups.values())
    closure_size = _closure_sizes_of_groups(dag, layers)
    order = sorted(
        range(len(layers)),
        key=lambda g: (closure_size[g], min(dag.paths[i] for i in layers[g])),
    )
    return [tuple(sorted(dag.paths[i] for i in layers[g])) for g in order]


def _closure_sizes_of_groups(dag: Dag, groups: list[list[int]]) -> list[int]:
    """Total NAR size of the closure of each group (the group's items and all they reach)."""
    sizes = []
    for group in groups:
        reached: Collection[int] = dag.reach(group)
        sizes.append(sum(dag.sizes[i] for i in reached))
    return sizes
