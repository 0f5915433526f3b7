"""What a build or an assemble settles before any layer is built: its options, destination,
tags, level, customisation and the --from image. How it ends (the image written or pushed) is
:mod:`closurepack.delivery`."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from closurepack.build import (
    check_mtime,
    default_mtime,
)
from closurepack.compression import CHUNKED, resolve_level
from closurepack.customisation import (
    Customisation,
    ExtraTree,
    customisation_entries,
    drop_if_repeated,
)
from closurepack.errors import (
    OptionError,
)
from closurepack.image import (
    BaseImage,
    ImageConfig,
)
from closurepack.perms import Perms
from closurepack.registry import RegistryOptions, is_registry_reference
from closurepack.transports import (
    check_destination,
    parse_destination,
    parse_repo_tag,
)

if TYPE_CHECKING:  # (imported where used: they load the HTTP stack)
    from closurepack.platforms import Platform

__all__ = [
    "ImageOptions",
    "check_chunked_destination",
    "check_level",
    "drop_repeated_customisation",
    "fit_customisation",
    "prepare_image",
    "requested_platform",
]

_log = logging.getLogger(__name__)


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
    #: ``--perms`` and ``--uid``/``--gid``: modes and owners by path (store layers, with
    #: ``build``; and the customisation layer).
    perms: Perms | None = None
    #: ``--fakeroot-script``: run on a copy of the customisation tree (see closurepack.fakeroot).
    fakeroot_script: Path | None = None
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
            symlinks=self.symlinks,
            extra_dirs=self.extra_dirs,
            tmp=self.tmp,
            user=self.user,
            perms=self.perms,
            fakeroot_script=self.fakeroot_script,
        )


def _check_destination(dest: str, tags: Sequence[str]) -> None:
    """Check ``dest`` (and every ``--tag``) before any layer is built, so that a wrong
    destination fails at once rather than after a long build (see :func:`check_destination`;
    a registry reference is parsed here and its registry asked in the build)."""
    if is_registry_reference(dest):
        from closurepack.registry import parse_reference, push_tags  # noqa: PLC0415 - docker:// only (RegistryRef)

        push_tags(parse_reference(dest, for_push=True), tags)  # a --tag is TAG or REPO:TAG
        return
    for tag in tags:
        parse_repo_tag(tag)
    check_destination(dest)


def check_chunked_destination(dest: str, manifest_format: str, *, what: str) -> None:
    """OptionError unless ``dest`` keeps the layer descriptors' annotations that zstd:chunked
    layers need (an OCI manifest: oci:, oci-archive:, docker:// without --format docker).
    docker-archive has no layer descriptors, and a Docker manifest is refused rather than
    written with layers that a partial pull could not use."""
    if is_registry_reference(dest):
        if manifest_format == "docker":
            raise OptionError(
                f"{what}: --format docker cannot carry zstd:chunked layers (their table of"
                " contents is found through OCI layer annotations); use --format oci"
            )
        return
    kind = parse_destination(dest).kind
    if kind in ("docker-archive", "stdout"):
        raise OptionError(
            f"{what}: a docker-archive ({dest}) has no layer annotations, which zstd:chunked"
            " layers need; write oci:, oci-archive: or docker://, or use --compression zstd"
        )


def check_level(compression: str, level: int | None) -> None:
    if level is None:
        return
    if compression == "none":
        raise OptionError(f"--level {level}: --compression none takes no level")
    try:
        resolve_level(compression, level)
    except OptionError as exc:
        raise OptionError(f"--level {level}: {exc}") from exc


def fit_customisation(
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
            f" --extra, a named --user, a store database, --fakeroot-script) above {parts}; raise"
            f" --max-layers"
            f" to {total}"
        )
    _log.info("--max-layers %d: no room for the customisation layer; leaving /tmp out", limit)
    return dataclasses.replace(customisation, tmp=False)


def drop_repeated_customisation(
    customisation: Customisation, *, base: BaseImage | None, mtime: int
) -> Customisation:
    top = base.layers[-1].diff_id if base is not None and base.layers else None
    return drop_if_repeated(customisation, top_diff_id=top, mtime=mtime)


def prepare_image(
    image: ImageOptions,
    *,
    dest: str,
    compression: str,
    level: int | None,
    registry: RegistryOptions,
    platform: Platform | None = None,
) -> tuple[ImageConfig, Customisation, BaseImage | None]:
    """Check everything about the image that can be checked before any layer is built (the
    destination and tag, the level, the config fields, --symlink/--extra) and read the --from
    image; return its config, customisation and base image.

    ``platform`` (one image of a multi-platform build) sets the config's os and architecture;
    a multi-platform ``--from`` image gives the base of that platform (else of ``--arch``'s,
    else of the host's)."""
    _check_destination(dest, image.tags)
    if image.manifest_format not in ("oci", "docker"):
        raise OptionError(f"--format {image.manifest_format!r}: expected oci or docker")
    if image.manifest_format == "docker" and not is_registry_reference(dest):
        raise OptionError(
            "--format docker is for docker:// destinations (docker-archive is Docker's already)"
        )
    check_level(compression, level)
    if compression == CHUNKED:
        check_chunked_destination(dest, image.manifest_format, what="--compression zstd:chunked")
    config = image.config()
    if platform is not None:
        config = dataclasses.replace(config, os=platform.os, architecture=platform.arch)
    else:
        platform = requested_platform(config, image)
    check_mtime(image.mtime)  # a bad --mtime fails here
    customisation = image.customisation()
    # a bad --symlink or --extra fails here (--user's files wait for the --from image's)
    customisation_entries(
        dataclasses.replace(customisation, user=None) if image.from_image else customisation
    )
    base = None
    if image.from_image:
        from closurepack.basefiles import with_base_accounts  # noqa: PLC0415 - --from only
        from closurepack.readback import read_base_image  # noqa: PLC0415 - --from only

        base = read_base_image(image.from_image, registry=registry, platform=platform)
        customisation = with_base_accounts(customisation, base.layers, where=str(image.from_image))
        customisation_entries(customisation)  # an --extra /etc/passwd --user now needs fails here
    return config, customisation, base


def requested_platform(config: ImageConfig, image: ImageOptions) -> Platform | None:
    """The platform ``--arch`` asks for, of a multi-platform ``--from`` or ``--previous``
    image (None: the host's, by default)."""
    if not image.arch:
        return None
    from closurepack.platforms import Platform  # noqa: PLC0415 - only with --arch

    return Platform(config.os, config.arch, config.variant)
