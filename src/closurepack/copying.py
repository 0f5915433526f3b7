"""``closurepack copy SRC DEST``: an image from any transport to any other, blobs byte for byte.

Layer blobs are never changed, so their digests and the config's ``diff_ids`` stay what they
were; the config is copied byte for byte too (Docker's and OCI's image configs are the same
JSON). What may change is the manifest: file transports hold OCI manifests (a Docker one read
from a registry is rewritten with OCI media types, a docker-archive gets one made as a build
makes it), and a registry gets the source's manifest as it is, or one of the flavour
``--format`` asks for. Blobs the destination holds already are not written again: a registry
is asked first (``HEAD``) and, within one registry, mounts them from the source repository; an
OCI layout keeps the good blobs it has.

The artifacts that refer to the image (its SBOMs; of an index, each platform image's) go with
it by default (``carry_artifacts``): read whole from the source's layout index or referrers
(within :mod:`closurepack.registry.referrers`'s limits), written byte for byte where the image's
manifest is kept (with the subject rewritten where it was converted), each listed in the
destination's index or referrers (the ``sha256-<hex>`` fallback tag). A docker-archive (and
``-``) holds no artifacts: they are left behind with one warning. Artifacts of the index
itself, and any whose subject is another image, are not copied.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Literal

from closurepack.artifacts import CarriedArtifact
from closurepack.digest import Digest
from closurepack.errors import ImageError, OptionError
from closurepack.image import Image, manifest_for
from closurepack.imageindex import ImageIndex
from closurepack.mediatypes import MediaType
from closurepack.platforms import Platform
from closurepack.readback import image_from_raw
from closurepack.referrers import attached_artifacts, carried_artifacts
from closurepack.registry import RegistryOptions, RegistryRef
from closurepack.transports import (
    Destination,
    RawImage,
    RawIndex,
    WriteOptions,
    attaches_artifacts,
    check_destination,
    check_index_destination,
    is_registry_reference,
    parse_reference,
    parse_repo_tag,
    parse_source,
    read_image_or_index,
    read_raw,
    write_image,
)

__all__ = ["CopyOptions", "copy_image", "manifest_flavour", "with_flavour"]

_log = logging.getLogger(__name__)
_DOCKER_TYPES = {MediaType.DOCKER_MANIFEST.value, MediaType.DOCKER_CONFIG.value}


@dataclasses.dataclass(frozen=True, kw_only=True)
class CopyOptions:
    """How ``copy`` writes: every ``--tag NAME:TAG`` (as ``build`` takes them), the manifest
    flavour for a registry destination (``None``: the source's), and how registries are
    reached."""

    tags: tuple[str, ...] = ()
    manifest_format: Literal["oci", "docker"] | None = None
    registry: RegistryOptions = dataclasses.field(default_factory=RegistryOptions)
    #: Of a multi-platform source, copy only this platform's image (None: every platform's).
    platform: Platform | None = None
    #: Carry the artifacts (SBOMs) whose subject is the image (or each platform image).
    carry_artifacts: bool = True


def manifest_flavour(image: Image) -> Literal["oci", "docker"]:
    """``docker`` for a Docker schema 2 manifest (by its own media type, else its config's),
    ``oci`` otherwise."""
    config = image.manifest.get("config")
    config_type = config.get("mediaType") if isinstance(config, dict) else None
    declared = image.manifest.get("mediaType") or config_type
    return "docker" if declared in _DOCKER_TYPES else "oci"


def with_flavour(image: Image, flavour: Literal["oci", "docker"]) -> Image:
    """``image`` with a manifest of ``flavour``: itself when it has one already (its manifest
    kept byte for byte), else the same config and blobs under a new manifest whose media types
    are converted (see :func:`~closurepack.image.manifest_for`)."""
    if manifest_flavour(image) == flavour:
        return image
    docker = flavour == "docker"
    manifest = manifest_for(image.config_bytes, image.layers, docker=docker)
    return Image(config_bytes=image.config_bytes, manifest_bytes=manifest, layers=image.layers)


def _check_declared(raw: RawImage) -> None:
    """An ImageError when the config or manifest bytes are not what the source declares (the
    blobs are checked as they are copied)."""
    for what, data, declared in (
        ("config", raw.config_bytes, raw.config_digest),
        ("manifest", raw.manifest_bytes, raw.manifest_digest),
    ):
        if data is None or declared is None:
            continue
        actual = Digest.of_bytes(data)
        if actual != declared:
            raise ImageError(f"{raw.source}: the {what} has digest {actual}, not {declared}")


def _default_tags(
    source: Destination | RegistryRef, dest: Destination | RegistryRef, tags: tuple[str, ...]
) -> tuple[str, ...]:
    """The tags a docker-archive destination gets when neither it nor ``--tag`` names the
    image: a registry source's ``HOST/REPO:TAG``, so that ``docker load`` names it so."""
    if tags or not isinstance(source, RegistryRef) or source.tag is None:
        return tags
    if not isinstance(dest, Destination) or dest.kind not in ("docker-archive", "stdout"):
        return tags
    return tags if dest.reference else (f"{source.name}:{source.tag}",)


def _mount_from(source: Destination | RegistryRef, dest: Destination | RegistryRef) -> list[str]:
    """The source's repository when both are in one registry: its blobs are mounted."""
    if not (isinstance(source, RegistryRef) and isinstance(dest, RegistryRef)):
        return []
    return [source.repository] if source.registry == dest.registry else []


def _copied_index(
    index: RawIndex, fmt: Literal["oci", "docker"] | None
) -> tuple[ImageIndex, list[RawImage]]:
    """Every platform's image of ``index`` (blobs as they are), under an index of ``fmt``
    (default: the source's flavour), the source's own bytes kept when nothing changed; and
    each platform's image as stored."""
    docker = index.media_type == MediaType.DOCKER_MANIFEST_LIST if fmt is None else fmt == "docker"
    flavour: Literal["oci", "docker"] = "docker" if docker else "oci"
    images = []
    raws = []
    for platform, raw in index.images():
        raws.append(raw)
        _check_declared(raw)
        images.append((platform, with_flavour(image_from_raw(raw), flavour)))
    kept = (
        len(images) == len(index.entries)
        and (index.media_type == MediaType.DOCKER_MANIFEST_LIST) == docker
        and all(
            str(image.manifest_digest) == entry.get("digest")
            for (_, image), entry in zip(images, index.entries, strict=True)
        )
    )
    stored = index.index_bytes if kept else None
    return ImageIndex.of(images, docker=docker, stored=stored), raws


def _artifacts(
    source: str,
    dest: str,
    copied: Sequence[tuple[RawImage, Image]],
    options: CopyOptions,
) -> Mapping[Digest, list[CarriedArtifact]]:
    """The source's artifacts of each copied image, by the copied manifest's digest; none
    (with one warning when there are some) for a destination that cannot hold them."""
    if not options.carry_artifacts:
        return {}
    subjects = {raw.manifest_digest: image for raw, image in copied if raw.manifest_digest}
    if not attaches_artifacts(dest):
        # only listed, to be counted: their blobs are not read for a copy that drops them
        count = sum(len(attached_artifacts(source, d, registry=options.registry)) for d in subjects)
        if count:
            _log.warning(
                "%s: a docker-archive holds no artifacts: %d artifact(s) of %s not copied"
                " (--no-artifacts: not looked for)",
                dest,
                count,
                source,
            )
        return {}
    found = carried_artifacts(source, list(subjects), registry=options.registry)
    return {subjects[d].manifest_digest: list(v) for d, v in found.items() if v}


def copy_image(source: str, dest: str, *, options: CopyOptions | None = None) -> str:
    """Copy the image at ``source`` to ``dest`` (any two transports; ``dest`` may be ``-``);
    return the destination's manifest digest (``HOST/REPO@DIGEST`` for a registry), as
    ``build`` does.

    Everything about the destination and the options is checked before a blob is read; the
    writes are the transports' (atomic files, layout index last, registry manifest last), so a
    failed copy leaves the destination as it was.
    """
    options = options or CopyOptions()
    source_ref = parse_reference(source) if is_registry_reference(source) else parse_source(source)
    dest_ref = parse_reference(dest, for_push=True)
    for tag in options.tags:
        parse_repo_tag(tag)
    fmt = options.manifest_format
    if fmt not in (None, "oci", "docker"):
        raise OptionError(f"--format {fmt!r}: expected oci or docker")
    to_registry = isinstance(dest_ref, RegistryRef)
    if fmt == "docker" and not to_registry:
        raise OptionError(
            "--format docker is for docker:// destinations (docker-archive is Docker's already)"
        )
    check_destination(dest)
    found: RawImage | RawIndex
    if options.platform:
        found = read_raw(source, registry=options.registry, platform=options.platform)
    else:  # one manifest GET: the index, or the single image it turns out to be
        found = read_image_or_index(source, registry=options.registry)
    if isinstance(found, RawIndex):
        check_index_destination(dest, hint=", or copy one image with --platform OS/ARCH")
        index, raws = _copied_index(found, fmt if to_registry else "oci")
        image: Image | ImageIndex = index
        flavour = "docker" if index.docker else "oci"
        pairs = [(raw, entry.image) for raw, entry in zip(raws, index.images, strict=True)]
        attachments: Mapping[Digest, Sequence[CarriedArtifact]] | Sequence[CarriedArtifact]
        attachments = _artifacts(source, dest, pairs, options)
    else:
        raw = found
        _check_declared(raw)
        image = image_from_raw(raw)
        flavour = (fmt or manifest_flavour(image)) if to_registry else "oci"
        image = with_flavour(image, flavour)
        attachments = _artifacts(source, dest, [(raw, image)], options).get(
            image.manifest_digest, []
        )
    return write_image(
        image,
        dest,
        tags=_default_tags(source_ref, dest_ref, options.tags),
        attachments=attachments,
        options=WriteOptions(
            registry=options.registry,
            docker=flavour == "docker",
            mount_from=_mount_from(source_ref, dest_ref),
        ),
    )
