"""Plan -> layers (in parallel, through the cache) -> image: the build orchestration."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from closurepack._fs import fs_now, hash_stream, locked_temp_dir, sweep_stale_temp_dirs
from closurepack.cache import LayerCache
from closurepack.compression import resolve_level
from closurepack.customisation import (
    Customisation,
    build_customisation_layer,
    customisation_layer_key,
)
from closurepack.errors import ClosureError, ImageError, OptionError
from closurepack.graph import check_readable_store, split_store_path
from closurepack.layer import BuiltLayer, store_layer_comment
from closurepack.layerbuild import build_store_layer, layer_key, sharing_cpus
from closurepack.layerpool import run_layers, stream_order
from closurepack.perms import Perms
from closurepack.plan import ImagePlan, PlannedLayer
from closurepack.tarheader import MAX_MTIME

if TYPE_CHECKING:  # (made by registry.layercache: only --cache-from builds have one)
    from closurepack.remotelayer import RemoteLayer

__all__ = [
    "BuildOptions",
    "LayerEvent",
    "LayerSource",
    "ProgressCallback",
    "build_keyed_layers",
    "build_layers",
    "check_mtime",
    "customisation_layer",
    "default_mtime",
    "read_descriptors",
    "scratch_dir",
    "store_layer_key",
    "stream_order",
]


def default_mtime(created: int | None = None, environ: dict[str, str] | None = None) -> int:
    """The image's creation time: ``--created``, else ``SOURCE_DATE_EPOCH``, else 1; an
    OptionError naming the one given when a tar header cannot hold it (after
    :data:`MAX_MTIME`: docker-archive members carry it). It is never a layer's file mtime."""
    if created is not None:
        return _fits_tar(created, f"--created {created}")
    value = (environ if environ is not None else os.environ).get("SOURCE_DATE_EPOCH")
    if value:
        try:
            epoch = int(value)
        except ValueError:
            raise OptionError(f"SOURCE_DATE_EPOCH={value!r} is not an integer") from None
        if epoch < 0:
            raise OptionError(f"SOURCE_DATE_EPOCH={value!r} is negative")
        return _fits_tar(epoch, f"SOURCE_DATE_EPOCH={value!r}")
    return 1


def check_mtime(mtime: int | None) -> int:
    """The file mtime of layers: ``--mtime``, else 1 (what every file in a real store has, so
    store layers stay the same whatever the image's creation time); an OptionError when a tar
    header cannot hold it."""
    return 1 if mtime is None else _fits_tar(mtime, f"--mtime {mtime}")


