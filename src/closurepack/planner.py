"""Turn closures into a layer plan with a strategy, sharing layers between images and old plans.

How :func:`plan_closures` decides, step by step:

1. ``max_layers`` is checked (1..127). One layer of every image is kept for its customisation
   layer (symlinks, /etc, extra files), so the store items get ``budget = max(1, max_layers - 1)``
   layers. With ``max_layers = 1`` the budget is still 1, which leaves no room for a
   customisation layer: a build then leaves it out when it would hold only ``/tmp``, and refuses
   with an OptionError when more was asked for.
2. Several closures are planned together, so that their images share identical layers. Without
   ``previous`` layers to reuse, by :func:`closurepack.fleet.plan_jointly`: each closure is
   planned alone (these steps, one image), then the fleet's layers are laid on its regions
   (items held by the same images), refining and merging those plans so that every image is
   within budget, no image ships more per update than alone, and the fewest bytes are stored
   twice (see that module). Steps 3 to 6 below are then for one image. With ``previous``
   layers to reuse, the closures are planned as their union (steps 3 to 6).
3. Layers of ``previous`` plans whose paths all lie in the union are reused unchanged (origin
   ``"previous"``): the largest first (ties: the earlier plan, image and layer), skipping any that
   overlaps one already taken, at most ``budget`` of them, and at most ``budget - 1`` while items
   are left over, so the strategy always gets at least one layer. They stay at the bottom, in the
   order they had in their plan.
4. The strategy plans the remaining items (the union restricted to them) with the remaining
   budget; its result is checked (every item once, no empty layer, within budget). Its layers
   smaller than ``min_layer_size`` are folded into others by the update-cost model
   (:mod:`closurepack.strategies.minsize`). While every image would be left with unused
   layers (merging freed some, or, with several images, each holds only some of the union's
   layers), the strategy is asked again with a larger budget (the spare layers times the
   number of distinct image sets, else the spare layers alone) and the result merged again,
   kept if every image still fits (at most :data:`REFILL_ROUNDS` times; twice for one
   image). Without ``min_layer_size`` the minimum is :func:`min_size_for` the union's bytes.
5. Each image gets the union's layers restricted to its own items, in the same order, empty ones
   dropped: a layer wholly inside an image's closure is byte-for-byte the same layer in every
   image that contains it. Restriction never adds layers, so every image stays within budget.
6. No image is worse off for being planned with others: when several closures are planned
   as their union, each image's layers are compared with the plan the same call would make for
   its closure alone, by the bytes a random one-item update ships on average
   (:func:`~closurepack.strategies.economy.expected_shipped`, exact for that update). An image
   whose joint layers would ship more is planned alone with the joint layers it holds whole
   reused (as from ``--previous``), which keeps the layers it shares; if even that ships more,
   it gets its plan alone. So no image has a worse update overhead than alone.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from closurepack.errors import PlanError
from closurepack.graph import Closure
from closurepack.plan import ImagePlan, LayerPlan, PlannedLayer, check_max_layers
from closurepack.strategies import DEFAULT_STRATEGY, Strategy, check_groups, get_strategy
from closurepack.strategies._dag import cyclic_gc_paused
from closurepack.strategies.economy import expected_shipped
from closurepack.strategies.minsize import group_sizes, merge_small_layers

__all__ = [
    "DEFAULT_MIN_LAYER_SIZE",
    "REFILL_ROUNDS",
    "min_size_for",
    "plan_closures",
    "store_budget",
]

PREVIOUS = "previous"
#: ``--min-layer-size`` when none is given, in bytes (chosen by ``bench/economy_bench.py``),
#: lowered for small images to a quarter of an even share of the budget (:func:`min_size_for`).
DEFAULT_MIN_LAYER_SIZE = 256 * 1024
#: How many times the strategy is asked again, for the layers left unused (module docstring).
REFILL_ROUNDS = 4


def store_budget(max_layers: int) -> int:
    """Layers left for store items when one is kept for customisation (at least 1)."""
    return max(1, check_max_layers(max_layers) - 1)


@cyclic_gc_paused()
def plan_closures(
    closures: Sequence[Closure],
    *,
    strategy: str = DEFAULT_STRATEGY,
    max_layers: int = 100,
    previous: Sequence[LayerPlan] = (),
    names: Sequence[str | None] | None = None,
    min_layer_size: int | None = None,
) -> LayerPlan:
    """Plan one image per closure, in order (see the module docstring for every rule)."""
    budget = store_budget(max_layers)
    if min_layer_size is not None and (
        isinstance(min_layer_size, bool) or not isinstance(min_layer_size, int)
    ):
        raise PlanError(f"minimum layer size {min_layer_size!r}: expected a number of bytes")
    if min_layer_size is not None and min_layer_size < 0:
        raise PlanError(f"minimum layer size {min_layer_size}: negative")
    if not closures:
        raise PlanError("no closure to plan")
    if names is not None and len(names) != len(closures):
        raise PlanError(f"{len(names)} image names given for {len(closures)} closures")
    chosen = get_strategy(strategy)
    union = closures[0] if len(closures) == 1 else Closure.union(closures)
    sizes = union.nar_sizes()

    reused = _pick_previous(previous, sizes, budget)
    if len(closures) > 1 and not reused:
        joint = _plan_fleet(
            closures,
            union,
            strategy=strategy,
            max_layers=max_layers,
            previous=previous,
            min_layer_size=min_layer_size,
        )
        return LayerPlan(
            tuple(
                ImagePlan(
                    layers, names[index] if names is not None else None, closures[index].roots
                )
                for index, layers in enumerate(joint)
            ),
            union.store_dir,
            strategy,
            max_layers,
        )
    covered = {p for layer in reused for p in layer.paths}
    layers = list(reused)
    remaining: Collection[str] = (
        [p for p in union.items if p not in covered] if covered else union.items.keys()
    )
    if remaining:
        rest = union if not covered else union.restrict(remaining)
        room = budget - len(reused)
        masks = None
        if len(closures) > 1:
            from closurepack.fleetregions import image_masks  # noqa: PLC0415 - several closures only

            masks = image_masks(closures)
        minimum = min_size_for(union.total_size, budget, items=len(union))
        if min_layer_size is not None:
            minimum = min_layer_size
        groups = _plan_rest(rest, chosen, room=room, name=strategy, min_size=minimum, images=masks)
        weights = group_sizes(rest, groups, rest.nar_sizes())  # the largest's without a sum
        layers.extend(map(PlannedLayer, map(tuple, map(sorted, groups)), weights))

    if len(closures) == 1:  # every layer is the image's own
        return LayerPlan(
            (ImagePlan(tuple(layers), names[0] if names is not None else None, union.roots),),
            union.store_dir,
            strategy,
            max_layers,
        )
    images = []
    for index, closure in enumerate(closures):
        own = []
        whole = []
        for layer in layers:
            kept = [p for p in layer.paths if p in closure.items]
            if len(kept) == len(layer.paths):
                own.append(layer)
                whole.append(layer)
            elif kept:
                own.append(_layer(kept, sizes))
        if len(closures) > 1:
            own = _no_worse_than_alone(
                closure,
                own,
                whole,
                strategy=strategy,
                max_layers=max_layers,
                previous=previous,
                min_layer_size=min_layer_size,
            )
        name = names[index] if names is not None else None
        images.append(ImagePlan(tuple(own), name, tuple(closure.roots)))
    return LayerPlan(tuple(images), union.store_dir, strategy, max_layers)


def _plan_fleet(
    closures: Sequence[Closure],
    union: Closure,
    *,
    strategy: str,
    max_layers: int,
    previous: Sequence[LayerPlan],
    min_layer_size: int | None,
) -> list[tuple[PlannedLayer, ...]]:
    """Each image's layers for several closures planned together (step 2 of the module
    docstring): their plans alone, laid on the fleet's regions by
    :func:`~closurepack.fleet.plan_jointly`; a layer keeps the origin it had alone."""
    sizes = {path: item.nar_size for path, item in union.items.items()}
    alone = [
        plan_closures(
            [closure],
            strategy=strategy,
            max_layers=max_layers,
            previous=previous,
            min_layer_size=min_layer_size,
        ).images[0]
        for closure in closures
    ]
    origins = {layer.paths: layer.origin for image in alone for layer in image.layers}
    minimum = min_size_for(sum(sizes.values()), store_budget(max_layers), items=len(union))
    from closurepack.fleet import plan_jointly  # noqa: PLC0415 - several closures only

    joint = plan_jointly(
        closures,
        union,
        [[layer.paths for layer in image.layers] for image in alone],
        room=store_budget(max_layers),
        min_size=minimum if min_layer_size is None else min_layer_size,
    )
    return [
        tuple(_layer(paths, sizes, origins.get(paths, "")) for paths in layers) for layers in joint
    ]


def _no_worse_than_alone(
    closure: Closure,
    joint: list[PlannedLayer],
    whole: list[PlannedLayer],
    *,
    strategy: str,
    max_layers: int,
    previous: Sequence[LayerPlan],
    min_layer_size: int | None,
) -> list[PlannedLayer]:
    """An image's layers (step 6 of the module docstring): ``joint``, its layers in the joint
    plan, unless that ships more bytes for a random one-item update than its plan alone; then
    its plan alone with the joint layers it holds ``whole`` (shared ones) reused, if that is no
    worse than alone; else its plan alone."""

    def alone(shared: Sequence[PlannedLayer]) -> list[PlannedLayer]:
        extra = [LayerPlan((ImagePlan(tuple(shared)),), closure.store_dir)] if shared else []
        plan = plan_closures(
            [closure],
            strategy=strategy,
            max_layers=max_layers,
            previous=[*previous, *extra],
            min_layer_size=min_layer_size,
        )
        by_paths = {layer.paths: layer for layer in shared}  # keep their origin
        return [by_paths.get(layer.paths, layer) for layer in plan.images[0].layers]

    def cost(layers: Sequence[PlannedLayer]) -> float:
        return expected_shipped(closure, [layer.paths for layer in layers])

    own = alone(())
    floor = cost(own)
    if cost(joint) <= floor:
        return joint
    if whole:
        sharing = alone(whole)
        if cost(sharing) <= floor:
            return sharing
    return own


def min_size_for(total: int, budget: int, *, items: int | None = None) -> int:
    """The default minimum layer size for ``total`` bytes of ``items`` store items in
    ``budget`` store layers: :data:`DEFAULT_MIN_LAYER_SIZE`, or a quarter of ``total / budget``
    when that is less (an image of a few MiB keeps its layers); none at all when the budget
    holds every item (each item a layer of its own is then the floor of every update, and an
    explicit ``per-item`` stays one layer per item)."""
    if items is not None and items <= budget:
        return 0
    return min(DEFAULT_MIN_LAYER_SIZE, total // (4 * max(budget, 1)))


def _plan_rest(
    rest: Closure,
    chosen: Strategy,
    *,
    room: int,
    name: str,
    min_size: int,
    images: Mapping[str, int] | None,
) -> list[tuple[str, ...]]:
    """The strategy's layers for ``rest``, small ones merged, every image within ``room``
    (step 4 of the module docstring)."""
    groups = check_groups(rest, chosen(rest, budget=room), budget=room, name=name)
    merged = merge_small_layers(rest, groups, min_size=min_size, images=images)
    asked = room
    spread = len(set(images.values())) if images else 1
    for _ in range(REFILL_ROUNDS if images else min(REFILL_ROUNDS, 2)):
        spare = room - _most_layers(merged, images)
        if spare <= 0 or len(groups) < asked or asked >= len(rest):
            break
        # Layers are left that the strategy could use: merging freed them, or each image
        # holds only some of the union's layers. Ask for more (for several images, as if each
        # set of them had its own spare layers; then for just the spare ones), merge again.
        for more in dict.fromkeys((spare * spread, spare)):
            trial = min(asked + more, len(rest))
            attempt = check_groups(rest, chosen(rest, budget=trial), budget=trial, name=name)
            again = merge_small_layers(rest, attempt, min_size=min_size, images=images)
            if _most_layers(again, images) <= room:
                groups, merged, asked = attempt, again, trial
                break
        else:
            break
    return merged


def _most_layers(groups: Sequence[tuple[str, ...]], images: Mapping[str, int] | None) -> int:
    """The most layers any image gets of ``groups`` (each image holds the layers that hold one
    of its items; ``images`` maps paths to image bitmasks, ``None``: one image)."""
    if images is None:
        return len(groups)
    counts: dict[int, int] = {}
    for group in groups:
        held = 0
        for path in group:
            held |= images[path]
        while held:
            bit = held & -held
            held ^= bit
            counts[bit] = counts.get(bit, 0) + 1
    return max(counts.values(), default=0)


def _layer(paths: Iterable[str], sizes: Mapping[str, int], origin: str = "") -> PlannedLayer:
    ordered = tuple(sorted(paths))
    return PlannedLayer(ordered, sum(map(sizes.__getitem__, ordered)), origin)


def _pick_previous(
    previous: Sequence[LayerPlan], sizes: Mapping[str, int], budget: int
) -> list[PlannedLayer]:
    """The previous layers to reuse, in their original order (module docstring, step 3).

    ``sizes`` holds the NAR size of every item of the union, and only those.
    """
    candidates: dict[tuple[str, ...], int] = {}  # paths -> first position seen
    position = 0
    for plan in previous:
        for image in plan.images:
            for layer in image.layers:
                paths = tuple(sorted(layer.paths))
                if paths and paths not in candidates and all(p in sizes for p in paths):
                    candidates[paths] = position
                position += 1
    by_value = sorted(
        candidates, key=lambda paths: (-sum(sizes[p] for p in paths), candidates[paths])
    )
    taken: list[tuple[str, ...]] = []
    used: set[str] = set()
    for paths in by_value:
        if len(taken) == budget:
            break
        if used.isdisjoint(paths):
            taken.append(paths)
            used.update(paths)
    if len(taken) == budget and len(used) < len(sizes):
        taken.pop()  # leave the strategy a layer for the items no reused layer holds
    taken.sort(key=lambda paths: candidates[paths])
    return [_layer(paths, sizes, PREVIOUS) for paths in taken]
