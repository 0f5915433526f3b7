"""The zstd:chunked format's constants and small encoders: annotations, TOC, tar-split, footer.

The format is containers/storage's (``pkg/chunked``, read to follow it): a layer blob is an
ordinary zstd stream of the tar, cut into frames so that each regular file's content starts a
frame of its own (large files in several frames, one per content-defined chunk), followed by
three zstd *skippable* frames that a plain zstd decoder passes over:

1. the table of contents (TOC): zstd-compressed JSON ``{"version": 1, "entries": [...],
   "tarSplitDigest": "sha256:..."}``, one entry per tar entry in tar order (``type``, ``name``
   as in the tar header, ``linkName``, ``mode``, ``size``, ``uid``, ``gid``, ``modtime``,
   ``digest`` of the content, ``offset`` and ``endOffset`` of its frames in the blob), and for a
   file cut into chunks a ``chunk`` entry after it for every chunk but the first (``chunkOffset``
   in the file, ``chunkSize``, ``chunkDigest``, ``offset``/``endOffset`` of the chunk's frame);
2. the tar-split data: zstd-compressed JSON lines (vbatts/tar-split's format: ``type`` 2 for a
   raw segment of the tar, headers and padding, base64 in ``payload``; ``type`` 1 for a file's
   content, by ``name`` and ``size``, with its CRC-64/ISO in ``payload``), from which a reader
   rebuilds the exact tar (and so checks the diff_id) from the files it has;
3. a 64-byte footer: the TOC's offset, compressed and uncompressed length, its type (1), the
   tar-split's offset and lengths, little-endian, and the magic ``GNUlInUx``.

The layer descriptor carries the TOC's digest and position as annotations, under both names
readers use: ``io.github.containers.zstd-chunked.*`` (containers/storage since late 2022:
podman 4.4+, CRI-O, Buildah; they need the tar-split position too, and check the tar-split
against the TOC and the rebuilt tar against the diff_id) and ``io.containers.zstd-chunked.*``
(containers/storage 1.43 and older, as in podman 4.3, which reads only the TOC).
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "CHECKSUM_KEYS",
    "FOOTER_MAGIC",
    "FOOTER_SIZE",
    "POSITION_KEYS",
    "SKIPPABLE_MAGIC",
    "TARSPLIT_KEY",
    "TAR_ENTRY_TYPES",
    "TOC_TYPE",
    "annotations_for",
    "footer_bytes",
    "is_chunked",
    "is_skippable_magic",
    "mtime_text",
    "parse_position",
    "skippable_frame",
    "tarsplit_file_line",
    "tarsplit_segment_line",
    "toc_json",
]

_NEW = "io.github.containers.zstd-chunked."
_OLD = "io.containers.zstd-chunked."
#: Annotation names of the TOC's digest: current readers', then podman 4.3's.
CHECKSUM_KEYS = (_NEW + "manifest-checksum", _OLD + "manifest-checksum")
#: Annotation names of the TOC's position, ``offset:length:uncompressed length:type``.
POSITION_KEYS = (_NEW + "manifest-position", _OLD + "manifest-position")
#: The tar-split's position, ``offset:length:uncompressed length`` (current readers only).
TARSPLIT_KEY = _NEW + "tarsplit-position"
#: The TOC type containers/storage calls CRFS, the only one there is.
TOC_TYPE = 1
FOOTER_SIZE = 64
FOOTER_MAGIC = b"GNUlInUx"
#: The magic number this format's skippable frames are written with (RFC 8878, 3.1.2).
SKIPPABLE_MAGIC = 0x184D2A50
_SKIPPABLE_HEADER = 8
#: The TOC's ``type`` of each tar typeflag (those the TOC can list).
TAR_ENTRY_TYPES = {
    b"0": "reg",
    b"\0": "reg",
    b"7": "reg",
    b"1": "hardlink",
    b"2": "symlink",
    b"3": "char",
    b"4": "block",
    b"5": "dir",
    b"6": "fifo",
}


def is_skippable_magic(value: int) -> bool:
    """Whether a frame's first four bytes (little-endian) start a skippable frame: any of
    the sixteen magics ``0x184D2A50``..``0x184D2A5F`` (RFC 8878, 3.1.2)."""
    return value & 0xFFFFFFF0 == SKIPPABLE_MAGIC


def skippable_frame(data: bytes) -> bytes:
    """``data`` as a zstd skippable frame (RFC 8878, section 3.1.2): magic, size, data."""
    return struct.pack("<II", SKIPPABLE_MAGIC, len(data)) + data


def footer_bytes(toc: tuple[int, int, int], tarsplit: tuple[int, int, int]) -> bytes:
    """The footer's 64 bytes: (offset, length, uncompressed length) of the TOC and of the
    tar-split, the TOC type, the magic."""
    return struct.pack("<7Q", *toc, TOC_TYPE, *tarsplit) + FOOTER_MAGIC


def annotations_for(
    toc_digest: str, toc: tuple[int, int, int], tarsplit: tuple[int, int, int]
) -> dict[str, str]:
    """The layer descriptor's annotations for a TOC with ``toc_digest`` (of its compressed
    bytes) at ``toc`` and a tar-split at ``tarsplit`` (offset, length, uncompressed length)."""
    position = "{}:{}:{}:{}".format(*toc, TOC_TYPE)
    out = dict.fromkeys(CHECKSUM_KEYS, toc_digest) | dict.fromkeys(POSITION_KEYS, position)
    out[TARSPLIT_KEY] = "{}:{}:{}".format(*tarsplit)
    return out


def is_chunked(annotations: Mapping[str, str] | None) -> bool:
    """True when a layer descriptor's annotations declare a zstd:chunked TOC."""
    return bool(annotations) and any(key in annotations for key in CHECKSUM_KEYS)  # type: ignore[operator]


def parse_position(text: str, fields: int) -> tuple[int, ...]:
    """``"1:2:3"`` -> ``(1, 2, 3)``; ValueError unless it has ``fields`` non-negative integers."""
    parts = text.split(":")
    if len(parts) != fields or not all(p.isdigit() for p in parts):
        raise ValueError(f"{text!r} is not {fields} integers separated by ':'")
    return tuple(int(p) for p in parts)


def mtime_text(epoch: int) -> str:
    """A TOC ``modtime``: RFC 3339 in UTC, as Go marshals a ``time.Time``."""
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dumps(obj: Any) -> bytes:
    # ASCII-only (every reader decodes \u escapes), compact, keys in the order given.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode()


def toc_json(entries: list[dict[str, Any]], tarsplit_digest: str) -> bytes:
    """The TOC document (entries in tar order; keys as containers/storage names them)."""
    return _dumps({"version": 1, "entries": entries, "tarSplitDigest": tarsplit_digest})


def tarsplit_segment_line(data: bytes | bytearray, position: int) -> bytes:
    """One tar-split line for raw tar bytes (headers, padding, the end-of-archive blocks)."""
    payload = base64.b64encode(data).decode()
    return _dumps({"type": 2, "payload": payload, "position": position}) + b"\n"


def tarsplit_file_line(name: str, size: int, crc64: int | None, position: int) -> bytes:
    """One tar-split line for an entry's content: ``name``, ``size`` and (for a non-empty
    file) the CRC-64/ISO of its content, big-endian, as Go's ``hash.Sum`` gives it."""
    obj: dict[str, Any] = {"type": 1, "name": name}
    if size:
        obj["size"] = size
    obj["payload"] = None if crc64 is None else base64.b64encode(crc64.to_bytes(8, "big")).decode()
    obj["position"] = position
    return _dumps(obj) + b"\n"
