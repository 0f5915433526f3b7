"""Push an image to a registry: blobs first (several at once), the manifest last, every tag.

First the manifest the (first) tag holds now is read (:mod:`closurepack.registry.tagged`).
Every blob is checked with ``HEAD`` (several at a time, over the client's connection pool) and
skipped when the repository has it, even one that manifest names: a blob can be deleted under
a tag that stays, and a re-push is how such an image is repaired. One that the blob record says
lives in another repository of the same registry is mounted from there; anything else is
uploaded. Layers may be handed over while the build is still going
(:meth:`ImagePusher.submit`), so each is pushed as soon as it is built. The manifest goes last,
after every blob it names is in place, so a tag never points at a missing blob; a tag that
already points at the same manifest is left alone (so re-pushing an unchanged image sends
nothing but that ``GET`` and a ``HEAD`` per blob).
"""

from __future__ import annotations

import contextlib
import functools
import io
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from types import TracebackType

from closurepack.build import LayerEvent, ProgressCallback
from closurepack.digest import Digest
from closurepack.errors import RegistryError
from closurepack.image import Image, ImageLayer
from closurepack.imageindex import ImageIndex, as_docker
from closurepack.mediatypes import MediaType
from closurepack.registry.blobs import Opener, blob_exists, mount_blob, upload_blob
from closurepack.registry.client import RegistryClient, open_client
from closurepack.registry.options import RegistryOptions
from closurepack.registry.record import BlobRecord
from closurepack.registry.reference import RegistryRef, is_registry_reference, parse_reference
from closurepack.registry.tagged import TagState, read_tag

__all__ = ["ImagePusher", "open_pusher", "push_image"]

#: Mount sources tried per blob before uploading it.
_MOUNT_TRIES = 2


