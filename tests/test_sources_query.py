"""Live queries: real Nix on the fixture (and its nix-store fallbacks), Guix via a stand-in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from closurepack.errors import ClosureError, ToolError
from closurepack.graph import Closure
from closurepack.sources import load_closure_file, nar_size, query_closure
from closurepack.sources.guix import query_guix
from closurepack.sources.nix import _parse_dump_db, _query_each, _query_nix_store
from closurepack.sources.query import store_item_path
from closurepack.workflow import image_names
from nixfixture import NixClosure

DATA = Path(__file__).parent / "data"
GUIX_DIR = DATA / "guix"
GUIX = json.loads((GUIX_DIR / "recorded.json").read_text())["paths"]


def _nix_store(*args: str) -> list[str]:
    return subprocess.run(
        ["nix-store", *args], capture_output=True, check=True, text=True
    ).stdout.split()


def _graph(closure: Closure) -> dict[str, tuple[int, tuple[str, ...]]]:
    return {i.path: (i.nar_size, i.references) for i in closure}


def _nix_truth(paths: tuple[str, ...]) -> dict[str, tuple[int, tuple[str, ...]]]:
    """What nix-store itself says, one question per item."""
    return {
        p: (
            int(_nix_store("--query", "--size", p)[0]),
            tuple(sorted(set(_nix_store("--query", "--references", p)) - {p})),
        )
        for p in paths
    }


# Nix -------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_query_nix_equals_nix_store(nix_closure: NixClosure) -> None:
    closure = query_closure([nix_closure.app])
    assert sorted(closure.items) == sorted(_nix_store("--query", "--requisites", nix_closure.app))
    assert _graph(closure) == _nix_truth(nix_closure.paths)
    assert closure.roots == (nix_closure.app,)
    assert closure.store_dir == "/nix/store"
    assert all(i.nar_hash for i in closure)


@pytest.mark.integration
def test_query_nix_store_fallbacks_agree(nix_closure: NixClosure) -> None:
    truth = _nix_truth(nix_closure.paths)
    dumped = _query_nix_store([nix_closure.app])
    assert _graph(dumped) == truth
    assert dumped.source == "nix-store --dump-db"
    assert dumped.roots == (nix_closure.app,)
    each = _query_each(list(nix_closure.paths))
    assert {i.path: (i.nar_size, tuple(sorted(set(i.references) - {i.path}))) for i in each} == (
        truth
    )


@pytest.mark.integration
def test_query_without_the_new_cli_uses_nix_store(
    nix_closure: NixClosure, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only nix-store on PATH (no `nix`): the fallback answers, with the same graph."""
    real = shutil.which("nix-store")
    if real is None:
        pytest.skip("nix-store is not installed")
    (tmp_path / "nix-store").symlink_to(os.path.realpath(real))
    monkeypatch.setenv("PATH", str(tmp_path))
    closure = query_closure([nix_closure.app])
    assert closure.source == "nix-store --dump-db"
    assert _graph(closure) == _nix_truth(nix_closure.paths)


