"""SBOMs of an image made from its closure: SPDX 2.3 JSON and CycloneDX 1.6 JSON.

One package (component) per store item: name and version split from the store path's name as
Nix's ``parseDrvName`` splits them, the NAR hash as its SHA-256 checksum (from the closure
source, else computed from the item's files), the store path as an identifier (an SPDX external
reference and a CycloneDX ``bom-ref``) beside a ``pkg:nix`` (``pkg:guix``) purl; the reference
graph as ``DEPENDS_ON`` relationships (CycloneDX ``dependencies``); the image, identified by its
config digest (the image ID, the same whichever manifest flavour a transport stores), as the
described root that contains every item and depends on the closure's roots.

Deterministic: the only time in a document is the image's ``--created``; the SPDX document
namespace and the CycloneDX serial number are derived from the rest of the document's content.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from closurepack import __version__
from closurepack._fs import atomic_write
from closurepack.digest import Digest
from closurepack.errors import DestinationError, StoreError
from closurepack.graph import Closure, StoreItem
from closurepack.image import rfc3339
from closurepack.sbomoptions import FORMATS, SbomOptions

if TYPE_CHECKING:  # (imported where used: --sbom's options are read by every build)
    from closurepack.artifacts import Attachment
    from closurepack.sources.narhash import NarDigests

__all__ = [
    "FORMATS",
    "MEDIA_TYPES",
    "SbomOptions",
    "SbomSubject",
    "cyclonedx_document",
    "item_hashes",
    "sbom_attachments",
    "spdx_document",
    "write_sbom_files",
]

#: The media type of each format: the artifact's ``artifactType`` and its layer's media type.
MEDIA_TYPES = {"spdx": "application/spdx+json", "cyclonedx": "application/vnd.cyclonedx+json"}

_TOOL = f"closurepack-{__version__}"
_SPDX_ID = re.compile(r"[^A-Za-z0-9.-]+")
_NAMESPACE = "https://closurepack.invalid/spdx/"


@dataclass(frozen=True)
class SbomSubject:
    """The image an SBOM describes: its name, config digest and creation time (epoch)."""

    name: str
    config_digest: Digest
    created: int


def item_hashes(closure: Closure, digests: NarDigests) -> dict[str, str]:
    """Store path -> NAR sha256 (hex) of every item: the closure source's ``narHash`` where
    it has one, else computed from the item's files by ``digests`` (once per build)."""
    from closurepack.sources.narhash import parse_nar_hash  # noqa: PLC0415 - only for --sbom

    out = {}
    for path, item in closure.items.items():
        if item.nar_hash is not None:
            out[path] = parse_nar_hash(item.nar_hash, where=f"{closure.source}: {path}").hex()
            continue
        try:
            out[path] = digests.of(path).sha256.hex()
        except StoreError as exc:
            raise StoreError(
                f"{path}: {closure.source} gives no narHash, and its files cannot be hashed: {exc}"
            ) from exc
    return out


def _name_version(item: StoreItem) -> tuple[str, str]:
    from closurepack.storenames import split_name  # noqa: PLC0415 - only for --sbom

    name, version = split_name(item.path)
    return (name or item.package_name or item.name), version


def _purl(closure: Closure, item: StoreItem) -> str:
    kind = "guix" if closure.store_dir == "/gnu/store" else "nix"
    name, version = _name_version(item)
    out = f"pkg:{kind}/{quote(name, safe='')}"
    return f"{out}@{quote(version, safe='')}" if version else out


def _encode(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, indent=1, sort_keys=True).encode() + b"\n"


def _content_uuid(document: Mapping[str, Any]) -> uuid.UUID:
    """A name-based UUID (version 5 layout) of the document's content."""
    digest = hashlib.sha256(_encode(document)).digest()
    return uuid.UUID(bytes=digest[:16], version=5)


def _spdx_ids(closure: Closure) -> dict[str, str]:
    """One SPDX id per item, from its base name (characters SPDX ids cannot hold become
    ``-``; a name taken already gets ``-2``, ``-3``...)."""
    ids: dict[str, str] = {}
    taken = {"SPDXRef-DOCUMENT", "SPDXRef-Image"}
    for path, item in closure.items.items():
        base = "SPDXRef-Item-" + _SPDX_ID.sub("-", item.name)
        candidate, n = base, 1
        while candidate in taken:
            n += 1
            candidate = f"{base}-{n}"
        taken.add(candidate)
        ids[path] = candidate
    return ids


