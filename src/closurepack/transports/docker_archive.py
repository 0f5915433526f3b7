"""docker-archive transport: the ``docker save`` tar, with both manifest.json and V1 layout.

Layout (one copy of each blob; ``manifest.json`` points into the V1 directories)::

    <v1 id>/VERSION  <v1 id>/json  <v1 id>/layer.tar     one directory per layer, bottom first
    <config hex>.json                                    the image config (its digest is the ID)
    manifest.json                                        [{"Config", "RepoTags", "Layers"}]
    repositories                                         {"name": {"tag": "<top v1 id>"}}

``layer.tar`` holds the layer blob as is (gzip, zstd or plain): ``docker load`` and
``podman load`` decompress it and check it against the config's ``diff_ids``. V1 ids are
chained hashes (parent id, diff_id, digest), so the same image gives the same archive.
Reading takes the image a ``name:tag`` names (or the only one) from ``manifest.json``; layer
media types are judged by the blobs' first bytes, and the archive has no manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import tarfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from closurepack import pagecache
from closurepack.digest import Digest, Writable
from closurepack.errors import DestinationError, ImageError
from closurepack.image import Image, ImageLayer, canonical_json, epoch_of
from closurepack.mediatypes import MediaType
from closurepack.transports._files import atomic_file, open_layer, sweep_beside
from closurepack.transports._raw import (
    RawBlob,
    RawImage,
    missing_blob,
    parse_json,
    sniff_media_type,
)
from closurepack.transports._tar import TarReader, TarWriter
from closurepack.transports.reference import Destination, docker_repo_tags

__all__ = [
    "ArchiveStream",
    "check_existing",
    "read_image",
    "v1_ids",
    "write_image",
    "write_stream",
]

# Registries a short name may have been expanded with by docker save / podman save.
_DEFAULT_DOMAINS = ("docker.io", "docker.io/library", "localhost")


def _start_writeback(layer: ImageLayer) -> None:
    """Start writing out the pages of ``layer``'s blob, when it is a file here."""
    path = getattr(layer, "blob_path", None)
    if path is None:
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # the send says what is wrong with it
    try:
        pagecache.start_writeback(fd)
    finally:
        os.close(fd)


def _drop_pages(blob: BinaryIO) -> None:
    with contextlib.suppress(AttributeError, OSError, ValueError):  # (not a file)
        pagecache.drop_pages(blob.fileno())


def _next_id(parent: str, layer: ImageLayer) -> str:
    seed = canonical_json(
        {"parent": parent, "diff_id": str(layer.diff_id), "digest": str(layer.digest)}
    )
    return hashlib.sha256(seed).hexdigest()


def v1_ids(image: Image) -> list[str]:
    """Deterministic V1 layer ids, bottom first: each hashes its parent's id and its blob."""
    ids: list[str] = []
    parent = ""
    for layer in image.layers:
        parent = _next_id(parent, layer)
        ids.append(parent)
    return ids


def _v1_json(created: str, ids: list[str], index: int, top: Image | None) -> bytes:
    """Layer ``index``'s V1 json; ``top``: the image, when it is the top layer's."""
    obj: dict[str, Any] = {"id": ids[index], "created": created, "container_config": {}}
    if index:
        obj["parent"] = ids[index - 1]
    if top is not None:
        obj["config"] = top.config.get("config", {})
        obj["architecture"] = top.config.get("architecture", "")
        obj["os"] = top.config.get("os", "linux")
    return canonical_json(obj)