@pytest.mark.integration
def test_query_scans_when_nix_is_absent(
    nix_closure: NixClosure, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No Nix tool at all, but the files are there: the store is scanned, same graph."""
    truth = _nix_truth(nix_closure.paths)
    monkeypatch.setenv("PATH", str(tmp_path))
    closure = query_closure([nix_closure.app])
    assert closure.source == "/nix/store"
    assert _graph(closure) == truth


@pytest.mark.integration
def test_query_names_inside_items_and_result_symlinks(
    nix_closure: NixClosure, tmp_path: Path
) -> None:
    (tmp_path / "result").symlink_to(nix_closure.app)
    assert store_item_path(str(tmp_path / "result")) == nix_closure.app
    package = nix_closure.app.rsplit("/", 1)[1].split("-", 1)[1]
    assert image_names(store_paths=[str(tmp_path / "result")], closure_files=[]) == [package]
    assert store_item_path(nix_closure.entrypoint) == nix_closure.app
    inside = query_closure([nix_closure.entrypoint, str(tmp_path / "result")])
    assert inside.roots == (nix_closure.app,)
    assert len(inside) == len(nix_closure.paths)


@pytest.mark.integration
def test_query_with_store_root_scans_the_copy(nix_closure: NixClosure, tmp_path: Path) -> None:
    store = nix_closure.copy_under(tmp_path)
    closure = query_closure([nix_closure.app], store_root=tmp_path)
    assert closure.source == str(store)
    assert _graph(closure) == _nix_truth(nix_closure.paths)


@pytest.mark.integration
def test_query_invalid_nix_path_is_a_tool_error() -> None:
    if shutil.which("nix-store") is None:
        pytest.skip("nix-store is not installed")
    missing = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-missing"
    with pytest.raises(ToolError) as info:
        query_closure([missing])
    message = str(info.value)
    assert "nix-store --query --requisites" in message
    assert f"error: path '{missing}' is not valid" in message
    assert "\n" not in message


def test_dump_db_parser_on_recorded_output() -> None:
    """nix-store --dump-db output recorded from Nix 2.8 equals its path-info JSON."""
    text = (DATA / "formats" / "nix-2.8-dump-db.txt").read_text()
    items = list(_parse_dump_db(text, "recorded"))
    reference = load_closure_file(DATA / "formats" / "nix-2.8-path-info.json")
    assert {i.path: (i.nar_size, tuple(sorted(set(i.references) - {i.path}))) for i in items} == (
        _graph(reference)
    )
    assert all(i.nar_hash and i.nar_hash.startswith("sha256:") for i in items)
    with pytest.raises(ToolError, match="ends inside the references"):
        list(_parse_dump_db(text.rsplit("\n", 3)[0], "recorded"))


# Guix (stand-in replaying guix gc output) ------------------------------------------------------


@pytest.fixture
def guix_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Put tests/data/guix/guix first on PATH; returns the log of its invocations."""
    log = tmp_path / "guix.log"
    monkeypatch.setenv("PATH", f"{GUIX_DIR}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("GUIX_STANDIN_LOG", str(log))
    return log


def test_query_guix_via_stand_in(guix_on_path: Path) -> None:
    closure = query_closure([GUIX["hello-2.12.1"]])
    assert closure.store_dir == "/gnu/store"
    assert closure.roots == (GUIX["hello-2.12.1"],)
    by_name = {i.package_name: i for i in closure}
    assert sorted(by_name) == ["bash-static-5.1.16", "gcc-11.3.0-lib", "glibc-2.35", "hello-2.12.1"]
    assert by_name["hello-2.12.1"].references == tuple(
        sorted([GUIX["glibc-2.35"], GUIX["gcc-11.3.0-lib"]])
    )
    assert by_name["glibc-2.35"].references == (GUIX["bash-static-5.1.16"],)
    assert {i.nar_size for i in closure} == {0}  # no /gnu/store here: sizes unknown
    calls = guix_on_path.read_text().splitlines()
    assert calls[0] == f"gc --requisites {GUIX['hello-2.12.1']}"
    assert sorted(calls[1:]) == sorted(f"gc --references {p}" for p in closure.items)


def test_query_guix_several_roots_shared_items(guix_on_path: Path) -> None:
    closure = query_closure([GUIX["hello-2.12.1"], GUIX["guile-3.0.9"]])
    assert closure.roots == (GUIX["hello-2.12.1"], GUIX["guile-3.0.9"])
    assert len(closure) == 7
    assert closure.referrers(GUIX["glibc-2.35"]) == tuple(
        sorted(
            GUIX[n]
            for n in (
                "hello-2.12.1",
                "gcc-11.3.0-lib",
                "guile-3.0.9",
                "libgc-8.2.2",
                "libunistring-1.0",
            )
        )
    )


def test_query_guix_sizes_from_files(guix_on_path: Path, tmp_path: Path) -> None:
    hello = tmp_path / GUIX["hello-2.12.1"].lstrip("/")
    (hello / "bin").mkdir(parents=True)
    (hello / "bin" / "hello").write_bytes(b"\x7fELF" + b"\0" * 1000)
    closure = query_guix([GUIX["hello-2.12.1"]], store_root=tmp_path)
    assert closure.items[GUIX["hello-2.12.1"]].nar_size == nar_size(hello) > 1000
    assert closure.items[GUIX["glibc-2.35"]].nar_size == 0


def test_query_guix_unknown_path_is_a_tool_error(guix_on_path: Path) -> None:
    missing = "/gnu/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-missing"
    with pytest.raises(ToolError) as info:
        query_closure([missing])
    assert str(info.value) == (
        f"guix gc --requisites {missing}: failed (exit 1): guix gc: error: path `{missing}'"
        " is not valid"
    )


def test_query_guix_missing_tool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolError, match=r"^guix: not found on PATH"):
        query_closure([GUIX["hello-2.12.1"]])


# Path handling ---------------------------------------------------------------------------------


def test_query_other_store_under_store_root_is_scanned(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "aaaa-app").mkdir(parents=True)
    (store / "aaaa-app" / "run").write_text(f"exec {store}/bbbb-lib/x\n")
    (store / "bbbb-lib").mkdir()
    (store / "cccc-unrelated").mkdir()
    with pytest.raises(ClosureError, match=r"not a store path .*/nix/store or /gnu/store"):
        query_closure([f"{store}/aaaa-app"])  # not a store without --store-root
    closure = query_closure([f"{store}/aaaa-app"], store_root=store)
    assert closure.store_dir == str(store)
    assert sorted(closure.items) == [f"{store}/aaaa-app", f"{store}/bbbb-lib"]
    assert closure.roots == (f"{store}/aaaa-app",)


def test_query_path_errors(tmp_path: Path) -> None:
    with pytest.raises(ClosureError, match="no store path given"):
        query_closure([])
    with pytest.raises(ClosureError, match="not a store path"):
        query_closure(["relative/thing"])
    with pytest.raises(ClosureError, match="different stores"):
        query_closure([GUIX["hello-2.12.1"], "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x"])
    with pytest.raises(ClosureError, match="not a store path"):
        store_item_path("/nix/store/", store_root=tmp_path)
    with pytest.raises(ClosureError, match="not a store path"):
        store_item_path("/opt/store/../etc")
