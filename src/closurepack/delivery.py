"""How a build or an assemble ends: the finished image assembled and written to its
destination, pushed to a registry, or the stream its layers went to finished; and the channels a
job opens before its first layer so that the layers can leave as they are built (the registry
pusher, the ``oci:`` layout's staging, the standard-output streamer)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

from closurepack.blobstamp import BlobStamps
from closurepack.image import (
    BaseImage,
    Image,
    ImageConfig,
    ImageLayer,
    assemble_image,
    rfc3339,
)
from closurepack.options import warn_no_command
from closurepack.registry import RegistryOptions, is_registry_reference
from closurepack.transports import (
    WriteOptions,
    parse_destination,
    write_image,
)

if TYPE_CHECKING:  # (imported where used: they load the HTTP stack)
    from closurepack.artifacts import Attachment
    from closurepack.imageindex import Attachments, ImageIndex
    from closurepack.jobsetup import ImageOptions
    from closurepack.registry.layercache import SharedLayerCache
    from closurepack.registry.push import ImagePusher
    from closurepack.transports.layoutstaging import LayoutStaging
    from closurepack.transports.stdout import LayerStreamer

__all__ = [
    "Delivery",
    "ImageTarget",
    "finish_image",
    "image_pusher",
    "image_staging",
    "image_streamer",
    "warn_if_no_command",
    "write_or_push",
]


class ImageTarget(NamedTuple):
    """Where a finished image goes: the destination string, the tags to give it, the name
    (docker-archive's repository) and when the job started (temporary files older than
    that, left by killed writes, are removed)."""

    dest: str
    tags: Sequence[str]
    name: str | None
    started: float


class Delivery(NamedTuple):
    """How a finished image leaves, beside writing it to its destination: ``pusher`` (an
    open registry push), ``streamer`` (the stream its layers went to), ``stamps`` (the
    ``oci:`` layout blobs known good), ``staging`` (the layer blobs placed in that layout
    while they were built) and ``attach`` (its artifacts, an SBOM)."""

    pusher: ImagePusher | None = None
    streamer: LayerStreamer | None = None
    stamps: BlobStamps | None = None
    staging: LayoutStaging | None = None
    attach: Callable[[Image], Sequence[Attachment]] | None = None


#: The delivery of an image that is only written to its destination.
_WRITE_ONLY = Delivery()


def finish_image(
    layers: Sequence[ImageLayer],
    *,
    base: BaseImage | None,
    config: ImageConfig,
    target: ImageTarget,
    delivery: Delivery = _WRITE_ONLY,
) -> str:
    """Assemble the image and write or push it as ``delivery`` says, with what its
    ``attach`` gives for it (an SBOM) as artifacts whose subject is its manifest."""
    image = assemble_image(layers, config=config, base=base)
    warn_if_no_command(image, target.dest)
    return write_or_push(image, target=target, delivery=delivery)


def warn_if_no_command(image: Image, dest: str) -> None:
    container = image.config.get("config") or {}
    if not container.get("Entrypoint") and not container.get("Cmd"):
        warn_no_command(dest)


def write_or_push(
    image: Image | ImageIndex, *, target: ImageTarget, delivery: Delivery = _WRITE_ONLY
) -> str:
    """Write ``image`` (or a multi-platform image) to ``target``, or push it with the
    delivery's ``pusher``, or finish the stream its ``streamer`` sent its layers to, with what
    its ``attach`` gives for the image (an SBOM; of a multi-platform image, for each
    platform's) as artifacts whose subject is its manifest; return its digest
    (``REPO@DIGEST`` pushed). Its ``stamps`` spare rewriting unchanged blobs of an ``oci:``
    layout."""
    dest, tags, name, started = target.dest, target.tags, target.name, target.started
    pusher, streamer, attach = delivery.pusher, delivery.streamer, delivery.attach
    attachments: Attachments = ()
    if attach is not None:
        if not isinstance(image, Image):  # an ImageIndex: each platform's image its own
            attachments = {e.image.manifest_digest: attach(e.image) for e in image.images}
        else:
            attachments = attach(image)
    if pusher is not None:
        from closurepack.registry.referrers import (  # noqa: PLC0415 - HTTP stack
            attach_platforms,
            attach_pushed,
        )

        if not isinstance(image, Image):  # an ImageIndex
            digest = pusher.push_index(image)
            attach_platforms(pusher, image, attachments)
            return f"{pusher.ref.name}@{digest}"

        digest = pusher.push(image)
        attach_pushed(pusher, list(attachments) if not isinstance(attachments, Mapping) else [])
        return f"{pusher.ref.name}@{digest}"
    if streamer is not None and isinstance(image, Image):
        streamer.finish(image, tags=tags, name=name)
        return str(image.manifest_digest)
    write_image(
        image,
        parse_destination(dest),
        tags=tags,
        attachments=attachments,
        options=WriteOptions(
            name=name, started=started, stamps=delivery.stamps, staging=delivery.staging
        ),
    )
    return str(image.manifest_digest if isinstance(image, Image) else image.digest)


def image_pusher(
    dest: str,
    image: ImageOptions,
    registry: RegistryOptions,
    base: BaseImage | Sequence[BaseImage] | None,
    shared: SharedLayerCache | None = None,
) -> contextlib.AbstractContextManager[ImagePusher | None]:
    """An open pusher when ``dest`` is a registry, the --from layers handed to it (of every
    platform's base, for a multi-platform build; and the --cache-from repositories of its
    registry readable, to mount cached layers); else None."""
    if not is_registry_reference(dest):
        return contextlib.nullcontext()
    from closurepack.registry import parse_reference, push_tags  # noqa: PLC0415 - docker:// only (RegistryRef)
    from closurepack.registry.push import open_pusher  # noqa: PLC0415 - the HTTP stack

    ref = parse_reference(dest, for_push=True)
    bases = [base] if isinstance(base, BaseImage) else list(base or ())
    return open_pusher(
        ref,
        options=registry,
        tags=push_tags(ref, image.tags),
        docker=image.manifest_format == "docker",
        base_image=image.from_image,
        base_layers=[layer for b in bases for layer in b.layers],
        readable=shared.mount_sources(ref) if shared is not None else (),
    )


def image_staging(
    dest: str, stamps: BlobStamps | None, *, started: float
) -> contextlib.AbstractContextManager[LayoutStaging | None]:
    """When ``dest`` is an ``oci:`` layout, the staging of its layer blobs while they are
    built (removed, with what it staged, when the block fails; ``started``: the job's start,
    before which killed builds' staging directories are swept); else None."""
    if is_registry_reference(dest):
        return contextlib.nullcontext()
    layout = parse_destination(dest)
    if layout.kind != "oci":
        return contextlib.nullcontext()
    from closurepack.transports.layoutstaging import layout_staging  # noqa: PLC0415 - oci: only

    root = layout.path
    assert root is not None  # (an oci: destination is a directory)
    return layout_staging(root, stamps=stamps, started=started)


def image_streamer(dest: str, config: ImageConfig, base: BaseImage | None) -> LayerStreamer | None:
    """A streamer writing the layers to standard output as they are built when ``dest`` is
    ``-``; else None."""
    if is_registry_reference(dest):
        return None
    stdout = parse_destination(dest)
    if stdout.kind != "stdout":
        return None
    from closurepack.transports.stdout import LayerStreamer  # noqa: PLC0415 - -o - only

    return LayerStreamer(
        stdout,
        created=rfc3339(config.created),
        base=base.layers if base is not None else (),
    )
