"""--nix-db against real Nix: the schema and rows are those `nix-store --load-db` makes, and the
host's Nix, run on the unpacked image (umoci), verifies every item's contents and lists
exactly the image's items with the hashes and sizes the host store has."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from clistore import read_oci, run
from closurepack.sources.narhash import NarDigests
from closurepack.sources.query import query_closure
from closurepack.storedb import NIX_DB, database_bytes, registrations
from nixfixture import NixClosure
from runtimes import require_tool, run_tool

pytestmark = pytest.mark.integration

_NIX = ["--extra-experimental-features", "nix-command", "--option", "substituters", ""]


def _nix_store(*args: str | Path, stdin: bytes | None = None) -> str:
    return run_tool("nix-store", *args, stdin=stdin, timeout=300)


def _load_db(root: Path, paths: tuple[str, ...]) -> Path:
    """A store database made by Nix itself: `nix-store --load-db` of the host's registrations
    of ``paths``, into an empty store under ``root``."""
    dump = _nix_store("--dump-db", *paths).encode()
    _nix_store("--store", f"local?root={root}", "--load-db", stdin=dump)
    return root / "nix/var/nix/db/db.sqlite"


def _schema(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
    # VACUUM lists the tables before the indexes and triggers: the order is layout, not schema
    return sorted(db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"), key=str)


def _content(db: sqlite3.Connection) -> tuple[list[tuple[Any, ...]], ...]:
    return (
        list(db.execute("SELECT id, path, hash, deriver, narSize, ultimate, sigs, ca"
                        " FROM ValidPaths")),
        list(db.execute("SELECT * FROM Refs ORDER BY 1, 2")),
        list(db.execute("SELECT * FROM DerivationOutputs")),
        list(db.execute("SELECT * FROM sqlite_sequence")),
    )  # fmt: skip


def test_schema_and_rows_are_those_nix_load_db_makes(
    nix_closure: NixClosure, tmp_path: Path
) -> None:
    theirs_file = _load_db(tmp_path / "nix-made", nix_closure.paths)
    closure = query_closure([nix_closure.app])
    ours_file = tmp_path / "ours.sqlite"
    ours_file.write_bytes(
        database_bytes(registrations(closure, NarDigests(None)), NIX_DB, registration_time=1)
    )
    theirs, ours = sqlite3.connect(theirs_file), sqlite3.connect(ours_file)
    try:
        assert _schema(ours) == _schema(theirs)
        assert _content(ours) == _content(theirs)
        assert ours.execute("PRAGMA journal_mode").fetchall() == [("wal",)]
        assert {r[0] for r in ours.execute("SELECT registrationTime FROM ValidPaths")} == {1}
    finally:
        theirs.close()
        ours.close()
    schema_file = tmp_path / "nix-made/nix/var/nix/db/schema"
    assert schema_file.read_text() == NIX_DB.schema_version


def _tree(root: Path) -> dict[str, str]:
    """Relative path -> kind (and a symlink's target) of everything under ``root``."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(directory, name)
            rel = str(path.relative_to(root))
            found[rel] = f"-> {os.readlink(path)}" if path.is_symlink() else (
                "dir" if path.is_dir() else "file"
            )  # fmt: skip
    return found


def _unpack(layout: Path, bundle: Path) -> Path:
    require_tool("umoci")
    run_tool("umoci", "unpack", "--image", f"{layout}:latest", bundle)
    return bundle / "rootfs"


def _path_info(store: str | None, root: str) -> list[dict[str, Any]]:
    where = ["--store", store] if store else []
    text = run_tool("nix", *_NIX, "path-info", *where, "--json", "--recursive", root)
    info = json.loads(text)
    entries = info if isinstance(info, list) else [{"path": k, **v} for k, v in info.items()]
    keys = ("path", "narHash", "narSize", "references", "deriver")
    return sorted(({k: e[k] for k in keys} for e in entries), key=lambda e: e["path"])


def _build(args: list[object], capsys: pytest.CaptureFixture[str]) -> str:
    status, out, err = run(["build", "--no-cache", "-q", "--nix-db", *args], capsys)
    assert status == 0, err
    return out.strip()


def test_host_nix_verifies_the_unpacked_image_and_lists_exactly_its_items(
    nix_closure: NixClosure, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = tmp_path / "layout"
    _build([nix_closure.app, "-o", f"oci:{layout}:latest"], capsys)
    rootfs = _unpack(layout, tmp_path / "bundle")
    found = _tree(rootfs / "nix/var/nix")  # before Nix adds its locks and reserve
    store = f"local?root={rootfs}"
    checked = subprocess.run(
        ["nix-store", "--store", store, "--verify", "--check-contents"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert "was modified" not in checked.stderr
    assert _path_info(store, nix_closure.app) == _path_info(None, nix_closure.app)
    listed = run_tool("nix", *_NIX, "path-info", "--store", store, "--all").split()
    assert sorted(listed) == sorted(nix_closure.paths)
    # the state directory a fresh store has, less the 8 MiB reserve (Nix makes it when missing),
    # plus a collector root per image root
    expected = _tree(_load_db(tmp_path / "fresh", nix_closure.paths).parent.parent)
    expected = {k: v.replace(str(tmp_path / "fresh"), "") for k, v in expected.items()}
    expected.pop("db/reserved")
    name = nix_closure.app.rsplit("/", 1)[1]
    expected |= {
        "gcroots/closurepack": "dir",
        f"gcroots/closurepack/{name}": f"-> {nix_closure.app}",
    }
    assert found == expected


def test_verify_fails_when_an_item_differs_from_its_registration(
    nix_closure: NixClosure, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The check above can fail: one changed byte in the unpacked store and Nix says so."""
    layout = tmp_path / "layout"
    _build([nix_closure.app, "-o", f"oci:{layout}:latest"], capsys)
    rootfs = _unpack(layout, tmp_path / "bundle")
    note = rootfs / nix_closure.item("note.txt").lstrip("/")
    note.chmod(0o644)
    note.write_text("changed\n")
    checked = subprocess.run(
        ["nix-store", "--store", f"local?root={rootfs}", "--verify", "--check-contents"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert checked.returncode != 0
    assert nix_closure.item("note.txt") in checked.stderr


def test_a_subclosure_image_registers_only_its_items(
    nix_closure: NixClosure, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = nix_closure.item("data")
    layout = tmp_path / "layout"
    _build([data, "-o", f"oci:{layout}:latest"], capsys)
    rootfs = _unpack(layout, tmp_path / "bundle")
    listed = run_tool("nix", *_NIX, "path-info", "--store", f"local?root={rootfs}", "--all")
    assert sorted(listed.split()) == sorted([data, nix_closure.item("busybox")])


def test_text_graph_without_hashes_and_plan_files_register_the_same(
    nix_closure: NixClosure, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A graph without NAR hashes (hashes computed from the files) and a plan file (the graph
    asked of Nix) give the same database as a store path: same bytes, same image."""
    lines = []
    for path in nix_closure.paths:
        refs = _nix_store("--query", "--references", path).split()
        deriver = _nix_store("--query", "--deriver", path).strip()
        lines += [path, deriver, str(len(refs)), *refs]
    graph = tmp_path / "graph"
    graph.write_text("\n".join(lines) + "\n")
    plan = tmp_path / "plan.json"
    status, out, err = run(["plan", nix_closure.app, "--json"], capsys)
    assert status == 0, err
    plan.write_text(out)
    digests = {
        "path": _build([nix_closure.app, "-o", f"oci:{tmp_path / 'a'}:latest"], capsys),
        "again": _build([nix_closure.app, "-o", f"oci:{tmp_path / 'b'}:latest"], capsys),
        "graph": _build(["--closure", graph, "-o", f"oci:{tmp_path / 'c'}:latest"], capsys),
        "plan": _build(["--plan", plan, "-o", f"oci:{tmp_path / 'd'}:latest"], capsys),
    }
    dbs = {}
    for key, layout in zip(digests, "abcd", strict=True):
        image = read_oci(tmp_path / layout)
        dbs[key] = image.layer_file(len(image.layer_digests) - 1, "nix/var/nix/db/db.sqlite")
    assert dbs["again"] == dbs["path"] == dbs["graph"] == dbs["plan"]
    assert digests["again"] == digests["path"]


def test_derivations_register_their_outputs_as_load_db_does(
    nix_closure: NixClosure, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An image of the app's derivation: its closure (derivations and a content-addressed
    source) registered with the DerivationOutputs rows `--load-db` reads from the files."""
    drv = _nix_store("--query", "--deriver", nix_closure.app).strip()
    paths = tuple(sorted(_nix_store("--query", "--requisites", drv).split()))
    root = tmp_path / "nix-made"
    NixClosure(drv, paths, "").copy_under(root)  # --load-db reads the derivations' files
    theirs = sqlite3.connect(_load_db(root, paths))
    ours_file = tmp_path / "ours.sqlite"
    closure = query_closure([drv])
    regs = registrations(closure, NarDigests(None))
    ours_file.write_bytes(database_bytes(regs, NIX_DB, registration_time=1))
    ours = sqlite3.connect(ours_file)
    try:
        assert _content(ours) == _content(theirs)
        outputs = list(ours.execute("SELECT id, path FROM DerivationOutputs"))
    finally:
        ours.close()
        theirs.close()
    assert ("out", nix_closure.app) in outputs
    layout = tmp_path / "layout"
    _build([drv, "-o", f"oci:{layout}:latest"], capsys)
    rootfs = _unpack(layout, tmp_path / "bundle")
    store = f"local?root={rootfs}"
    run_tool("nix-store", "--store", store, "--verify", "--check-contents", timeout=300)
    # (`nix path-info` would take the derivation for its outputs)
    listed = _nix_store("--store", store, "--query", "--requisites", drv).split()
    assert sorted(listed) == list(paths)
    assert _nix_store("--store", store, "--dump-db", *paths) == _nix_store("--dump-db", *paths)
