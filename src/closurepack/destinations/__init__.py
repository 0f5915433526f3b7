"""Destinations: parse a destination string and write an image there."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from closurepack._fs import is_special_file
from closurepack.destinations import docker_archive, oci_archive, oci_layout
from closurepack.destinations._files import probe_writable
from closurepack.destinations.reference import (
    Destination,
    docker_repo_tags,
    image_repo_name,
    oci_ref_names,
    parse_destination,
    parse_repo_tag,
)
from closurepack.errors import DestinationError
from closurepack.image import Image

__all__ = [
    "Destination",
    "check_destination",
    "docker_repo_tags",
    "image_repo_name",
    "oci_ref_names",
    "parse_destination",
    "parse_repo_tag",
    "write_image",
]


def _stdout(stream: BinaryIO | None) -> BinaryIO:
    return stream if stream is not None else sys.stdout.buffer


def _is_terminal(out: BinaryIO) -> bool:
    isatty = getattr(out, "isatty", None)
    return bool(isatty is not None and isatty())


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
        oci_layout.check_existing(dest)
        return
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise DestinationError(f"{path}: cannot create: {ancestor} is not a directory")
    probe_writable(ancestor, path, as_dir=True)


def check_destination(dest: Destination | str, *, stream: BinaryIO | None = None) -> Destination:
    """Check everything about ``dest`` that can be checked before an image exists, so that a
    wrong destination fails at once rather than after a long build: standard output is not a
    terminal; the path can be written (by creating and removing a temp file where the writer
    will); an existing file or directory is of the destination's kind. Return it parsed. The
    writers check again when they write."""
    if isinstance(dest, str):
        dest = parse_destination(dest)
    if dest.kind == "stdout":
        if _is_terminal(_stdout(stream)):
            raise DestinationError("standard output is a terminal: redirect the image archive")
        return dest
    path = dest.path
    if path is None:
        raise DestinationError(f"{dest}: needs a path")
    if dest.kind == "oci":
        _check_layout_path(dest, path)
    else:
        _check_archive_path(path)
        if dest.kind == "docker-archive":
            docker_archive.check_existing(dest)  # an old image is replaced, nothing else
        else:
            oci_archive.check_existing(dest)  # tags are added to an existing archive
    return dest


def write_image(
    image: Image,
    dest: Destination | str,
    *,
    tags: Sequence[str] | str = (),
    name: str | None = None,
    stream: BinaryIO | None = None,
    started: float | None = None,
) -> None:
    """Write ``image`` to ``dest`` (a :class:`Destination` or a destination string).

    ``tags`` are the ``--tag NAME:TAG`` options: each is written, after the destination's own
    tag (see :func:`docker_repo_tags`, :func:`oci_ref_names`); with none, a docker-archive is
    named after the image's ``name`` (a plan's or a closure's). For ``-``
    the docker-archive goes to ``stream`` (default: standard output's binary buffer). Temp
    files that writes killed before ``started`` (the job's start; default: now) left at the
    destination are removed.
    """
    if isinstance(dest, str):
        dest = parse_destination(dest)
    if isinstance(tags, str):
        tags = (tags,)
    if dest.kind == "docker-archive":
        docker_archive.write_image(image, dest, tags=tags, name=name, started=started)
    elif dest.kind == "oci":
        oci_layout.write_image(image, dest, tags=tags, started=started)
    elif dest.kind == "oci-archive":
        oci_archive.write_image(image, dest, tags=tags, started=started)
    elif dest.kind == "stdout":
        out = _stdout(stream)
        if _is_terminal(out):
            raise DestinationError("standard output is a terminal: redirect the image archive")
        try:
            repo_tags = docker_repo_tags(dest, tags, name=name)
            docker_archive.write_stream(image, out, repo_tags=repo_tags)
            out.flush()
        except OSError as exc:
            raise DestinationError(f"standard output: cannot write image: {exc}") from exc
    else:
        raise DestinationError(f"{dest}: unknown destination kind {dest.kind!r}")
