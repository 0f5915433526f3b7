"""Whole jobs as the CLI runs them: closures -> plan -> layers -> image -> destination."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from closurepack.build import (
    BuildOptions,
    ProgressCallback,
    build_layers,
    default_mtime,
    scratch_dir,
)
from closurepack.cache import LayerCache, default_cache_dir
from closurepack.customisation import Customisation, build_customisation_layer
from closurepack.destinations import parse_destination, write_image
from closurepack.errors import OptionError, PlanError
from closurepack.graph import Closure
from closurepack.image import BaseImage, ImageConfig, assemble_image
from closurepack.layer import BuiltLayer
from closurepack.layerbuild import build_store_layer
from closurepack.plan import ImagePlan, LayerPlan
from closurepack.planner import plan_closures
from closurepack.previous import load_previous
from closurepack.readback import read_base_image
from closurepack.sources import load_closure_file, query_closure
from closurepack.strategies import DEFAULT_STRATEGY

__all__ = [
    "assemble_from_descriptors",
    "build_image",
    "build_one_layer",
    "load_closures",
    "make_plan",
    "select_image",
]


def load_closures(
    *, store_paths: Sequence[str], closure_files: Sequence[Path], store_root: Path | None
) -> list[Closure]:
    """One closure per graph file, in order, then one for the store paths given, if any."""
    closures = [load_closure_file(f, store_root=store_root) for f in closure_files]
    if store_paths:
        closures.append(query_closure(list(store_paths), store_root=store_root))
    if not closures:
        raise OptionError("give store paths or at least one --closure FILE")
    return closures


def make_plan(
    closures: Sequence[Closure],
    *,
    strategy: str | None,
    max_layers: int,
    previous: Sequence[str] = (),
) -> LayerPlan:
    """Plan ``closures`` together, counting the layers of ``previous`` plans/images as existing."""
    return plan_closures(
        closures,
        strategy=strategy or DEFAULT_STRATEGY,
        max_layers=max_layers,
        previous=[load_previous(p) for p in previous],
    )


def select_image(plan: LayerPlan, selector: str | None, *, source: str) -> ImagePlan:
    """The image of ``plan`` named or numbered by ``selector`` (default: the only one)."""
    if selector is None:
        if len(plan.images) != 1:
            raise PlanError(
                f"{source}: the plan has {len(plan.images)} images; choose one with --image"
            )
        return plan.images[0]
    if selector.isdigit() and int(selector) < len(plan.images):
        return plan.images[int(selector)]
    for image in plan.images:
        if image.name == selector:
            return image
    raise PlanError(f"{source}: no image {selector!r} in the plan")


def _read_plan(plan_file: Path) -> LayerPlan:
    try:
        text = plan_file.read_bytes()
    except OSError as exc:
        raise PlanError(f"{plan_file}: cannot read: {exc.strerror}") from exc
    return LayerPlan.from_json(text, source=str(plan_file))


def _image_config(
    *,
    created: int,
    arch: str | None,
    entrypoint: Sequence[str] | None,
    cmd: Sequence[str] | None,
    env: Sequence[str],
    workdir: str | None,
    user: str | None,
    label: Sequence[tuple[str, str]],
    expose: Sequence[str],
    volume: Sequence[str],
    stop_signal: str | None,
) -> ImageConfig:
    extra = {"architecture": arch} if arch else {}
    return ImageConfig(
        created=created,
        entrypoint=entrypoint,
        cmd=cmd,
        env=tuple(env),
        working_dir=workdir,
        user=user,
        labels=dict(label),
        exposed_ports=tuple(expose),
        volumes=tuple(volume),
        stop_signal=stop_signal,
        **extra,
    )


def _finish(
    layers: list[BuiltLayer],
    *,
    base: BaseImage | None,
    config: ImageConfig,
    dest: str,
    tag: str | None,
) -> str:
    destination = parse_destination(dest)
    image = assemble_image(layers, config=config, base=base)
    write_image(image, destination, tag=tag)
    return str(image.manifest_digest)


def build_image(
    *,
    store_paths: Sequence[str] = (),
    closure_files: Sequence[Path] = (),
    store_root: Path | None = None,
    plan_file: Path | None = None,
    image_selector: str | None = None,
    strategy: str | None = None,
    max_layers: int = 100,
    previous: Sequence[str] = (),
    dest: str,
    tag: str | None = None,
    compression: str = "gzip",
    level: int | None = None,
    jobs: int | None = None,
    cache_dir: Path | None = None,
    no_cache: bool = False,
    created: int | None = None,
    arch: str | None = None,
    entrypoint: Sequence[str] | None = None,
    cmd: Sequence[str] | None = None,
    env: Sequence[str] = (),
    workdir: str | None = None,
    user: str | None = None,
    label: Sequence[tuple[str, str]] = (),
    expose: Sequence[str] = (),
    volume: Sequence[str] = (),
    stop_signal: str | None = None,
    symlink: Sequence[tuple[str, str]] = (),
    extra: Sequence[Path] = (),
    no_tmp: bool = False,
    from_image: str | None = None,
    progress: ProgressCallback | None = None,
) -> str:
    """The whole build: returns the manifest digest of the image written to ``dest``."""
    destination = parse_destination(dest)  # fail on a bad destination before any work
    del destination
    mtime = default_mtime(created)
    config = _image_config(
        created=mtime,
        arch=arch,
        entrypoint=entrypoint,
        cmd=cmd,
        env=env,
        workdir=workdir,
        user=user,
        label=label,
        expose=expose,
        volume=volume,
        stop_signal=stop_signal,
    )
    customisation = Customisation(
        symlinks=tuple(symlink), extra_dirs=tuple(extra), tmp=not no_tmp, user=user
    )
    base = read_base_image(from_image) if from_image else None
    base_count = len(base.layers) if base else 0

    if plan_file is not None:
        if store_paths or closure_files:
            raise OptionError("give either --plan or a closure, not both")
        plan = _read_plan(plan_file)
        source = str(plan_file)
    else:
        budget = max_layers - base_count
        if budget < 1:
            raise PlanError(
                f"--max-layers {max_layers} leaves no room above the {base_count} layers of"
                f" {from_image}"
            )
        closures = load_closures(
            store_paths=store_paths, closure_files=closure_files, store_root=store_root
        )
        if len(closures) != 1 and image_selector is None:
            raise OptionError("build makes one image: give one closure, or --image to choose")
        plan = make_plan(closures, strategy=strategy, max_layers=budget, previous=previous)
        source = "the plan"
    image_plan = select_image(plan, image_selector, source=source)

    cache = None if no_cache else LayerCache(cache_dir or default_cache_dir())
    options = BuildOptions(
        store_dir=plan.store_dir,
        store_root=store_root,
        compression=compression,
        level=level,
        mtime=mtime,
        jobs=jobs or BuildOptions().jobs,
        cache=cache,
    )
    with scratch_dir() as work:
        layers = build_layers(
            image_plan,
            options=options,
            work_dir=Path(work),
            customisation=customisation,
            progress=progress,
        )
        return _finish(layers, base=base, config=config, dest=dest, tag=tag)


def build_one_layer(
    *,
    store_paths: Sequence[str],
    plan_file: Path | None,
    image_selector: str | None,
    layer_index: int | None,
    store_root: Path | None,
    out_dir: Path,
    compression: str,
    level: int | None,
    created: int | None,
) -> Path:
    """Build one layer into ``out_dir`` (blob + ``layer.json``); return the descriptor's path."""
    if plan_file is not None:
        if store_paths:
            raise OptionError("give either --plan with --layer, or store paths, not both")
        plan = _read_plan(plan_file)
        image = select_image(plan, image_selector, source=str(plan_file))
        if layer_index is None or not 0 <= layer_index < len(image.layers):
            raise OptionError(
                f"--layer must be between 0 and {len(image.layers) - 1} for {plan_file}"
            )
        paths = image.layers[layer_index].paths
        store_dir = plan.store_dir
    elif store_paths:
        paths = tuple(sorted(set(store_paths)))
        store_dir = paths[0].rsplit("/", 1)[0]
    else:
        raise OptionError("give --plan FILE --layer N, or store paths")
    out_dir.mkdir(parents=True, exist_ok=True)
    layer = build_store_layer(
        paths,
        store_root=store_root,
        store_dir=store_dir,
        compression=compression,
        level=level,
        mtime=default_mtime(created),
        dest_dir=out_dir,
    )
    descriptor = out_dir / "layer.json"
    descriptor.write_text(layer.to_json(relative_to=out_dir) + "\n")
    return descriptor


