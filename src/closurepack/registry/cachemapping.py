"""The shared layer cache's artifact in a registry: layer cache key -> blob descriptor.

Under a tag (default :data:`CACHE_TAG`) of the cache repository: an OCI image manifest whose
``artifactType`` is :data:`ARTIFACT_TYPE`, whose config is the two bytes ``{}`` of media type
:data:`CONFIG_TYPE` (distribution 2.8 knows no ``artifactType``, so tools tell the artifact by
its config type; those bytes are also OCI's empty descriptor) and whose one layer, of media
type :data:`MAPPING_TYPE`, is the JSON mapping::

    {"format": "closurepack-layer-cache-1",
     "layers": {"<key>": {"digest": "sha256:...", "size": N,
                          "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                          "diff_id": "sha256:..."}}}

Entries are kept oldest first. Reading is bounded (:data:`MAPPING_LIMIT`) and strict: any
malformed part makes the whole mapping an ImageError.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from closurepack.cachegc import KEY
from closurepack.digest import Digest
from closurepack.errors import DestinationError, ImageError, OptionError
from closurepack.jsontext import parse_json_object
from closurepack.mediatypes import MediaType
from closurepack.registry.client import RegistryClient, get_if_there
from closurepack.registry.pull import MANIFEST_LIMIT
from closurepack.registry.reference import RegistryRef, is_registry_reference, parse_reference

__all__ = [
    "ARTIFACT_TYPE",
    "CACHE_TAG",
    "CONFIG_TYPE",
    "MAPPING_LIMIT",
    "MAPPING_TYPE",
    "MAX_ENTRIES",
    "CacheEntry",
    "NotALayerCacheError",
    "artifact",
    "consistent_entries",
    "fetch_mapping",
    "merge_entries",
    "parse_cache_ref",
]

#: The tag a cache reference without one names.
CACHE_TAG = "closurepack-cache"
ARTIFACT_TYPE = "application/vnd.closurepack.layer-cache.v1+json"
CONFIG_TYPE = "application/vnd.closurepack.layer-cache.config.v1+json"
MAPPING_TYPE = "application/vnd.closurepack.layer-cache.mapping.v1+json"
#: A mapping larger than this is not read (an entry is about 300 bytes).
MAPPING_LIMIT = 64 << 20
#: Entries a published mapping keeps (the most recently added).
MAX_ENTRIES = 100_000

_FORMAT = "closurepack-layer-cache-1"
_CONFIG = b"{}"

_log = logging.getLogger(__name__)


def parse_cache_ref(text: str, *, option: str) -> RegistryRef:
    """``docker://HOST/REPO[:TAG]`` of ``--cache-to``/``--cache-from`` (tag default
    :data:`CACHE_TAG`; ``--cache-from`` may name a ``@sha256:`` digest instead); an
    OptionError naming ``option`` for anything else."""
    if not is_registry_reference(text):
        raise OptionError(f"{option} {text!r}: expected docker://HOST/REPO[:TAG]")
    ref = parse_reference(text, for_push=option == "--cache-to")
    if ref.tag or ref.digest:
        return ref
    return RegistryRef(ref.host, ref.repository, CACHE_TAG)


@dataclass(frozen=True)
class CacheEntry:
    """What a layer key stands for: a blob of the cache repository ``source``."""

    digest: Digest
    size: int
    media_type: MediaType
    diff_id: Digest
    source: RegistryRef = field(compare=False)
    #: The layer descriptor's annotations (zstd:chunked's TOC digest and position).
    annotations: Mapping[str, str] = field(default_factory=dict, compare=False)

    def to_json_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "digest": str(self.digest),
            "size": self.size,
            "mediaType": str(self.media_type),
            "diff_id": str(self.diff_id),
        }
        if self.annotations:
            obj["annotations"] = dict(self.annotations)
        return obj


class NotALayerCacheError(DestinationError):
    """The tag holds something that is not a closurepack layer cache."""


def fetch_mapping(client: RegistryClient, ref: RegistryRef) -> dict[str, CacheEntry] | None:
    """The mapping under ``ref`` (None when the repository or tag does not exist);
    NotALayerCacheError when the tag holds something else, ImageError when the mapping is
    malformed."""
    where = f"layer cache {ref}"
    found = get_if_there(
        client, f"manifests/{ref.reference}", where, limit=MANIFEST_LIMIT,
        accept=str(MediaType.OCI_MANIFEST),
    )  # fmt: skip
    if found is None:
        return None
    manifest = parse_json_object(found[0], f"{where}: manifest")
    config = manifest.get("config")
    if not isinstance(config, dict) or config.get("mediaType") != CONFIG_TYPE:
        raise NotALayerCacheError(f"{where}: the tag holds something else than a layer cache")
    layers = manifest.get("layers")
    if not isinstance(layers, list) or len(layers) != 1 or not isinstance(layers[0], dict):
        raise ImageError(f"{where}: the manifest has not exactly one layer")
    digest = _digest(layers[0].get("digest"), f"{where}: the manifest's layer")
    what = f"{where}: mapping {digest}"
    blob = get_if_there(client, f"blobs/{digest}", what, limit=MAPPING_LIMIT, accept="*/*")
    if blob is None:
        raise ImageError(f"{what}: the blob is missing")
    data = blob[0]
    if Digest.of_bytes(data) != digest:
        raise ImageError(f"{what}: the registry sent other bytes")
    return _parse_mapping(data, ref)


def _digest(value: object, what: str) -> Digest:
    try:
        return Digest.parse(str(value))
    except ImageError as exc:
        raise ImageError(f"{what}: {exc}") from exc


def _parse_mapping(data: bytes, ref: RegistryRef) -> dict[str, CacheEntry]:
    what = f"layer cache {ref}: mapping"
    obj = parse_json_object(data, what)
    layers = obj.get("layers")
    if obj.get("format") != _FORMAT or not isinstance(layers, dict):
        raise ImageError(f"{what}: not a {_FORMAT} mapping")
    entries: dict[str, CacheEntry] = {}
    for key, value in layers.items():
        if not KEY.fullmatch(key) or not isinstance(value, dict):
            raise ImageError(f"{what}: bad entry {key[:80]!r}")
        size = value.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ImageError(f"{what}: entry {key}: bad size {size!r}")
        try:
            media_type = MediaType(str(value.get("mediaType")))
        except ValueError:
            raise ImageError(
                f"{what}: entry {key}: unknown media type {value.get('mediaType')!r}"
            ) from None
        annotations = value.get("annotations", {})
        if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
        ):
            raise ImageError(f"{what}: entry {key}: annotations are not strings")
        entries[key] = CacheEntry(
            digest=_digest(value.get("digest"), f"{what}: entry {key}"),
            size=size,
            media_type=media_type,
            diff_id=_digest(value.get("diff_id"), f"{what}: entry {key}"),
            source=ref,
            annotations=annotations,
        )
    return entries


def consistent_entries(entries: dict[str, CacheEntry]) -> dict[str, CacheEntry]:
    """``entries`` without those naming a blob that other entries give another size, media
    type or diff_id: a blob's digest decides all three, so one of them is wrong (one that
    names another layer's blob, say), and which one cannot be told (one warning)."""
    seen: dict[Digest, CacheEntry] = {}
    bad: set[Digest] = set()
    for entry in entries.values():
        first = seen.setdefault(entry.digest, entry)
        if (first.size, first.media_type, first.diff_id) != (
            entry.size,
            entry.media_type,
            entry.diff_id,
        ):
            bad.add(entry.digest)
    if not bad:
        return entries
    digest = min(bad, key=str)
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    _log.warning(
        "layer cache %s: blob %s%s is named with different sizes or diff_ids; those entries"
        " are ignored",
        seen[digest].source,
        digest,
        more,
    )
    return {key: entry for key, entry in entries.items() if entry.digest not in bad}


