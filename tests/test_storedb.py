"""The store database of --nix-db / --guix-db on a handmade store: its rows, its bytes (the
same for the same closure, whatever the input order or process), its place in the
customisation layer, NAR hashes read in every form and computed from files, and bad input."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from clistore import APP, GLIBC, LIBFOO, TOOL, ZLIB, Store, item, read_oci, run
from closurepack.errors import ClosureError, OptionError, StoreError
from closurepack.graph import Closure, StoreItem
from closurepack.sources.narhash import (
    NarDigests,
    format_nar_hash,
    nar_digest,
    parse_nar_hash,
)
from closurepack.sources.narsize import nar_size
from closurepack.storedb import (
    GUIX_DB,
    NIX_DB,
    Registration,
    database_bytes,
    derivation_outputs,
    image_closure,
    registrations,
    store_db_entries,
)

DB = "nix/var/nix/db/db.sqlite"
_NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"


def _nix32(digest: bytes) -> str:
    """Nix's base-32, written from its definition (character n from the end holds bits 5n..5n+4
    of the digest read little-endian), independently of the code under test."""
    length = (len(digest) * 8 + 4) // 5
    chars = []
    for n in range(length - 1, -1, -1):
        bit = n * 5
        i, j = divmod(bit, 8)
        c = digest[i] >> j
        if i + 1 < len(digest):
            c |= digest[i + 1] << (8 - j)
        chars.append(_NIX32[c & 0x1F])
    return "".join(chars)


@contextlib.contextmanager
def _open(data: bytes) -> Iterator[sqlite3.Connection]:
    """The database in a file of its own (a WAL database cannot be deserialised in memory)."""
    with tempfile.TemporaryDirectory(prefix="storedb-") as directory:
        (Path(directory) / "db.sqlite").write_bytes(data)
        db = sqlite3.connect(Path(directory) / "db.sqlite")
        try:
            yield db
        finally:
            db.close()


def _rows(data: bytes) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    with _open(data) as db:
        valid = list(
            db.execute("SELECT id, path, hash, registrationTime, deriver, narSize FROM ValidPaths")
        )
        refs = list(db.execute("SELECT referrer, reference FROM Refs ORDER BY 1, 2"))
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return valid, refs


def _layer_db(layout: Path) -> bytes:
    image = read_oci(layout)
    return image.layer_file(len(image.layer_digests) - 1, DB)


# NAR hashes -------------------------------------------------------------------------------------


def test_every_printed_form_of_a_nar_hash_reads_the_same() -> None:
    digest = hashlib.sha256(b"closurepack").digest()
    import base64

    b64 = base64.b64encode(digest).decode()
    forms = [
        "sha256:" + digest.hex(),
        digest.hex(),
        "sha256:" + _nix32(digest),
        _nix32(digest),
        "sha256:" + b64,
        "sha256-" + b64,
    ]
    assert {parse_nar_hash(f, where="x") for f in forms} == {digest}
    assert format_nar_hash(digest) == "sha256:" + digest.hex()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("md5:" + "0" * 32, "is not sha256"),
        ("sha256:" + "g" * 64, "base 16, 32 or 64"),
        ("sha256:" + "e" * 52, "'e' is not a base-32 digit"),
        ("sha256:" + "z" * 52, "too large"),
        ("sha256-" + "!" * 44, "not valid base-64"),
        ("sha256:abc", "base 16, 32 or 64"),
    ],
)
def test_a_malformed_nar_hash_is_one_line_naming_the_item(text: str, message: str) -> None:
    with pytest.raises(StoreError) as info:
        parse_nar_hash(text, where="graph.json: /nix/store/x-y")
    assert str(info.value).startswith("graph.json: /nix/store/x-y: NAR hash ")
    assert message in str(info.value)


def _nar_string(data: bytes) -> bytes:
    return len(data).to_bytes(8, "little") + data + bytes(-len(data) % 8)


def test_nar_digest_of_a_tree_is_the_sha256_of_its_serialisation(tmp_path: Path) -> None:
    top = tmp_path / "item"
    (top / "b").mkdir(parents=True)
    (top / "b" / "run").write_bytes(b"#!/bin/sh\n")
    (top / "b" / "run").chmod(0o755)
    (top / "a").write_bytes(b"")
    (top / "B").symlink_to("b/run")
    s = _nar_string
    # written out by hand: entries sorted by bytes (B < a < b), the executable marker
    expected = b"".join(
        [
            s(b"nix-archive-1"), s(b"("), s(b"type"), s(b"directory"),
            s(b"entry"), s(b"("), s(b"name"), s(b"B"), s(b"node"),
            s(b"("), s(b"type"), s(b"symlink"), s(b"target"), s(b"b/run"), s(b")"), s(b")"),
            s(b"entry"), s(b"("), s(b"name"), s(b"a"), s(b"node"),
            s(b"("), s(b"type"), s(b"regular"), s(b"contents"), s(b""), s(b")"), s(b")"),
            s(b"entry"), s(b"("), s(b"name"), s(b"b"), s(b"node"),
            s(b"("), s(b"type"), s(b"directory"),
            s(b"entry"), s(b"("), s(b"name"), s(b"run"), s(b"node"),
            s(b"("), s(b"type"), s(b"regular"), s(b"executable"), s(b""), s(b"contents"),
            s(b"#!/bin/sh\n"), s(b")"), s(b")"),
            s(b")"), s(b")"),
            s(b")"),
        ]
    )  # fmt: skip
    digest = nar_digest(top)
    assert digest.sha256 == hashlib.sha256(expected).digest()
    assert digest.size == len(expected) == nar_size(top)


def test_nar_digest_refuses_a_fifo_and_names_it(tmp_path: Path) -> None:
    import os

    (tmp_path / "item").mkdir()
    os.mkfifo(tmp_path / "item" / "pipe")
    with pytest.raises(StoreError, match=r"item/pipe: not a regular file, directory or symlink"):
        nar_digest(tmp_path / "item")
    with pytest.raises(StoreError, match="missing"):
        nar_digest(tmp_path / "missing")


# The database ------------------------------------------------------------------------------------


def _registrations() -> list[Registration]:
    return [
        Registration(GLIBC, "sha256:" + "1" * 64, 9000, None, (GLIBC,)),
        Registration(ZLIB, "sha256:" + "2" * 64, 3000, item("9", "zlib.drv"), (GLIBC,)),
        Registration(APP, "sha256:" + "4" * 64, 1000, None, (GLIBC, ZLIB)),
    ]


def test_rows_are_those_load_db_makes_in_path_order() -> None:
    valid, refs = _rows(database_bytes(_registrations(), NIX_DB, registration_time=7))
    assert valid == [
        (1, GLIBC, "sha256:" + "1" * 64, 7, None, 9000),
        (2, ZLIB, "sha256:" + "2" * 64, 7, item("9", "zlib.drv"), 3000),
        (3, APP, "sha256:" + "4" * 64, 7, None, 1000),
    ]
    assert refs == [(1, 1), (2, 1), (3, 1), (3, 2)]


def test_same_rows_same_bytes_whatever_the_order_or_process() -> None:
    regs = _registrations()
    first = database_bytes(regs, NIX_DB, registration_time=1)
    assert database_bytes(list(reversed(regs)), NIX_DB, registration_time=1) == first
    script = (
        "import sys, json\n"
        "from closurepack.storedb import NIX_DB, Registration, database_bytes\n"
        "regs = [Registration(p, h, s, d, tuple(r)) for p, h, s, d, r in json.load(sys.stdin)]\n"
        "sys.stdout.buffer.write(database_bytes(regs, NIX_DB, registration_time=1))\n"
    )
    rows = json.dumps([[r.path, r.nar_hash, r.nar_size, r.deriver, r.references] for r in regs])
    other = subprocess.run(
        [sys.executable, "-c", script], input=rows.encode(), capture_output=True, check=True
    ).stdout
    assert other == first
    assert database_bytes(regs, NIX_DB, registration_time=2) != first


def test_the_header_holds_nothing_of_the_library_and_no_free_pages() -> None:
    data = database_bytes(_registrations(), NIX_DB, registration_time=1)
    assert data[:16] == b"SQLite format 3\0"
    assert int.from_bytes(data[16:18], "big") == 4096
    assert data[18:20] == b"\x02\x02"  # WAL, as Nix leaves its database
    assert data[32:40] == bytes(8)  # no freelist
    assert data[24:28] == data[92:96]  # the in-header size is valid
    assert data[96:100] == bytes(4)  # no SQLite version number
    assert len(data) == int.from_bytes(data[28:32], "big") * 4096


def test_guix_schema_has_the_columns_guix_inherited() -> None:
    data = database_bytes(_registrations(), GUIX_DB, registration_time=1)
    with _open(data) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(ValidPaths)")]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert columns == ["id", "path", "hash", "registrationTime", "deriver", "narSize"]
    assert tables == {"ValidPaths", "Refs", "DerivationOutputs", "sqlite_sequence"}
    assert _rows(data)[1] == [(1, 1), (2, 1), (3, 1), (3, 2)]


def test_registrations_compute_missing_hashes_and_keep_self_references(tmp_path: Path) -> None:
    glibc = tmp_path / GLIBC.lstrip("/")
    glibc.mkdir(parents=True)
    (glibc / "lib.so").write_bytes(b"x" * 100)
    closure = Closure.from_items(
        [
            StoreItem(GLIBC, 0, (GLIBC,), None, item("8", "glibc.drv")),
            StoreItem(ZLIB, 5, (GLIBC,), "sha256-" + "A" * 43 + "="),
        ],
        source="graph",
    )
    regs = registrations(closure, NarDigests(tmp_path))
    computed = nar_digest(glibc)
    assert regs == [
        Registration(GLIBC, computed.nar_hash, computed.size, item("8", "glibc.drv"), (GLIBC,)),
        Registration(ZLIB, "sha256:" + "00" * 32, 5, None, (GLIBC,)),
    ]


def test_a_deriver_that_is_no_store_path_is_refused() -> None:
    closure = Closure.from_items(
        [StoreItem(GLIBC, 1, (), "sha256:" + "0" * 64, "not a path")], source="graph.json"
    )
    with pytest.raises(ClosureError, match=rf"graph.json: {GLIBC}: deriver: store path"):
        registrations(closure, NarDigests(None))


def test_an_item_referring_outside_the_image_cannot_be_registered() -> None:
    closure = Closure.from_items([StoreItem(GLIBC, 1), StoreItem(APP, 1, (GLIBC,))], source="graph")
    with pytest.raises(ClosureError, match=rf"the plan: {APP} refers to {GLIBC}, which is not"):
        image_closure(closure, [APP], where="the plan")
    with pytest.raises(ClosureError, match=rf"{TOOL} is in the image but not in the closure"):
        image_closure(closure, [APP, GLIBC, TOOL], where="the plan")
    assert list(image_closure(closure, [GLIBC], where="x").items) == [GLIBC]


def test_the_state_directory_as_a_fresh_nix_store_has_it() -> None:
    closure = Closure.from_items(
        [StoreItem(GLIBC, 1, (), "sha256:" + "0" * 64), StoreItem(APP, 1, (GLIBC,), "0" * 64)],
        source="graph",
    )
    entries = {e.name: e for e in store_db_entries(closure, NIX_DB, registration_time=1)}
    state = "nix/var/nix"
    assert entries[f"{state}/db/schema"].data == b"10"
    assert (entries[f"{state}/db/big-lock"].data, entries[f"{state}/db/big-lock"].mode) == (
        b"",
        0o600,
    )
    assert entries[f"{state}/gcroots/profiles"].target == "/nix/var/nix/profiles"
    assert entries[f"{state}/gcroots/closurepack/{APP.rsplit('/', 1)[1]}"].target == APP
    for directory in ("temproots", "profiles/per-user/root", "gcroots/per-user/root"):
        assert entries[f"{state}/{directory}"].kind == "dir"
    assert f"{state}/db/reserved" not in entries
    with pytest.raises(OptionError, match="--guix-db: the image's store is /nix/store"):
        store_db_entries(closure, GUIX_DB, registration_time=1)


@pytest.mark.parametrize(
    ("text", "outputs"),
    [
        (
            'Derive([("out","/nix/store/b-x","",""),("dev","/nix/store/a-x-dev","","")],[],[])',
            (("dev", "/nix/store/a-x-dev"), ("out", "/nix/store/b-x")),
        ),
        ('Derive([("out","","r:sha256","")],[],[],"x86_64-linux")', ()),  # floating CA
        ('Derive([("o\\"ut","/nix/store/c-\\\\y","","")],[])', (('o"ut', "/nix/store/c-\\y"),)),
        ("Derive([],[])", ()),
    ],
)
def test_derivation_outputs_are_read_from_the_aterm(
    tmp_path: Path, text: str, outputs: tuple[tuple[str, str], ...]
) -> None:
    drv = tmp_path / "x.drv"
    drv.write_text(text)
    assert derivation_outputs(drv, where="x.drv") == outputs


@pytest.mark.parametrize(
    "text", ["hello", 'Derive([("out","/nix/store/b-x","")],[])', 'Derive([("out"', "Derive(["]
)
def test_a_file_that_is_no_derivation_is_one_line(tmp_path: Path, text: str) -> None:
    drv = tmp_path / "x.drv"
    drv.write_text(text)
    with pytest.raises(StoreError, match=r"^g: /nix/store/x.drv: not a derivation \(expected"):
        derivation_outputs(drv, where="g: /nix/store/x.drv")
    drv.write_bytes(b"\xff")
    with pytest.raises(StoreError, match="not UTF-8"):
        derivation_outputs(drv, where="x")
    with pytest.raises(StoreError, match="cannot read the derivation"):
        derivation_outputs(tmp_path / "missing.drv", where="x")


_DRV_SEED = 'Derive([("dev","/nix/store/a-x-dev","",""),("out","/nix/store/b-x","","")],[])'


_OUTPUT = re.compile(r'\("([^"\\]*)","([^"\\]*)","[^"\\]*","[^"\\]*"\)')


def _outputs_by_hand(text: str) -> tuple[tuple[str, str], ...] | None:
    """The outputs of a derivation without escapes, read with a regular expression of its
    entries (independently of the parser under test); None when it is not one."""
    if not text.startswith("Derive(["):
        return None
    at, found = len("Derive(["), {}
    while entry := _OUTPUT.match(text, at):
        found[entry[1]] = entry[2]
        at = entry.end() + text.startswith(",", entry.end())
    if not text.startswith("]", at):
        return None
    return tuple(sorted((name, path) for name, path in found.items() if path))


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.text(max_size=80)
    | st.builds(
        lambda cut, junk: _DRV_SEED[:cut] + junk + _DRV_SEED[cut:],
        st.integers(0, len(_DRV_SEED)),
        st.text(max_size=3),
    )
    | st.integers(0, len(_DRV_SEED)).map(lambda cut: _DRV_SEED[:cut])
)
@example(_DRV_SEED)
def test_any_text_is_a_derivation_or_one_line(text: str) -> None:
    """A derivation's outputs are exactly those its text lists (checked against a reading
    by hand wherever the text has no escapes); anything else is one line naming the file."""
    with tempfile.TemporaryDirectory() as directory:
        drv = Path(directory, "x.drv")
        drv.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            text.encode()
        except UnicodeEncodeError:  # lone surrogates: the file is not UTF-8
            expected = None
        else:
            expected = _outputs_by_hand(text) if "\\" not in text else ...
        try:
            outputs: tuple[tuple[str, str], ...] | None = derivation_outputs(drv, where="x.drv")
        except StoreError as exc:
            message = str(exc)
            assert len(message.splitlines()) == 1
            assert message.startswith("x.drv: ")
            outputs = None
    if expected is not ...:
        assert outputs == expected
    if text == _DRV_SEED:
        assert outputs == (("dev", "/nix/store/a-x-dev"), ("out", "/nix/store/b-x"))


def _spellings(digest: bytes) -> list[str]:
    """Every way a NAR hash may be written (written here from the formats' definitions)."""
    hex_text, nix32, b64 = digest.hex(), _nix32(digest), base64.b64encode(digest).decode()
    bodies = [hex_text, hex_text.upper(), nix32, b64]
    return [*bodies, *(f"sha256:{b}" for b in bodies), f"sha256-{b64}"]


def _edited(digest: bytes, pick: int, at: int, junk: str, drop: int) -> str:
    text = _spellings(digest)[pick % 9]
    return text[:at] + junk + text[at + drop :]


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.binary(min_size=32, max_size=32),
    st.text(max_size=70)
    | st.builds(  # a spelling of a hash with a few characters changed, dropped or added
        _edited,
        st.binary(min_size=32, max_size=32),
        st.integers(0, 8),
        st.integers(0, 72),
        st.sampled_from(["", " ", "  ", "0", "a", "=", "-", ":", "\n"]),
        st.integers(0, 2),
    ),
)
@example(bytes(32), "sha256:" + "aa " * 21 + " ")  # 64 characters, fromhex reads 21 bytes
@example(bytes(32), "0" * 62 + "Aa")  # mixed-case hex: found by a CI run, a spelling too
def test_any_hash_text_reads_as_its_32_bytes_or_one_line(digest: bytes, text: str) -> None:
    """Every spelling of a digest reads as that digest; any other text either is a spelling
    of the 32 bytes it reads as, or fails in one line naming where it was read."""
    for spelling in _spellings(digest):
        assert parse_nar_hash(spelling, where="x") == digest, spelling
    try:
        parsed = parse_nar_hash(text, where="x")
    except StoreError as exc:
        message = str(exc)
        assert len(message.splitlines()) == 1
        assert message.startswith("x: ")
        return
    assert len(parsed) == 32
    assert (
        text in _spellings(parsed)
        # hex is read in either case, mixed too ("...Aa"): the digits alone decide
        or (
            re.fullmatch(r"(sha256:)?[0-9a-fA-F]{64}", text) is not None
            and bytes.fromhex(text.removeprefix("sha256:")) == parsed
        )
        or base64.b64decode(text.removeprefix("sha256-").removeprefix("sha256:"), validate=True)
        == parsed
    )  # base-64 whose unused low bits are set still decodes to these bytes