def assemble_from_descriptors(
    *,
    descriptors: Sequence[Path],
    dest: str,
    tag: str | None = None,
    compression: str = "gzip",
    level: int | None = None,
    created: int | None = None,
    arch: str | None = None,
    entrypoint: Sequence[str] | None = None,
    cmd: Sequence[str] | None = None,
    env: Sequence[str] = (),
    workdir: str | None = None,
    user: str | None = None,
    label: Sequence[tuple[str, str]] = (),
    expose: Sequence[str] = (),
    volume: Sequence[str] = (),
    stop_signal: str | None = None,
    symlink: Sequence[tuple[str, str]] = (),
    extra: Sequence[Path] = (),
    no_tmp: bool = False,
    from_image: str | None = None,
) -> str:
    """Make an image from ``build-layer`` descriptors (bottom first) plus a customisation layer."""
    parse_destination(dest)
    layers = []
    for path in descriptors:
        descriptor = path / "layer.json" if path.is_dir() else path
        layers.append(BuiltLayer.from_json(descriptor.read_bytes(), source=descriptor))
    mtime = default_mtime(created)
    config = _image_config(
        created=mtime,
        arch=arch,
        entrypoint=entrypoint,
        cmd=cmd,
        env=env,
        workdir=workdir,
        user=user,
        label=label,
        expose=expose,
        volume=volume,
        stop_signal=stop_signal,
    )
    customisation = Customisation(
        symlinks=tuple(symlink), extra_dirs=tuple(extra), tmp=not no_tmp, user=user
    )
    base = read_base_image(from_image) if from_image else None
    with scratch_dir() as work:
        if not customisation.is_empty:
            layers.append(
                build_customisation_layer(
                    customisation,
                    compression=compression,
                    level=level,
                    mtime=mtime,
                    dest_dir=Path(work),
                )
            )
        return _finish(layers, base=base, config=config, dest=dest, tag=tag)
