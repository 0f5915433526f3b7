"""What a tag of the destination holds before a push: its manifest, checked, and the blobs it
names.

The answer is trusted only when it holds up: the ``Docker-Content-Digest`` the registry gives
must be the sha256 of the bytes that came, the body at most :data:`MANIFEST_LIMIT` bytes, an
image manifest (OCI or Docker schema 2) whose descriptors are well formed. Anything else (no
such tag, an index, a failed or malformed answer) is "nothing known".

A tag holding a manifest does not prove that the repository still holds its blobs: a registry
takes a manifest only with every blob it names (the distribution spec's
``MANIFEST_BLOB_UNKNOWN``), but a blob can be deleted afterwards (``DELETE
/v2/NAME/blobs/DIGEST``, or storage lost) and the tag goes on naming it. So the blobs listed
here are what a push still has to ``HEAD`` (:func:`~closurepack.registry.blobs.missing_blobs`),
never taken as present.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from closurepack.digest import Digest
from closurepack.errors import ImageError, RegistryAuthError, RegistryError
from closurepack.jsontext import parse_json_object
from closurepack.mediatypes import ANY_MANIFEST_ACCEPT, IMAGE_MANIFEST_TYPES, INDEX_TYPES
from closurepack.registry.client import RegistryClient, read_limited

__all__ = ["MANIFEST_LIMIT", "TagState", "manifest_blobs", "read_tag"]

_log = logging.getLogger(__name__)

#: The distribution spec lets registries refuse manifests over 4 MiB; so do we (here, and in
#: pull, referrers and cache artifacts, through registry.pull).
MANIFEST_LIMIT = 4 << 20

#: Layers a registry does not have to hold (they are fetched from their ``urls``).
_FOREIGN = (
    "application/vnd.docker.image.rootfs.foreign.",
    "application/vnd.oci.image.layer.nondistributable.",
)


@dataclass(frozen=True)
class TagState:
    """The tag's manifest digest (None: no such tag, or nothing known) and the blobs (digest
    -> size) its manifest names, which the repository may or may not still hold; ``known`` is
    False when the answer was not trusted (or none came)."""

    digest: Digest | None = None
    blobs: dict[Digest, int] = field(default_factory=dict)
    known: bool = False


def read_tag(client: RegistryClient, tag: str) -> TagState:
    """What ``tag`` of the client's repository holds (see the module doc). Only an
    authentication failure is raised (the push cannot go on); any other failure is logged
    and counts as nothing known (the manifest is then put again)."""
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
        _log.info("%s; not known", exc)
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
        _log.info("%s: %s; not known", what, exc)
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
