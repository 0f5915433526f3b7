"""Whole jobs as the CLI runs them: closures -> plan -> layers -> image -> destination."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from closurepack._fs import atomic_write
from closurepack.basefiles import with_base_accounts
from closurepack.build import (
    BuildOptions,
    ProgressCallback,
    build_layers,
    check_mtime,
    default_mtime,
    layer_keys,
    read_descriptors,
    scratch_dir,
)
from closurepack.cache import LayerCache
from closurepack.compression import resolve_level
from closurepack.customisation import (
    Customisation,
    ExtraTree,
    build_customisation_layer,
    customisation_entries,
    drop_if_repeated,
)
from closurepack.errors import (
    CacheError,
    ClosureError,
    DestinationError,
    OptionError,
    PlanError,
)
from closurepack.graph import Closure, check_readable_store, split_store_path
from closurepack.image import (
    BaseImage,
    ImageConfig,
    ImageLayer,
    assemble_image,
    layer_paths_from_config,
)
from closurepack.layer import BuiltLayer, store_layer_comment
from closurepack.layerbuild import build_store_layer
from closurepack.options import parse_size
from closurepack.plan import MAX_LAYERS_LIMIT, ImagePlan, LayerPlan, check_max_layers
from closurepack.planner import plan_closures
from closurepack.previous import load_previous, read_previous
from closurepack.readback import read_base_image
from closurepack.registry import (
    RegistryOptions,
    is_registry_reference,
    parse_reference,
    push_tags,
)
from closurepack.registry.layercache import SharedLayerCache
from closurepack.registry.push import ImagePusher, open_pusher
from closurepack.registry.record import RECORD_NAME
from closurepack.sources import load_closure_file, query_closure
from closurepack.sources.files import parse_closure
from closurepack.sources.query import store_item_path
from closurepack.strategies import DEFAULT_STRATEGY
from closurepack.transports import (
    check_destination,
    parse_destination,
    parse_repo_tag,
    write_image,
)

__all__ = [
    "DEFAULT_MAX_LAYERS",
    "STDIN",
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
    return parse_closure(data, source=_source_name(path), store_root=store_root)


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
) -> LayerPlan:
    """Plan ``closures`` together, counting the layers of ``previous`` plans/images (or plans
    read already) as existing.

    ``max_layers`` (default :data:`DEFAULT_MAX_LAYERS`) includes one layer kept for the
    customisation layer; ``names`` name the images (see :func:`image_names`).
    """
    limit = check_max_layers(DEFAULT_MAX_LAYERS if max_layers is None else max_layers)
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


def _source_name(path: Path) -> str:
    """How messages name an input file: ``<stdin>`` for :data:`STDIN`."""
    return "<stdin>" if path == STDIN else str(path)


def _read_input(path: Path) -> bytes:
    """The bytes of ``path``, or of standard input for :data:`STDIN` (raises OSError)."""
    if path == STDIN:
        return sys.stdin.buffer.read()
    return path.read_bytes()


def _drop_if_repeated(
    customisation: Customisation, *, base: BaseImage | None, mtime: int
) -> Customisation:
    top = base.layers[-1].diff_id if base is not None and base.layers else None
    return drop_if_repeated(customisation, top_diff_id=top, mtime=mtime)


def _read_plan(plan_file: Path) -> LayerPlan:
    source = _source_name(plan_file)
    try:
        text = _read_input(plan_file)
    except OSError as exc:
        raise PlanError(f"{source}: cannot read: {exc.strerror}") from exc
    return LayerPlan.from_json(text, source=source)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageOptions:
    """Everything an image gets beyond its store layers: config fields (``None``/empty: unset,
    or inherited from ``from_image``), the customisation layer, the base image and the tags
    (every ``--tag``; none: the image is named after its plan or closure).

    ``created`` is seconds since the epoch (default: ``SOURCE_DATE_EPOCH``, else 1): the image's
    creation time and its history's, never a file's. ``mtime`` is the mtime of every file in the
    layers, store layers and the customisation layer alike (default 1, what a real store has),
    so that a new creation time alone makes no new layer.
    """

    tags: tuple[str, ...] = ()
    created: int | None = None
    mtime: int | None = None
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
    extra_dirs: tuple[ExtraTree, ...] = ()
    tmp: bool = True
    from_image: str | None = None
    #: The manifest flavour pushed to a registry: ``oci`` or ``docker`` (schema 2).
    manifest_format: Literal["oci", "docker"] = "oci"

    @property
    def created_time(self) -> int:
        return default_mtime(self.created)

    @property
    def layer_mtime(self) -> int:
        return check_mtime(self.mtime)

    def config(self) -> ImageConfig:
        """The image config (validated: an OptionError names a bad value)."""
        arch = {"architecture": self.arch} if self.arch else {}
        return ImageConfig(
            created=self.created_time,
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


def _check_destination(dest: str, tags: Sequence[str]) -> None:
    """Check ``dest`` (and every ``--tag``) before any layer is built, so that a wrong
    destination fails at once rather than after a long build (see :func:`check_destination`;
    a registry reference is parsed here and its registry asked in the build)."""
    if is_registry_reference(dest):
        push_tags(parse_reference(dest, for_push=True), tags)  # a --tag is TAG or REPO:TAG
        return
    for tag in tags:
        parse_repo_tag(tag)
    check_destination(dest)


def _check_level(compression: str, level: int | None) -> None:
    if level is None:
        return
    if compression == "none":
        raise OptionError(f"--level {level}: --compression none takes no level")
    try:
        resolve_level(compression, level)
    except OptionError as exc:
        raise OptionError(f"--level {level}: {exc}") from exc


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
    _check_destination(dest, image.tags)
    if image.manifest_format not in ("oci", "docker"):
        raise OptionError(f"--format {image.manifest_format!r}: expected oci or docker")
    if image.manifest_format == "docker" and not is_registry_reference(dest):
        raise OptionError(
            "--format docker is for docker:// destinations (docker-archive is Docker's already)"
        )
    _check_level(compression, level)
    config = image.config()
    check_mtime(image.mtime)  # a bad --mtime fails here
    customisation = image.customisation()
    # a bad --symlink or --extra fails here (--user's files wait for the --from image's)
    customisation_entries(
        dataclasses.replace(customisation, user=None) if image.from_image else customisation
    )
    base = read_base_image(image.from_image, registry=registry) if image.from_image else None
    if base is not None:
        customisation = with_base_accounts(customisation, base.layers, where=str(image.from_image))
        customisation_entries(customisation)  # an --extra /etc/passwd --user now needs fails here
    return config, customisation, base


def _finish(
    layers: Sequence[ImageLayer],
    *,
    base: BaseImage | None,
    config: ImageConfig,
    dest: str,
    tags: Sequence[str],
    name: str | None,
    started: float,
    pusher: ImagePusher | None = None,
) -> str:
    image = assemble_image(layers, config=config, base=base)
    container = image.config.get("config") or {}
    if not container.get("Entrypoint") and not container.get("Cmd"):
        _log.warning(
            "%s: the image has no Entrypoint and no Cmd: it runs only when given a command"
            " (--entrypoint or --cmd set one)",
            dest,
        )
    if pusher is not None:
        digest = pusher.push(image)
        return f"{pusher.ref.name}@{digest}"
    write_image(image, parse_destination(dest), tags=tags, name=name, started=started)
    return str(image.manifest_digest)


def _pusher(
    dest: str,
    image: ImageOptions,
    registry: RegistryOptions,
    base: BaseImage | None,
    shared: SharedLayerCache | None = None,
) -> contextlib.AbstractContextManager[ImagePusher | None]:
    """An open pusher when ``dest`` is a registry, the --from layers handed to it (and the
    --cache-from repositories of its registry readable, to mount cached layers); else None."""
    if not is_registry_reference(dest):
        return contextlib.nullcontext()
    ref = parse_reference(dest, for_push=True)
    return open_pusher(
        ref,
        options=registry,
        tags=push_tags(ref, image.tags),
        docker=image.manifest_format == "docker",
        base_image=image.from_image,
        base_layers=base.layers if base is not None else (),
        readable=shared.mount_sources(ref) if shared is not None else (),
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
    cache_from: Sequence[str] = (),
    cache_to: str | None = None,
) -> str:
    """The whole build: returns the manifest digest of the image written to ``dest``
    (``HOST/REPO@DIGEST`` for a registry, where the layers are pushed as they are built).

    ``cache_from``/``cache_to`` are registry layer caches shared by builders (see
    :mod:`closurepack.registry.layercache`): read before the build, written after it.

    ``max_layers`` bounds the whole image: the ``--from`` layers, the store layers and the
    customisation layer (default: the plan file's limit, else :data:`DEFAULT_MAX_LAYERS`).
    Everything is checked before any layer is built; the destination is written last, atomically.
    """
    started = time.time()  # temp files older than this, and unlocked, are debris to sweep
    if jobs is not None and jobs < 1:
        raise OptionError(f"--jobs must be at least 1, not {jobs}")
    if max_layers is not None:
        check_max_layers(max_layers)
    cache_limit = parse_size(cache_max_size)
    registry = registry or RegistryOptions()
    config, customisation, base = _prepare(
        image, dest=dest, compression=compression, level=level, registry=registry
    )
    mtime = image.layer_mtime
    from_image = image.from_image
    base_count = len(base.layers) if base else 0
    reuse: dict[tuple[str, ...], Callable[[Path], BuiltLayer]] = {}

    if plan_file is not None:
        if store_paths or closure_files:
            raise OptionError("give either --plan or a closure, not both")
        if strategy is not None or previous:
            raise OptionError("--strategy and --previous make a plan: not with --plan")
        plan = _read_plan(plan_file)
        source = _source_name(plan_file)
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
        closures = load_closures(
            store_paths=store_paths, closure_files=closure_files, store_root=store_root
        )
        for closure in closures:
            check_readable_store(closure.store_dir, store_root=store_root, where=closure.source)
        if len(closures) != 1 and image_selector is None:
            raise OptionError("build makes one image: give one closure, or --image to choose")
        if base is not None:
            # Store items the --from image already holds (as it records them) are not added
            # again on top of it.
            provided = {p for ps in layer_paths_from_config(base.config).values() for p in ps}
            closures = [closure.without(provided) for closure in closures]
        names = image_names(
            store_paths=store_paths, closure_files=closure_files, store_root=store_root
        )
        found = [
            read_previous(p, registry=registry, store_dir=closures[0].store_dir) for p in previous
        ]
        for layer in (layer for f in found for layer in f.foreign):
            reuse.setdefault(layer.paths, layer.materialize)  # other tools' blobs, as they are
        plan = make_plan(
            closures,
            strategy=strategy,
            max_layers=budget,
            previous=[f.plan for f in found],
            names=names,
            registry=registry,
        )
        source = "the plan"
    image_plan = select_image(plan, image_selector, source=source)
    customisation = dataclasses.replace(customisation, store_dir=plan.store_dir)
    customisation_entries(customisation)  # nothing over the store in use
    customisation = _drop_if_repeated(customisation, base=base, mtime=mtime)
    customisation = _fit_customisation(
        customisation, base=base_count, store=len(image_plan.layers), limit=limit, source=source
    )

    cache = None if no_cache else _open_cache(cache_dir, max_bytes=cache_limit, verify=cache_verify)
    if cache is not None and registry.blob_record is None:
        # where pushed blobs were seen, for cross-repository mounts, lives beside the layers
        registry = dataclasses.replace(registry, blob_record=cache.root / RECORD_NAME)
    shared = SharedLayerCache.open(
        cache_from=cache_from, cache_to=cache_to, options=registry, dest=dest
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
    # The cache is closed after the destination is written: until then no other process
    # evicts the layers it is linking or copying.
    with (
        cache or contextlib.nullcontext(),
        scratch_dir() as work,
        _pusher(dest, image, registry, base, shared) as pusher,
    ):
        if shared is not None:
            layer_source = shared.source(compression=compression, cache=cache, pusher=pusher)
            options = dataclasses.replace(options, source=layer_source)
        layers = build_layers(
            image_plan,
            options=options,
            work_dir=Path(work),
            customisation=customisation,
            progress=pusher.progress_hook(progress) if pusher else progress,
            reuse=reuse,
        )
        result = _finish(
            layers,
            base=base,
            config=config,
            dest=dest,
            tags=image.tags,
            name=image_plan.name,
            started=started,
            pusher=pusher,
        )
        if shared is not None:
            keys = layer_keys(image_plan, options, customisation)
            shared.publish(
                list(zip(keys, layers, strict=True)), dest=pusher.ref if pusher else None
            )
        return result


def _open_cache(
    cache_dir: Path | None, *, max_bytes: int | None, verify: Literal["auto", "full"]
) -> LayerCache | None:
    """The cache in ``cache_dir`` (an error if unusable), else the default one; when that
    cannot be used (no home directory, as in a Nix build; read-only), one warning and None:
    the build goes on without a cache and writes nothing outside its temp directory and
    destination."""
    if cache_dir is not None:
        return LayerCache(cache_dir, max_bytes=max_bytes, verify=verify)
    try:
        return LayerCache.open_default(max_bytes=max_bytes, verify=verify)
    except CacheError as exc:
        _log.warning("%s; building without a cache (--cache-dir DIR or --no-cache)", exc)
        return None


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
    mtime: int | None,
) -> Path:
    """Build one layer into ``out_dir`` (blob + ``layer.json``); return the descriptor's path.

    Its files' mtime is ``mtime`` (default 1, never ``SOURCE_DATE_EPOCH``)."""
    if plan_file is not None:
        if store_paths:
            raise OptionError("give either --plan with --layer, or store paths, not both")
        plan = _read_plan(plan_file)
        source = _source_name(plan_file)
        check_readable_store(plan.store_dir, store_root=store_root, where=source)
        image = select_image(plan, image_selector, source=source)
        if layer_index is None or not 0 <= layer_index < len(image.layers):
            raise OptionError(f"--layer must be between 0 and {len(image.layers) - 1} for {source}")
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
    layer_mtime = check_mtime(mtime)
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
            mtime=layer_mtime,
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
    started = time.time()
    registry = registry or RegistryOptions()
    config, customisation, base = _prepare(
        image, dest=dest, compression=compression, level=level, registry=registry
    )
    layers = read_descriptors(descriptors)
    mtime = image.layer_mtime
    store_dirs = {split_store_path(p, where="assemble")[0] for la in layers for p in la.paths}
    if len(store_dirs) == 1:
        customisation = dataclasses.replace(customisation, store_dir=store_dirs.pop())
        customisation_entries(customisation)  # nothing over the store in use
    customisation = _drop_if_repeated(customisation, base=base, mtime=mtime)
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
        return _finish(
            layers,
            base=base,
            config=config,
            dest=dest,
            tags=image.tags,
            name=None,
            started=started,
            pusher=pusher,
        )
