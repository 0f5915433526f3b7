"""Destinations: parse a destination string and write an image there."""

from __future__ import annotations

import sys
from typing import BinaryIO

from closurepack.destinations import docker_archive, oci_archive, oci_layout
from closurepack.destinations.reference import (
    Destination,
    docker_repo_tag,
    oci_ref_name,
    parse_destination,
    parse_repo_tag,
)
from closurepack.errors import DestinationError
from closurepack.image import Image

__all__ = [
    "Destination",
    "docker_repo_tag",
    "oci_ref_name",
    "parse_destination",
    "parse_repo_tag",
    "write_image",
]


def write_image(
    image: Image,
    dest: Destination | str,
    *,
    tag: str | None = None,
    stream: BinaryIO | None = None,
) -> None:
    """Write ``image`` to ``dest`` (a :class:`Destination` or a destination string).

    ``tag`` is ``--tag NAME:TAG``, used when the destination names no tag itself. For ``-``
    the docker-archive goes to ``stream`` (default: standard output's binary buffer).
    """
    if isinstance(dest, str):
        dest = parse_destination(dest)
    if dest.kind == "docker-archive":
        docker_archive.write_image(image, dest, tag=tag)
    elif dest.kind == "oci":
        oci_layout.write_image(image, dest, tag=tag)
    elif dest.kind == "oci-archive":
        oci_archive.write_image(image, dest, tag=tag)
    elif dest.kind == "stdout":
        out = stream if stream is not None else sys.stdout.buffer
        isatty = getattr(out, "isatty", None)
        if isatty is not None and isatty():
            raise DestinationError("standard output is a terminal: redirect the image archive")
        try:
            docker_archive.write_stream(image, out, repo_tag=docker_repo_tag(dest, tag))
            out.flush()
        except OSError as exc:
            raise DestinationError(f"standard output: cannot write image: {exc}") from exc
    else:
        raise DestinationError(f"{dest}: unknown destination kind {dest.kind!r}")
