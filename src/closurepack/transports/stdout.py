"""``-`` transport: a docker-archive streamed to standard output in one pass (write only)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import sys
from collections.abc import Callable, Sequence
from typing import BinaryIO

from closurepack.build import LayerEvent, ProgressCallback
from closurepack.errors import DestinationError
from closurepack.image import Image, ImageLayer
from closurepack.transports import docker_archive
from closurepack.transports.reference import Destination, docker_repo_tags

__all__ = ["PIPE_SIZE", "LayerStreamer", "check_destination", "widen_pipe", "write_image"]


def _stdout(stream: BinaryIO | None) -> BinaryIO:
    return stream if stream is not None else sys.stdout.buffer


#: The pipe buffer asked for on standard output: Linux's default limit for unprivileged
#: processes (``/proc/sys/fs/pipe-max-size``). Blobs go into the pipe by ``sendfile``, which
#: passes page references, not bytes: in a default 64 KiB pipe (16 pages) the writer and the
#: reader wake each other every 64 KiB; in 1 MiB every 256 pages.
PIPE_SIZE = 1 << 20


def widen_pipe(out: BinaryIO, size: int = PIPE_SIZE) -> None:
    """Grow ``out``'s pipe buffer to ``size`` bytes when ``out`` is a pipe with a smaller one
    (never shrink it). Best effort: not a pipe, no ``F_SETPIPE_SZ``, or the user's pipe
    limits reached (EPERM), and the stream goes through the buffer there is."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    get_size = getattr(fcntl, "F_GETPIPE_SZ", None)
    if set_size is None or get_size is None:
        return
    with contextlib.suppress(AttributeError, OSError, ValueError):
        fd = out.fileno()
        if stat.S_ISFIFO(os.fstat(fd).st_mode) and fcntl.fcntl(fd, get_size) < size:
            fcntl.fcntl(fd, set_size, size)


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
    widen_pipe(out)
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
        widen_pipe(self._out)
        self._base = len(base)
        self._archive = docker_archive.ArchiveStream(self._out, created=created, base=base)

    def progress_hook(self, progress: ProgressCallback | None) -> ProgressCallback:
        """A build progress callback that streams each finished layer (when the ones below
        it are out), then reports it to ``progress``."""

        def report(event: LayerEvent) -> None:
            index, total = self._base + event.index, self._base + event.total
            fresh = not event.cached  # written by this build: its pages are dropped once sent
            _writing(lambda: self._archive.add(index, event.layer, total=total, fresh=fresh))
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