class ArchiveStream:
    """A docker-archive written to ``out`` while its layers are still being built: a layer
    goes out as soon as it and every layer below it have come (:meth:`add`, from any thread),
    bottom first, all but the top one, whose V1 json holds the image config; :meth:`finish`
    writes the rest. The bytes are :func:`write_stream`'s for the same image (it is this).

    ``created`` is the image's creation time as its config will say (it is in every V1 json
    and is every entry's mtime); ``base``: the layers of the image below the ones to come.
    """

    def __init__(
        self, out: Writable | BinaryIO, *, created: str, base: Sequence[ImageLayer] = ()
    ) -> None:
        self._tar = TarWriter(out, mtime=epoch_of(created))
        self._created = created
        self._ready: dict[int, ImageLayer] = dict(enumerate(base))
        self._ids: list[str] = []
        self._written: list[ImageLayer] = []
        #: the indexes of the layers whose pages are dropped once they are sent
        self._fresh: set[int] = set()
        self._lock = threading.Lock()
        #: the thread writing the layers that are ready, while it runs
        self._sender: threading.Thread | None = None
        self._error: BaseException | None = None  # a write failed: nothing more goes out

    def add(self, index: int, layer: ImageLayer, *, total: int, fresh: bool = False) -> None:
        """``layer`` is the image's layer ``index`` (counting the base's) of ``total``.

        The layers that are ready go out on a thread of their own (started here when none
        is running), so the caller goes back to building at once instead of waiting for a
        slow reader of ``out``. A write error is raised by :meth:`finish`, and by the next
        :meth:`add` (so the build stops).

        ``fresh``: the layer's blob was written just now (built, not a cache hit). Its
        pages are written out from here on and dropped from the page cache once it is sent
        (:mod:`closurepack.pagecache`), so that the next layers' writes reuse them rather
        than take new ones; a stream right after reads that blob from the disk."""
        with self._lock:
            self._ready[index] = layer
            if fresh:
                self._fresh.add(index)
            self._raise_error()
            sender = None
            if self._sender is None:  # (else it takes this layer too when it is next)
                sender = threading.Thread(
                    target=self._send_ready, args=(total,), name="closurepack-stream", daemon=True
                )
                self._sender = sender
        if sender is not None:
            sender.start()
        if fresh:  # once the sender runs: the first layer's bytes do not wait for it
            _start_writeback(layer)

    def _send_ready(self, total: int) -> None:
        """Write the next layers while they are ready (all but the top one), then stop."""
        try:
            while True:
                with self._lock:
                    following = len(self._written)
                    if following >= total - 1 or following not in self._ready:
                        self._sender = None
                        return
                    layer = self._ready.pop(following)
                self._write_layer(layer, None)
        except BaseException as exc:  # kept for finish (and the next add) to raise
            with self._lock:
                self._sender, self._error = None, exc

    def _wait_for_sender(self) -> None:
        """Let the running sender (if any) finish; raise what stopped it."""
        with self._lock:
            sender = self._sender
        if sender is not None:
            sender.join()
        with self._lock:
            self._raise_error()

    def _raise_error(self) -> None:
        """Raise what stopped the sender, if anything did (called holding the lock)."""
        error = self._error
        if isinstance(error, OSError | DestinationError):
            raise error
        if error is not None:
            raise DestinationError(f"the archive could not be written: {error!r}") from error

    def _write_layer(self, layer: ImageLayer, top: Image | None) -> None:
        index = len(self._written)
        self._ids.append(_next_id(self._ids[-1] if self._ids else "", layer))
        name = self._ids[index]
        tar = self._tar
        tar.add_dir(name)
        tar.add_bytes(f"{name}/VERSION", b"1.0")
        tar.add_bytes(f"{name}/json", _v1_json(self._created, self._ids, index, top))
        with open_layer(layer) as blob:
            tar.add_blob(
                f"{name}/layer.tar",
                blob,
                size=layer.size,
                digest=layer.digest,
                trusted=bool(getattr(layer, "verified", False)),
            )
            if index in self._fresh:
                _drop_pages(blob)
        self._written.append(layer)

    def finish(self, image: Image, *, repo_tags: Sequence[str]) -> None:
        """Write the layers of ``image`` not written yet, its config, manifest.json and
        ``repositories``; ``repo_tags`` (``name:tag`` each) all name it."""
        self._wait_for_sender()
        with self._lock:
            done = [(layer.digest, layer.diff_id) for layer in self._written]
            if image.created != self._created or done != [
                (layer.digest, layer.diff_id) for layer in image.layers[: len(done)]
            ]:
                raise DestinationError("the archive streamed so far is not this image's")
            for layer in image.layers[len(done) :]:
                top = image if len(self._written) == len(image.layers) - 1 else None
                self._write_layer(layer, top)
            self._write_rest(image, repo_tags)

    def _write_rest(self, image: Image, repo_tags: Sequence[str]) -> None:
        tar = self._tar
        layer_files = [f"{layer_id}/layer.tar" for layer_id in self._ids]
        config_name = f"{image.config_digest.hex}.json"
        tar.add_bytes(config_name, image.config_bytes)
        manifest = [{"Config": config_name, "RepoTags": list(repo_tags), "Layers": layer_files}]
        tar.add_bytes("manifest.json", canonical_json(manifest))
        if self._ids:
            repositories: dict[str, dict[str, str]] = {}
            for repo_tag in repo_tags:
                name, _, tag = repo_tag.rpartition(":")
                repositories.setdefault(name, {})[tag] = self._ids[-1]
            tar.add_bytes("repositories", canonical_json(repositories))
        tar.close()


