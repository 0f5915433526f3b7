"""Artifacts attached to an image in a registry (distribution spec 1.1): pushed with a
``subject``, and found again through the referrers API or the fallback tag.

An artifact manifest goes in by digest, after its blobs. A registry that indexes referrers says
so with an ``OCI-Subject`` header on that PUT, or answers ``GET /v2/<name>/referrers/<digest>``
with an index; one that does not (distribution 2.8, Debian's ``docker-registry``) answers 404,
and then the client keeps the index itself under the tag ``sha256-<hex>`` of the subject
(the "Referrers Tag Schema"): read, the new descriptors merged in (every other entry kept),
written back. Two builds attaching to one image at the same moment may lose one of their
entries there (the registry offers no conditional write); the artifact itself stays.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping, Sequence
from typing import Any

from closurepack.artifacts import (
    Artifact,
    CarriedArtifact,
    Referrer,
    artifact_manifests,
    carry,
    fallback_tag,
    merge_referrers,
    parse_referrer,
    referrer_descriptor,
    subject_descriptor,
)
from closurepack.digest import Digest
from closurepack.errors import DestinationError, ImageError
from closurepack.image import canonical_json
from closurepack.imageindex import Attachments, ImageIndex, attachment_subjects
from closurepack.jsontext import parse_json
from closurepack.mediatypes import ANY_MANIFEST_ACCEPT, MediaType
from closurepack.registry.blobs import blob_exists, upload_blob
from closurepack.registry.client import RegistryClient, get_if_there, open_client
from closurepack.registry.options import RegistryOptions
from closurepack.registry.pull import MANIFEST_LIMIT
from closurepack.registry.push import ImagePusher
from closurepack.registry.reference import RegistryRef

__all__ = [
    "attach",
    "attach_platforms",
    "attach_pushed",
    "carried_referrers",
    "list_referrers",
    "referrers_index",
]

_INDEX = str(MediaType.OCI_INDEX)
_MANIFEST = str(MediaType.OCI_MANIFEST)


def _index(data: bytes, what: str) -> dict[str, Any]:
    obj = parse_json(data, what, deep_error=True)
    # (a tag holding anything else, an image, is never overwritten with an index)
    if not isinstance(obj, dict) or not isinstance(obj.get("manifests"), list):
        raise ImageError(f"{what}: not an OCI image index")
    return obj


def referrers_index(client: RegistryClient, subject: Digest) -> tuple[dict[str, Any] | None, bool]:
    """The referrers of ``subject`` in the client's repository as an index, and whether it
    came from the referrers API (False: from the fallback tag; the index is None when that tag
    does not exist either)."""
    where = f"referrers of {client.ref.name}@{subject}"
    found = get_if_there(client, f"referrers/{subject}", where, limit=MANIFEST_LIMIT, accept=_INDEX)
    if found is not None:
        return _index(found[0], where), True
    tag = fallback_tag(subject)
    # every manifest type accepted: distribution 2.8 answers 404 for a manifest of a type not
    # accepted, and an image under that tag would then be overwritten
    found = get_if_there(
        client,
        f"manifests/{tag}",
        f"{client.ref.name}:{tag}",
        limit=MANIFEST_LIMIT,
        accept=ANY_MANIFEST_ACCEPT,
    )
    return (_index(found[0], f"{client.ref.name}:{tag}") if found else None), False


def _put(client: RegistryClient, reference: str, body: bytes, media_type: str, what: str) -> str:
    response = client.request(
        "PUT", client.url(f"manifests/{reference}"), what=what, ok=(201,),
        headers={"Content-Type": media_type}, content=body,
    )  # fmt: skip
    return str(response.headers.get("OCI-Subject", ""))


def attach(
    client: RegistryClient, subject: Mapping[str, Any], attachments: Sequence[Artifact]
) -> list[Digest]:
    """Push ``attachments`` as artifacts whose subject is the manifest ``subject`` (its
    descriptor) in the client's repository; keep the fallback tag's index where the registry
    has no referrers API. Return the artifact manifests' digests."""
    subject_digest = Digest.parse(str(subject["digest"]))
    pushed = []
    indexed = True
    for manifest, blobs in artifact_manifests(subject, attachments):
        for blob in blobs:
            digest = Digest.of_bytes(blob)
            if not blob_exists(client, digest, len(blob)):
                upload_blob(client, digest, len(blob), functools.partial(io.BytesIO, blob))
        digest = Digest.of_bytes(manifest)
        answered = _put(client, str(digest), manifest, _MANIFEST, f"artifact {digest}")
        indexed = indexed and answered == str(subject_digest)
        pushed.append(manifest)
    if not pushed or indexed:
        return [Digest.of_bytes(m) for m in pushed]
    try:
        index, from_api = referrers_index(client, subject_digest)
    except ImageError as exc:  # the fallback tag holds something else: it is not replaced
        raise DestinationError(f"{exc}; the artifacts were pushed but are not listed") from exc
    if not from_api:
        tag = fallback_tag(subject_digest)
        merged = merge_referrers(index, [referrer_descriptor(m) for m in pushed])
        _put(
            client, tag, canonical_json(merged), _INDEX, f"referrers index {client.ref.name}:{tag}"
        )
    return [Digest.of_bytes(m) for m in pushed]