def merge_entries(
    existing: dict[str, CacheEntry], new: Sequence[tuple[str, CacheEntry]]
) -> tuple[dict[str, CacheEntry], bool]:
    """``existing`` with ``new`` put in (a changed or new entry goes last: the newest); at
    most :data:`MAX_ENTRIES`, the oldest dropped. Also whether anything changed."""
    merged = dict(existing)
    changed = False
    for key, entry in new:
        if merged.get(key) != entry:
            merged.pop(key, None)
            merged[key] = entry
            changed = True
    return dict(list(merged.items())[-MAX_ENTRIES:]), changed


def artifact(entries: dict[str, CacheEntry]) -> tuple[bytes, list[bytes]]:
    """The artifact manifest of the mapping of ``entries``, and its blobs (config, mapping)."""
    mapping = json.dumps(
        {"format": _FORMAT, "layers": {k: e.to_json_obj() for k, e in entries.items()}},
        separators=(",", ":"),
    ).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": str(MediaType.OCI_MANIFEST),
        "artifactType": ARTIFACT_TYPE,
        "config": {
            "mediaType": CONFIG_TYPE,
            "digest": str(Digest.of_bytes(_CONFIG)),
            "size": len(_CONFIG),
        },
        "layers": [
            {
                "mediaType": MAPPING_TYPE,
                "digest": str(Digest.of_bytes(mapping)),
                "size": len(mapping),
            }
        ],
    }
    body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return body, [_CONFIG, mapping]
