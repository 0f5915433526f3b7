"""Transports: one module per kind of image store, each with the same verbs (``read_image``,
``write_image`` and, where a write can be checked ahead, ``check_destination``), as
go-containerregistry's remote/layout/tarball; this package dispatches on the reference's kind.

=====================  ==========================  =====================================
reference              module                      notes
=====================  ==========================  =====================================
``docker-archive:``    :mod:`.docker_archive`      ``docker save``'s tar, no manifest
``oci:``               :mod:`.oci_layout`          a layout directory shared by tags
``oci-archive:``       :mod:`.oci_archive`         the same in one tar
``-``                  :mod:`.stdout`              a docker-archive streamed (write only)
``docker://``          :mod:`.registry`            over the ``registry`` package
=====================  ==========================  =====================================
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from closurepack._fs import is_special_file
from closurepack.blobstamp import BlobStamps
from closurepack.errors import DestinationError, InputError, OptionError, SourceError
from closurepack.image import Image
from closurepack.registry import RegistryOptions, is_registry_reference
from closurepack.transports._files import probe_writable
from closurepack.transports._raw import (
    RawBlob,
    RawImage,
    RawIndex,
    as_source_error,
    sniff_media_type,
)
from closurepack.transports.reference import (
    Destination,
    docker_repo_tags,
    image_repo_name,
    oci_ref_names,
    parse_destination,
    parse_repo_tag,
)

if TYPE_CHECKING:  # (a multi-platform image, or one platform asked for: imported where made)
    from closurepack.imageindex import Attachments, ImageIndex
    from closurepack.platforms import Platform
    from closurepack.registry import RegistryRef
    from closurepack.transports.layoutstaging import LayoutStaging

__all__ = [
    "INDEX_KINDS",
    "Destination",
    "RawBlob",
    "RawImage",
    "RawIndex",
    "WriteOptions",
    "as_source_error",
    "attaches_artifacts",
    "check_destination",
    "check_index_destination",
    "docker_repo_tags",
    "image_repo_name",
    "is_registry_reference",
    "oci_ref_names",
    "parse_destination",
    "parse_reference",
    "parse_repo_tag",
    "parse_source",
    "read_image_or_index",
    "read_index",
    "read_raw",
    "sniff_media_type",
    "write_image",
]


def parse_reference(text: str, *, for_push: bool = False) -> Destination | RegistryRef:
    """A reference of any transport: a :class:`~closurepack.registry.RegistryRef` for
    ``docker://`` (a tag, not a digest, with ``for_push``), else a :class:`Destination`; an
    OptionError naming ``text`` when it is neither."""
    if is_registry_reference(text):
        from closurepack.registry import parse_reference as parse_registry  # noqa: PLC0415 - docker:// only (RegistryRef)

        return parse_registry(text, for_push=for_push)
    return parse_destination(text)


#: The destination kinds that can hold a multi-platform image (an image index).
INDEX_KINDS = ("oci", "oci-archive", "docker")


def check_index_destination(dest: str, *, hint: str = "") -> None:
    """An OptionError when ``dest`` cannot hold a multi-platform image: a docker-archive
    (``docker save``'s format, and so ``-``) has no image index. ``hint`` ends the message."""
    kind = "docker" if is_registry_reference(dest) else parse_destination(dest).kind
    if kind not in INDEX_KINDS:
        raise OptionError(
            f"{dest}: a docker-archive holds one image, not a multi-platform index;"
            f" write it to oci:, oci-archive: or docker://{hint}"
        )


def _check_archive_path(path: Path) -> None:
    if path.is_dir():
        raise DestinationError(f"{path}: is a directory, expected an archive file path")
    if is_special_file(path):  # a device or a fifo is written to as it is
        if not os.access(path, os.W_OK):
            raise DestinationError(f"{path}: cannot write: permission denied")
        return
    if not path.parent.is_dir():
        raise DestinationError(f"{path}: cannot write: no directory {path.parent}")
    probe_writable(path.parent, path)


def _check_layout_path(dest: Destination, path: Path) -> None:
    if path.exists():
        from closurepack.transports import oci_layout  # noqa: PLC0415 - oci: only

        oci_layout.check_existing(dest)
        return
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise DestinationError(f"{path}: cannot create: {ancestor} is not a directory")
    probe_writable(ancestor, path, as_dir=True)


def check_destination(
    dest: Destination | str, *, stream: BinaryIO | None = None
) -> Destination | RegistryRef:
    """Check everything about ``dest`` that can be checked before an image exists, so that a
    wrong destination fails at once rather than after a long build: standard output is not a
    terminal; the path can be written (by creating and removing a temp file where the writer
    will); an existing file or directory is of the destination's kind; a registry reference
    names a tag (the registry is asked when the image is pushed). Return it parsed. The
    writers check again when they write."""
    if isinstance(dest, str):
        if is_registry_reference(dest):
            from closurepack.transports import registry as _registry  # noqa: PLC0415 - the HTTP stack, loaded for docker:// only

            return _registry.check_destination(dest)
        dest = parse_destination(dest)
    if dest.kind == "stdout":
        from closurepack.transports import stdout  # noqa: PLC0415 - -o - only

        stdout.check_destination(stream)
        return dest
    path = dest.path
    if path is None:
        raise DestinationError(f"{dest}: needs a path")
    if dest.kind == "oci":
        _check_layout_path(dest, path)
    else:
        _check_archive_path(path)
        if dest.kind == "docker-archive":
            from closurepack.transports import docker_archive  # noqa: PLC0415 - docker-archive:

            docker_archive.check_existing(dest)  # an old image is replaced, nothing else
        else:
            from closurepack.transports import oci_archive  # noqa: PLC0415 - oci-archive: only

            oci_archive.check_existing(dest)  # tags are added to an existing archive
    return dest


@dataclasses.dataclass(frozen=True, kw_only=True)
class WriteOptions:
    """How :func:`write_image` writes, besides what and where: ``name`` names a docker-archive
    that has no tags (a plan's or a closure's); ``stream`` takes ``-``'s docker-archive (default:
    standard output's binary buffer); temp files that writes killed before ``started`` (the
    job's start; default: now) left at the destination are removed; a registry is reached with
    ``registry``, gets the Docker schema 2 manifest with ``docker`` and has the blobs of its
    repositories ``mount_from`` mounted rather than uploaded; ``stamps`` spare rewriting or
    rehashing unchanged blobs of an ``oci:`` layout (see :func:`oci_layout.write_blobs`);
    ``staging`` holds the layer blobs a build placed in that layout while it ran (see
    :mod:`closurepack.transports.layoutstaging`), moved into place."""

    name: str | None = None
    stream: BinaryIO | None = None
    started: float | None = None
    registry: RegistryOptions | None = None
    docker: bool = False
    mount_from: Sequence[str] = ()
    stamps: BlobStamps | None = None
    staging: LayoutStaging | None = None


def write_image(
    image: Image | ImageIndex,
    dest: Destination | str,
    *,
    tags: Sequence[str] | str = (),
    attachments: Attachments = (),
    options: WriteOptions | None = None,
) -> str:
    """Write ``image`` to ``dest`` (a :class:`Destination` or a destination string); return
    its manifest digest (``HOST/REPO@DIGEST`` for a registry).

    ``tags`` are the ``--tag NAME:TAG`` options: each is written, after the destination's own
    tag (see :func:`docker_repo_tags`, :func:`oci_ref_names`); with none, a docker-archive is
    named after ``options.name``. ``attachments`` go with the
    image (each platform's image, of an index) as artifacts whose subject is its manifest,
    where :func:`attaches_artifacts`. A multi-platform image (an :class:`ImageIndex`) goes to
    ``oci:``, ``oci-archive:`` and registries only. ``options``: see :class:`WriteOptions`.
    """
    opts = options or WriteOptions()
    name, stream, started = opts.name, opts.stream, opts.started
    if isinstance(tags, str):
        tags = (tags,)
    if attachments and not attaches_artifacts(dest):
        raise DestinationError(f"{dest}: takes no attached artifacts (oci:, oci-archive: and"
                               " docker:// do)")  # fmt: skip
    if isinstance(dest, str) and is_registry_reference(dest):
        from closurepack.transports import registry as _registry  # noqa: PLC0415 - the HTTP stack, loaded for docker:// only

        ref = _registry.check_destination(dest)
        pushed = _registry.write_image(
            image,
            ref,
            options=opts.registry or RegistryOptions(),
            tags=_registry_tags(ref, tags),
            docker=opts.docker,
            mount_from=opts.mount_from,
            attachments=attachments,
        )
        return f"{ref.name}@{pushed}"
    if isinstance(dest, str):
        dest = parse_destination(dest)
    if not isinstance(image, Image):  # an ImageIndex
        check_index_destination(str(dest))
        from closurepack.transports import oci_archive, oci_layout  # noqa: PLC0415 - OCI only

        if dest.kind == "oci":
            oci_layout.write_image(
                image,
                dest,
                tags=tags,
                started=started,
                attachments=attachments,
                staging=opts.staging,
            )
        else:
            oci_archive.write_image(
                image, dest, tags=tags, started=started, attachments=attachments
            )
        return str(image.digest)
    if dest.kind == "docker-archive":
        from closurepack.transports import docker_archive  # noqa: PLC0415 - docker-archive: only

        docker_archive.write_image(image, dest, tags=tags, name=name, started=started)
    elif dest.kind == "oci":
        from closurepack.transports import oci_layout  # noqa: PLC0415 - oci: only

        oci_layout.write_image(
            image,
            dest,
            tags=tags,
            started=started,
            attachments=attachments,
            stamps=opts.stamps,
            staging=opts.staging,
        )
    elif dest.kind == "oci-archive":
        from closurepack.transports import oci_archive  # noqa: PLC0415 - oci-archive: only

        oci_archive.write_image(image, dest, tags=tags, started=started, attachments=attachments)
    elif dest.kind == "stdout":
        from closurepack.transports import stdout  # noqa: PLC0415 - -o - only

        stdout.write_image(image, dest, tags=tags, name=name, stream=stream)
    else:
        raise DestinationError(f"{dest}: unknown destination kind {dest.kind!r}")
    return str(image.manifest_digest)


def attaches_artifacts(dest: Destination | str) -> bool:
    """Whether ``dest`` can hold artifacts attached to its image (an SBOM): an ``oci:``
    layout, an ``oci-archive:`` or a registry (see :mod:`closurepack.registry.referrers`)."""
    if isinstance(dest, str):
        if is_registry_reference(dest):
            return True
        dest = parse_destination(dest)
    return dest.kind in ("oci", "oci-archive")


def _registry_tags(ref: RegistryRef, tags: Sequence[str]) -> list[str]:
    """The tags a registry destination is pushed under: its own, then the tag part of every
    ``--tag NAME:TAG`` (as for oci), each once; ``latest`` when there is none."""
    found = [ref.tag] if ref.tag else []
    found.extend(parse_repo_tag(tag)[1] for tag in tags)
    return list(dict.fromkeys(found)) or ["latest"]


def parse_source(text: str) -> Destination:
    """Parse an image source string (the destination syntax, without ``-``)."""
    try:
        source = parse_destination(text)
    except OptionError as exc:
        raise SourceError(
            f"image {text!r}: expected docker-archive:PATH, oci:DIR[:TAG] or oci-archive:PATH[:TAG]"
        ) from exc
    if source.kind == "stdout" or source.path is None:
        raise InputError(f"{text!r}: cannot read an image from standard output")
    return source


def read_raw(
    source: str, *, registry: RegistryOptions | None = None, platform: Platform | None = None
) -> RawImage:
    """Read the stored structure of the image at ``source`` (of a multi-platform image: the
    one for ``platform``, by default this host's); nothing is verified (blobs read from a
    registry are checked against their digests as they stream).

    What cannot be found or read is a SourceError (the image is where the user said it is or
    not: bad input), what is there but malformed an ImageError."""
    if is_registry_reference(source):
        from closurepack.transports import registry as _registry  # noqa: PLC0415 - the HTTP stack, loaded for docker:// only

        return _registry.read_image(source, registry, platform=platform)
    where, path = _source_path(source)
    with as_source_error():
        if where.kind == "docker-archive":
            from closurepack.transports import docker_archive  # noqa: PLC0415 - docker-archive:

            return docker_archive.read_image(where, path, source)
        from closurepack.transports import oci_archive, oci_layout  # noqa: PLC0415 - OCI only

        if where.kind == "oci":
            return oci_layout.read_image(where, path, source, platform=platform)
        return oci_archive.read_image(where, path, source, platform=platform)


def read_index(source: str, *, registry: RegistryOptions | None = None) -> RawIndex | None:
    """The multi-platform image at ``source`` (its index, and a reader of each image), as
    stored; None when ``source`` names a single image (a docker-archive always does)."""
    if is_registry_reference(source):
        from closurepack.transports import registry as _registry  # noqa: PLC0415 - the HTTP stack, loaded for docker:// only

        return _registry.read_index(source, registry)
    where, path = _source_path(source)
    with as_source_error():
        if where.kind == "docker-archive":
            return None
        from closurepack.transports import oci_archive, oci_layout  # noqa: PLC0415 - OCI only

        if where.kind == "oci":
            return oci_layout.read_index(where, path, source)
        return oci_archive.read_index(where, path, source)


def read_image_or_index(
    source: str, *, registry: RegistryOptions | None = None
) -> RawImage | RawIndex:
    """The multi-platform image at ``source`` as :func:`read_index` gives it, else the single
    image as :func:`read_raw` does; a registry is asked for the manifest once."""
    if is_registry_reference(source):
        from closurepack.transports import registry as _registry  # noqa: PLC0415 - the HTTP stack, loaded for docker:// only

        return _registry.read_image_or_index(source, registry)
    return read_index(source, registry=registry) or read_raw(source, registry=registry)


def _source_path(source: str) -> tuple[Destination, Path]:
    where = parse_source(source)
    path = Path(str(where.path))
    if not path.exists():
        raise SourceError(f"{source}: no such image: {path} does not exist")
    return where, path
