"""Image assembly: the config and manifest JSON for a list of layers, in canonical form.

(:class:`ImageConfig`, :data:`LAYERS_LABEL` and :func:`host_architecture` live in
:mod:`closurepack.imageconfig`; they are imported from here too.)"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO, NamedTuple, Protocol

from closurepack.digest import Digest
from closurepack.errors import ImageError
from closurepack.imageconfig import LAYERS_LABEL, ImageConfig, host_architecture
from closurepack.mediatypes import MediaType

__all__ = [
    "LAYERS_LABEL",
    "BaseImage",
    "Image",
    "ImageConfig",
    "ImageLayer",
    "assemble_image",
    "canonical_json",
    "docker_manifest_bytes",
    "docker_media_type",
    "epoch_of",
    "host_architecture",
    "layer_paths_from_config",
    "manifest_for",
    "oci_media_type",
    "rfc3339",
]


def canonical_json(obj: Any) -> bytes:
    """The one JSON encoding used for every config, manifest and index: sorted, compact."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def rfc3339(epoch: int) -> str:
    """``1`` -> ``1970-01-01T00:00:01Z``."""
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch_of(created: str) -> int:
    """An RFC 3339 time as seconds since the epoch (1 if unparsable): archive mtimes."""
    try:
        when = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return 1
    return max(0, int(when.timestamp()))


class ImageLayer(Protocol):
    """What an image needs of a layer; :class:`~closurepack.layer.BuiltLayer` is one."""

    @property
    def digest(self) -> Digest: ...
    @property
    def diff_id(self) -> Digest: ...
    @property
    def size(self) -> int: ...
    @property
    def media_type(self) -> MediaType: ...
    @property
    def paths(self) -> tuple[str, ...]: ...
    @property
    def comment(self) -> str: ...
    @property
    def annotations(self) -> Mapping[str, str]: ...
    def open(self) -> BinaryIO: ...


class BaseImage(NamedTuple):
    """An image to build on: its parsed config and its layers (bottom first)."""

    config: Mapping[str, Any]
    layers: tuple[ImageLayer, ...]


@dataclass(frozen=True)
class Image:
    """Config + manifest (raw bytes beside parsed form and digest) + layers, bottom first."""

    config_bytes: bytes
    manifest_bytes: bytes
    layers: tuple[ImageLayer, ...]
    config_digest: Digest = field(init=False)
    manifest_digest: Digest = field(init=False)
    config: Mapping[str, Any] = field(init=False, repr=False, compare=False)
    manifest: Mapping[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "config_digest", Digest.of_bytes(self.config_bytes))
        object.__setattr__(self, "manifest_digest", Digest.of_bytes(self.manifest_bytes))
        try:
            config = json.loads(self.config_bytes)
            manifest = json.loads(self.manifest_bytes)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ImageError(f"image config or manifest is not JSON: {exc}") from exc
        if not isinstance(config, dict) or not isinstance(manifest, dict):
            raise ImageError("image config and manifest must be JSON objects")
        object.__setattr__(self, "config", config)
        object.__setattr__(self, "manifest", manifest)

    @property
    def created(self) -> str:
        return str(self.config.get("created", ""))

    @property
    def created_epoch(self) -> int:
        """``created`` as seconds since the epoch (1 if absent or unparsable): archive mtimes."""
        return epoch_of(self.created)

    @property
    def platform(self) -> dict[str, str]:
        out = {
            "architecture": str(self.config.get("architecture", "")),
            "os": str(self.config.get("os", "linux")),
        }
        if self.config.get("variant"):
            out["variant"] = str(self.config["variant"])
        return out

    def as_base(self) -> BaseImage:
        return BaseImage(config=self.config, layers=self.layers)

    def layer_paths(self) -> dict[str, list[str]]:
        """diff_id -> store paths, read from the ``dev.closurepack.layers`` label."""
        return layer_paths_from_config(self.config)