def write_stream(image: Image, out: Writable | BinaryIO, *, repo_tags: Sequence[str]) -> None:
    """Stream ``image`` as a docker-archive to ``out`` in one pass, blobs copied in chunks;
    ``repo_tags`` (``name:tag`` each) all name it."""
    ArchiveStream(out, created=image.created).finish(image, repo_tags=repo_tags)


def check_existing(dest: Destination) -> None:
    """Raise DestinationError if ``dest.path`` is a non-empty regular file that is not a
    docker-archive (a tar holding ``manifest.json`` or ``repositories``): an old image is
    replaced, anything else is not (cheap: reads the tar's member list, no blob)."""
    path = dest.path
    if path is None or not path.is_file() or path.stat().st_size == 0:
        return
    refusal = f"{path}: exists and is not a docker-archive; remove it or choose another path"
    try:
        with tarfile.open(path, mode="r:") as archive:
            names = set(archive.getnames())
    except (tarfile.TarError, OSError) as exc:
        raise DestinationError(refusal) from exc
    if not names & {"manifest.json", "repositories"}:
        raise DestinationError(refusal)


def write_image(
    image: Image,
    dest: Destination,
    *,
    tags: Sequence[str] = (),
    name: str | None = None,
    started: float | None = None,
) -> None:
    """Write ``image`` to ``dest.path`` atomically (temp file + rename), named as
    :func:`docker_repo_tags` says; temp files of writes killed before ``started`` are removed
    first."""
    path = dest.path
    if path is None:
        raise DestinationError(f"{dest}: docker-archive needs a path")
    if path.is_dir():
        raise DestinationError(f"{path}: is a directory, expected an archive file path")
    check_existing(dest)
    repo_tags = docker_repo_tags(dest, tags, name=name)
    sweep_beside(path, started=started)
    with atomic_file(path) as out:  # write errors: a DestinationError naming ``path``
        write_stream(image, out, repo_tags=repo_tags)


def read_image(source: Destination, path: Path, text: str) -> RawImage:
    """The image of the docker-archive at ``path`` that ``source.reference`` names (or its
    only one), as stored; ``text`` is how the user named it."""
    tar = TarReader(path)
    manifest = parse_json(tar.read("manifest.json"), f"{path}: manifest.json")
    if not isinstance(manifest, list) or not manifest:
        raise ImageError(f"{path}: manifest.json holds no image")
    entry = None
    if source.reference:
        for item in manifest:
            tags = (item.get("RepoTags") or []) if isinstance(item, dict) else []
            wanted = {source.reference, *(f"{p}/{source.reference}" for p in _DEFAULT_DOMAINS)}
            if wanted & set(tags):
                entry = item
                break
        if entry is None:
            raise DestinationError(f"{path}: no image tagged {source.reference}")
    elif len(manifest) == 1:
        entry = manifest[0]
    else:
        raise DestinationError(f"{path}: holds {len(manifest)} images; name one with :TAG")
    if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
        raise ImageError(f"{path}: manifest.json entry has no Config")
    config_name = entry["Config"]
    config_bytes = tar.read(config_name)
    stem = posixpath.basename(config_name).removesuffix(".json")
    declared = None
    if stem.startswith("sha256:"):
        stem = stem.partition(":")[2]
    if len(stem) == 64:
        try:
            declared = Digest(stem)
        except ImageError:
            declared = None
    layers = []
    for name in map(str, entry.get("Layers") or []):
        if tar.has(name):
            opener = tar.opener(name)
            media_type = sniff_media_type(opener)
        else:
            opener, media_type = missing_blob(f"{path}: {name}"), MediaType.OCI_LAYER
        layers.append(RawBlob(name=name, media_type=media_type, opener=opener))
    return RawImage(
        source=text,
        kind="docker-archive",
        config_bytes=config_bytes,
        config_digest=declared,
        config_size=None,
        manifest_bytes=None,
        manifest_digest=None,
        manifest_size=None,
        layers=tuple(layers),
    )
