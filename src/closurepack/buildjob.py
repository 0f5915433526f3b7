"""The build job: closure or plan -> layers (through the caches) -> image -> any transport,
with every check that can be made before a layer is built."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from closurepack.build import (
    BuildOptions,
    ProgressCallback,
    build_keyed_layers,
    scratch_dir,
)
from closurepack.buildoptions import BuildInput, LayerOptions
from closurepack.buildplan import plan_build
from closurepack.cache import LayerCache
from closurepack.cachedir import default_cache_dir
from closurepack.customisation import (
    Customisation,
    customisation_entries,
)
from closurepack.delivery import (
    Delivery,
    ImageTarget,
    image_pusher,
    image_staging,
    image_streamer,
    warn_if_no_command,
    write_or_push,
)
from closurepack.errors import (
    CacheError,
    OptionError,
)
from closurepack.graph import Closure
from closurepack.image import (
    BaseImage,
    Image,
    ImageConfig,
    assemble_image,
)
from closurepack.jobsetup import (
    ImageOptions,
    drop_repeated_customisation,
    fit_customisation,
    prepare_image,
    requested_platform,
)
from closurepack.layer import BuiltLayer
from closurepack.options import parse_size
from closurepack.plan import ImagePlan
from closurepack.plancache import keep_plan
from closurepack.registry import RegistryOptions, is_registry_reference
from closurepack.registry.record import RECORD_NAME
from closurepack.workflow import (
    select_image,
)

if TYPE_CHECKING:  # (imported where used: a plain build needs none of them)
    from closurepack.artifacts import Attachment
    from closurepack.imageindex import ImageIndex
    from closurepack.platforms import Platform
    from closurepack.remotelayer import RemoteLayer
    from closurepack.sbomjob import SbomJob
    from closurepack.sources.narhash import NarDigests
    from closurepack.tarentries import TreeEntry

__all__ = [
    "build_image",
]

_log = logging.getLogger(__name__)


def build_image(
    build_input: BuildInput,
    *,
    dest: str,
    layer_options: LayerOptions = LayerOptions(),
    image: ImageOptions = ImageOptions(),
    registry: RegistryOptions | None = None,
    progress: ProgressCallback | None = None,
) -> str:
    """The whole build of ``build_input`` (what the image is made of), its layers made as
    ``layer_options`` says: returns the manifest digest of the image written to ``dest``
    (``HOST/REPO@DIGEST`` for a registry, where the layers are pushed as they are built).

    ``image`` is everything the image gets beyond its store layers, ``registry`` how
    registries are reached. ``build_input.platforms`` make a multi-platform image: one image
    per platform, their closures planned together, under an image index (a Docker manifest
    list with ``manifest_format="docker"``) whose digest is returned.
    Everything is checked before any layer is built; the destination is written last, atomically.
    """
    # the options, under the names the steps below use
    what, how = build_input, layer_options
    store_paths, closure_files, store_root = what.store_paths, what.closure_files, what.store_root
    plan_file, image_selector, platforms = what.plan_file, what.image_selector, what.platforms
    store_db, sbom = what.store_db, what.sbom
    compression, level, jobs, no_cache = how.compression, how.level, how.jobs, how.no_cache
    cache_dir, cache_max_size, cache_verify = how.cache_dir, how.cache_max_size, how.cache_verify
    cache_from, cache_to = how.cache_from, how.cache_to
    started = time.time()  # temp files older than this, and unlocked, are debris to sweep
    if platforms:  # (multiarch: only for --platform)
        from closurepack.multiarch import (  # noqa: PLC0415 - only for --platform
            check_platform_build,
            parse_platform_closure,
        )

        targets = [parse_platform_closure(text) for text in platforms]
        check_platform_build(
            targets,
            dest=dest,
            store_paths=store_paths,
            closure_files=closure_files,
            plan_file=plan_file,
            image_selector=image_selector,
            arch=image.arch,
        )
    else:
        targets = []
    cache_limit = parse_size(cache_max_size)
    registry = registry or RegistryOptions()
    wanted_platforms: list[Platform | None] = [t.platform for t in targets] or [None]
    prepared = [
        prepare_image(
            image,
            dest=dest,
            compression=compression,
            level=level,
            registry=registry,
            platform=platform,
        )
        for platform in wanted_platforms
    ]
    for target, (_, _, base) in zip(targets, prepared, strict=False):
        if base is not None and image.from_image is not None:
            from closurepack.multiarch import warn_foreign_base  # noqa: PLC0415 - --platform

            warn_foreign_base(target.platform, base.config, image.from_image)
    if is_registry_reference(dest):  # made while the build plans (the push needs it later)
        from closurepack.registry import parse_reference  # noqa: PLC0415 - docker:// only (RegistryRef)
        from closurepack.registry.client import prepare_ssl_context  # noqa: PLC0415 - HTTP stack

        prepare_ssl_context(registry, parse_reference(dest, for_push=True).registry)
    mtime = image.layer_mtime
    if targets and sbom.out is not None:
        raise OptionError("--sbom-out names one file per format: not with --platform")
    planned = plan_build(
        what,
        targets=targets,
        bases=[base for _, _, base in prepared],
        platform=wanted_platforms[0]
        or (requested_platform(prepared[0][0], image) if what.previous else None),
        from_image=image.from_image,
        registry=registry,
        plan_cache=None if no_cache else cache_dir or default_cache_dir(),
    )
    plan, source, limit, whole, provided = (
        planned.plan, planned.source, planned.limit, planned.whole, planned.provided
    )  # fmt: skip
    reuse, key, kept = planned.reuse, planned.key, planned.kept
    if targets:
        image_plans = list(plan.images)
    else:
        image_plans = [select_image(plan, image_selector, source=source)]
    digests: NarDigests | None = None  # an item's files hashed once for SBOM and store database
    if sbom.enabled or store_db is not None:
        from closurepack.sources.narhash import NarDigests  # noqa: PLC0415 - --sbom, --nix-db

        digests = NarDigests(store_root)
    sbom_jobs = []  # one per image (per platform): each describes its own closure
    if sbom.enabled:
        from closurepack.sbomjob import SbomJob  # noqa: PLC0415 - only for --sbom

        for image_plan in image_plans:
            number = _image_number(plan.images, image_plan)
            name = image_plan.name
            assert digests is not None  # (made above for --sbom)
            sbom_jobs.append(SbomJob(sbom, whole[number], name=name, dest=dest, digests=digests))
    jobs_of: list[tuple[ImagePlan, ImageConfig, Customisation, BaseImage | None]] = []
    for image_plan, (config, wanted, base) in zip(image_plans, prepared, strict=True):
        customisation = dataclasses.replace(wanted, store_dir=plan.store_dir)
        if store_db is not None:
            number = _image_number(plan.images, image_plan)
            assert digests is not None  # (made above for --nix-db, --guix-db)
            entries = _store_db_entries(
                store_db,
                closures=[whole[number]] if targets else whole,
                provided=provided[number] if provided else set(),
                image=image_plan,
                digests=digests,
                mtime=mtime,
                source=source,
            )
            customisation = dataclasses.replace(customisation, store_db=entries)
        customisation_entries(customisation)  # nothing over the store in use
        if customisation.fakeroot_script is not None:
            from closurepack.fakeroot import run_fakeroot_script  # noqa: PLC0415 - subprocess

            customisation = run_fakeroot_script(customisation)
        customisation = fit_customisation(
            drop_repeated_customisation(customisation, base=base, mtime=mtime),
            base=len(base.layers) if base else 0,
            store=len(image_plan.layers),
            limit=limit,
            source=source,
        )
        jobs_of.append((image_plan, config, customisation, base))

    cache = None if no_cache else _open_cache(cache_dir, max_bytes=cache_limit, verify=cache_verify)
    if cache is not None and key is not None and kept is None:
        keep_plan(cache.root, key, plan)  # for the next build of this closure
    if cache is not None and registry.blob_record is None:
        # where pushed blobs were seen, for cross-repository mounts, lives beside the layers
        registry = dataclasses.replace(registry, blob_record=cache.root / RECORD_NAME)
    shared = None
    if cache_from or cache_to:
        from closurepack.registry.layercache import SharedLayerCache  # noqa: PLC0415 - HTTP stack

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
        perms=image.perms,
    )
    all_bases = [base for _, _, _, base in jobs_of if base is not None]
    stamps = cache.stamps if cache is not None else None
    # The cache is closed after the destination is written: until then no other process
    # evicts the layers it is linking or copying. An oci: layout's blobs are staged there
    # as their layers are built (removed again if the build fails).
    with (
        cache or contextlib.nullcontext(),
        scratch_dir() as work,
        image_pusher(dest, image, registry, all_bases, shared) as pusher,
        image_staging(dest, stamps, started=started) as staging,
    ):
        if shared is not None:
            layer_source = shared.source(compression=compression, cache=cache, pusher=pusher)
            options = dataclasses.replace(options, source=layer_source)
        hook = pusher.progress_hook(progress) if pusher else progress
        # -o -: layers go out as they are built, bottom first (one image: an index is refused)
        streamer = None if targets else image_streamer(dest, jobs_of[0][1], jobs_of[0][3])
        if streamer is not None:
            options = dataclasses.replace(options, bottom_first=True)
            hook = streamer.progress_hook(hook)
        if staging is not None:
            hook = staging.progress_hook(hook)
        images = []
        published: list[tuple[str, BuiltLayer | RemoteLayer]] = []
        for image_plan, config, customisation, base in jobs_of:
            keyed = build_keyed_layers(
                image_plan,
                options=options,
                work_dir=Path(work),
                customisation=customisation,
                progress=hook,
                reuse=reuse,
            )
            layers = [layer for _, layer in keyed]
            images.append(assemble_image(layers, config=config, base=base))
            published.extend(keyed)
        warn_if_no_command(images[0], dest)
        built: Image | ImageIndex = images[0]
        if targets:
            from closurepack.imageindex import ImageIndex  # noqa: PLC0415 - only for --platform

            built = ImageIndex.of(
                [(t.platform, i) for t, i in zip(targets, images, strict=True)],
                docker=image.manifest_format == "docker",
            )
        result = write_or_push(
            built,
            target=ImageTarget(
                dest=dest,
                tags=image.tags,
                name=None if targets else image_plans[0].name,
                started=started,
            ),
            delivery=Delivery(
                pusher=pusher,
                streamer=streamer,
                stamps=stamps,
                staging=staging,
                attach=_sbom_attacher(images, sbom_jobs) if sbom_jobs else None,
            ),
        )
        for sbom_job in sbom_jobs:
            sbom_job.write_files()
        if shared is not None:
            shared.publish(list(dict(published).items()), dest=pusher.ref if pusher else None)
        return result


def _store_db_entries(
    kind: str,
    *,
    closures: Sequence[Closure],
    provided: set[str],
    image: ImagePlan,
    digests: NarDigests,
    mtime: int,
    source: str,
) -> tuple[TreeEntry, ...]:
    """The customisation layer's store database for the image planned as ``image``: its
    items (those of its layers, and those of the closure a ``--from`` image already holds),
    with the graph and hashes of ``closures``, or for a plan file (no closures) asked of the
    store that holds them (scanned under ``digests.store_root``); NAR hashes the closures
    lack from ``digests``, shared with the SBOM."""
    from closurepack.sources.query import query_closure  # noqa: PLC0415 - only for --nix-db
    from closurepack.storedb import STORE_DBS, image_closure, store_db_entries  # noqa: PLC0415

    paths = set(image.paths)
    if closures:
        whole = closures[0] if len(closures) == 1 else Closure.union(closures, source=source)
        paths = (paths | provided) & whole.items.keys()
    else:
        whole = query_closure(sorted(paths), store_root=digests.store_root)
    closure = image_closure(whole, sorted(paths), where=source)
    entries = store_db_entries(closure, STORE_DBS[kind], registration_time=mtime, digests=digests)
    return tuple(entries)


def _sbom_attacher(
    images: Sequence[Image], jobs: Sequence[SbomJob]
) -> Callable[[Image], Sequence[Attachment]]:
    """The SBOMs of each image built (``images[i]`` is ``jobs[i]``'s), found by its config
    (an index in Docker's flavour holds converted copies of the images, with their configs)."""
    by_config = {image.config_digest: job for image, job in zip(images, jobs, strict=True)}
    return lambda image: by_config[image.config_digest].attachments(image)


def _image_number(images: Sequence[ImagePlan], image_plan: ImagePlan) -> int:
    """Where ``image_plan`` (the object itself) is in the plan's images: its closure's index."""
    return next(i for i, planned in enumerate(images) if planned is image_plan)


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
