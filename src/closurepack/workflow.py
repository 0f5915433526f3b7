"""Whole jobs as the CLI runs them: closures -> plan -> layers -> image -> destination."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from closurepack._fs import atomic_write
from closurepack.build import (
    BuildOptions,
    ProgressCallback,
    build_layers,
    default_mtime,
    read_descriptors,
    scratch_dir,
)
from closurepack.cache import LayerCache, default_cache_dir
from closurepack.compression import resolve_level
from closurepack.customisation import (
    Customisation,
    build_customisation_layer,
    customisation_entries,
)
from closurepack.destinations import oci_archive, parse_destination, parse_repo_tag, write_image
from closurepack.errors import (
    ClosureError,
    DestinationError,
    OptionError,
    PlanError,
)
from closurepack.graph import Closure, split_store_path
from closurepack.image import BaseImage, ImageConfig, assemble_image, layer_paths_from_config
from closurepack.layer import BuiltLayer, store_layer_comment
from closurepack.layerbuild import build_store_layer
from closurepack.options import parse_size
from closurepack.plan import MAX_LAYERS_LIMIT, ImagePlan, LayerPlan, check_max_layers
from closurepack.planner import plan_closures
from closurepack.previous import load_previous
from closurepack.readback import read_base_image
from closurepack.registry import RegistryOptions, is_registry_reference, parse_reference
from closurepack.registry.push import ImagePusher, open_pusher
from closurepack.registry.record import RECORD_NAME
from closurepack.sources import load_closure_file, query_closure
from closurepack.sources.query import store_item_path
from closurepack.strategies import DEFAULT_STRATEGY

__all__ = [
    "DEFAULT_MAX_LAYERS",
    "ImageOptions",
    "assemble_from_descriptors",
    "build_image",
    "build_one_layer",
    "image_names",
    "load_closures",
    "make_plan",
    "select_image",
]

_log = logging.getLogger(__name__)

#: ``--max-layers`` when none is given (and the plan file records none).
DEFAULT_MAX_LAYERS = 100
#: Suffixes dropped from a closure file's name to name its image (``app.json.zst`` -> ``app``).
_NAME_SUFFIXES = (".zst", ".gz", ".json", ".txt", ".closure", ".graph")


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


def image_names(*, store_paths: Sequence[str], closure_files: Sequence[Path]) -> list[str]:
    """Names for the images :func:`load_closures` plans, in the same order: a closure file's
    name without its suffixes (``app.json.zst`` -> ``app``), and the package name of the first
    store path given; a name taken already gets ``-2``, ``-3``, ..."""
    names = []
    for path in closure_files:
        name = path.name
        while name.endswith(_NAME_SUFFIXES) and "." in name.strip("."):
            name = name.rsplit(".", 1)[0]
        names.append(name or path.name)
    if store_paths:
        base = store_paths[0].rstrip("/").rsplit("/", 1)[-1]
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
    previous: Sequence[str] = (),
    names: Sequence[str] | None = None,
    registry: RegistryOptions | None = None,
) -> LayerPlan:
    """Plan ``closures`` together, counting the layers of ``previous`` plans/images as existing.

    ``max_layers`` (default :data:`DEFAULT_MAX_LAYERS`) includes one layer kept for the
    customisation layer; ``names`` name the images (see :func:`image_names`).
    """
    limit = check_max_layers(DEFAULT_MAX_LAYERS if max_layers is None else max_layers)
    return plan_closures(
        closures,
        strategy=strategy or DEFAULT_STRATEGY,
        max_layers=limit,
        previous=[load_previous(p, registry=registry) for p in previous],
        names=names,
    )


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


def _fit_customisation(
    customisation: Customisation, *, base: int, store: int, limit: int, source: str
) -> Customisation:
    """The customisation layer as it fits under ``limit`` layers with ``base`` + ``store``
    layers below it: left out when nothing but the default ``/tmp`` would be in it and there is
    no room; an OptionError when more was asked for, or when even the store layers do not fit.
    """
    total = base + store + (0 if customisation.is_empty else 1)
    if total <= limit:
        return customisation
    parts = f"{store} store layers from {source}"
    if base:
        parts = f"{base} --from layers + {parts}"
    if base + store > limit:
        raise OptionError(f"--max-layers {limit}: the image would have {parts}")
    if customisation.needs_layer_beyond_tmp:
        raise OptionError(
            f"--max-layers {limit} leaves no room for the customisation layer (--symlink,"
            f" --extra, a named --user) above {parts}; raise --max-layers to {total}"
        )
    _log.info("--max-layers %d: no room for the customisation layer; leaving /tmp out", limit)
    return dataclasses.replace(customisation, tmp=False)


def _read_plan(plan_file: Path) -> LayerPlan:
    try:
        text = plan_file.read_bytes()
    except OSError as exc:
        raise PlanError(f"{plan_file}: cannot read: {exc.strerror}") from exc
    return LayerPlan.from_json(text, source=str(plan_file))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageOptions:
    """Everything an image gets beyond its store layers: config fields (``None``/empty: unset,
    or inherited from ``from_image``), the customisation layer, the base image and a tag.

    ``created`` is seconds since the epoch (default: ``SOURCE_DATE_EPOCH``, else 1); it is also
    the mtime of every file in the layers.
    """

    tag: str | None = None
    created: int | None = None
    arch: str | None = None
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    workdir: str | None = None
    user: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    expose: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    stop_signal: str | None = None
    symlinks: tuple[tuple[str, str], ...] = ()
    extra_dirs: tuple[Path, ...] = ()
    tmp: bool = True
    from_image: str | None = None
    #: The manifest flavour pushed to a registry: ``oci`` or ``docker`` (schema 2).
    manifest_format: Literal["oci", "docker"] = "oci"

    @property
    def mtime(self) -> int:
        return default_mtime(self.created)

    def config(self) -> ImageConfig:
        """The image config (validated: an OptionError names a bad value)."""
        arch = {"architecture": self.arch} if self.arch else {}
        return ImageConfig(
            created=self.mtime,
            entrypoint=self.entrypoint,
            cmd=self.cmd,
            env=self.env,
            working_dir=self.workdir,
            user=self.user,
            labels=dict(self.labels),
            exposed_ports=self.expose,
            volumes=self.volumes,
            stop_signal=self.stop_signal,
            **arch,
        )

    def customisation(self) -> Customisation:
        return Customisation(
            symlinks=self.symlinks, extra_dirs=self.extra_dirs, tmp=self.tmp, user=self.user
        )


def _check_destination(dest: str, tag: str | None) -> None:
    """Cheap checks of ``dest`` (and ``--tag``) before any layer is built, so that an obviously
    wrong destination fails at once rather than after a long build. The destination writers
    check again (and everything else) when they write."""
    if tag is not None:
        parse_repo_tag(tag)
    if is_registry_reference(dest):
        parse_reference(dest, for_push=True)
        return
    destination = parse_destination(dest)
    path = destination.path
    if path is None:
        return
    if destination.kind in ("docker-archive", "oci-archive"):
        if path.is_dir():
            raise DestinationError(f"{path}: is a directory, expected an archive file path")
        _check_writable_dir(path.parent, path)
        if destination.kind == "oci-archive":
            oci_archive.check_existing(destination)  # tags are added to an existing archive
    elif path.exists():
        if not path.is_dir():
            raise DestinationError(f"{path}: not a directory (an OCI layout is one)")
        if not (path / "oci-layout").exists() and any(path.iterdir()):
            raise DestinationError(f"{path}: directory is not empty and not an OCI layout")
        _check_writable_dir(path, path)


def _check_level(compression: str, level: int | None) -> None:
    if level is None:
        return
    try:
        resolve_level(compression, level)
    except OptionError as exc:
        raise OptionError(f"--level {level}: {exc}") from exc


def _check_writable_dir(directory: Path, dest: Path) -> None:
    if not directory.is_dir():
        raise DestinationError(f"{dest}: cannot write: no directory {directory}")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DestinationError(f"{dest}: cannot write: permission denied on {directory}")


def _prepare(
    image: ImageOptions,
    *,
    dest: str,
    compression: str,
    level: int | None,
    registry: RegistryOptions,
) -> tuple[ImageConfig, Customisation, BaseImage | None]:
    """Check everything about the image that can be checked before any layer is built (the
    destination and tag, the level, the config fields, --symlink/--extra) and read the --from
    image; return its config, customisation and base image."""
    _check_destination(dest, image.tag)
    if image.manifest_format not in ("oci", "docker"):
        raise OptionError(f"--format {image.manifest_format!r}: expected oci or docker")
    if image.manifest_format == "docker" and not is_registry_reference(dest):
        raise OptionError(
            "--format docker is for docker:// destinations (docker-archive is Docker's already)"
        )
    _check_level(compression, level)
    config = image.config()
    customisation = image.customisation()
    customisation_entries(customisation)  # a bad --symlink or --extra fails here
    base = read_base_image(image.from_image, registry=registry) if image.from_image else None
    return config, customisation, base


def _finish(
    layers: list[BuiltLayer],
    *,
    base: BaseImage | None,
    config: ImageConfig,
    dest: str,
    tag: str | None,
    pusher: ImagePusher | None = None,
) -> str:
    image = assemble_image(layers, config=config, base=base)
    if pusher is not None:
        digest = pusher.push(image)
        return f"{pusher.ref.name}@{digest}"
    destination = parse_destination(dest)
    write_image(image, destination, tag=tag)
    return str(image.manifest_digest)


def _pusher(
    dest: str, image: ImageOptions, registry: RegistryOptions, base: BaseImage | None
) -> contextlib.AbstractContextManager[ImagePusher | None]:
    """An open pusher when ``dest`` is a registry, the --from layers handed to it; else None."""
    if not is_registry_reference(dest):
        return contextlib.nullcontext()
    return open_pusher(
        parse_reference(dest, for_push=True),
        options=registry,
        docker=image.manifest_format == "docker",
        base_image=image.from_image,
        base_layers=base.layers if base is not None else (),
    )


def build_image(
    *,
    store_paths: Sequence[str] = (),
    closure_files: Sequence[Path] = (),
    store_root: Path | None = None,
    plan_file: Path | None = None,
    image_selector: str | None = None,
    strategy: str | None = None,
    max_layers: int | None = None,
    previous: Sequence[str] = (),
    dest: str,
    compression: str = "gzip",
    level: int | None = None,
    jobs: int | None = None,
    cache_dir: Path | None = None,
    cache_max_size: str | int | None = None,
    cache_verify: Literal["auto", "full"] = "auto",
    no_cache: bool = False,
    image: ImageOptions = ImageOptions(),
    registry: RegistryOptions | None = None,
    progress: ProgressCallback | None = None,
) -> str:
    """The whole build: returns the manifest digest of the image written to ``dest``
    (``HOST/REPO@DIGEST`` for a registry, where the layers are pushed as they are built).

    ``max_layers`` bounds the whole image: the ``--from`` layers, the store layers and the
    customisation layer (default: the plan file's limit, else :data:`DEFAULT_MAX_LAYERS`).
    Everything is checked before any layer is built; the destination is written last, atomically.
    """
    if jobs is not None and jobs < 1:
        raise OptionError(f"--jobs must be at least 1, not {jobs}")
    if max_layers is not None:
        check_max_layers(max_layers)
    cache_limit = parse_size(cache_max_size)
    registry = registry or RegistryOptions()
    if not no_cache and registry.blob_record is None:
        record = (cache_dir or default_cache_dir()) / RECORD_NAME
        registry = dataclasses.replace(registry, blob_record=record)
    config, customisation, base = _prepare(
        image, dest=dest, compression=compression, level=level, registry=registry
    )
    mtime = image.mtime
    from_image = image.from_image
    base_count = len(base.layers) if base else 0

    if plan_file is not None:
        if store_paths or closure_files:
            raise OptionError("give either --plan or a closure, not both")
        if strategy is not None or previous:
            raise OptionError("--strategy and --previous make a plan: not with --plan")
        plan = _read_plan(plan_file)
        source = str(plan_file)
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
        closures = load_closures(
            store_paths=store_paths, closure_files=closure_files, store_root=store_root
        )
        if len(closures) != 1 and image_selector is None:
            raise OptionError("build makes one image: give one closure, or --image to choose")
        if base is not None:
            # Store items the --from image already holds (as it records them) are not added
            # again on top of it.
            provided = {p for ps in layer_paths_from_config(base.config).values() for p in ps}
            closures = [closure.without(provided) for closure in closures]
        names = image_names(store_paths=store_paths, closure_files=closure_files)
        plan = make_plan(
            closures,
            strategy=strategy,
            max_layers=budget,
            previous=previous,
            names=names,
            registry=registry,
        )
        source = "the plan"
    image_plan = select_image(plan, image_selector, source=source)
    customisation = _fit_customisation(
        customisation, base=base_count, store=len(image_plan.layers), limit=limit, source=source
    )

    cache = (
        None
        if no_cache
        else LayerCache(
            cache_dir or default_cache_dir(), max_bytes=cache_limit, verify=cache_verify
        )
    )
    options = BuildOptions(
        store_dir=plan.store_dir,
        store_root=store_root,
        compression=compression,
        level=level,
        mtime=mtime,
        jobs=BuildOptions().jobs if jobs is None else jobs,
        cache=cache,
    )
    with scratch_dir() as work, _pusher(dest, image, registry, base) as pusher:
        layers = build_layers(
            image_plan,
            options=options,
            work_dir=Path(work),
            customisation=customisation,
            progress=pusher.progress_hook(progress) if pusher else progress,
        )
        return _finish(layers, base=base, config=config, dest=dest, tag=image.tag, pusher=pusher)


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
        if layer_index is not None or image_selector is not None:
            raise OptionError(
                "--layer and --image choose a layer of a --plan: not with store paths"
            )
        # a path inside an item, or a ./result symlink, stands for the item, as in queries
        paths = tuple(sorted({store_item_path(p, store_root=store_root) for p in store_paths}))
        store_dirs = sorted({split_store_path(p, where="build-layer")[0] for p in paths})
        if len(store_dirs) != 1:
            raise ClosureError(f"build-layer: paths from different stores: {', '.join(store_dirs)}")
        store_dir = store_dirs[0]
    else:
        raise OptionError("give --plan FILE --layer N, or store paths")
    _check_level(compression, level)
    mtime = default_mtime(created)
    created_dir = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DestinationError(f"{out_dir}: cannot create: {exc.strerror}") from exc
    try:
        layer = build_store_layer(
            paths,
            store_root=store_root,
            store_dir=store_dir,
            compression=compression,
            level=level,
            mtime=mtime,
            dest_dir=out_dir,
            comment=store_layer_comment(paths),
        )
        descriptor = out_dir / "layer.json"
        with atomic_write(descriptor) as handle:
            handle.write(layer.to_json(relative_to=out_dir).encode() + b"\n")
    except BaseException:
        if created_dir:  # leave nothing behind for a failed build
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return descriptor


def assemble_from_descriptors(
    *,
    descriptors: Sequence[Path],
    dest: str,
    compression: str = "gzip",
    level: int | None = None,
    image: ImageOptions = ImageOptions(),
    registry: RegistryOptions | None = None,
) -> str:
    """Make an image from ``build-layer`` descriptors (bottom first) plus a customisation layer;
    ``compression`` and ``level`` are for the customisation layer."""
    registry = registry or RegistryOptions()
    config, customisation, base = _prepare(
        image, dest=dest, compression=compression, level=level, registry=registry
    )
    layers = read_descriptors(descriptors)
    mtime = image.mtime
    total = len(layers) + (len(base.layers) if base else 0) + (not customisation.is_empty)
    if total > MAX_LAYERS_LIMIT:
        raise OptionError(
            f"the image would have {total} layers, more than {MAX_LAYERS_LIMIT} (overlayfs stacks"
            " at most 128)"
        )
    with scratch_dir() as work, _pusher(dest, image, registry, base) as pusher:
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
        return _finish(layers, base=base, config=config, dest=dest, tag=image.tag, pusher=pusher)
