"""OCI and Docker media types, and the compression each layer media type implies."""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ANY_MANIFEST_ACCEPT",
    "IMAGE_MANIFEST_TYPES",
    "INDEX_TYPES",
    "MediaType",
    "layer_media_type",
]


class MediaType(StrEnum):
    OCI_INDEX = "application/vnd.oci.image.index.v1+json"
    OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
    OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
    OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
    OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
    OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
    DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
    DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
    DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
    DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
    DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    # Docker has no zstd media type of its own; registries and Docker 23+ accept the OCI one.
    DOCKER_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

    @property
    def compression(self) -> str:
        """``gzip``, ``zstd`` or ``none`` for layer types; ``none`` for everything else."""
        if self.value.endswith(("+gzip", ".gzip")):
            return "gzip"
        if self.value.endswith("+zstd"):
            return "zstd"
        return "none"


#: The media types of an image manifest: OCI, Docker schema 2.
IMAGE_MANIFEST_TYPES: tuple[str, ...] = (
    MediaType.OCI_MANIFEST.value,
    MediaType.DOCKER_MANIFEST.value,
)
#: The media types of a multi-platform image: OCI index, Docker manifest list.
INDEX_TYPES: tuple[str, ...] = (MediaType.OCI_INDEX.value, MediaType.DOCKER_MANIFEST_LIST.value)
#: An Accept header for any of them: a registry answers 404 for a tag whose kind the header
#: leaves out, which would pass for "no such tag".
ANY_MANIFEST_ACCEPT = ", ".join((*IMAGE_MANIFEST_TYPES, *INDEX_TYPES))


def layer_media_type(compression: str, *, oci: bool = True) -> MediaType:
    """The layer media type for a compression name, in OCI or Docker flavour."""
    table = {
        ("gzip", True): MediaType.OCI_LAYER_GZIP,
        ("zstd", True): MediaType.OCI_LAYER_ZSTD,
        ("zstd:chunked", True): MediaType.OCI_LAYER_ZSTD,
        ("none", True): MediaType.OCI_LAYER,
        ("gzip", False): MediaType.DOCKER_LAYER_GZIP,
        ("zstd", False): MediaType.OCI_LAYER_ZSTD,
        ("zstd:chunked", False): MediaType.OCI_LAYER_ZSTD,
        ("none", False): MediaType.DOCKER_LAYER,
    }
    try:
        return table[(compression, oci)]
    except KeyError:
        raise ValueError(f"unknown compression {compression!r}") from None