def attach_pushed(pusher: ImagePusher, attachments: Sequence[Artifact]) -> list[Digest]:
    """:func:`attach` to the manifest ``pusher`` pushed last (as pushed: OCI or Docker)."""
    if not attachments:
        return []
    if pusher.pushed is None:
        raise ImageError(f"{pusher.ref}: no image was pushed to attach artifacts to")
    media_type, body = pusher.pushed
    return attach(pusher.client, subject_descriptor(media_type, body), attachments)


def attach_platforms(pusher: ImagePusher, index: ImageIndex, attachments: Attachments) -> None:
    """:func:`attach` to each platform's image of the multi-platform image ``pusher`` pushed
    the documents ``attachments`` gives for it (by its manifest's digest)."""
    for subject, documents in attachment_subjects(index, attachments):
        attach(pusher.client, subject, documents)


def _referrer_manifests(client: RegistryClient, subject: Digest) -> list[tuple[bytes, Referrer]]:
    """The artifact manifests (bytes, parsed) whose subject is ``subject`` in the client's
    repository (the referrers API, else the fallback tag)."""
    ref = client.ref
    index, _ = referrers_index(client, subject)
    found = []
    for entry in (index or {}).get("manifests") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("digest"), str):
            continue
        digest = Digest.parse(entry["digest"])
        where = f"artifact {ref.name}@{digest}"
        body = get_if_there(
            client, f"manifests/{digest}", where, limit=MANIFEST_LIMIT, accept=_MANIFEST
        )
        if body is None:
            continue  # listed, but gone (deleted since)
        if Digest.of_bytes(body[0]) != digest:
            raise ImageError(f"{where}: the registry sent other bytes")
        referrer = parse_referrer(body[0], where=where)
        if referrer.subject == subject:
            found.append((body[0], referrer))
    return found


def list_referrers(ref: RegistryRef, options: RegistryOptions, subject: Digest) -> list[Referrer]:
    """The artifacts whose subject is ``subject`` in ``ref``'s repository (the referrers API,
    else the fallback tag), each artifact manifest read."""
    with open_client(ref, options, [f"repository:{ref.repository}:pull"]) as client:
        return [referrer for _, referrer in _referrer_manifests(client, subject)]


def carried_referrers(
    ref: RegistryRef, options: RegistryOptions, subjects: Sequence[Digest]
) -> dict[Digest, list[CarriedArtifact]]:
    """The artifacts of each of ``subjects`` in ``ref``'s repository with their blobs, for
    ``copy`` (within :func:`closurepack.artifacts.carry`'s limits)."""
    with open_client(ref, options, [f"repository:{ref.repository}:pull"]) as client:

        def read_blob(digest: Digest, size: int) -> bytes | None:
            found = get_if_there(client, f"blobs/{digest}", f"blob {digest}", limit=size,
                                 accept="*/*")  # fmt: skip
            return None if found is None else found[0]

        return {
            subject: carry(
                _referrer_manifests(client, subject),
                read_blob,
                f"referrers of {ref.name}@{subject}",
            )
            for subject in subjects
        }
