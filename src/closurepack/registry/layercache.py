"""A registry repository as a layer cache shared by many builders (as BuildKit's registry cache).

``--cache-to docker://HOST/REPO[:TAG]`` publishes, after a build, which blob each layer's cache
key (:func:`closurepack.build.build_keyed_layers`: the store layers' and the customisation
layer's) stands for, as the artifact :mod:`closurepack.registry.cachemapping` describes. The layer
blobs are put in the cache repository first (present, mounted from the image's repository or another
cache repository of the same registry, else uploaded), so the mapping never names a blob the
repository lacks. The mapping already there is merged in (a key's newest entry wins, new
entries go last, the oldest beyond :data:`~closurepack.registry.cachemapping.MAX_ENTRIES` are
dropped). Writers racing on one tag may drop each other's new entries: the next push adds them
back.

``--cache-from`` reads the mappings before the build. A planned layer whose key is in one is
taken from there instead of being built: pushed to a registry, the blob is checked with ``HEAD``
in the destination repository (its size must match), or mounted there from the cache repository
(same registry), and never tarred nor uploaded; for any other destination (or when the mount is
refused) it is downloaded into the local layer cache as a normal entry, its digest, size and
diff_id checked while it streams.
A cache that is not there, cannot be read or is malformed is one warning and builds as usual;
an entry that does not hold up (a blob missing, of another size, digest or diff_id) is one
warning and the layer is built; entries naming one blob with different sizes or diff_ids are
all dropped (one warning). A blob that stays in the registry is trusted by its digest and size:
its diff_id is the mapping's word.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from closurepack._fs import blob_writer
from closurepack.cache import LayerCache
from closurepack.decompression import open_decompressed
from closurepack.digest import Digest, HashingWriter
from closurepack.errors import CacheError, ImageError, OptionError, RegistryError
from closurepack.layer import BuiltLayer
from closurepack.mediatypes import MediaType, layer_media_type
from closurepack.plan import PlannedLayer
from closurepack.registry.cachemapping import (
    CacheEntry,
    NotALayerCacheError,
    artifact,
    consistent_entries,
    fetch_mapping,
    merge_entries,
    parse_cache_ref,
)
from closurepack.registry.client import open_client
from closurepack.registry.options import RegistryOptions
from closurepack.registry.pull import blob_opener
from closurepack.registry.push import ImagePusher
from closurepack.registry.reference import RegistryRef, is_registry_reference, parse_reference
from closurepack.remotelayer import RemoteLayer

__all__ = ["SharedLayerCache"]

_CHUNK = 1 << 20

_log = logging.getLogger(__name__)


class _Tee:
    """Reads ``source``, writing every byte read to ``sink`` too."""

    def __init__(self, source: BinaryIO, sink: HashingWriter) -> None:
        self._source = source
        self._sink = sink

    def read(self, size: int = -1, /) -> bytes:
        data = self._source.read(size)
        self._sink.write(data)
        return data

    def readinto(self, buffer: bytearray | memoryview, /) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True


class SharedLayerCache:
    """The ``--cache-from`` mappings read (first reference first) and the ``--cache-to``
    reference, for one build. :meth:`source` is the build's
    :data:`~closurepack.build.LayerSource`; :meth:`publish` writes the mapping afterwards."""

    def __init__(
        self,
        *,
        cache_from: Sequence[RegistryRef] = (),
        cache_to: RegistryRef | None = None,
        options: RegistryOptions,
    ) -> None:
        self.cache_from = tuple(cache_from)
        self.cache_to = cache_to
        self.options = options
        self.entries: dict[str, CacheEntry] = {}
        self._compression = "gzip"
        self._cache: LayerCache | None = None
        self._pusher: ImagePusher | None = None

    @classmethod
    def open(
        cls,
        *,
        cache_from: Sequence[str] = (),
        cache_to: str | None = None,
        options: RegistryOptions,
        dest: str | None = None,
    ) -> SharedLayerCache | None:
        """Parse the references (an OptionError for a bad one, or a ``--cache-to`` that is the
        image destination ``dest``), read the ``--cache-from`` mappings, and check that the
        ``--cache-to`` tag is a layer cache or absent (a DestinationError otherwise): all
        before any layer is built. None without either."""
        sources = [parse_cache_ref(t, option="--cache-from") for t in cache_from]
        target = parse_cache_ref(cache_to, option="--cache-to") if cache_to else None
        if not sources and target is None:
            return None
        if target is not None and dest is not None and is_registry_reference(dest):
            image = parse_reference(dest, for_push=True)
            if (image.registry, image.repository, image.reference) == (
                target.registry,
                target.repository,
                target.reference,
            ):
                raise OptionError(f"--cache-to {cache_to!r}: that is the image's own tag")
        shared = cls(cache_from=sources, cache_to=target, options=options)
        for ref in sources:
            for key, entry in shared._read(ref, strict=ref == target).items():
                shared.entries.setdefault(key, entry)
        shared.entries = consistent_entries(shared.entries)
        if target is not None and target not in sources:
            shared._read(target, strict=True)
        return shared

    def _read(self, ref: RegistryRef, *, strict: bool) -> dict[str, CacheEntry]:
        """The mapping of ``ref``; {} after one warning when it is missing, unreadable or
        malformed. ``strict``: a tag holding something else, or a registry that cannot be
        reached, is an error (it is where the cache is to be written)."""
        try:
            with open_client(ref, self.options, [f"repository:{ref.repository}:pull"]) as client:
                found = fetch_mapping(client, ref)
        except NotALayerCacheError:
            if strict:
                raise
            _log.warning("layer cache %s: the tag holds something else; not used", ref)
            return {}
        except ImageError as exc:
            _log.warning("%s; ignored", exc)
            return {}
        except RegistryError as exc:
            if strict:
                raise
            _log.warning("%s; building without that layer cache", exc)
            return {}
        if found is None and not strict:
            _log.warning("layer cache %s does not exist (yet); building without it", ref)
        return found or {}

    def mount_sources(self, dest: RegistryRef) -> list[str]:
        """The cache repositories on ``dest``'s registry (mount sources for its push)."""
        return [r.repository for r in self.cache_from if r.registry == dest.registry]

    def source(
        self, *, compression: str, cache: LayerCache | None, pusher: ImagePusher | None
    ) -> SharedLayerCache:
        """This object set up as the layer source of a build with ``compression``, the local
        ``cache`` (where downloaded blobs go) and ``pusher`` (when pushing to a registry)."""
        self._compression = compression
        self._cache = cache
        self._pusher = pusher
        return self

    def __call__(
        self, key: str, layer: PlannedLayer, work_dir: Path
    ) -> BuiltLayer | RemoteLayer | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        try:
            if entry.media_type != layer_media_type(self._compression):
                raise ImageError(f"the entry's media type is {entry.media_type}")
            pusher = self._pusher
            if pusher is not None and entry.source.registry == pusher.ref.registry:
                adopted = self._adopt(entry, layer, pusher)
                if adopted is not None:
                    return adopted
            # elsewhere, or not mountable: downloaded (and pushed from the local cache)
            return self._download(key, entry, layer, work_dir)
        except (RegistryError, ImageError, CacheError) as exc:
            _log.warning("layer cache %s: layer %s: %s; building it", entry.source, key[:12], exc)
            return None

    def mount(self, key: str, layer: BuiltLayer) -> bool:
        """Whether the pushed-to repository holds ``layer``'s blob, there already or mounted
        from the cache repository (of the same registry) whose mapping names that blob under
        ``key``: it is then not uploaded. False when there is no such entry, no push, or the
        mapping names another blob for the key."""
        entry = self.entries.get(key)
        pusher = self._pusher
        if (
            entry is None
            or pusher is None
            or entry.source.registry != pusher.ref.registry
            or (entry.digest, entry.size) != (layer.digest, layer.size)
        ):
            return False
        try:
            return pusher.adopt(entry.digest, entry.size, entry.source.repository)
        except RegistryError as exc:
            _log.warning("layer cache %s: layer %s: %s; uploading it", entry.source, key[:12], exc)
            return False

    def _adopt(
        self, entry: CacheEntry, layer: PlannedLayer, pusher: ImagePusher
    ) -> RemoteLayer | None:
        """The blob as it is (or is mounted) in the destination repository, else None."""
        if not pusher.adopt(entry.digest, entry.size, entry.source.repository):
            return None
        return RemoteLayer(
            digest=entry.digest,
            diff_id=entry.diff_id,
            size=entry.size,
            media_type=entry.media_type,
            opener=blob_opener(pusher.ref, self.options, entry.digest, entry.size),
            paths=layer.paths,
            annotations=entry.annotations,
        )

    def _download(
        self, key: str, entry: CacheEntry, layer: PlannedLayer, work_dir: Path
    ) -> BuiltLayer:
        def fetch(dest_dir: Path) -> BuiltLayer:
            opener = blob_opener(entry.source, self.options, entry.digest, entry.size)
            tar = HashingWriter()
            with blob_writer(dest_dir) as blob, opener() as stream:
                tee = _Tee(stream, blob)
                with open_decompressed(entry.media_type.compression, tee) as plain:  # type: ignore[arg-type]
                    while data := plain.read(_CHUNK):
                        tar.write(data)
                while tee.read(_CHUNK):  # to the end: the stream checks digest and size there
                    pass
                if blob.digest != entry.digest or blob.size != entry.size:
                    raise ImageError(f"blob {entry.digest}: other bytes arrived")
                if tar.digest != entry.diff_id:
                    raise ImageError(
                        f"blob {entry.digest}: its diff_id is {tar.digest}, not {entry.diff_id}"
                    )
            return BuiltLayer(
                digest=entry.digest,
                diff_id=entry.diff_id,
                size=entry.size,
                media_type=entry.media_type,
                blob_path=dest_dir / entry.digest.hex,
                paths=layer.paths,
                annotations=entry.annotations,
            )

        if self._cache is None:
            return fetch(work_dir)
        return self._cache.get_or_build(key, fetch)

    def publish(
        self,
        layers: Sequence[tuple[str, BuiltLayer | RemoteLayer]],
        *,
        dest: RegistryRef | None,
    ) -> Digest | None:
        """Put ``layers``' blobs into the ``--cache-to`` repository, then the mapping of their
        keys merged with the one there; return the artifact's digest (None: no --cache-to)."""
        ref = self.cache_to
        if ref is None:
            return None
        mount_from = self.mount_sources(ref)
        if dest is not None and dest.registry == ref.registry:
            mount_from.insert(0, dest.repository)
        with ImagePusher(
            ref, options=self.options, tags=(ref.reference,), mount_from=mount_from
        ) as pusher:
            for _, layer in layers:
                pusher.submit(layer)
            try:
                existing = fetch_mapping(pusher.client, ref) or {}
            except ImageError as exc:
                _log.warning("%s; writing a new one", exc)
                existing = {}
            new = [
                (
                    key,
                    CacheEntry(
                        layer.digest,
                        layer.size,
                        layer.media_type,
                        layer.diff_id,
                        ref,
                        annotations=layer.annotations,
                    ),
                )
                for key, layer in layers
            ]
            merged, _ = merge_entries(existing, new)
            body, blobs = artifact(merged)
            return pusher.push_manifest(body, str(MediaType.OCI_MANIFEST), blobs)
