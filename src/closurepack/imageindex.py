"""A multi-platform image: one image per platform under an OCI image index (or, in Docker's
flavour, a manifest list), in canonical JSON.

The index lists each image's manifest with its ``platform``, in the order given (one entry per
platform). A layer that several images share is one blob: :attr:`ImageIndex.layers` lists
each digest once, so a writer stores or uploads it once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from closurepack.artifacts import Artifact, subject_descriptor
from closurepack.digest import Digest
from closurepack.errors import OptionError
from closurepack.image import Image, ImageLayer, canonical_json, docker_manifest_bytes
from closurepack.mediatypes import MediaType
from closurepack.platforms import Platform

__all__ = ["Attachments", "ImageIndex", "PlatformImage", "as_docker", "attachment_subjects"]

#: Documents to attach as artifacts: to a single image, a sequence; to a multi-platform
#: image, each platform image's, by the digest of that image's manifest (as the index lists it).
Attachments = Sequence[Artifact] | Mapping[Digest, Sequence[Artifact]]


@dataclass(frozen=True)
class PlatformImage:
    """One image of an index and the platform it is listed for."""

    platform: Platform
    image: Image

    @property
    def media_type(self) -> str:
        return str(self.image.manifest.get("mediaType") or MediaType.OCI_MANIFEST)

    def descriptor(self) -> dict[str, object]:
        return {
            "mediaType": self.media_type,
            "digest": str(self.image.manifest_digest),
            "size": len(self.image.manifest_bytes),
            "platform": self.platform.as_json(),
        }


def as_docker(image: Image) -> Image:
    """``image`` with its Docker schema 2 manifest (the same config and blobs)."""
    if image.manifest.get("mediaType") == MediaType.DOCKER_MANIFEST:
        return image
    return Image(
        config_bytes=image.config_bytes,
        manifest_bytes=docker_manifest_bytes(image),
        layers=image.layers,
    )


@dataclass(frozen=True)
class ImageIndex:
    """Images, one per platform, and the index over them (``docker``: a Docker manifest list
    over Docker schema 2 manifests; the images are converted here)."""

    images: tuple[PlatformImage, ...]
    docker: bool = False
    #: The index as stored elsewhere (a copy keeps it byte for byte): it must list exactly
    #: these images' manifests; None: the canonical index is made.
    stored: bytes | None = field(default=None, repr=False)
    index_bytes: bytes = field(init=False)
    digest: Digest = field(init=False)

    def __post_init__(self) -> None:
        if not self.images:
            raise OptionError("an image index needs at least one image")
        seen = [entry.platform for entry in self.images]
        for platform in seen:
            if seen.count(platform) > 1:
                raise OptionError(f"--platform {platform}: given more than once")
        if self.docker:
            converted = tuple(PlatformImage(e.platform, as_docker(e.image)) for e in self.images)
            object.__setattr__(self, "images", converted)
        body = {
            "schemaVersion": 2,
            "mediaType": str(self.media_type),
            "manifests": [entry.descriptor() for entry in self.images],
        }
        object.__setattr__(self, "index_bytes", self.stored or canonical_json(body))
        object.__setattr__(self, "digest", Digest.of_bytes(self.index_bytes))

    @classmethod
    def of(
        cls,
        images: Sequence[tuple[Platform, Image]],
        *,
        docker: bool = False,
        stored: bytes | None = None,
    ) -> ImageIndex:
        return cls(tuple(PlatformImage(p, i) for p, i in images), docker=docker, stored=stored)

    @property
    def media_type(self) -> MediaType:
        return MediaType.DOCKER_MANIFEST_LIST if self.docker else MediaType.OCI_INDEX

    @property
    def layers(self) -> tuple[ImageLayer, ...]:
        """Every layer blob of every image, each digest once (the first image's first)."""
        unique: dict[Digest, ImageLayer] = {}
        for entry in self.images:
            for layer in entry.image.layers:
                unique.setdefault(layer.digest, layer)
        return tuple(unique.values())

    @property
    def small_blobs(self) -> dict[Digest, bytes]:
        """The configs, manifests and the index itself, by digest."""
        out: dict[Digest, bytes] = {}
        for entry in self.images:
            out[entry.image.config_digest] = entry.image.config_bytes
            out[entry.image.manifest_digest] = entry.image.manifest_bytes
        out[self.digest] = self.index_bytes
        return out


def attachment_subjects(
    image: Image | ImageIndex, attachments: Attachments, *, media_type: str | None = None
) -> list[tuple[dict[str, object], Sequence[Artifact]]]:
    """(subject descriptor, its documents) for each image of ``image`` that ``attachments``
    gives documents for: the single image (its manifest as ``media_type``, default its own),
    or each platform's image of an index (its manifest as the index lists it)."""
    if isinstance(image, Image):
        found = (
            attachments.get(image.manifest_digest, ())
            if isinstance(attachments, Mapping)
            else attachments
        )
        kind = media_type or str(image.manifest.get("mediaType") or MediaType.OCI_MANIFEST)
        return [(subject_descriptor(kind, image.manifest_bytes), found)] if found else []
    if not isinstance(attachments, Mapping):
        return []
    return [
        (subject_descriptor(entry.media_type, entry.image.manifest_bytes), documents)
        for entry in image.images
        if (documents := attachments.get(entry.image.manifest_digest, ()))
    ]
