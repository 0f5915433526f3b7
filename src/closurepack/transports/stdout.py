"""``-`` transport: a docker-archive streamed to standard output in one pass (write only)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import BinaryIO

from closurepack.build import LayerEvent, ProgressCallback
from closurepack.errors import DestinationError
from closurepack.image import Image, ImageLayer
from closurepack.transports import docker_archive
from closurepack.transports.reference import Destination, docker_repo_tags

__all__ = ["LayerStreamer", "check_destination", "write_image"]


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


def _writing(action: Callable[[], None]) -> None:
    try:
        action()
    except OSError as exc:
        raise DestinationError(f"standard output: cannot write image: {exc}") from exc


class LayerStreamer:
    """``-o -`` while the layers are built: each layer goes to standard output as soon as it
    and every layer below it are ready (see :class:`docker_archive.ArchiveStream`), so the
    reader starts at once instead of after the last layer; :meth:`finish` writes the top
    layer, the config and the manifest. A build that fails midway leaves a cut-off archive
    (and a non-zero exit status) behind: a stream cannot be taken back.

    ``created`` is the RFC 3339 creation time the image's config will have; ``base`` the
    ``--from`` layers below the ones built.
    """

    def __init__(
        self,
        dest: Destination,
        *,
        created: str,
        base: Sequence[ImageLayer] = (),
        stream: BinaryIO | None = None,
    ) -> None:
        self._dest = dest
        self._out = _stdout(stream)
        self._base = len(base)
        self._archive = docker_archive.ArchiveStream(self._out, created=created, base=base)

    def progress_hook(self, progress: ProgressCallback | None) -> ProgressCallback:
        """A build progress callback that streams each finished layer (when the ones below
        it are out), then reports it to ``progress``."""

        def report(event: LayerEvent) -> None:
            index, total = self._base + event.index, self._base + event.total
            _writing(lambda: self._archive.add(index, event.layer, total=total))
            if progress is not None:
                progress(event)

        return report

    def finish(self, image: Image, *, tags: Sequence[str] = (), name: str | None = None) -> None:
        """Write what is left of ``image`` (named as :func:`docker_repo_tags` says)."""
        repo_tags = docker_repo_tags(self._dest, tags, name=name)

        def rest() -> None:
            self._archive.finish(image, repo_tags=repo_tags)
            self._out.flush()

        _writing(rest)
