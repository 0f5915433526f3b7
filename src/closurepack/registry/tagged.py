"""What a tag of the destination holds before a push: its manifest, checked, and the blobs it
names, which the repository is known to hold.

A distribution registry accepts a manifest only when every blob it names (config and layers,
foreign layers aside) is in that repository (the distribution spec's ``MANIFEST_BLOB_UNKNOWN``),
so one ``GET`` of the tag's manifest stands for a ``HEAD`` of each of its blobs. The answer is
trusted only when it holds up: the ``Docker-Content-Digest`` the registry gives must be the
sha256 of the bytes that came, the body at most
:data:`~closurepack.registry.pull.MANIFEST_LIMIT` bytes, an image manifest (OCI or Docker
schema 2) whose descriptors are well formed. Anything else (no such tag, an index, a failed or
malformed answer) is "nothing known": every blob is then checked with its own ``HEAD``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from closurepack.digest import Digest
from closurepack.errors import ImageError, RegistryAuthError, RegistryError
from closurepack.jsontext import parse_json_object
from closurepack.mediatypes import ANY_MANIFEST_ACCEPT, IMAGE_MANIFEST_TYPES, INDEX_TYPES
from closurepack.registry.client import RegistryClient, read_limited
from closurepack.registry.pull import MANIFEST_LIMIT

__all__ = ["TagState", "manifest_blobs", "read_tag"]

_log = logging.getLogger(__name__)

#: Layers a registry does not have to hold (they are fetched from their ``urls``).
_FOREIGN = (
    "application/vnd.docker.image.rootfs.foreign.",
    "application/vnd.oci.image.layer.nondistributable.",
)


@dataclass(frozen=True)
class TagState:
    """The tag's manifest digest (None: no such tag, or nothing known) and the blobs (digest
    -> size) its manifest names; ``known`` is False when the answer was not trusted (or none
    came)."""

    digest: Digest | None = None
    blobs: dict[Digest, int] = field(default_factory=dict)
    known: bool = False

    def holds(self, digest: Digest, size: int) -> bool:
        """Whether the repository is known to hold blob ``digest`` of ``size`` bytes."""
        return self.blobs.get(digest) == size


def read_tag(client: RegistryClient, tag: str) -> TagState:
    """What ``tag`` of the client's repository holds (see the module doc). Only an
    authentication failure is raised (the push cannot go on); any other failure is logged
    and the push checks every blob itself."""
    what = f"manifest of {client.ref.name}:{tag}"
    try:
        response = client.request(
            "GET",
            client.url(f"manifests/{tag}"),
            what=what,
            ok=(200, 404),
            headers={"Accept": ANY_MANIFEST_ACCEPT},
            stream=True,
        )
        if response.status_code == 404:
            response.close()
            return TagState(known=True)
        declared = response.headers.get("Docker-Content-Digest", "")
        media_type = response.headers.get("Content-Type", "").partition(";")[0].strip()
        body = read_limited(response, MANIFEST_LIMIT, what)
    except RegistryAuthError:
        raise
    except RegistryError as exc:
        _log.info("%s; checking every blob instead", exc)
        return TagState()
    digest = Digest.of_bytes(body)
    if declared != str(digest):
        _log.warning(
            "%s: %s said %s for bytes whose digest is %s; not trusted",
            what,
            client.registry,
            declared or "no digest",
            digest,
        )
        return TagState()
    if media_type in INDEX_TYPES:  # a multi-platform image: its digest, no blobs known
        return TagState(digest, {}, known=True)
    try:
        blobs = manifest_blobs(body, media_type)
    except ImageError as exc:
        _log.info("%s: %s; checking every blob instead", what, exc)
        return TagState()
    return TagState(digest, blobs, known=True)


def manifest_blobs(body: bytes, media_type: str) -> dict[Digest, int]:
    """The blobs (digest -> size) the image manifest ``body`` (served as ``media_type``, or
    "" when not said) names: config and layers, foreign layers left out; a blob named with
    two sizes is left out too. An ImageError when ``body`` is not an image manifest."""
    manifest = parse_json_object(body, "the manifest")
    kinds = {str(k) for k in (media_type, manifest.get("mediaType")) if k}
    if len(kinds) != 1 or not kinds <= set(IMAGE_MANIFEST_TYPES):
        raise ImageError(f"not an image manifest ({', '.join(map(repr, sorted(kinds)))})")
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise ImageError("no layer list")
    found: dict[Digest, int] = {}
    conflicting: set[Digest] = set()
    for desc in [manifest.get("config"), *layers]:
        if not isinstance(desc, dict):
            raise ImageError("a descriptor is not an object")
        digest, size, kind = desc.get("digest"), desc.get("size"), desc.get("mediaType")
        if not isinstance(digest, str) or not isinstance(size, int) or isinstance(size, bool):
            raise ImageError("a descriptor without digest or size")
        if desc.get("urls") or (isinstance(kind, str) and kind.startswith(_FOREIGN)):
            continue
        blob = Digest.parse(digest)
        if found.setdefault(blob, size) != size:
            conflicting.add(blob)  # named with two sizes: one of them is wrong
    return {d: n for d, n in found.items() if d not in conflicting}
