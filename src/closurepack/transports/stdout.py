"""``-`` transport: a docker-archive streamed to standard output in one pass (write only)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import BinaryIO

from closurepack.errors import DestinationError
from closurepack.image import Image
from closurepack.transports import docker_archive
from closurepack.transports.reference import Destination, docker_repo_tags

__all__ = ["check_destination", "write_image"]


def _stdout(stream: BinaryIO | None) -> BinaryIO:
    return stream if stream is not None else sys.stdout.buffer


def _is_terminal(out: BinaryIO) -> bool:
    isatty = getattr(out, "isatty", None)
    return bool(isatty is not None and isatty())


def check_destination(stream: BinaryIO | None = None) -> None:
    """Refuse a terminal: an image archive is no thing to show (``stream`` default: standard
    output's binary buffer)."""
    if _is_terminal(_stdout(stream)):
        raise DestinationError("standard output is a terminal: redirect the image archive")


def write_image(
    image: Image,
    dest: Destination,
    *,
    tags: Sequence[str] = (),
    name: str | None = None,
    stream: BinaryIO | None = None,
) -> None:
    """Stream ``image`` as a docker-archive to ``stream`` (default: standard output's binary
    buffer), named as :func:`docker_repo_tags` says."""
    out = _stdout(stream)
    if _is_terminal(out):
        raise DestinationError("standard output is a terminal: redirect the image archive")
    try:
        repo_tags = docker_repo_tags(dest, tags, name=name)
        docker_archive.write_stream(image, out, repo_tags=repo_tags)
        out.flush()
    except OSError as exc:
        raise DestinationError(f"standard output: cannot write image: {exc}") from exc
