"""``--nix-db`` / ``--guix-db``: a store database registering exactly the image's store items,
as ``nix-store --load-db`` makes it, written byte for byte the same for the same closure.

What goes in it, per item in path order (ids 1, 2, ... as ``--load-db`` gives them): the NAR
hash as ``sha256:<base-16>`` (the closure source's, else computed from the files), the NAR
size, the deriver when the source names one, one registration time for all (the layers' file
mtime, so a new ``--created`` alone changes nothing), and one ``Refs`` row per reference
(the item's own included when it refers to itself), sorted; for a derivation (``.drv``) in the
image, one ``DerivationOutputs`` row per output whose path it names, read from its file, as
``--load-db`` does. ``ultimate``, ``sigs`` and ``ca`` stay NULL, as ``--load-db`` leaves them.

The schema is the one Nix 2.x makes (schema version 10, read from a database Nix made, and
checked against one by tests/test_storedb.py); Guix's daemon keeps the older layout it
inherited from Nix (schema version 7: ``ValidPaths`` without ``ultimate``, ``sigs``, ``ca``),
which is only tested against that schema, not against a Guix daemon.

What would vary in SQLite's file, and how it is fixed: the database is made in memory by one
fixed sequence of statements (page size 4096, no auto-vacuum, UTF-8, secure delete on; rows
inserted in path order) and then VACUUMed, so page layout, change counter, schema cookie and
freelist (empty) depend only on the rows. The header then gets file format versions 2/2 (WAL,
as Nix leaves its database) and 0 for "SQLite version that last wrote this" (offset 96), which
is the one field that names the library; the page contents could still differ between SQLite
releases whose b-tree code differs, which a content-keyed layer (the customisation layer)
never confuses with another.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from closurepack.errors import ClosureError, OptionError, StoreError
from closurepack.graph import Closure, split_store_path
from closurepack.sources.files import store_file
from closurepack.sources.narhash import NarDigests, format_nar_hash, parse_nar_hash
from closurepack.tarentries import TreeEntry

__all__ = [
    "GUIX_DB",
    "NIX_DB",
    "STORE_DBS",
    "Registration",
    "StoreDbKind",
    "database_bytes",
    "derivation_outputs",
    "image_closure",
    "registrations",
    "store_db_entries",
]

_VALID_PATHS_NIX = """CREATE TABLE ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer, -- null implies "false"
    sigs             text, -- space-separated
    ca               text -- if not null, an assertion that the path is content-addressed; see ValidPathInfo
)"""  # noqa: E501 (the text Nix stores, byte for byte)
_VALID_PATHS_GUIX = """CREATE TABLE ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer
)"""
_REST = (
    """CREATE TABLE Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
)""",
    "CREATE INDEX IndexReferrer on Refs(referrer)",
    "CREATE INDEX IndexReference on Refs(reference)",
    """CREATE TRIGGER DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end""",
    """CREATE TABLE DerivationOutputs (
    drv  integer not null,
    id   text not null, -- symbolic output id, usually "out"
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
)""",
    "CREATE INDEX IndexDerivationOutputs on DerivationOutputs(path)",
)
_PAGE_SIZE = 4096
_WAL = 2  # file format write/read version for WAL mode (header offsets 18 and 19)
_VERSION_OFFSET = 96  # SQLITE_VERSION_NUMBER of the last writer


@dataclass(frozen=True)
class StoreDbKind:
    """One kind of store database: where it goes and what it looks like.

    ``state_dir`` is relative to the image root; ``schema`` the CREATE statements in the order
    the daemon runs them (``sqlite_master`` holds them so); ``schema_version`` the contents of
    ``db/schema``.
    """

    name: str
    option: str
    store_dir: str
    state_dir: str
    schema_version: str
    schema: tuple[str, ...]


NIX_DB = StoreDbKind(
    name="nix",
    option="--nix-db",
    store_dir="/nix/store",
    state_dir="nix/var/nix",
    schema_version="10",
    schema=(_VALID_PATHS_NIX, *_REST),
)
GUIX_DB = StoreDbKind(
    name="guix",
    option="--guix-db",
    store_dir="/gnu/store",
    state_dir="var/guix",
    schema_version="7",
    schema=(_VALID_PATHS_GUIX, *_REST),
)
STORE_DBS = {kind.name: kind for kind in (NIX_DB, GUIX_DB)}


@dataclass(frozen=True, slots=True)
class Registration:
    """One row of ``ValidPaths``, its references (full paths, sorted, itself included when
    the item refers to itself) and, for a derivation, its outputs (name, path), sorted."""

    path: str
    nar_hash: str
    nar_size: int
    deriver: str | None
    references: tuple[str, ...]
    outputs: tuple[tuple[str, str], ...] = ()


def image_closure(closure: Closure, paths: Sequence[str], *, where: str) -> Closure:
    """The items of ``closure`` that are ``paths`` (what the image holds), with a ClosureError
    naming ``where`` when one of them refers to an item the image lacks (it could not be
    registered valid)."""
    keep = set(paths)
    missing = sorted(keep - closure.items.keys())
    if missing:
        raise ClosureError(f"{where}: {missing[0]} is in the image but not in the closure")
    for path in sorted(keep):
        lacking = sorted(set(closure.items[path].references) - keep)
        if lacking:
            raise ClosureError(f"{where}: {path} refers to {lacking[0]}, which is not in the image")
    return closure.restrict(keep)


def registrations(closure: Closure, digests: NarDigests) -> list[Registration]:
    """Every item of ``closure`` as it is registered, in path order.

    A NAR hash the source gave is read (any form Nix prints) and written in base 16; an item
    without one gets hash and size from its files (by ``digests``: once per build). A
    StoreError names an item whose hash is malformed or whose files cannot be read; a
    ClosureError a deriver that is not a store path.
    """
    result = []
    for item in closure:
        where = f"{closure.source}: {item.path}"
        if item.nar_hash is not None:
            nar_hash = format_nar_hash(parse_nar_hash(item.nar_hash, where=where))
            size = item.nar_size
        else:
            digest = digests.of(item.path)
            nar_hash, size = digest.nar_hash, digest.size
        if item.deriver is not None:
            split_store_path(item.deriver, where=f"{where}: deriver")
        refs = item.references
        if item.self_reference:
            refs = tuple(sorted((*refs, item.path)))
        outputs: tuple[tuple[str, str], ...] = ()
        if item.path.endswith(".drv"):
            outputs = derivation_outputs(store_file(item.path, digests.store_root), where=where)
        result.append(Registration(item.path, nar_hash, size, item.deriver, refs, outputs))
    return result


def derivation_outputs(location: Path, *, where: str) -> tuple[tuple[str, str], ...]:
    """The (name, path) of every output a derivation file names a path for, sorted by name
    (a floating content-addressed output has none yet). The file is ATerm:
    ``Derive([("out","/nix/store/...","",""),...],...)``. A StoreError names ``where`` when
    it cannot be read or is not a derivation."""
    try:
        text = location.read_bytes().decode()
    except OSError as exc:
        raise StoreError(f"{where}: cannot read the derivation: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise StoreError(f"{where}: the derivation is not UTF-8 text") from None
    try:
        outputs = dict(_aterm_outputs(text))
    except (ValueError, IndexError):
        raise StoreError(f"{where}: not a derivation (expected Derive([(...),...],...))") from None
    return tuple(sorted((name, path) for name, path in outputs.items() if path))


def _aterm_outputs(text: str) -> Iterator[tuple[str, str]]:
    """The (name, path) pairs of the outputs list at the start of a derivation; ValueError or
    IndexError when the text is not one."""
    if not text.startswith("Derive(["):
        raise ValueError(text[:8])
    at = len("Derive([")
    while text[at] == "(":
        fields = []
        at += 1
        for number in range(4):
            value, at = _aterm_string(text, at)
            fields.append(value)
            expected = "," if number < 3 else ")"
            if text[at] != expected:
                raise ValueError(text[at])
            at += 1
        yield fields[0], fields[1]
        if text[at] == ",":
            at += 1
    if text[at] != "]":
        raise ValueError(text[at])


_ESCAPES = {"n": "\n", "r": "\r", "t": "\t"}


def _aterm_string(text: str, at: int) -> tuple[str, int]:
    """The quoted string at ``text[at]`` (backslash escapes: \\n, \\r, \\t, any other
    character as itself) and the index after its closing quote."""
    if text[at] != '"':
        raise ValueError(text[at])
    chars = []
    at += 1
    while text[at] != '"':
        if text[at] == "\\":
            at += 1
            chars.append(_ESCAPES.get(text[at], text[at]))
        else:
            chars.append(text[at])
        at += 1
    return "".join(chars), at + 1


def database_bytes(
    entries: Sequence[Registration], kind: StoreDbKind, *, registration_time: int
) -> bytes:
    """The SQLite file registering ``entries`` (see the module docstring for its bytes)."""
    ordered = sorted(entries, key=lambda r: r.path)
    ids = {r.path: number for number, r in enumerate(ordered, start=1)}
    db = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for pragma in ("page_size = 4096", "auto_vacuum = NONE", "encoding = 'UTF-8'"):
            db.execute(f"PRAGMA {pragma}")
        db.execute("PRAGMA secure_delete = ON")
        db.execute("BEGIN")
        for statement in kind.schema:
            db.execute(statement)
        db.executemany(
            "INSERT INTO ValidPaths (id, path, hash, registrationTime, deriver, narSize)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                (ids[r.path], r.path, r.nar_hash, registration_time, r.deriver, r.nar_size)
                for r in ordered
            ),
        )
        refs = sorted((ids[r.path], ids[ref]) for r in ordered for ref in r.references)
        db.executemany("INSERT INTO Refs (referrer, reference) VALUES (?, ?)", refs)
        db.executemany(
            "INSERT INTO DerivationOutputs (drv, id, path) VALUES (?, ?, ?)",
            ((ids[r.path], name, path) for r in ordered for name, path in r.outputs),
        )
        db.execute("COMMIT")
        db.execute("VACUUM")
        data = bytearray(db.serialize())
    finally:
        db.close()
    if int.from_bytes(data[16:18], "big") != _PAGE_SIZE:  # pragma: no cover (a SQLite build
        raise OptionError("SQLite did not take a page size of 4096")  # that ignores it)
    data[18] = data[19] = _WAL
    data[_VERSION_OFFSET : _VERSION_OFFSET + 4] = bytes(4)
    return bytes(data)


def store_db_entries(
    closure: Closure,
    kind: StoreDbKind,
    *,
    registration_time: int,
    digests: NarDigests | None = None,
) -> list[TreeEntry]:
    """The customisation layer's entries for ``kind``'s state directory: the database
    registering every item of ``closure`` (and nothing else), the files the daemon keeps
    beside it (``db/schema``, an empty ``db/big-lock``), the directories it expects
    (``gcroots``, ``profiles``, ``temproots``, the per-user ones of root), the
    ``gcroots/profiles`` link, and a garbage collector root per closure root
    (``gcroots/closurepack/<name>``), so that a collection inside the container keeps the
    image's items. The 8 MiB ``db/reserved`` is left out: the daemon makes it when missing.

    NAR hashes the closure lacks come from ``digests`` (files under no store root when not
    given). An OptionError when the closure's store is not ``kind``'s.
    """
    if closure.store_dir != kind.store_dir:
        raise OptionError(
            f"{kind.option}: the image's store is {closure.store_dir}, not {kind.store_dir}"
        )
    data = database_bytes(
        registrations(closure, digests or NarDigests(None)),
        kind,
        registration_time=registration_time,
    )
    state = kind.state_dir
    entries = [
        TreeEntry(f"{state}/db", "dir", 0o755),
        TreeEntry(f"{state}/db/big-lock", "file", 0o600),
        TreeEntry(f"{state}/db/db.sqlite", "file", 0o644, data=data),
        TreeEntry(f"{state}/db/schema", "file", 0o644, data=kind.schema_version.encode()),
    ]
    for directory in (
        "gcroots",
        "gcroots/closurepack",
        "gcroots/per-user",
        "gcroots/per-user/root",
        "profiles",
        "profiles/per-user",
        "profiles/per-user/root",
        "temproots",
    ):
        entries.append(TreeEntry(f"{state}/{directory}", "dir", 0o755))
    entries.append(TreeEntry(f"{state}/gcroots/profiles", "symlink", target=f"/{state}/profiles"))
    for root in sorted(closure.roots):
        name = root.rsplit("/", 1)[-1]
        entries.append(TreeEntry(f"{state}/gcroots/closurepack/{name}", "symlink", target=root))
    return entries
