"""OCI 1.1 artifacts attached to an image (an SBOM): the artifact manifest whose ``subject`` is
the image's manifest, and the referrers index that lists such artifacts.

An artifact is an OCI image manifest (image-spec 1.1, "Guidelines for artifact usage") with an
``artifactType``, the empty config (``{}``, :data:`EMPTY_MEDIA_TYPE`), one layer holding the
document and a ``subject`` descriptor naming the image manifest. The referrers of a manifest are
listed in an OCI image index of descriptors that carry the ``artifactType`` and annotations of
each artifact manifest: what a registry's referrers API answers, and what the ``sha256-<hex>``
fallback tag of the distribution spec holds. Everything is canonical JSON: same input, same
bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from closurepack.digest import Digest
from closurepack.errors import ImageError
from closurepack.image import canonical_json
from closurepack.jsontext import parse_json_object
from closurepack.mediatypes import MediaType

__all__ = [
    "ARTIFACT_BLOB_LIMIT",
    "ARTIFACT_COUNT_LIMIT",
    "EMPTY_CONFIG",
    "EMPTY_MEDIA_TYPE",
    "TITLE",
    "Artifact",
    "Attachment",
    "CarriedArtifact",
    "Referrer",
    "artifact_manifest",
    "artifact_manifests",
    "carry",
    "drop_replaced_referrers",
    "fallback_tag",
    "merge_referrers",
    "parse_referrer",
    "referrer_descriptor",
    "subject_descriptor",
]

#: OCI's empty descriptor: the two bytes ``{}`` as the config of an artifact.
EMPTY_CONFIG = b"{}"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
TITLE = "org.opencontainers.image.title"
_CREATED = "org.opencontainers.image.created"


@dataclass(frozen=True)
class Attachment:
    """One document to attach: its type (the ``artifactType`` and its layer's media type), its
    bytes, a file name (``org.opencontainers.image.title``) and when it was made (RFC 3339)."""

    artifact_type: str
    data: bytes
    title: str
    created: str

    @property
    def blobs(self) -> tuple[bytes, ...]:
        """The blobs its manifest names: the empty config and the document."""
        return (EMPTY_CONFIG, self.data)

    def manifest_for(self, subject: Mapping[str, Any]) -> bytes:
        """Its artifact manifest, attached to ``subject``."""
        return artifact_manifest(self, subject)


@dataclass(frozen=True)
class CarriedArtifact:
    """An artifact read from an image's source, carried by ``copy``: its manifest as stored
    and the blobs it names (config and documents), byte for byte."""

    manifest: bytes
    blobs: tuple[bytes, ...]

    def manifest_for(self, subject: Mapping[str, Any]) -> bytes:
        """Its manifest as stored when ``subject`` is the one it names; else the same
        manifest with ``subject`` in its place (the copied image's manifest was converted)."""
        obj = parse_json_object(self.manifest, f"artifact {Digest.of_bytes(self.manifest)}")
        if (obj.get("subject") or {}).get("digest") == subject.get("digest"):
            return self.manifest
        return canonical_json({**obj, "subject": dict(subject)})


#: What can be attached to an image: a document made here, or an artifact carried by copy.
Artifact = Attachment | CarriedArtifact

#: At most this many artifacts are carried per image, each blob at most this many bytes:
#: what an untrusted source can make ``copy`` read into memory.
ARTIFACT_COUNT_LIMIT = 64
ARTIFACT_BLOB_LIMIT = 64 << 20


def carry(
    found: Sequence[tuple[bytes, Referrer]],
    read_blob: Callable[[Digest, int], bytes | None],
    where: str,
) -> list[CarriedArtifact]:
    """The artifacts ``found`` (manifest bytes, parsed) of one image with the blobs each names
    (its config, then its documents), read by ``read_blob(digest, size)`` (None: missing) and
    checked against their descriptors; an ImageError past :data:`ARTIFACT_COUNT_LIMIT`
    artifacts or a blob past :data:`ARTIFACT_BLOB_LIMIT` bytes."""
    if len(found) > ARTIFACT_COUNT_LIMIT:
        raise ImageError(f"{where}: more than {ARTIFACT_COUNT_LIMIT} artifacts")
    carried = []
    for body, referrer in found:
        manifest = parse_json_object(body, f"artifact {referrer.digest}")
        config = manifest.get("config")
        descriptors = [config, *referrer.layers] if isinstance(config, dict) else referrer.layers
        what = f"{where}: artifact {referrer.digest}"
        blobs = tuple(_carried_blob(d, read_blob, what) for d in descriptors)
        carried.append(CarriedArtifact(manifest=body, blobs=blobs))
    return carried


def _carried_blob(
    descriptor: Mapping[str, Any], read_blob: Callable[[Digest, int], bytes | None], where: str
) -> bytes:
    digest = Digest.parse(str(descriptor.get("digest")))
    what = f"{where}: blob {digest}"
    size = descriptor.get("size")
    if not isinstance(size, int) or not 0 <= size <= ARTIFACT_BLOB_LIMIT:
        raise ImageError(f"{what}: size {size!r} is not 0 to {ARTIFACT_BLOB_LIMIT} bytes")
    data = read_blob(digest, size)
    if data is None:
        raise ImageError(f"{what}: missing")
    if len(data) != size or Digest.of_bytes(data) != digest:
        raise ImageError(f"{what}: does not match its digest")
    return data


def subject_descriptor(media_type: str, manifest: bytes) -> dict[str, Any]:
    """The descriptor of an image manifest, as an artifact's ``subject``."""
    return {
        "mediaType": media_type,
        "digest": str(Digest.of_bytes(manifest)),
        "size": len(manifest),
    }


def artifact_manifest(attachment: Attachment, subject: Mapping[str, Any]) -> bytes:
    """The artifact manifest of ``attachment`` whose subject is ``subject``."""
    data = attachment.data
    manifest = {
        "schemaVersion": 2,
        "mediaType": str(MediaType.OCI_MANIFEST),
        "artifactType": attachment.artifact_type,
        "config": {
            "mediaType": EMPTY_MEDIA_TYPE,
            "digest": str(Digest.of_bytes(EMPTY_CONFIG)),
            "size": len(EMPTY_CONFIG),
        },
        "layers": [
            {
                "mediaType": attachment.artifact_type,
                "digest": str(Digest.of_bytes(data)),
                "size": len(data),
                "annotations": {TITLE: attachment.title},
            }
        ],
        "subject": dict(subject),
        "annotations": {_CREATED: attachment.created},
    }
    return canonical_json(manifest)


def referrer_descriptor(manifest: bytes) -> dict[str, Any]:
    """The descriptor of an artifact manifest as a referrers index lists it (its artifactType
    and annotations copied, as the distribution spec asks)."""
    parsed = parse_referrer(manifest, where=f"artifact {Digest.of_bytes(manifest)}")
    out: dict[str, Any] = {
        "mediaType": str(MediaType.OCI_MANIFEST),
        "digest": str(parsed.digest),
        "size": parsed.size,
        "artifactType": parsed.artifact_type,
    }
    if parsed.annotations:
        out["annotations"] = dict(parsed.annotations)
    return out


def fallback_tag(subject: Digest) -> str:
    """The tag of the referrers index of ``subject`` where a registry has no referrers API:
    ``<alg>-<hex>`` (distribution spec 1.1, "Referrers Tag Schema")."""
    return f"{subject.algorithm}-{subject.hex}"


def merge_referrers(
    index: Mapping[str, Any] | None, descriptors: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    """The referrers index ``index`` (None: an empty one) with ``descriptors`` added, each
    replacing an entry of the same digest; every other entry kept, in its place."""
    manifests = [m for m in (index or {}).get("manifests") or [] if isinstance(m, dict)]
    for descriptor in descriptors:
        for i, old in enumerate(manifests):
            if old.get("digest") == descriptor["digest"]:
                manifests[i] = dict(descriptor)
                break
        else:
            manifests.append(dict(descriptor))
    out = dict(index or {})
    out.update(schemaVersion=2, mediaType=str(MediaType.OCI_INDEX), manifests=manifests)
    return out


def artifact_manifests(
    subject: Mapping[str, Any], attachments: Sequence[Artifact]
) -> list[tuple[bytes, tuple[bytes, ...]]]:
    """(manifest, the blobs it names) of each of ``attachments`` attached to ``subject``."""
    return [(a.manifest_for(subject), a.blobs) for a in attachments]


def _image_digests(index: Mapping[str, Any] | None) -> set[str]:
    entries = (index or {}).get("manifests") or []
    return {
        str(m.get("digest")) for m in entries if isinstance(m, dict) and not m.get("artifactType")
    }


def drop_replaced_referrers(
    old: Mapping[str, Any] | None,
    new: dict[str, Any],
    read: Callable[[str], bytes | None],
) -> dict[str, Any]:
    """``new`` (a layout's index after ``old``) without the artifact entries whose subject was
    an image entry of ``old`` that ``new`` no longer has (an image replaced under its tag takes
    its SBOMs with it). ``read`` gives an artifact manifest's bytes by digest (None: missing;
    such an entry, and one that cannot be read as an artifact, is kept)."""
    gone = _image_digests(old) - _image_digests(new)
    if not gone:
        return new
    kept = []
    for entry in new.get("manifests") or []:
        if isinstance(entry, dict) and entry.get("artifactType"):
            data = read(str(entry.get("digest")))
            try:
                subject = parse_referrer(data, where="").subject if data is not None else None
            except ImageError:
                subject = None
            if subject is not None and str(subject) in gone:
                continue
        kept.append(entry)
    return {**new, "manifests": kept}


@dataclass(frozen=True)
class Referrer:
    """An artifact manifest read back: its digest and size, type, subject and document."""

    digest: Digest
    size: int
    artifact_type: str
    subject: Digest | None
    annotations: Mapping[str, str]
    layers: tuple[Mapping[str, Any], ...]

    def to_json_obj(self) -> dict[str, Any]:
        documents = [
            {"digest": str(layer.get("digest")), "size": layer.get("size"),
             "media_type": layer.get("mediaType"),
             "title": (layer.get("annotations") or {}).get(TITLE)}
            for layer in self.layers
        ]  # fmt: skip
        return {
            "artifact_type": self.artifact_type,
            "digest": str(self.digest),
            "size": self.size,
            "documents": documents,
        }


def parse_referrer(manifest: bytes, *, where: str) -> Referrer:
    """An artifact manifest's parts; an ImageError naming ``where`` when it is not one."""
    obj = parse_json_object(manifest, where)
    config = obj.get("config")
    config = config if isinstance(config, dict) else {}
    artifact_type = obj.get("artifactType") or config.get("mediaType")
    if not isinstance(artifact_type, str):
        raise ImageError(f"{where}: has no artifactType")
    subject = obj.get("subject")
    subject_digest = None
    if isinstance(subject, dict) and isinstance(subject.get("digest"), str):
        subject_digest = Digest.parse(subject["digest"])
    annotations = obj.get("annotations")
    layers = obj.get("layers")
    return Referrer(
        digest=Digest.of_bytes(manifest),
        size=len(manifest),
        artifact_type=artifact_type,
        subject=subject_digest,
        annotations=(
            {str(k): str(v) for k, v in annotations.items()}
            if isinstance(annotations, dict)
            else {}
        ),
        layers=tuple(x for x in layers if isinstance(x, dict)) if isinstance(layers, list) else (),
    )