# Through the CLI ---------------------------------------------------------------------------------


def _build(args: list[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    return run(["build", "--no-cache", "-q", *args], capsys)


def test_build_puts_the_database_in_the_customisation_layer_and_store_layers_stay(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--closure", app_closure, "--store-root", store.root]
    assert _build([*common, "-o", f"oci:{tmp_path / 'plain'}"], capsys)[0] == 0
    status, _, err = _build([*common, "--nix-db", "-o", f"oci:{tmp_path / 'db'}"], capsys)
    assert status == 0, err
    plain, with_db = read_oci(tmp_path / "plain"), read_oci(tmp_path / "db")
    # the same store layers; only the top (customisation) layer differs
    assert with_db.layer_digests[:-1] == plain.layer_digests[:-1]
    assert len(with_db.layer_digests) == len(plain.layer_digests)
    top = with_db.layer_members(len(with_db.layer_digests) - 1)
    assert {DB, "tmp", "nix/var/nix/db/schema"} <= top.keys()
    assert not any(name.startswith("nix/store/") for name in top)
    valid, refs = _rows(_layer_db(tmp_path / "db"))
    recorded = json.loads(with_db.config["config"]["Labels"]["dev.closurepack.layers"])
    assert sorted(r[1] for r in valid) == sorted(p for ps in recorded.values() for p in ps)
    assert sorted(r[1] for r in valid) == store.closure_of([APP])
    assert all(r[2] == "sha256:" + "00" * 32 and r[3] == 1 for r in valid)
    ids = {r[1]: r[0] for r in valid}
    expected = {(ids[p], ids[q]) for p in ids for q in {*store.graph[p][0], p}}
    assert set(refs) == expected  # the closure file lists every item's self-reference


def test_a_database_needs_room_for_the_customisation_layer(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without room for the customisation layer, /tmp alone is dropped; a database is not."""
    layers = len(store.closure_of([APP]))
    status, out, err = run(
        ["plan", "--closure", app_closure, "--strategy", "per-item", "--json"], capsys
    )
    assert status == 0, err
    plan = tmp_path / "plan.json"
    plan.write_text(out)
    common = ["--plan", plan, "--store-root", store.root, "--max-layers", str(layers)]
    assert _build([*common, "-o", f"oci:{tmp_path / 'a'}"], capsys)[0] == 0
    status, _, err = _build([*common, "--nix-db", "-o", f"oci:{tmp_path / 'b'}"], capsys)
    assert status == 2
    assert f"a store database, --fakeroot-script) above {layers} store layers" in err
    assert f"raise --max-layers to {layers + 1}" in err
    assert _build([*common[:-2], "--nix-db", "-o", f"oci:{tmp_path / 'c'}"], capsys)[0] == 0
    registered = sorted(r[1] for r in _rows(_layer_db(tmp_path / "c"))[0])
    assert registered == store.closure_of([APP])  # the graph scanned under --store-root


def test_two_builds_give_the_same_database_and_image(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forward = store.closure_file(tmp_path / "a.json", [APP])
    backward = tmp_path / "b.json"
    backward.write_text(json.dumps(list(reversed(json.loads(forward.read_text())))))
    digests = []
    for number, closure in enumerate((forward, backward)):
        dest = tmp_path / f"img{number}"
        status, out, err = _build(
            ["--closure", closure, "--store-root", store.root, "--nix-db", "-o", f"oci:{dest}"],
            capsys,
        )
        assert status == 0, err
        digests.append(out.strip())
    assert _layer_db(tmp_path / "img0") == _layer_db(tmp_path / "img1")
    assert digests[0] == digests[1]


def test_an_item_outside_the_image_is_not_registered(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two closures planned together (APP's, TOOL's); the image of one registers its own items
    only, not the other's (nix2container issue 94 registered the whole build input)."""
    app = store.closure_file(tmp_path / "app.json", [APP])
    tool = store.closure_file(tmp_path / "tool.json", [TOOL])
    dest = tmp_path / "img"
    status, _, err = _build(
        ["--closure", app, "--closure", tool, "--image", "1", "--store-root", store.root,
         "--nix-db", "-o", f"oci:{dest}"],
        capsys,
    )  # fmt: skip
    assert status == 0, err
    registered = sorted(r[1] for r in _rows(_layer_db(dest))[0])
    assert registered == store.closure_of([TOOL])
    assert APP not in registered
    assert LIBFOO not in registered


def test_items_a_from_image_holds_are_registered_too(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--from a base holding ZLIB's closure: the image has every item of APP's closure (some in
    the base's layers), and its database registers them all, nothing of the base beyond."""
    base = tmp_path / "base"
    zlib = store.closure_file(tmp_path / "zlib.json", [ZLIB])
    assert (
        _build(["--closure", zlib, "--store-root", store.root, "-o", f"oci:{base}"], capsys)[0] == 0
    )
    app = store.closure_file(tmp_path / "app.json", [APP])
    dest = tmp_path / "img"
    status, _, err = _build(
        ["--closure", app, "--store-root", store.root, "--from", f"oci:{base}", "--nix-db",
         "-o", f"oci:{dest}"],
        capsys,
    )  # fmt: skip
    assert status == 0, err
    image, below = read_oci(dest), len(read_oci(base).layer_digests)
    ours = [image.layer_members(n) for n in range(below, len(image.layer_digests))]
    assert ours
    assert not any(GLIBC.lstrip("/") in members for members in ours)  # the base's layers hold it
    assert sorted(r[1] for r in _rows(_layer_db(dest))[0]) == store.closure_of([APP])


def test_text_graph_without_hashes_registers_hashes_of_the_files_and_derivers(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = tmp_path / "graph"
    lines = []
    for path in store.closure_of([LIBFOO]):
        refs = sorted(store.graph[path][0])
        lines += [path, f"{path}.drv" if path == LIBFOO else "", str(len(refs)), *refs]
    graph.write_text("\n".join(lines) + "\n")
    dest = tmp_path / "img"
    status, _, err = _build(
        ["--closure", graph, "--store-root", store.root, "--nix-db", "-o", f"oci:{dest}"], capsys
    )
    assert status == 0, err
    valid, _ = _rows(_layer_db(dest))
    for _, path, nar_hash, _, deriver, size in valid:
        digest = nar_digest(store.files(path))
        assert (nar_hash, size) == (digest.nar_hash, digest.size)
        assert deriver == (f"{path}.drv" if path == LIBFOO else None)


def test_guix_db_for_a_gnu_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = "/gnu/store/" + "a" * 32 + "-guile"
    app = "/gnu/store/" + "b" * 32 + "-hello"
    root = tmp_path / "root"
    for path, text in ((base, "guile"), (app, f"#!{base}/bin/guile\n")):
        (root / path.lstrip("/")).mkdir(parents=True)
        (root / path.lstrip("/") / "file").write_text(text)
    dest = tmp_path / "img"
    status, _, err = _build([app, "--store-root", root, "--guix-db", "-o", f"oci:{dest}"], capsys)
    assert status == 0, err
    image = read_oci(dest)
    top = len(image.layer_digests) - 1
    assert image.layer_file(top, "var/guix/db/schema") == b"7"
    valid, refs = _rows(image.layer_file(top, "var/guix/db/db.sqlite"))
    assert [r[1] for r in valid] == [base, app]
    assert valid[1][2] == nar_digest(root / app.lstrip("/")).nar_hash
    assert refs == [(2, 1)]
    assert not any(n.startswith("nix/") for n in image.layer_members(top))


@pytest.mark.parametrize(
    "case",
    [
        (["--guix-db"], "--guix-db: the image's store is /nix/store, not /gnu/store"),
        (
            ["--guix-db", "--nix-db"],
            "--nix-db and --guix-db: an image holds the items of one store",
        ),
    ],
)
def test_wrong_store_database_options_are_one_line(
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: tuple[list[str], str],
) -> None:
    extra, message = case
    dest = tmp_path / "img"
    status, _, err = _build(
        ["--closure", app_closure, "--store-root", store.root, *extra, "-o", f"oci:{dest}"],
        capsys,
    )
    assert status == 2
    assert err.strip().splitlines() == [f"closurepack: error: {message}"]
    assert not dest.exists()


def test_a_bad_hash_in_the_closure_file_names_file_and_item(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    closure = store.closure_file(tmp_path / "app.json", [APP])
    entries = json.loads(closure.read_text())
    entries[0]["narHash"] = "sha1:" + "0" * 40
    closure.write_text(json.dumps(entries))
    dest = tmp_path / "img"
    status, _, err = _build(
        ["--closure", closure, "--store-root", store.root, "--nix-db", "-o", f"oci:{dest}"],
        capsys,
    )
    assert status != 0
    assert err.strip().splitlines() == [
        f"closurepack: error: {closure}: {entries[0]['path']}: NAR hash"
        f" 'sha1:{'0' * 40}' is not sha256"
    ]
    assert not dest.exists()
