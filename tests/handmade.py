"""Hand-made layers and images for tests: real tars, real compression, real digests."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import jsonschema
import zstandard
from isal import igzip
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from closurepack.digest import Digest
from closurepack.image import Image, ImageConfig, assemble_image
from closurepack.layer import BuiltLayer
from closurepack.mediatypes import layer_media_type

__all__ = [
    "BUSYBOX",
    "SCHEMA_DIR",
    "busybox_image",
    "make_layer",
    "oci_validator",
    "tar_bytes",
]

BUSYBOX = Path("/bin/busybox")


def tar_bytes(files: dict[str, bytes | str | None]) -> bytes:
    """A deterministic tar: ``bytes`` -> regular file, ``str`` -> symlink target, ``None`` ->
    directory. Parents must be listed explicitly."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            content = files[name]
            info = tarfile.TarInfo(name)
            info.mtime = 1
            if content is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            elif isinstance(content, str):
                info.type = tarfile.SYMTYPE
                info.linkname = content
                info.mode = 0o777
                tar.addfile(info)
            else:
                info.size = len(content)
                info.mode = 0o755
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def make_layer(
    directory: Path,
    files: dict[str, bytes | str | None],
    *,
    compression: str = "gzip",
    paths: tuple[str, ...] = (),
    comment: str = "",
) -> BuiltLayer:
    """Write a compressed layer blob into ``directory`` and describe it."""
    raw = tar_bytes(files)
    if compression == "gzip":
        blob = igzip.compress(raw, compresslevel=1, mtime=0)
    elif compression == "zstd":
        blob = zstandard.ZstdCompressor(level=3).compress(raw)
    else:
        blob = raw
    digest = Digest(hashlib.sha256(blob).hexdigest())
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{digest.hex}.blob"
    path.write_bytes(blob)
    return BuiltLayer(
        digest=digest,
        diff_id=Digest.of_bytes(raw),
        size=len(blob),
        media_type=layer_media_type(compression),
        blob_path=path,
        paths=paths,
        comment=comment,
    )


def busybox_image(
    directory: Path, *, compression: str = "gzip", config: ImageConfig | None = None
) -> Image:
    """A runnable two-layer image: busybox at /bin/busybox with /bin/sh, then a data file."""
    busybox = BUSYBOX.read_bytes()
    bottom = make_layer(
        directory,
        {"bin": None, "bin/busybox": busybox, "bin/sh": "busybox"},
        compression=compression,
        paths=("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-busybox",),
        comment="store items",
    )
    top = make_layer(
        directory,
        {"etc": None, "etc/greeting": b"hi from closurepack\n", "tmp": None},
        compression=compression,
        comment="customisation",
    )
    cfg = config or ImageConfig(cmd=("/bin/sh",), env=("PATH=/bin",))
    return assemble_image([bottom, top], config=cfg)


SCHEMA_DIR = Path(__file__).parent / "data" / "oci-schema"


def oci_validator(schema_file: str) -> jsonschema.Draft4Validator:
    """A validator for one of the OCI image-spec schemas (copied into tests/data/oci-schema),
    with every schema file registered so their relative ``$ref``s resolve."""
    resources = []
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        contents = json.loads(path.read_text())
        resource = Resource.from_contents(contents, default_specification=DRAFT4)
        uris = {
            path.name,
            f"https://opencontainers.org/schema/{path.name}",
            f"https://opencontainers.org/schema/image/{path.name}",
        }
        if isinstance(contents.get("id"), str):
            uris.add(contents["id"])
        resources.extend((uri, resource) for uri in uris)
    registry: Registry[Any] = Registry().with_resources(resources)
    schema = json.loads((SCHEMA_DIR / schema_file).read_text())
    return jsonschema.Draft4Validator(
        schema, registry=registry, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER
    )
