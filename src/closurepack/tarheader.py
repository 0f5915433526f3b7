"""Tar header blocks: one entry's ustar header, with a PAX extended header before it only when
ustar cannot hold the entry (the rules are in :mod:`closurepack.tarstream`'s docstring).

Pure encoding of bytes given to it: no file system, no writer state (the prefix fields
already made are kept, only to make them once)."""

from __future__ import annotations

from zlib import adler32

__all__ = [
    "DIRTYPE",
    "LNKTYPE",
    "MAX_MTIME",
    "REGTYPE",
    "SYMTYPE",
    "ZERO_BLOCK",
    "block_padding",
    "tar_header",
]

_BLOCK = 512
ZERO_BLOCK = bytes(_BLOCK)
_MAX_OCTAL_11 = 8**11 - 1  # largest value of a 12-byte octal field (size, mtime)
#: The latest entry mtime a tar header holds here (2242-03-16T12:56:31Z).
MAX_MTIME = _MAX_OCTAL_11
_PAX_NAME = b"././@PaxHeader"

REGTYPE = b"0"
LNKTYPE = b"1"
SYMTYPE = b"2"
DIRTYPE = b"5"
_PAXTYPE = b"x"


def _split_ustar_name(name: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) fitting ustar's 155/100-byte fields, split at the rightmost usable
    ``/``; None when impossible."""
    if len(name) <= 100:
        return b"", name
    limit = min(len(name) - 1, 155)
    pos = name.rfind(b"/", 0, limit + 1)
    while pos > 0:
        if len(name) - pos - 1 <= 100:
            return name[:pos], name[pos + 1 :]
        pos = name.rfind(b"/", 0, pos)
    return None


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length).encode()) + len(body) != length:
        length = len(str(length).encode()) + len(body)
    return str(length).encode() + body


# Fixed header fields: uid and gid 0 (8 bytes each; others are given per entry) and, after the
# link name, magic "ustar\0", version "00", empty uname and gname (32 bytes each), devmajor and
# devminor (8 bytes each).
_UID_GID = b"0000000\0" * 2
_MAGIC_TO_DEV = b"ustar\x0000" + bytes(64) + b"0000000\0" * 2
#: Everything after the type flag when the link name and the prefix are empty (most entries).
_PLAIN_TAIL = bytes(100) + _MAGIC_TO_DEV + bytes(155 + 12)
# Their checksum contribution, plus the checksum field itself counted as eight spaces.
_CONST_SUM = sum(_MAGIC_TO_DEV) + 8 * 0x20
#: The tails (what follows the type flag) of headers with a prefix and no link name, with
#: their checksum part, by prefix: names over 100 bytes mostly split at their last "/", so
#: the files of a directory share one. A dict, not the last one alone: two builder threads
#: make headers of other directories in turn. Emptied when it holds _TAILS_KEPT.
_prefix_tails: dict[bytes, tuple[bytes, int]] = {}
_TAILS_KEPT = 1024


def _byte_sum(data: bytes) -> int:
    """The sum of the bytes of ``data``, at most 256 of them: the low half of their Adler-32
    is 1 + that sum modulo 65521, and 256 bytes sum to at most 65280 (one C call instead of
    ``sum``'s loop over Python ints, a third of a header's cost)."""
    return (adler32(data) & 0xFFFF) - 1


def _ustar_block(
    name: bytes,
    prefix: bytes,
    *,
    mode: int,
    size: int,
    mtime: int,
    typeflag: bytes,
    linkname: bytes,
    owner: tuple[int, int] = (0, 0),
) -> bytes:
    ids = _UID_GID if owner == (0, 0) else b"%07o\0%07o\0" % owner
    # name, mode, uid, gid, size and mtime: the 148 bytes before the checksum field
    head = b"%s%07o\0%s%011o\0%011o\0" % (name.ljust(100, b"\0"), mode, ids, size, mtime)
    if linkname:
        tail = linkname.ljust(100, b"\0") + _MAGIC_TO_DEV + prefix.ljust(155, b"\0") + bytes(12)
        tail_sum = _CONST_SUM + _byte_sum(linkname) + _byte_sum(prefix)
    elif prefix:
        known = _prefix_tails.get(prefix)
        if known is None:
            tail = bytes(100) + _MAGIC_TO_DEV + prefix.ljust(155, b"\0") + bytes(12)
            tail_sum = _CONST_SUM + _byte_sum(prefix)
            if len(_prefix_tails) >= _TAILS_KEPT:
                _prefix_tails.clear()
            _prefix_tails[prefix] = (tail, tail_sum)
        else:
            tail, tail_sum = known
    else:
        tail, tail_sum = _PLAIN_TAIL, _CONST_SUM
    checksum = _byte_sum(head) + tail_sum + typeflag[0]
    return b"%s%06o\0 %s%s" % (head, checksum, typeflag, tail)


def tar_header(
    name: bytes,
    *,
    mode: int,
    size: int,
    mtime: int,
    typeflag: bytes,
    linkname: bytes = b"",
    owner: tuple[int, int] = (0, 0),
) -> bytes:
    """The header block(s) of one entry: a PAX header first when ustar cannot hold it."""
    if (
        name.isascii()
        and size <= _MAX_OCTAL_11
        and (not linkname or (len(linkname) <= 100 and linkname.isascii()))
    ):
        # what nearly every entry is: one ustar block, the name split into a prefix and a
        # name when it is over 100 bytes, no PAX header
        split = (b"", name) if len(name) <= 100 else _split_ustar_name(name)
        if split is not None:
            return _ustar_block(
                split[1],
                split[0],
                mode=mode,
                size=size,
                mtime=mtime,
                typeflag=typeflag,
                linkname=linkname,
                owner=owner,
            )
    records: list[bytes] = []
    split = _split_ustar_name(name) if name.isascii() else None
    pax_link = bool(linkname) and (len(linkname) > 100 or not linkname.isascii())
    if (split is None and not _is_utf8(name)) or (pax_link and not _is_utf8(linkname)):
        records.append(_pax_record(b"hdrcharset", b"BINARY"))
    if pax_link:
        records.append(_pax_record(b"linkpath", linkname))
        linkname = linkname[:100] if linkname.isascii() else b""
    if split is None:
        records.append(_pax_record(b"path", name))
        # A readable fallback for ustar-only readers: the tail of the name, ASCII if possible.
        split = (b"", name[-100:] if name.isascii() else b"@PaxName")
    if size > _MAX_OCTAL_11:
        records.append(_pax_record(b"size", str(size).encode()))
        ustar_size = 0
    else:
        ustar_size = size
    entry = _ustar_block(
        split[1],
        split[0],
        mode=mode,
        size=ustar_size,
        mtime=mtime,
        typeflag=typeflag,
        linkname=linkname,
        owner=owner,
    )
    if not records:
        return entry
    data = b"".join(records)
    pax = _ustar_block(
        _PAX_NAME, b"", mode=0o644, size=len(data), mtime=mtime, typeflag=_PAXTYPE, linkname=b""
    )
    return pax + data + block_padding(len(data)) + entry


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def block_padding(size: int) -> bytes:
    """The zero bytes that fill ``size`` bytes of content up to a whole 512-byte block."""
    return ZERO_BLOCK[: -size % _BLOCK]