class ImagePusher:
    """Pushes one image to ``ref`` (tags: ``tags``, default the reference's own tag).

    Use as a context manager: blobs :meth:`submit`-ted are pushed in the background, ``jobs``
    at a time; :meth:`push` pushes what is left, then the config and the manifest.
    ``mount_from`` names repositories of the same registry to be readable for mounts;
    ``readable`` more, to be readable for :meth:`adopt` only.
    """

    def __init__(
        self,
        ref: RegistryRef,
        *,
        options: RegistryOptions,
        tags: Sequence[str] = (),
        docker: bool = False,
        mount_from: Sequence[str] = (),
        readable: Sequence[str] = (),
    ) -> None:
        self.ref = ref
        self.options = options
        self.tags = tuple(tags) or (ref.reference,)
        self.docker = docker
        self.record = BlobRecord(options.blob_record)
        self._mount_from = tuple(r for r in mount_from if r != ref.repository)
        self._readable = tuple(
            dict.fromkeys(r for r in (*self._mount_from, *readable) if r != ref.repository)
        )
        self._stack = ExitStack()
        self._client: RegistryClient | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._futures: dict[Digest, Future[None]] = {}
        self._recorded: set[Digest] = set()  # the blobs the blob record was given
        self._lock = threading.Lock()
        #: What happened to each blob: "present", "mounted" or "uploaded".
        self.outcomes: dict[Digest, str] = {}
        #: The media type and bytes of the last manifest pushed (an artifact's subject).
        self.pushed: tuple[str, bytes] | None = None
        #: What the first tag held when the pusher opened.
        self.tagged = TagState()

    def __enter__(self) -> ImagePusher:
        scopes = [f"repository:{self.ref.repository}:pull,push"]
        scopes += [f"repository:{repo}:pull" for repo in self._readable]
        try:
            self._client = self._stack.enter_context(open_client(self.ref, self.options, scopes))
            self._pool = self._stack.enter_context(
                ThreadPoolExecutor(self.options.jobs, thread_name_prefix="push")
            )
            self.tagged = read_tag(self._client, self.tags[0])
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is not None and self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._stack.close()

    @property
    def client(self) -> RegistryClient:
        """The open client of the destination repository."""
        return self._require_client()

    def submit(self, layer: ImageLayer) -> None:
        """Start pushing ``layer``'s blob (once per digest); thread-safe."""
        self._submit(layer.digest, layer.size, layer.open)

    def progress_hook(self, progress: ProgressCallback | None) -> ProgressCallback:
        """A build progress callback that hands each finished layer to this pusher, then
        reports it to ``progress``: layers are pushed while the others are still building."""

        def report(event: LayerEvent) -> None:
            self.submit(event.layer)
            if progress is not None:
                progress(event)

        return report

    def _submit(self, digest: Digest, size: int, opener: Opener) -> None:
        if self._pool is None:
            raise RegistryError(f"{self.ref}: the pusher is not open")
        with self._lock:
            if digest in self._futures:
                return
            self._futures[digest] = self._pool.submit(self._push_blob, digest, size, opener)

    def push(self, image: Image) -> Digest:
        """Push every layer not pushed yet, the config, then the manifest under every tag;
        return the manifest's digest. The first failure of any blob is raised."""
        for layer in image.layers:
            self.submit(layer)
        if self.docker:
            # a Docker manifest already (an image copied from one) is pushed as it is
            body = as_docker(image).manifest_bytes
            media_type = MediaType.DOCKER_MANIFEST
        else:
            body, media_type = image.manifest_bytes, MediaType.OCI_MANIFEST
        return self.push_manifest(body, str(media_type), [image.config_bytes])

    def push_index(self, index: ImageIndex) -> Digest:
        """Push every image of ``index`` (each blob once, whichever images share it), each
        manifest by its digest, then the index under every tag, last: a tag never names a
        manifest that is not there. Return the index's digest."""
        for layer in index.layers:
            self.submit(layer)
        for entry in index.images:
            image = entry.image
            digest = image.manifest_digest
            self.push_manifest(
                image.manifest_bytes,
                entry.media_type,
                [image.config_bytes],
                tags=(str(digest),),
                record=False,  # the index's push records every image's blobs at once
            )
        return self.push_manifest(index.index_bytes, str(index.media_type), [])

    def push_manifest(
        self,
        body: bytes,
        media_type: str,
        blobs: Sequence[bytes],
        *,
        tags: Sequence[str] | None = None,
        record: bool = True,
    ) -> Digest:
        """Push the small ``blobs`` (a config, an artifact's data), wait for every blob
        submitted, then put ``body`` (of ``media_type``) under every tag (``tags``, default
        the pusher's); return its digest. With ``record``, the blob record learns the blobs
        it has not been told of yet (one rewrite of the record, or none)."""
        for blob in blobs:
            self._submit(Digest.of_bytes(blob), len(blob), functools.partial(io.BytesIO, blob))
        for future in list(self._futures.values()):
            future.result()
        if record:
            fresh = [d for d in self._futures if d not in self._recorded]
            self.record.add(self.ref.registry, self.ref.repository, fresh)
            self._recorded.update(fresh)
        digest = Digest.of_bytes(body)
        for tag in self.tags if tags is None else tags:
            self._put_manifest(tag, body, digest, media_type)
        self.pushed = (str(media_type), body)
        return digest

    def adopt(self, digest: Digest, size: int, source: str | None) -> bool:
        """Whether the repository holds blob ``digest`` of ``size`` bytes, after mounting it
        from repository ``source`` of the same registry when it did not; such a blob is not
        pushed again. A mount the registry turns into an upload session is cancelled."""
        client = self._require_client()
        present = blob_exists(client, digest, size)
        if not present and source is not None and source != self.ref.repository:
            location = mount_blob(client, digest, source)
            if location is None:
                present = blob_exists(client, digest, size)
            else:
                with contextlib.suppress(RegistryError):
                    client.request(
                        "DELETE", location, what=f"cancelling upload of {digest}", ok=(204, 404)
                    )
        if present:
            with self._lock:
                self._futures.setdefault(digest, _done())
                self.outcomes.setdefault(digest, "present")
        return present

    def _push_blob(self, digest: Digest, size: int, opener: Opener) -> None:
        client = self._require_client()
        if blob_exists(client, digest, size):
            self.outcomes[digest] = "present"
            return
        location = None
        known = self.record.repositories(self.ref.registry, digest)
        candidates = dict.fromkeys([*self._mount_from, *known])
        sources = [r for r in candidates if r != client.ref.repository]
        for source in sources[:_MOUNT_TRIES]:
            location = mount_blob(client, digest, source)
            if location is None:
                self.outcomes[digest] = "mounted"
                return
            break  # the registry opened an upload session instead: upload into it
        upload_blob(client, digest, size, opener, location=location)
        self.outcomes[digest] = "uploaded"

    def _put_manifest(self, tag: str, body: bytes, digest: Digest, media_type: str) -> None:
        client = self._require_client()
        url = client.url(f"manifests/{tag}")
        what = f"manifest {digest} for {self.ref.name}{'@' if ':' in tag else ':'}{tag}"
        if tag == self.tags[0] and self.tagged.known:  # read when the pusher opened
            if self.tagged.digest == digest:
                return
        else:
            current = client.request(
                "HEAD", url, what=what, ok=(200, 404), headers={"Accept": str(media_type)}
            )
            if current.status_code == 200 and current.headers.get("Docker-Content-Digest") == str(
                digest
            ):
                return
        response = client.request(
            "PUT",
            url,
            what=what,
            ok=(201,),
            headers={"Content-Type": str(media_type)},
            content=body,
        )
        answered = response.headers.get("Docker-Content-Digest")
        if answered and answered != str(digest):
            raise RegistryError(f"{what}: {client.registry} stored it as {answered}")

    def _require_client(self) -> RegistryClient:
        if self._client is None:
            raise RegistryError(f"{self.ref}: the pusher is not open")
        return self._client


def _done() -> Future[None]:
    done: Future[None] = Future()
    done.set_result(None)
    return done


@contextlib.contextmanager
def open_pusher(
    ref: RegistryRef,
    *,
    options: RegistryOptions,
    docker: bool = False,
    base_image: str | None = None,
    base_layers: Sequence[ImageLayer] = (),
    readable: Sequence[str] = (),
    tags: Sequence[str] = (),
) -> Iterator[ImagePusher]:
    """An open :class:`ImagePusher` for ``ref`` (the manifest goes under every one of ``tags``,
    default the reference's own) with ``base_layers`` (of the ``--from`` image ``base_image``)
    already handed to it; a base in the same registry is a mount source. The repositories
    ``readable`` (of ``ref``'s registry) may be mounted from by :meth:`ImagePusher.adopt`."""
    mount_from = []
    if base_image is not None and is_registry_reference(base_image):
        source = parse_reference(base_image)
        if source.registry == ref.registry:
            mount_from.append(source.repository)
    with ImagePusher(
        ref,
        options=options,
        tags=tags,
        docker=docker,
        mount_from=mount_from,
        readable=readable,
    ) as pusher:
        for layer in base_layers:
            pusher.submit(layer)
        yield pusher


def push_image(
    image: Image,
    ref: RegistryRef,
    *,
    options: RegistryOptions,
    tags: Sequence[str] = (),
    docker: bool = False,
) -> Digest:
    """Push ``image`` to ``ref`` in one go; return the manifest digest."""
    with ImagePusher(ref, options=options, tags=tags, docker=docker) as pusher:
        return pusher.push(image)