def spdx_document(closure: Closure, image: SbomSubject, hashes: Mapping[str, str]) -> bytes:
    """The SPDX 2.3 JSON document of ``image``'s ``closure`` (``hashes``: path -> NAR hex)."""
    ids = _spdx_ids(closure)
    packages: list[dict[str, Any]] = [
        {
            "SPDXID": "SPDXRef-Image",
            "name": image.name,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "primaryPackagePurpose": "CONTAINER",
            "checksums": [{"algorithm": "SHA256", "checksumValue": image.config_digest.hex}],
            "comment": f"The container image; its checksum is its config digest (image ID)"
            f" {image.config_digest}.",
        }
    ]
    relationships: list[dict[str, str]] = [
        {"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
         "relatedSpdxElement": "SPDXRef-Image"},
    ]  # fmt: skip
    for path, item in closure.items.items():
        name, version = _name_version(item)
        package: dict[str, Any] = {
            "SPDXID": ids[path],
            "name": name,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "checksums": [{"algorithm": "SHA256", "checksumValue": hashes[path]}],
            "externalRefs": [
                {
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": _purl(closure, item),
                },
                {
                    "referenceCategory": "OTHER",
                    "referenceType": "store-path",
                    "referenceLocator": quote(path, safe="/+-._~@:=,"),
                },
            ],
            "comment": f"Store item {path}; checksum: the SHA-256 of its NAR serialisation.",
        }
        if version:
            package["versionInfo"] = version
        packages.append(package)
        relationships.append(
            {"spdxElementId": "SPDXRef-Image", "relationshipType": "CONTAINS",
             "relatedSpdxElement": ids[path]}
        )  # fmt: skip
        relationships.extend(
            {"spdxElementId": ids[path], "relationshipType": "DEPENDS_ON",
             "relatedSpdxElement": ids[ref]}
            for ref in item.references
        )  # fmt: skip
    relationships.extend(
        {"spdxElementId": "SPDXRef-Image", "relationshipType": "DEPENDS_ON",
         "relatedSpdxElement": ids[root]}
        for root in sorted(closure.roots) if root in ids
    )  # fmt: skip
    document: dict[str, Any] = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": image.name,
        "creationInfo": {"created": rfc3339(image.created), "creators": [f"Tool: {_TOOL}"]},
        "packages": packages,
        "relationships": relationships,
    }
    namespace = f"{_NAMESPACE}{quote(image.name, safe='')}-{_content_uuid(document)}"
    document["documentNamespace"] = namespace
    return _encode(document)


def cyclonedx_document(closure: Closure, image: SbomSubject, hashes: Mapping[str, str]) -> bytes:
    """The CycloneDX 1.6 JSON BOM of ``image``'s ``closure`` (``hashes``: path -> NAR hex);
    every component's ``bom-ref`` is its store path."""
    image_ref = f"image:{image.config_digest}"
    components = []
    dependencies = [
        {"ref": image_ref, "dependsOn": sorted(r for r in closure.roots if r in closure.items)}
    ]
    for path, item in closure.items.items():
        name, version = _name_version(item)
        component: dict[str, Any] = {
            "type": "library",
            "bom-ref": path,
            "name": name,
            "purl": _purl(closure, item),
            "hashes": [{"alg": "SHA-256", "content": hashes[path]}],
            "properties": [
                {"name": "closurepack:store-path", "value": path},
                {"name": "closurepack:nar-size", "value": str(item.nar_size)},
            ],
        }
        if version:
            component["version"] = version
        components.append(component)
        dependencies.append({"ref": path, "dependsOn": list(item.references)})
    document: dict[str, Any] = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "version": 1,
        "metadata": {
            "timestamp": rfc3339(image.created),
            "tools": {
                "components": [
                    {"type": "application", "name": "closurepack", "version": __version__}
                ]
            },
            "component": {
                "type": "container",
                "bom-ref": image_ref,
                "name": image.name,
                "hashes": [{"alg": "SHA-256", "content": image.config_digest.hex}],
                "description": "The container image; its hash is its config digest (image ID).",
            },
        },
        "components": components,
        "dependencies": dependencies,
    }
    document["serialNumber"] = f"urn:uuid:{_content_uuid(document)}"
    return _encode(document)


_DOCUMENTS = {"spdx": spdx_document, "cyclonedx": cyclonedx_document}


def sbom_attachments(
    closure: Closure,
    image: SbomSubject,
    *,
    formats: Sequence[str],
    hashes: Mapping[str, str],
) -> list[Attachment]:
    """The SBOM of ``image`` in each of ``formats``, ready to attach or write (``hashes``:
    path -> NAR hex of every item, from :func:`item_hashes`)."""
    from closurepack.artifacts import Attachment  # noqa: PLC0415 - only for --sbom

    return [
        Attachment(
            artifact_type=MEDIA_TYPES[name],
            data=_DOCUMENTS[name](closure, image, hashes),
            title=f"sbom.{FORMATS[name]}.json",
            created=rfc3339(image.created),
        )
        for name in formats
    ]


def write_sbom_files(attachments: Sequence[Attachment], options: SbomOptions) -> list[Path]:
    """Write each SBOM to its ``--sbom-out`` file (see :meth:`SbomOptions.out_paths`), each
    atomically; return the files written."""
    paths = options.out_paths()
    written = []
    for name, attachment in zip(options.formats, attachments, strict=True):
        path = paths.get(name)
        if path is None:
            continue
        try:
            with atomic_write(path) as out:
                out.write(attachment.data)
        except OSError as exc:
            raise DestinationError(f"{path}: cannot write the SBOM: {exc.strerror or exc}") from exc
        written.append(path)
    return written
