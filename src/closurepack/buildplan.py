"""The plan of a build: read from ``--plan`` or made from the closures (the plan cache's
plan for an unchanged closure, ``--previous`` images' layers kept), with the layer limit the
image is held to and what ``--from`` images already hold."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from closurepack.buildoptions import BuildInput
from closurepack.errors import OptionError
from closurepack.graph import Closure, check_readable_store
from closurepack.image import BaseImage, layer_paths_from_config
from closurepack.layer import BuiltLayer
from closurepack.plan import MAX_LAYERS_LIMIT, LayerPlan
from closurepack.plancache import kept_plan, plan_key
from closurepack.registry import RegistryOptions
from closurepack.workflow import (
    DEFAULT_MAX_LAYERS,
    image_names,
    load_closures,
    make_plan,
    read_plan_file,
    source_name,
)

if TYPE_CHECKING:
    from closurepack.multiarch import PlatformClosure
    from closurepack.platforms import Platform

__all__ = [
    "PlannedBuild",
    "base_paths",
    "plan_build",
]


@dataclass(frozen=True)
class PlannedBuild:
    """A build's plan and what the steps after planning need of how it was found."""

    plan: LayerPlan
    #: how errors name the plan: the plan file, or "the plan" made here
    source: str
    #: the layer limit of each image (its --from layers included)
    limit: int
    #: the closures as given, before the --from images' items go (none for --plan)
    whole: list[Closure] = field(default_factory=list)
    #: per closure: the store items its --from image holds
    provided: list[set[str]] = field(default_factory=list)
    #: layers of other tools' --previous images, reused as they are, by their items
    reuse: dict[tuple[str, ...], Callable[[Path], BuiltLayer]] = field(default_factory=dict)
    #: the plan's key in the plan cache, and the plan it kept (None: planned now)
    key: str | None = None
    kept: LayerPlan | None = None


def plan_build(
    what: BuildInput,
    *,
    targets: Sequence[PlatformClosure],
    bases: Sequence[BaseImage | None],
    platform: Platform | None,
    from_image: str | None,
    registry: RegistryOptions,
    plan_cache: Path | None,
) -> PlannedBuild:
    """The plan of ``what``: one closure (or one per ``targets`` platform) over ``bases``
    (each platform's ``--from`` image, or None), ``--previous`` images read for
    ``platform``; ``plan_cache`` is the cache directory whose kept plans are asked (None:
    no cache)."""
    store_paths, closure_files, store_root = what.store_paths, what.closure_files, what.store_root
    plan_file, image_selector = what.plan_file, what.image_selector
    strategy, max_layers, min_layer_size = what.strategy, what.max_layers, what.min_layer_size
    previous, sbom = what.previous, what.sbom
    base_count = max(len(base.layers) if base else 0 for base in bases)
    reuse: dict[tuple[str, ...], Callable[[Path], BuiltLayer]] = {}
    whole: list[Closure] = []
    key: str | None = None
    kept: LayerPlan | None = None
    provided: list[set[str]] = []

    if plan_file is not None:
        if store_paths or closure_files:
            raise OptionError("give either --plan or a closure, not both")
        if sbom.enabled:
            raise OptionError("--sbom is made from a closure's graph: give the closure, not --plan")
        if strategy is not None or previous or min_layer_size is not None:
            raise OptionError(
                "--strategy, --previous and --min-layer-size make a plan: not with --plan"
            )
        plan = read_plan_file(plan_file)
        source = source_name(plan_file)
        check_readable_store(plan.store_dir, store_root=store_root, where=source)
        if max_layers is not None:
            limit = max_layers
        elif 1 <= plan.max_layers <= MAX_LAYERS_LIMIT:
            limit = plan.max_layers
        else:
            limit = MAX_LAYERS_LIMIT
    else:
        limit = DEFAULT_MAX_LAYERS if max_layers is None else max_layers
        budget = limit - base_count
        if budget < 1:
            raise OptionError(
                f"--max-layers {limit} leaves no room above the {base_count} layers of {from_image}"
            )
        if targets:
            from closurepack.multiarch import load_platform_closures  # noqa: PLC0415 - --platform

            closures = load_platform_closures(targets, store_root=store_root)
        else:
            closures = load_closures(
                store_paths=store_paths, closure_files=closure_files, store_root=store_root
            )
        for closure in closures:
            check_readable_store(closure.store_dir, store_root=store_root, where=closure.source)
        whole = list(closures)
        if len(closures) != 1 and image_selector is None and not targets:
            raise OptionError("build makes one image: give one closure, or --image to choose")
        image_bases = list(bases) * (1 if targets else len(closures))
        # Store items the --from image already holds (as it records them) are not added
        # again on top of it.
        if any(image_bases):
            from closurepack.multiarch import without_bases  # noqa: PLC0415 - only with --from

            provided = [base_paths(base) if base else set() for base in image_bases]
            closures = without_bases(closures, provided)
        if targets:
            names = [str(target.platform) for target in targets]
        else:
            names = image_names(
                store_paths=store_paths, closure_files=closure_files, store_root=store_root
            )
        if previous:
            from closurepack.previous import read_previous  # noqa: PLC0415 - reads images
        found = [
            read_previous(
                p,
                registry=registry,
                store_dir=closures[0].store_dir,
                platform=platform,
                every_platform=bool(targets),
                keep_blobs=True,  # other tools' registry blobs: kept from the listing's download
            )
            for p in previous
        ]
        for layer in (layer for f in found for layer in f.foreign):
            reuse.setdefault(layer.paths, layer.materialize)  # other tools' blobs, as they are

        if plan_cache is not None and not (previous or (strategy or "").lstrip().startswith("@")):
            # an unchanged closure with the same options: the plan it had (plancache.py)
            key = plan_key(
                closures, strategy=strategy, budget=budget, min_layer_size=min_layer_size,
                names=names,
            )  # fmt: skip
            kept = kept_plan(plan_cache, key, closures)
        plan = kept or make_plan(
            closures,
            strategy=strategy,
            max_layers=budget,
            previous=[f.plan for f in found],
            names=names,
            registry=registry,
            min_layer_size=min_layer_size,
        )
        source = "the plan"
    return PlannedBuild(plan, source, limit, whole, provided, reuse, key, kept)


def base_paths(base: BaseImage) -> set[str]:
    """The store items a ``--from`` image holds, as it records them."""
    return {p for ps in layer_paths_from_config(base.config).values() for p in ps}
