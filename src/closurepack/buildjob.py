"""The build job: closure or plan -> layers (through the caches) -> image -> any transport,
with every check that can be made before a layer is built."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from closurepack.build import (
    BuildOptions,
    ProgressCallback,
    build_layers,
    layer_keys,
    scratch_dir,
)
from closurepack.cache import LayerCache
from closurepack.customisation import (
    customisation_entries,
)
from closurepack.errors import (
    CacheError,
    OptionError,
)
from closurepack.graph import check_readable_store
from closurepack.image import (
    layer_paths_from_config,
)
from closurepack.jobsetup import (
    ImageOptions,
    drop_repeated_customisation,
    finish_image,
    fit_customisation,
    image_pusher,
    prepare_image,
)
from closurepack.layer import BuiltLayer
from closurepack.options import parse_size
from closurepack.plan import MAX_LAYERS_LIMIT, check_max_layers
from closurepack.previous import read_previous
from closurepack.registry import (
    RegistryOptions,
)
from closurepack.registry.layercache import SharedLayerCache
from closurepack.registry.record import RECORD_NAME
from closurepack.workflow import (
    DEFAULT_MAX_LAYERS,
    image_names,
    load_closures,
    make_plan,
    read_plan_file,
    select_image,
    source_name,
)

__all__ = [
    "build_image",
]

_log = logging.getLogger(__name__)


def build_image(
    *,
    store_paths: Sequence[str] = (),
    closure_files: Sequence[Path] = (),
    store_root: Path | None = None,
    plan_file: Path | None = None,
    image_selector: str | None = None,
    strategy: str | None = None,
    max_layers: int | None = None,
    min_layer_size: str | int | None = None,
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
    config, customisation, base = prepare_image(
        image, dest=dest, compression=compression, level=level, registry=registry
    )
    mtime = image.layer_mtime
    from_image = image.from_image
    base_count = len(base.layers) if base else 0
    reuse: dict[tuple[str, ...], Callable[[Path], BuiltLayer]] = {}

    if plan_file is not None:
        if store_paths or closure_files:
            raise OptionError("give either --plan or a closure, not both")
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
            min_layer_size=min_layer_size,
        )
        source = "the plan"
    image_plan = select_image(plan, image_selector, source=source)
    customisation = dataclasses.replace(customisation, store_dir=plan.store_dir)
    customisation_entries(customisation)  # nothing over the store in use
    customisation = drop_repeated_customisation(customisation, base=base, mtime=mtime)
    customisation = fit_customisation(
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
        image_pusher(dest, image, registry, base, shared) as pusher,
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
        result = finish_image(
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
