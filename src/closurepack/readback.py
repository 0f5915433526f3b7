"""Read an image back from docker-archive:, oci:, oci-archive: or docker:// (a registry)
without unpacking it.

:func:`read_raw` gives what is stored, declared digests beside the bytes, without checking
anything (for :mod:`closurepack.validate`); :func:`read_image` turns that into an
:class:`~closurepack.image.Image` for ``--from``, ``--previous`` and ``inspect``.
"""

from __future__ import annotations

import contextlib
import io
import json
import posixpath
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from closurepack._fs import hash_stream
from closurepack.destinations.reference import Destination, parse_destination
from closurepack.digest import Digest
from closurepack.errors import (
    DestinationError,
    ImageError,
    InputError,
    OptionError,
    SourceError,
)
from closurepack.image import (
    BaseImage,
    BlobLayer,
    Image,
    host_architecture,
    layer_paths_from_config,
    manifest_for,
)
from closurepack.mediatypes import MediaType
from closurepack.registry import RegistryOptions, is_registry_reference, parse_reference
from closurepack.registry.pull import pull_image

__all__ = [
    "RawBlob",
    "RawImage",
    "parse_source",
    "read_base_image",
    "read_image",
    "read_raw",
    "sniff_media_type",
]

_CHUNK = 1 << 20
_REF_NAME = "org.opencontainers.image.ref.name"
# Registries a short name may have been expanded with by docker save / podman save.
_DEFAULT_DOMAINS = ("docker.io", "docker.io/library", "localhost")
_INDEX_TYPES = {MediaType.OCI_INDEX.value, MediaType.DOCKER_MANIFEST_LIST.value}


@dataclass(frozen=True)
class RawBlob:
    """A layer as stored: its declared digest and size (``None`` when the format has none,
    as in docker-archive), its media type, and an opener for its bytes."""

    name: str
    media_type: MediaType
    opener: Callable[[], BinaryIO]
    digest: Digest | None = None
    size: int | None = None


@dataclass(frozen=True)
class RawImage:
    """An image as stored, nothing verified. ``manifest_bytes`` is ``None`` for docker-archive
    (which has no manifest); declared values come from index descriptors or file names."""

    source: str
    kind: str
    config_bytes: bytes
    config_digest: Digest | None
    config_size: int | None
    manifest_bytes: bytes | None
    manifest_digest: Digest | None
    manifest_size: int | None
    layers: tuple[RawBlob, ...]


class _Slice(io.RawIOBase):
    """A read-only window ``[start, start + size)`` of a file (a member of a plain tar)."""

    def __init__(self, path: Path, start: int, size: int) -> None:
        self._file = path.open("rb")
        self._file.seek(start)
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), self._left)
        if n <= 0:
            return 0
        got = self._file.readinto(view[:n])
        self._left -= got
        return got

    def close(self) -> None:
        self._file.close()
        super().close()