def layer_paths_from_config(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """Parse the ``dev.closurepack.layers`` label of a config; ``{}`` when absent or invalid."""
    container = config.get("config")
    labels = container.get("Labels") if isinstance(container, dict) else None
    raw = labels.get(LAYERS_LABEL) if isinstance(labels, dict) else None
    if not isinstance(raw, str):
        return {}
    try:
        obj = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(obj, dict):
        return {}
    return {
        str(k): [str(p) for p in v]
        for k, v in obj.items()
        if isinstance(v, list) and all(isinstance(p, str) for p in v)
    }


_TO_OCI = {
    MediaType.DOCKER_LAYER: MediaType.OCI_LAYER,
    MediaType.DOCKER_LAYER_GZIP: MediaType.OCI_LAYER_GZIP,
    MediaType.DOCKER_CONFIG: MediaType.OCI_CONFIG,
    MediaType.DOCKER_MANIFEST: MediaType.OCI_MANIFEST,
    MediaType.DOCKER_MANIFEST_LIST: MediaType.OCI_INDEX,
}
_TO_DOCKER = {
    MediaType.OCI_LAYER: MediaType.DOCKER_LAYER,
    MediaType.OCI_LAYER_GZIP: MediaType.DOCKER_LAYER_GZIP,
    MediaType.OCI_LAYER_ZSTD: MediaType.DOCKER_LAYER_ZSTD,
    MediaType.OCI_CONFIG: MediaType.DOCKER_CONFIG,
    MediaType.OCI_MANIFEST: MediaType.DOCKER_MANIFEST,
    MediaType.OCI_INDEX: MediaType.DOCKER_MANIFEST_LIST,
}


def oci_media_type(media_type: MediaType) -> MediaType:
    """The OCI flavour of a (possibly Docker) media type."""
    return _TO_OCI.get(media_type, media_type)


def docker_media_type(media_type: MediaType) -> MediaType:
    """The Docker flavour of a (possibly OCI) media type; zstd stays OCI (Docker has none)."""
    return _TO_DOCKER.get(media_type, media_type)


def _descriptor(media_type: MediaType, digest: Digest, size: int) -> dict[str, Any]:
    return {"mediaType": str(media_type), "digest": str(digest), "size": size}


def _layer_descriptor(layer: ImageLayer, *, docker: bool) -> dict[str, Any]:
    flavour = docker_media_type if docker else oci_media_type
    out = _descriptor(flavour(layer.media_type), layer.digest, layer.size)
    if layer.annotations:
        out["annotations"] = dict(layer.annotations)
    return out


def manifest_for(
    image_config: bytes, layers: Iterable[ImageLayer], *, docker: bool = False
) -> bytes:
    """The canonical manifest (OCI, or Docker schema 2 with ``docker``) for a config and layers."""
    flavour = docker_media_type if docker else oci_media_type
    manifest = {
        "schemaVersion": 2,
        "mediaType": str(flavour(MediaType.OCI_MANIFEST)),
        "config": _descriptor(
            flavour(MediaType.OCI_CONFIG), Digest.of_bytes(image_config), len(image_config)
        ),
        "layers": [_layer_descriptor(la, docker=docker) for la in layers],
    }
    return canonical_json(manifest)


def docker_manifest_bytes(image: Image) -> bytes:
    """The Docker schema 2 manifest of ``image`` (same config and blobs, Docker media types)."""
    return manifest_for(image.config_bytes, image.layers, docker=True)


def _merge_env(base: Sequence[str], ours: Sequence[str]) -> list[str]:
    merged: dict[str, str] = {}
    for item in [*base, *ours]:
        key, _, _ = item.partition("=")
        merged[key] = item  # an overridden key keeps the base's position
    return list(merged.values())


def _container_config(config: ImageConfig, base: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    env = _merge_env(list(base.get("Env") or []), config.env)
    if env:
        out["Env"] = env
    entrypoint = config.entrypoint
    cmd = config.cmd
    if entrypoint is None:
        entrypoint = base.get("Entrypoint")
        if cmd is None:
            cmd = base.get("Cmd")
    # Docker semantics: a new entrypoint resets the base image's Cmd.
    if entrypoint:
        out["Entrypoint"] = list(entrypoint)
    if cmd:
        out["Cmd"] = list(cmd)
    for key, ours in (
        ("WorkingDir", config.working_dir),
        ("User", config.user),
        ("StopSignal", config.stop_signal),
    ):
        value = ours if ours is not None else base.get(key)
        if value:
            out[key] = value
    ports = dict.fromkeys(base.get("ExposedPorts") or {}, None) | dict.fromkeys(
        config.exposed_ports, None
    )
    if ports:
        out["ExposedPorts"] = {p: {} for p in sorted(ports)}
    volumes = set(base.get("Volumes") or {}) | set(config.volumes)
    if volumes:
        out["Volumes"] = {v: {} for v in sorted(volumes)}
    labels = dict(base.get("Labels") or {})
    labels.pop(LAYERS_LABEL, None)
    labels.update(config.labels)
    if labels:
        out["Labels"] = labels
    return out


def assemble_image(
    layers: Sequence[ImageLayer], *, config: ImageConfig, base: BaseImage | None = None
) -> Image:
    """Build the config and OCI manifest for ``base.layers + layers`` (bottom first).

    Values unset in ``config`` are inherited from the base image's config; ``Env`` is merged
    per key with ours winning. The ``dev.closurepack.layers`` label maps each diff_id to the
    store items that layer holds (the base's entries are kept for layers still present).
    """
    base_config: Mapping[str, Any] = base.config if base is not None else {}
    base_layers = tuple(base.layers) if base is not None else ()
    all_layers = (*base_layers, *layers)
    created = rfc3339(config.created)

    container = _container_config(config, base_config.get("config") or {})
    recorded = layer_paths_from_config(base_config) if base is not None else {}
    for layer in base_layers:
        if layer.paths:
            recorded[str(layer.diff_id)] = list(layer.paths)
    for layer in layers:
        if layer.paths:
            recorded[str(layer.diff_id)] = list(layer.paths)
    present = {str(layer.diff_id) for layer in all_layers}
    recorded = {k: v for k, v in recorded.items() if k in present}
    if recorded:
        labels = container.setdefault("Labels", {})
        labels[LAYERS_LABEL] = canonical_json(recorded).decode()

    history: list[dict[str, Any]] = []
    if base is not None:
        base_history = [h for h in base_config.get("history") or [] if isinstance(h, dict)]
        non_empty = [h for h in base_history if not h.get("empty_layer")]
        if len(non_empty) == len(base_layers):
            history.extend(base_history)
        else:
            history.extend(
                {"created": str(base_config.get("created", created)), "created_by": "base image"}
                for _ in base_layers
            )
    for layer in layers:
        entry = {"created": created, "created_by": "closurepack"}
        if layer.comment:
            entry["comment"] = layer.comment
        history.append(entry)

    obj: dict[str, Any] = {
        "architecture": config.arch,
        "os": config.os,
        "created": created,
        "config": container,
        "rootfs": {"type": "layers", "diff_ids": [str(la.diff_id) for la in all_layers]},
        "history": history,
    }
    if config.variant:
        obj["variant"] = config.variant
    config_bytes = canonical_json(obj)
    manifest_bytes = manifest_for(config_bytes, all_layers, docker=False)
    return Image(config_bytes=config_bytes, manifest_bytes=manifest_bytes, layers=all_layers)
