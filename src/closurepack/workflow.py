"""Planning jobs as the CLI runs them: closures (files, store paths, standard input) -> plan."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from closurepack.errors import (
    ClosureError,
    OptionError,
    PlanError,
)
from closurepack.graph import Closure
from closurepack.options import parse_size
from closurepack.plan import ImagePlan, LayerPlan, check_max_layers
from closurepack.planner import plan_closures
from closurepack.readall import read_all
from closurepack.registry import (
    RegistryOptions,
)
from closurepack.sources.files import load_closure_file, parse_closure
from closurepack.strategies import DEFAULT_STRATEGY

__all__ = [
    "DEFAULT_MAX_LAYERS",
    "STDIN",
    "image_names",
    "load_closures",
    "make_plan",
    "read_plan_file",
    "select_image",
    "source_name",
]

_log = logging.getLogger(__name__)

DEFAULT_MAX_LAYERS = 100
#: The file name that stands for standard input (``--closure -``, ``--plan -``); a file really
#: named ``-`` needs a longer path (``$PWD/-``: pathlib makes ``./-`` plain ``-``).

STDIN = Path("-")
#: Suffixes dropped from a closure file's name to name its image (``app.json.zst`` -> ``app``).

_NAME_SUFFIXES = (".zst", ".gz", ".json", ".txt", ".closure", ".graph")


def load_closures(
    *, store_paths: Sequence[str], closure_files: Sequence[Path], store_root: Path | None
) -> list[Closure]:
    """One closure per graph file (:data:`STDIN` is standard input), in order, then one for the
    store paths given, if any.

    The store paths are checked first: one in no store directory fails before anything is read.
    """
    if list(closure_files).count(STDIN) > 1:
        raise OptionError("--closure -: standard input can be read only once")
    items = []
    if store_paths:  # (the store's tools and scanner: not for graph files)
        from closurepack.sources.query import query_closure, store_item_path  # noqa: PLC0415

        items = [store_item_path(p, store_root=store_root) for p in store_paths]
    closures = [_load_closure(f, store_root=store_root) for f in closure_files]
    if items:
        closures.append(query_closure(items, store_root=store_root))
    if not closures:
        raise OptionError("give store paths or at least one --closure FILE")
    return closures


def _load_closure(path: Path, *, store_root: Path | None) -> Closure:
    if path != STDIN:
        return load_closure_file(path, store_root=store_root)
    try:
        data = _read_input(path)
    except OSError as exc:
        raise ClosureError(f"<stdin>: cannot read: {exc.strerror}") from exc
    return parse_closure(data, source=source_name(path), store_root=store_root)


def image_names(
    *,
    store_paths: Sequence[str],
    closure_files: Sequence[Path],
    store_root: Path | None = None,
) -> list[str]:
    """Names for the images :func:`load_closures` plans, in the same order: a closure file's
    name without its suffixes (``app.json.zst`` -> ``app``; ``stdin`` for :data:`STDIN`), and
    the package name of the store
    item the first store path names (``./result`` -> ``/nix/store/<hash>-hello-2.12`` ->
    ``hello-2.12``); a name taken already gets ``-2``, ``-3``, ..."""
    names = []
    for path in closure_files:
        name = "stdin" if path == STDIN else path.name
        while name.endswith(_NAME_SUFFIXES) and "." in name.strip("."):
            name = name.rsplit(".", 1)[0]
        names.append(name or path.name)
    if store_paths:
        from closurepack.sources.query import store_item_path  # noqa: PLC0415 - store paths only

        base = store_item_path(store_paths[0], store_root=store_root).rsplit("/", 1)[-1]
        names.append(base.split("-", 1)[1] if "-" in base else base)
    unique: list[str] = []
    for name in names:
        candidate, number = name, 1
        while candidate in unique:
            number += 1
            candidate = f"{name}-{number}"
        unique.append(candidate)
    return unique


def make_plan(
    closures: Sequence[Closure],
    *,
    strategy: str | None,
    max_layers: int | None,
    previous: Sequence[str | LayerPlan] = (),
    names: Sequence[str] | None = None,
    registry: RegistryOptions | None = None,
    min_layer_size: str | int | None = None,
) -> LayerPlan:
    """Plan ``closures`` together, counting the layers of ``previous`` plans/images (or plans
    read already) as existing.

    ``max_layers`` (default :data:`DEFAULT_MAX_LAYERS`) includes one layer kept for the
    customisation layer; ``names`` name the images (see :func:`image_names`);
    ``min_layer_size`` (``--min-layer-size``: bytes or ``256K``; ``none`` or 0 for no minimum;
    default :func:`closurepack.planner.min_size_for`) folds smaller layers into others.
    """
    limit = check_max_layers(DEFAULT_MAX_LAYERS if max_layers is None else max_layers)
    min_size = None
    if min_layer_size is not None:
        min_size = parse_size(min_layer_size, option="--min-layer-size") or 0
    if any(not isinstance(p, LayerPlan) for p in previous):
        from closurepack.previous import load_previous  # noqa: PLC0415 - reads images, registries
    return plan_closures(
        closures,
        strategy=strategy or DEFAULT_STRATEGY,
        max_layers=limit,
        previous=[
            p
            if isinstance(p, LayerPlan)
            else load_previous(p, registry=registry, store_dir=_store_dir(closures))
            for p in previous
        ],
        names=names,
        min_layer_size=min_size,
    )


def _store_dir(closures: Sequence[Closure]) -> str:
    """The store the closures are in (the planner refuses none, or several)."""
    return closures[0].store_dir if closures else "/nix/store"


def select_image(plan: LayerPlan, selector: str | None, *, source: str) -> ImagePlan:
    """The image of ``plan`` named or numbered by ``selector`` (default: the only one)."""
    if selector is None:
        if len(plan.images) != 1:
            raise PlanError(
                f"{source}: the plan has {len(plan.images)} images; choose one with --image"
            )
        return plan.images[0]
    if selector.isascii() and selector.isdigit():
        if int(selector) < len(plan.images):
            return plan.images[int(selector)]
        raise PlanError(
            f"{source}: no image {selector} in the plan (it has {len(plan.images)},"
            " numbered from 0)"
        )
    for image in plan.images:
        if image.name == selector:
            return image
    named = ", ".join(repr(image.name) for image in plan.images if image.name) or "none"
    raise PlanError(f"{source}: no image named {selector!r} in the plan (names: {named})")


def source_name(path: Path) -> str:
    """How messages name an input file: ``<stdin>`` for :data:`STDIN`."""
    return "<stdin>" if path == STDIN else str(path)


def _read_input(path: Path) -> bytes:
    """The bytes of ``path``, or of standard input for :data:`STDIN` (raises OSError)."""
    return read_all(None if path == STDIN else path)


def read_plan_file(plan_file: Path) -> LayerPlan:
    source = source_name(plan_file)
    try:
        text = _read_input(plan_file)
    except OSError as exc:
        raise PlanError(f"{source}: cannot read: {exc.strerror}") from exc
    return LayerPlan.from_json(text, source=source)
