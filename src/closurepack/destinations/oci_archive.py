"""oci-archive destination: an OCI image layout in one tar, written atomically and
deterministically (fixed order: oci-layout, index.json, blobs by digest)."""

from __future__ import annotations

from typing import BinaryIO

from closurepack.destinations._files import atomic_file, open_layer
from closurepack.destinations._tar import TarWriter
from closurepack.destinations.oci_layout import LAYOUT_FILE, index_with
from closurepack.destinations.reference import Destination, oci_ref_name
from closurepack.digest import Writable
from closurepack.errors import DestinationError
from closurepack.image import Image, canonical_json

__all__ = ["write_image", "write_stream"]


def write_stream(image: Image, out: Writable | BinaryIO, *, ref_name: str) -> None:
    """Stream ``image`` as an oci-archive holding one tag."""
    tar = TarWriter(out, mtime=image.created_epoch)
    tar.add_bytes("oci-layout", LAYOUT_FILE)
    tar.add_bytes("index.json", canonical_json(index_with(None, image, ref_name)))
    tar.add_dir("blobs")
    tar.add_dir("blobs/sha256")
    small = {
        image.config_digest.hex: image.config_bytes,
        image.manifest_digest.hex: image.manifest_bytes,
    }
    layers = {layer.digest.hex: layer for layer in image.layers}
    for hex_digest in sorted(small.keys() | layers.keys()):
        name = f"blobs/sha256/{hex_digest}"
        if hex_digest in small:
            tar.add_bytes(name, small[hex_digest])
            continue
        layer = layers[hex_digest]
        with open_layer(layer) as src:
            tar.add_blob(name, src, size=layer.size, digest=layer.digest)
    tar.close()


def write_image(image: Image, dest: Destination, *, tag: str | None = None) -> None:
    """Write ``image`` to the oci-archive ``dest.path`` (replacing any previous archive)."""
    path = dest.path
    if path is None:
        raise DestinationError(f"{dest}: oci-archive needs a path")
    if path.is_dir():
        raise DestinationError(f"{path}: is a directory, expected an archive file path")
    with atomic_file(path) as out:  # write errors: a DestinationError naming ``path``
        write_stream(image, out, ref_name=oci_ref_name(dest, tag))