class _Tar:
    """Random access to the members of an uncompressed tar file, links resolved."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.members: dict[str, tarfile.TarInfo] = {}
        try:
            with tarfile.open(path, mode="r:") as tar:
                for info in tar:
                    self.members[posixpath.normpath(info.name.lstrip("/"))] = info
        except (OSError, tarfile.TarError) as exc:
            raise DestinationError(f"{path}: cannot read as a tar archive: {exc}") from exc

    def _resolve(self, name: str) -> tarfile.TarInfo:
        name = posixpath.normpath(name.lstrip("/"))
        for _ in range(16):
            info = self.members.get(name)
            if info is None:
                raise DestinationError(f"{self.path}: no {name!r} in the archive")
            if info.issym():
                name = posixpath.normpath(posixpath.join(posixpath.dirname(name), info.linkname))
            elif info.islnk():
                name = posixpath.normpath(info.linkname.lstrip("/"))
            elif info.isfile():
                return info
            else:
                raise DestinationError(f"{self.path}: {name!r} is not a regular file")
        raise DestinationError(f"{self.path}: too many links at {name!r}")

    def has(self, name: str) -> bool:
        return posixpath.normpath(name.lstrip("/")) in self.members

    def opener(self, name: str) -> Callable[[], BinaryIO]:
        info = self._resolve(name)
        path, start, size = self.path, info.offset_data, info.size
        return lambda: io.BufferedReader(_Slice(path, start, size), _CHUNK)

    def read(self, name: str, *, limit: int = 64 << 20) -> bytes:
        info = self._resolve(name)
        if info.size > limit:
            raise DestinationError(f"{self.path}: {name!r} is implausibly large for JSON")
        with self.opener(name)() as f:
            return f.read()


class _Dir:
    def __init__(self, path: Path) -> None:
        self.path = path

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def opener(self, name: str) -> Callable[[], BinaryIO]:
        path = self.path / name
        return lambda: path.open("rb")

    def read(self, name: str) -> bytes:
        try:
            return (self.path / name).read_bytes()
        except OSError as exc:
            raise DestinationError(f"{self.path / name}: cannot read: {exc.strerror}") from exc


def sniff_media_type(opener: Callable[[], BinaryIO]) -> MediaType:
    """The OCI layer media type of a blob judged by its first bytes (docker-archive has none)."""
    with opener() as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b":
        return MediaType.OCI_LAYER_GZIP
    if head == b"\x28\xb5\x2f\xfd":
        return MediaType.OCI_LAYER_ZSTD
    return MediaType.OCI_LAYER


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


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageError(f"{what}: not valid JSON: {exc}") from exc


def _read_docker(source: Destination, path: Path, text: str) -> RawImage:
    tar = _Tar(path)
    manifest = _json(tar.read("manifest.json"), f"{path}: manifest.json")
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
            opener, media_type = _missing(f"{path}: {name}"), MediaType.OCI_LAYER
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


def _blob_name(digest_text: object, where: str) -> tuple[Digest, str]:
    if not isinstance(digest_text, str):
        raise ImageError(f"{where}: descriptor without a digest")
    digest = Digest.parse(digest_text)
    return digest, f"blobs/{digest.algorithm}/{digest.hex}"


def _pick(manifests: list[Any], reference: str | None, where: str) -> dict[str, Any]:
    entries = [m for m in manifests if isinstance(m, dict)]
    if reference:
        for entry in entries:
            if (entry.get("annotations") or {}).get(_REF_NAME) in (reference,):
                return entry
        tags = sorted(str((e.get("annotations") or {}).get(_REF_NAME, "")) for e in entries)
        raise DestinationError(f"{where}: no image tagged {reference!r} (tags: {', '.join(tags)})")
    if len(entries) == 1:
        return entries[0]
    if not entries:
        raise DestinationError(f"{where}: the index lists no image")
    raise DestinationError(f"{where}: the index lists {len(entries)} images; name one with :TAG")


def _platform_pick(manifests: list[Any], where: str) -> dict[str, Any]:
    entries = [m for m in manifests if isinstance(m, dict)]
    if not entries:
        raise ImageError(f"{where}: nested index lists no image")
    arch, _ = host_architecture()
    for entry in entries:
        platform = entry.get("platform")
        if not isinstance(platform, dict):
            continue
        if platform.get("architecture") == arch and platform.get("os", "linux") == "linux":
            return entry
    return entries[0]


def _read_oci(source: Destination, path: Path, text: str) -> RawImage:
    store: _Tar | _Dir
    if source.kind == "oci":
        if not path.is_dir():
            raise DestinationError(f"{path}: no such OCI layout directory")
        store = _Dir(path)
    else:
        store = _Tar(path)
    where = str(path)
    index = _json(store.read("index.json"), f"{where}: index.json")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise ImageError(f"{where}: index.json is not an OCI image index")
    entry = _pick(index["manifests"], source.reference, where)
    for _ in range(4):
        if entry.get("mediaType") not in _INDEX_TYPES:
            break
        _, name = _blob_name(entry.get("digest"), where)
        nested = _json(store.read(name), f"{where}: {name}")
        listed = nested.get("manifests") if isinstance(nested, dict) else None
        entry = _platform_pick(listed if isinstance(listed, list) else [], f"{where}: {name}")
    manifest_digest, manifest_name = _blob_name(entry.get("digest"), where)
    manifest_bytes = store.read(manifest_name)
    manifest = _json(manifest_bytes, f"{where}: manifest {manifest_digest}")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
        raise ImageError(f"{where}: manifest {manifest_digest} has no config descriptor")
    config_desc = manifest["config"]
    config_digest, config_name = _blob_name(config_desc.get("digest"), where)
    config_bytes = store.read(config_name)
    layers = []
    for desc in manifest.get("layers") or []:
        if not isinstance(desc, dict):
            raise ImageError(f"{where}: manifest {manifest_digest}: layer entry is not an object")
        digest, name = _blob_name(desc.get("digest"), where)
        try:
            media_type = MediaType(str(desc.get("mediaType")))
        except ValueError as exc:
            raise ImageError(
                f"{where}: layer {digest}: unsupported media type {desc.get('mediaType')!r}"
            ) from exc
        opener = store.opener(name) if store.has(name) else _missing(f"{where}: {name}")
        size = desc.get("size")
        layers.append(
            RawBlob(
                name=name,
                media_type=media_type,
                opener=opener,
                digest=digest,
                size=size if isinstance(size, int) else None,
            )
        )
    size = config_desc.get("size")
    msize = entry.get("size")
    return RawImage(
        source=text,
        kind=source.kind,
        config_bytes=config_bytes,
        config_digest=config_digest,
        config_size=size if isinstance(size, int) else None,
        manifest_bytes=manifest_bytes,
        manifest_digest=manifest_digest,
        manifest_size=msize if isinstance(msize, int) else None,
        layers=tuple(layers),
    )


def _missing(what: str) -> Callable[[], BinaryIO]:
    def fail() -> BinaryIO:
        raise DestinationError(f"{what}: blob is missing")

    return fail


def _read_registry(source: str, registry: RegistryOptions | None) -> RawImage:
    pulled = pull_image(parse_reference(source), registry or RegistryOptions())
    layers = tuple(
        RawBlob(str(b.digest), b.media_type, b.opener, b.digest, b.size) for b in pulled.layers
    )
    return RawImage(
        source=source,
        kind="docker",
        config_bytes=pulled.config_bytes,
        config_digest=pulled.config_digest,
        config_size=pulled.config_size,
        manifest_bytes=pulled.manifest_bytes,
        manifest_digest=pulled.manifest_digest,
        manifest_size=pulled.manifest_size,
        layers=layers,
    )


def read_raw(source: str, *, registry: RegistryOptions | None = None) -> RawImage:
    """Read the stored structure of the image at ``source``; nothing is verified (blobs read
    from a registry are checked against their digests as they stream).

    What cannot be found or read is a SourceError (the image is where the user said it is or
    not: bad input), what is there but malformed an ImageError."""
    if is_registry_reference(source):
        return _read_registry(source, registry)
    where = parse_source(source)
    path = Path(str(where.path))
    if not path.exists():
        raise SourceError(f"{source}: no such image: {path} does not exist")
    with _as_source_error():
        if where.kind == "docker-archive":
            return _read_docker(where, path, source)
        return _read_oci(where, path, source)


@contextlib.contextmanager
def _as_source_error() -> Iterator[None]:
    """The DestinationErrors of reading (an image that is not there) as SourceErrors: a source
    is not a destination, and its problems are not exit status 5."""
    try:
        yield
    except DestinationError as exc:
        raise SourceError(str(exc)) from exc


def _source_opener(opener: Callable[[], BinaryIO]) -> Callable[[], BinaryIO]:
    def open_blob() -> BinaryIO:
        with _as_source_error():
            return opener()

    return open_blob


def read_image(source: str, *, registry: RegistryOptions | None = None) -> Image:
    """The image at ``source`` as an :class:`Image` whose layers open their stored blobs.

    Digests are the declared ones (docker-archive declares none: its layers are hashed).
    Raise ImageError if the config's diff_ids and the layers do not correspond one to one.
    """
    raw = read_raw(source, registry=registry)
    config = _json(raw.config_bytes, f"{source}: config")
    if not isinstance(config, dict):
        raise ImageError(f"{source}: config is not a JSON object")
    for key, kind, name in (
        ("config", dict, "object"),
        ("rootfs", dict, "object"),
        ("history", list, "array"),
    ):
        if not isinstance(config.get(key) or kind(), kind):
            raise ImageError(f"{source}: config: {key!r} is not a JSON {name}")
    _check_container_config(config.get("config") or {}, source)
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    if not isinstance(diff_ids, list):
        raise ImageError(f"{source}: config: rootfs.diff_ids is not a list")
    if len(diff_ids) != len(raw.layers):
        raise ImageError(
            f"{source}: config lists {len(diff_ids)} diff_ids for {len(raw.layers)} layers"
        )
    recorded = layer_paths_from_config(config)
    history = [h for h in config.get("history") or [] if isinstance(h, dict)]
    comments = [str(h.get("comment", "")) for h in history if not h.get("empty_layer")]
    layers = []
    for i, (blob, diff_id) in enumerate(zip(raw.layers, diff_ids, strict=True)):
        if blob.digest is not None and blob.size is not None:
            digest, size = blob.digest, blob.size
        else:
            try:
                with blob.opener() as stream:
                    digest, size = hash_stream(stream)
            except OSError as exc:
                raise SourceError(f"{source}: {blob.name}: cannot read: {exc}") from exc
            except DestinationError as exc:
                raise SourceError(str(exc)) from exc
        layers.append(
            BlobLayer(
                digest=digest,
                diff_id=Digest.parse(str(diff_id)),
                size=size,
                media_type=blob.media_type,
                opener=_source_opener(blob.opener),
                paths=tuple(recorded.get(str(diff_id), ())),
                comment=comments[i] if len(comments) == len(diff_ids) else "",
            )
        )
    manifest_bytes = raw.manifest_bytes
    if manifest_bytes is None:
        manifest_bytes = manifest_for(raw.config_bytes, layers)
    return Image(config_bytes=raw.config_bytes, manifest_bytes=manifest_bytes, layers=tuple(layers))


# The JSON types of the container config fields an image built on this one inherits.
_CONTAINER_FIELDS = {
    "Env": list,
    "Entrypoint": list,
    "Cmd": list,
    "Labels": dict,
    "ExposedPorts": dict,
    "Volumes": dict,
    "WorkingDir": str,
    "User": str,
    "StopSignal": str,
}
_JSON_NAMES = {list: "an array of strings", dict: "an object", str: "a string"}


def _check_container_config(container: dict[str, Any], source: str) -> None:
    """An ImageError naming the first field of ``container`` that is not of its JSON type
    (null is fine: unset); lists must hold strings."""
    for key, kind in _CONTAINER_FIELDS.items():
        value = container.get(key)
        if value is None:
            continue
        if not isinstance(value, kind) or (
            kind is list and not all(isinstance(item, str) for item in value)
        ):
            raise ImageError(f"{source}: config: config.{key} is not {_JSON_NAMES[kind]}")


def read_base_image(source: str, *, registry: RegistryOptions | None = None) -> BaseImage:
    """The image at ``source`` as a base for ``--from``."""
    return read_image(source, registry=registry).as_base()