def _fits_tar(mtime: int, what: str) -> int:
    if mtime > MAX_MTIME:
        latest = datetime.fromtimestamp(MAX_MTIME, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        raise OptionError(f"{what}: file times after {latest} do not fit in a tar header")
    return mtime


#: Asked for a planned layer (its cache key, the layer, a work directory) before it is built
#: after a local cache miss: a layer found elsewhere (a shared layer cache in a registry), or
#: None to build it.
LayerSource = Callable[[str, PlannedLayer, Path], "BuiltLayer | RemoteLayer | None"]


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """Everything that decides how layers are built (not what goes in them)."""

    store_dir: str = "/nix/store"
    store_root: Path | None = None
    compression: str = "gzip"
    level: int | None = None
    mtime: int = 1
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    #: None builds into a throw-away directory without caching.
    cache: LayerCache | None = None
    #: Where layers missing from ``cache`` may be found before they are built.
    source: LayerSource | None = None
    #: ``--perms`` and ``--uid``/``--gid`` (for the store layers; ``store_dir`` is this one).
    perms: Perms | None = None
    #: Start the layers in :func:`stream_order` (bottom first, the few that would make the
    #: end wait first: a stream sends them bottom first); else largest first, so that the
    #: last ones to finish are small and every CPU stays busy to the end.
    bottom_first: bool = False

    def __post_init__(self) -> None:
        resolve_level(self.compression, self.level)  # an OptionError for either
        if self.jobs < 1:
            raise OptionError(f"--jobs must be at least 1, not {self.jobs}")


@dataclass(frozen=True)
class LayerEvent:
    """Reported to the progress callback after each layer is ready."""

    index: int
    total: int
    layer: BuiltLayer | RemoteLayer
    cached: bool
    seconds: float
    planned_size: int
    #: The planned size of every layer of the image together (for a progress bar's total).
    total_size: int = 0


ProgressCallback = Callable[[LayerEvent], None]


def store_layer_key(layer: PlannedLayer, options: BuildOptions) -> str:
    """The cache key of the planned store layer ``layer`` built with ``options``."""
    return _store_key(layer, options, _perms_part(layer, options))


def _store_key(layer: PlannedLayer, options: BuildOptions, perms: dict[str, object]) -> str:
    return layer_key(
        layer.paths,
        store_dir=options.store_dir,
        compression=options.compression,
        level=options.level,
        mtime=options.mtime,
        perms=perms,
    )


def _perms_part(layer: PlannedLayer, options: BuildOptions) -> dict[str, object]:
    """What of ``options.perms`` touches the layer (empty: nothing, or no perms)."""
    if options.perms is None:
        return {}
    perms = dataclasses.replace(options.perms, store_dir=options.store_dir)
    return perms.key_part(layer.paths, store_root=options.store_root)


def customisation_layer(
    customisation: Customisation,
    *,
    compression: str,
    level: int | None,
    mtime: int,
    work_dir: Path,
    source: LayerSource | None,
) -> tuple[str, BuiltLayer | RemoteLayer, bool]:
    """The customisation layer's key and the layer: from ``source`` (a shared layer cache)
    when it has it, else built into ``work_dir``; and whether ``source`` had it."""
    key = customisation_layer_key(customisation, compression=compression, level=level, mtime=mtime)
    found = source(key, PlannedLayer(()), work_dir) if source is not None else None
    if found is not None:
        return key, dataclasses.replace(found, verified=True, comment="customisation"), True
    built = build_customisation_layer(
        customisation, compression=compression, level=level, mtime=mtime, dest_dir=work_dir
    )
    return key, built, False


def build_layers(
    image: ImagePlan,
    *,
    options: BuildOptions,
    work_dir: Path,
    customisation: Customisation | None = None,
    progress: ProgressCallback | None = None,
    reuse: Mapping[tuple[str, ...], Callable[[Path], BuiltLayer]] | None = None,
) -> list[BuiltLayer | RemoteLayer]:
    """The layers of :func:`build_keyed_layers`, without their keys."""
    keyed = build_keyed_layers(
        image,
        options=options,
        work_dir=work_dir,
        customisation=customisation,
        progress=progress,
        reuse=reuse,
    )
    return [layer for _, layer in keyed]


def build_keyed_layers(
    image: ImagePlan,
    *,
    options: BuildOptions,
    work_dir: Path,
    customisation: Customisation | None = None,
    progress: ProgressCallback | None = None,
    reuse: Mapping[tuple[str, ...], Callable[[Path], BuiltLayer]] | None = None,
) -> list[tuple[str, BuiltLayer | RemoteLayer]]:
    """Build every planned layer of ``image`` (``options.jobs`` at a time), bottom first, plus
    the customisation layer on top when it has anything to add; each with its cache key
    (computed once: the build and a ``--cache-to`` publication use the same).

    A layer whose sorted paths are a key of ``reuse`` is not built: its function puts an
    existing blob (a ``--previous`` image's) into ``work_dir`` and describes it.

    Layers come from ``options.cache`` when present there, else from ``options.source`` when
    it has them; otherwise they are built into the cache (or into ``work_dir`` when there is
    no cache). Every planned path must be an item of
    ``options.store_dir``, a store directory the files may be read from (checked before the
    cache is asked, so that not even a cached layer holds anything else).
    """
    planned = list(image.layers)
    check_readable_store(options.store_dir, store_root=options.store_root, where="build")
    for layer in planned:
        for path in layer.paths:
            if split_store_path(path, where="build")[0] != options.store_dir:
                raise ClosureError(f"build: {path} is not an item of the store {options.store_dir}")
    total = len(planned) + (1 if customisation and not customisation.is_empty else 0)
    total_size = sum(layer.size for layer in planned)

    def report(index: int, built: BuiltLayer | RemoteLayer, cached: bool, started: float) -> None:
        if progress is not None:
            seconds = time.perf_counter() - started
            size = planned[index].size
            progress(LayerEvent(index, total, built, cached, seconds, size, total_size))

    def reused_for(
        layer: PlannedLayer, perms: dict[str, object]
    ) -> Callable[[Path], BuiltLayer] | None:
        # a --previous image's blob has none of the modes and owners --perms gives
        return None if perms else (reuse or {}).get(tuple(sorted(layer.paths)))

    def finished(layer: PlannedLayer, built: BuiltLayer | RemoteLayer) -> BuiltLayer | RemoteLayer:
        # Built here, or checked by the cache before reuse: destinations may link the blob.
        return dataclasses.replace(built, verified=True, comment=store_layer_comment(layer.paths))

    def one(index: int, key: str, perms: dict[str, object]) -> tuple[str, BuiltLayer | RemoteLayer]:
        started = time.perf_counter()
        layer = planned[index]

        def build(dest_dir: Path) -> BuiltLayer:
            return build_store_layer(
                layer.paths,
                store_root=options.store_root,
                store_dir=options.store_dir,
                compression=options.compression,
                level=options.level,
                mtime=options.mtime,
                dest_dir=dest_dir,
                perms=options.perms,
            )

        hit: BuiltLayer | RemoteLayer | None = None
        reused = reused_for(layer, perms)
        if reused is not None:
            hit = reused(work_dir)
        if hit is None and options.cache is not None:
            hit = options.cache.get(key)
        if hit is None and options.source is not None:
            hit = options.source(key, layer, work_dir)
        cached = hit is not None
        built: BuiltLayer | RemoteLayer
        if hit is not None:
            built = hit
        elif options.cache is None:
            built = build(work_dir)
        else:
            built = options.cache.get_or_build(key, build)
        built = finished(layer, built)
        report(index, built, cached, started)
        return key, built

    # Each layer's key, and the hits the cache hands out without reading a blob, on this
    # thread: a warm rebuild finds its unchanged layers with a few system calls each and
    # starts builder threads for the rest only (none for a single layer).
    done: dict[int, tuple[str, BuiltLayer | RemoteLayer]] = {}
    rest: dict[int, tuple[str, dict[str, object]]] = {}
    for index, layer in enumerate(planned):
        started = time.perf_counter()
        perms = _perms_part(layer, options)
        key = _store_key(layer, options, perms)
        reusable = reused_for(layer, perms) is not None
        hit = None if reusable or options.cache is None else options.cache.get_unread(key)
        if hit is None:
            rest[index] = key, perms
            continue
        done[index] = key, finished(layer, hit)
        report(index, done[index][1], True, started)
    top = customisation if customisation is not None and not customisation.is_empty else None

    def build_top() -> tuple[str, BuiltLayer | RemoteLayer]:
        assert top is not None  # (only called with a customisation layer to make)
        started = time.perf_counter()
        key, layer, reused = customisation_layer(
            top,
            compression=options.compression,
            level=options.level,
            mtime=options.mtime,
            work_dir=work_dir,
            source=options.source,
        )
        if progress is not None:
            seconds = time.perf_counter() - started
            size = layer.size
            progress(LayerEvent(total - 1, total, layer, reused, seconds, size, total_size + size))
        return key, layer

    work: dict[int, Callable[[], tuple[str, BuiltLayer | RemoteLayer]]] = {
        index: functools.partial(one, index, *rest[index]) for index in rest
    }
    # With several store layers to build, the customisation layer is built by the pool too,
    # last (size 0), beside the last store layers rather than after them (issue 11: a cold
    # build's tail); else after them, so that a single changed layer has every CPU.
    top_index = len(planned)
    if top is not None and len(rest) > 1:
        work[top_index] = build_top
    # the CPUs shared among the builders from the start (see layerbuild.sharing_cpus)
    with sharing_cpus(min(options.jobs, len(rest))):
        done.update(
            run_layers(
                work,
                sizes=[*(layer.size for layer in planned), 0],
                jobs=options.jobs,
                bottom_first=options.bottom_first,
            )
        )
    layers = [done[index] for index in range(len(planned))]
    if options.cache is not None:
        # also after a build that was all hits: the limit may have shrunk, or others filled it
        options.cache.trim()
    if top is not None:
        layers.append(done[top_index] if top_index in done else build_top())
    return layers


#: The name of scratch directories: ``$TMPDIR/closurepack-<pid>-<random>``.
_SCRATCH = "closurepack-"


@contextlib.contextmanager
def scratch_dir(parent: Path | None = None) -> Iterator[Path]:
    """A work directory for blobs that are not cached (customisation layer, no-cache builds),
    in ``parent`` (default: ``$TMPDIR``), flock-held while it exists and removed afterwards.
    First the scratch directories that killed runs left there are swept (see
    :func:`closurepack._fs.sweep_stale_temp_dirs`)."""
    where = parent if parent is not None else Path(tempfile.gettempdir())
    sweep_stale_temp_dirs(where, _SCRATCH, before=fs_now())
    with locked_temp_dir(where, _SCRATCH) as work:
        yield work


def read_descriptors(paths: Sequence[Path]) -> list[BuiltLayer]:
    """The layers that ``build-layer`` descriptors (files, or directories holding
    ``layer.json``) describe, each blob checked: it exists, has the size and the digest its
    descriptor gives. Any mismatch is an ImageError naming the descriptor."""
    layers = []
    for path in paths:
        descriptor = path / "layer.json" if path.is_dir() else path
        try:
            text = descriptor.read_bytes()
        except OSError as exc:
            raise ImageError(f"{descriptor}: cannot read: {exc.strerror}") from exc
        layer = BuiltLayer.from_json(text, source=descriptor)
        _check_blob(layer, descriptor)
        layers.append(layer)
    return layers


def _check_blob(layer: BuiltLayer, descriptor: Path) -> None:
    try:
        size = layer.blob_path.stat().st_size
        if size != layer.size:
            raise ImageError(
                f"{descriptor}: blob {layer.blob_path} is {size} bytes, the descriptor says"
                f" {layer.size}"
            )
        with layer.open() as blob:
            digest, _ = hash_stream(blob)
    except OSError as exc:
        raise ImageError(
            f"{descriptor}: cannot read blob {layer.blob_path}: {exc.strerror}"
        ) from exc
    if digest != layer.digest:
        raise ImageError(
            f"{descriptor}: blob {layer.blob_path} has digest {digest}, the"
            f" descriptor says {layer.digest}"
        )
