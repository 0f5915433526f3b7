"""An ``oci:`` layout's layer blobs placed while the build goes on (issue 11): each layer built
is offered (:meth:`LayoutStaging.progress_hook`), and a few placer threads copy it (a reflink,
else a kernel copy, see :func:`closurepack.transports.layoutblobs.copy_layer`) and fsync it
into a staging directory of the layout, overlapping the builds of the layers still to come.
:func:`~closurepack.transports.layoutblobs.write_blobs` then renames the staged blobs into
``blobs/sha256`` under the layout's lock, before the configs, manifests and ``index.json``:
a cold build no longer ends in a serial tail of copies and disk waits.

Nothing staged is in ``blobs/`` before that, so a build that fails leaves the layout as it
was: the staging directory (``.closurepack-staging-<pid>-<random>`` in the layout, hidden,
flock-held while it exists, see :func:`closurepack._fs.locked_temp_dir`) is removed, and one
a killed build left is swept by the next write (:data:`STAGING_PREFIX`). A layer whose blob
is in the layout already and good (its stamp matches, or it hashes right: then its stamp is
recorded) is not copied."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from closurepack._fs import locked_temp_dir, sweep_stale_temp_dirs
from closurepack.blobstamp import BlobStamps
from closurepack.digest import Digest
from closurepack.errors import DestinationError
from closurepack.image import ImageLayer
from closurepack.transports._files import blob_is_good
from closurepack.transports.layoutblobs import copy_layer

if TYPE_CHECKING:  # (a build's progress events: this module is used by builds only)
    from concurrent.futures import Future, ThreadPoolExecutor

    from closurepack.build import LayerEvent, ProgressCallback

__all__ = [
    "STAGING_PREFIX",
    "LayoutStaging",
    "layout_staging",
]

#: The name of staging directories in a layout: ``.closurepack-staging-<pid>-<random>``.
STAGING_PREFIX = ".closurepack-staging-"

#: Placer threads: a copy is CPU in the kernel, an fsync a wait on the disk; blobs come one
#: at a time as their layers are built, so a few keep the copies from queueing behind waits.
_PLACERS = 4


class LayoutStaging:
    """The layer blobs of one build placed early into the layout at ``root`` (made when the
    first blob is staged), ``stamps`` the records that say which blobs there are good;
    staging directories of builds killed before ``started`` (the job's start) are swept when
    this one's is made. Use it through :func:`layout_staging`, which removes what it
    staged."""

    def __init__(self, root: Path, *, stamps: BlobStamps | None, started: float) -> None:
        self.root = root
        self._stamps = stamps
        self._started = started
        self._lock = threading.Lock()
        self._futures: dict[Digest, Future[Path | None]] = {}
        self._first: ImageLayer | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._dir: Path | None = None
        self._dir_stack = contextlib.ExitStack()
        self._made_root = False
        self._closed = False

    def progress_hook(self, progress: ProgressCallback | None) -> ProgressCallback:
        """A build progress callback that offers each layer this build made (not a cache
        hit: those are placed by ``write_blobs``, most of them kept by their stamps), then
        reports it to ``progress``."""

        def report(event: LayerEvent) -> None:
            if not event.cached:
                self.offer(event.layer)
            if progress is not None:
                progress(event)

        return report

    def offer(self, layer: ImageLayer) -> None:
        """Have ``layer``'s blob placed in the staging directory on a placer thread (once per
        digest), unless its stamp says the layout holds it already (a warm rebuild's
        customisation layer). The first layer offered waits for a second: a build that makes
        only one (a warm rebuild's changed layer) leaves it to ``write_blobs``, and starts
        no thread and no staging directory. The first placement that failed is raised here,
        stopping the build."""
        stamps = self._stamps
        if stamps is not None and stamps.matches(self._target(layer), layer.digest, layer.size):
            return
        with self._lock:
            if self._closed:
                raise DestinationError(f"{self.root}: layout staging is closed")
            for future in self._futures.values():
                if future.done() and future.exception() is not None:
                    future.result()  # (raises it)
            first = self._first
            if layer.digest in self._futures or (
                first is not None and first.digest == layer.digest
            ):
                return
            if self._pool is None or self._dir is None:
                if first is None:
                    self._first = layer
                    return
                from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415 - when used

                self._dir = self._open_dir()
                self._pool = ThreadPoolExecutor(_PLACERS, thread_name_prefix="place")
                self._futures[first.digest] = self._pool.submit(self._place, first, self._dir)
            self._futures[layer.digest] = self._pool.submit(self._place, layer, self._dir)

    def staged(self) -> dict[Digest, Path]:
        """Once every placement offered is done: the staged blobs by digest (a layer whose
        blob was good in the layout already has none, nor a single layer offered). The
        first failure is raised."""
        with self._lock:
            futures = dict(self._futures)
        found = {digest: future.result() for digest, future in futures.items()}
        return {digest: path for digest, path in found.items() if path is not None}

    def close(self, *, failed: bool) -> None:
        """Stop placing (after a failure, the placements not started never start), wait for
        the running ones, and remove the staging directory with what is left in it; after a
        failure also the layout's directory when staging made it and it is empty."""
        with self._lock:
            self._closed = True
            pool = self._pool
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=failed)
        self._dir_stack.close()
        if failed and self._made_root:
            with contextlib.suppress(OSError):
                self.root.rmdir()

    def _target(self, layer: ImageLayer) -> Path:
        return self.root / "blobs" / "sha256" / layer.digest.hex

    def _open_dir(self) -> Path:
        try:
            if not self.root.exists():
                self.root.mkdir(parents=True)
                self._made_root = True
            sweep_stale_temp_dirs(self.root, STAGING_PREFIX, before=self._started)
            return self._dir_stack.enter_context(locked_temp_dir(self.root, STAGING_PREFIX))
        except OSError as exc:
            why = exc.strerror or exc
            raise DestinationError(f"{self.root}: cannot write OCI layout: {why}") from exc

    def _place(self, layer: ImageLayer, directory: Path) -> Path | None:
        """Copy ``layer``'s blob into ``directory`` (fsynced, its name not: it is renamed
        into ``blobs/sha256`` later); None when the layout holds it already, good."""
        target = self._target(layer)
        if blob_is_good(target, layer.digest, layer.size):  # (its stamp did not match)
            if self._stamps is not None:
                self._stamps.record(target, layer.digest)
            return None
        copy_layer(layer, directory)
        return directory / layer.digest.hex


@contextlib.contextmanager
def layout_staging(
    root: Path, *, stamps: BlobStamps | None, started: float
) -> Iterator[LayoutStaging]:
    """A :class:`LayoutStaging` for the layout at ``root`` while the block runs (see the
    class for ``stamps`` and ``started``): when the block fails the layout is left as it
    was (nothing staged reaches ``blobs/``)."""
    staging = LayoutStaging(root, stamps=stamps, started=started)
    try:
        yield staging
    except BaseException:
        staging.close(failed=True)
        raise
    staging.close(failed=False)
