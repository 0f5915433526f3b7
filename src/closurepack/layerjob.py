"""Layers as build units: build-layer (one layer blob + descriptor) and assemble (descriptors
-> image)."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from closurepack._fs import atomic_write
from closurepack.build import (
    BuildOptions,
    check_mtime,
    customisation_layer,
    read_descriptors,
    scratch_dir,
    store_layer_key,
)
from closurepack.cachegc import KEY
from closurepack.chunkedtoc import is_chunked
from closurepack.customisation import (
    customisation_entries,
)
from closurepack.delivery import (
    Delivery,
    ImageTarget,
    finish_image,
    image_pusher,
)
from closurepack.errors import (
    ClosureError,
    DestinationError,
    ImageError,
    OptionError,
)
from closurepack.fakeroot import run_fakeroot_script
from closurepack.graph import check_readable_store, split_store_path
from closurepack.jobsetup import (
    ImageOptions,
    check_chunked_destination,
    check_level,
    drop_repeated_customisation,
    prepare_image,
)
from closurepack.layer import BuiltLayer, store_layer_comment
from closurepack.layerbuild import build_store_layer
from closurepack.perms import Perms
from closurepack.plan import MAX_LAYERS_LIMIT, PlannedLayer
from closurepack.registry import (
    RegistryOptions,
)
from closurepack.registry.layercache import SharedLayerCache
from closurepack.sources.query import store_item_path
from closurepack.workflow import read_plan_file, select_image, source_name

if TYPE_CHECKING:  # (made by registry.layercache: only --cache-from builds have one)
    from closurepack.remotelayer import RemoteLayer

__all__ = [
    "LayerChoice",
    "assemble_from_descriptors",
    "build_one_layer",
]

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerChoice:
    """Which layer ``build-layer`` makes: of the items ``store_paths``, or layer
    ``layer_index`` of a ``plan_file``'s image ``image_selector``; its files read under
    ``store_root``."""

    store_paths: Sequence[str] = ()
    plan_file: Path | None = None
    image_selector: str | None = None
    layer_index: int | None = None
    store_root: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "store_paths", tuple(self.store_paths))


def build_one_layer(
    which: LayerChoice,
    *,
    out_dir: Path,
    compression: str,
    level: int | None,
    mtime: int | None,
    perms: Perms | None = None,
) -> Path:
    """Build the layer ``which`` into ``out_dir`` (blob + ``layer.json``); return the
    descriptor's path.

    Its files' mtime is ``mtime`` (default 1, never ``SOURCE_DATE_EPOCH``); ``perms`` sets
    modes and owners by path. The descriptor records the layer's cache key too (the one
    ``build`` gives the same layer), under which ``assemble --cache-to`` shares it."""
    store_paths, plan_file, store_root = which.store_paths, which.plan_file, which.store_root
    image_selector, layer_index = which.image_selector, which.layer_index
    if plan_file is not None:
        if store_paths:
            raise OptionError("give either --plan with --layer, or store paths, not both")
        plan = read_plan_file(plan_file)
        source = source_name(plan_file)
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
    check_level(compression, level)
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
            perms=perms,
        )
        # the key build gives the same layer (its --perms part included)
        key = store_layer_key(
            PlannedLayer(tuple(paths)),
            BuildOptions(
                store_dir=store_dir,
                store_root=store_root,
                compression=compression,
                level=level,
                mtime=layer_mtime,
                perms=perms,
            ),
        )
        obj = {**layer.to_json_obj(relative_to=out_dir), "key": key}
        descriptor = out_dir / "layer.json"
        with atomic_write(descriptor) as handle:
            handle.write(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode() + b"\n")
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
    cache_from: Sequence[str] = (),
    cache_to: str | None = None,
) -> str:
    """Make an image from ``build-layer`` descriptors (bottom first) plus a customisation layer;
    ``compression`` and ``level`` are for the customisation layer.

    ``cache_from``/``cache_to`` are registry layer caches as for ``build`` (see
    :mod:`closurepack.registry.layercache`): pushed to the registry of a ``--cache-from``
    cache, a layer whose blob the cache holds under the layer's key is mounted from there
    instead of uploaded, and the customisation layer is taken from the cache when it is there;
    ``--cache-to`` publishes every layer's key (the one ``build-layer`` recorded) afterwards.
    """
    started = time.time()
    registry = registry or RegistryOptions()
    config, customisation, base = prepare_image(
        image, dest=dest, compression=compression, level=level, registry=registry
    )
    built = read_descriptors(descriptors)
    keys: list[str | None] = [_descriptor_key(path) for path in descriptors]
    chunked = [la for la in built if is_chunked(la.annotations)]
    if chunked:
        check_chunked_destination(
            dest, image.manifest_format, what=f"{chunked[0].blob_path}: a zstd:chunked layer"
        )
    mtime = image.layer_mtime
    store_dirs = {split_store_path(p, where="assemble")[0] for la in built for p in la.paths}
    if len(store_dirs) == 1:
        customisation = dataclasses.replace(customisation, store_dir=store_dirs.pop())
        customisation_entries(customisation)  # nothing over the store in use
    customisation = run_fakeroot_script(customisation)
    customisation = drop_repeated_customisation(customisation, base=base, mtime=mtime)
    total = len(built) + (len(base.layers) if base else 0) + (not customisation.is_empty)
    if total > MAX_LAYERS_LIMIT:
        raise OptionError(
            f"the image would have {total} layers, more than {MAX_LAYERS_LIMIT} (overlayfs stacks"
            " at most 128)"
        )
    shared = SharedLayerCache.open(
        cache_from=cache_from, cache_to=cache_to, options=registry, dest=dest
    )
    layers: list[BuiltLayer | RemoteLayer] = list(built)
    with scratch_dir() as work, image_pusher(dest, image, registry, base, shared) as pusher:
        if shared is not None:
            shared.source(compression=compression, cache=None, pusher=pusher)
            for key, layer in zip(keys, built, strict=True):
                if key is not None:
                    shared.mount(key, layer)
        if not customisation.is_empty:
            key, top, _ = customisation_layer(
                customisation,
                compression=compression,
                level=level,
                mtime=mtime,
                work_dir=Path(work),
                source=shared,
            )
            layers.append(top)
            keys.append(key)
        result = finish_image(
            layers,
            base=base,
            config=config,
            target=ImageTarget(dest=dest, tags=image.tags, name=None, started=started),
            delivery=Delivery(pusher=pusher),
        )
        if shared is not None:
            shared.publish(
                [(k, la) for k, la in zip(keys, layers, strict=True) if k is not None],
                dest=pusher.ref if pusher else None,
            )
        return result


def _descriptor_key(path: Path) -> str | None:
    """The cache key a ``build-layer`` descriptor records (None: made by a closurepack that
    recorded none; such a layer is not shared)."""
    descriptor = path / "layer.json" if path.is_dir() else path
    try:
        key = json.loads(descriptor.read_bytes()).get("key")
    except (OSError, ValueError, AttributeError) as exc:  # read_descriptors read it already
        raise ImageError(f"{descriptor}: invalid layer descriptor: {exc}") from exc
    if key is None:
        _log.info("%s records no layer key: not shared through a layer cache", descriptor)
        return None
    if not isinstance(key, str) or not KEY.fullmatch(key):
        raise ImageError(f"{descriptor}: invalid layer descriptor: bad key {key!r}")
    return key
