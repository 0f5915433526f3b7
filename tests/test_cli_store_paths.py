"""Which paths are store paths: one in no store directory is refused at once with one line, a
``./result`` symlink stands for its item (and names the image after it); through ``cli.main``
on a small real store made in tmp_path."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from clistore import APP, GLIBC, LIBFOO, ZLIB, Store, run


def _refused(argv: list[object], capsys: pytest.CaptureFixture[str], *must_say: str) -> str:
    started = time.monotonic()
    status, out, err = run(argv, capsys)
    elapsed = time.monotonic() - started
    assert status == 2, err
    assert out == ""
    assert len(err.splitlines()) == 1, err
    line = err.strip()
    assert line.startswith("closurepack: error: ")
    assert "not a store path" in line, line
    for text in must_say:
        assert text in line, (text, line)
    # refused before anything is read: no scan of the directory around the path
    assert elapsed < 5, elapsed
    return line


@pytest.mark.parametrize("host_path", ["/usr/bin/ls", "/etc/passwd", "/usr/share/doc/bash"])
def test_host_paths_are_not_store_paths(host_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = _refused(["plan", host_path], capsys, "/nix/store", "/gnu/store", "--store-root")
    assert f"error: {host_path}: " in line


def test_a_directory_that_is_no_store_is_not_scanned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, the parent directory was taken as a store: ``plan DIR/bin/ls`` scanned DIR/bin
    and planned it; ``build`` then put the host's file in the image."""
    bin_dir = tmp_path / "usr" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "ls").write_bytes(b"\x7fELF ls")
    (bin_dir / "cp").write_bytes(b"\x7fELF cp")
    _refused(["plan", bin_dir / "ls"], capsys, str(bin_dir / "ls"), "/nix/store or /gnu/store")
    out = tmp_path / "image"
    _refused(["build", bin_dir / "ls", "-o", f"oci:{out}"], capsys, str(bin_dir / "ls"))
    assert not out.exists()
    layer = tmp_path / "layer"
    _refused(["build-layer", bin_dir / "ls", "-o", layer], capsys, str(bin_dir / "ls"))
    assert not layer.exists()


def test_symlinks_and_relative_paths_outside_the_store_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "result").symlink_to("/etc")
    _refused(["plan", tmp_path / "result"], capsys, str(tmp_path / "result"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here").mkdir()
    _refused(["plan", "here"], capsys, "here: not a store path")
    _refused(["plan", "/nix/store/" + "1" * 32 + "-x/../../../etc/passwd"], capsys, "'..'")


def test_store_root_names_the_store_directories_tried(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _refused(["plan", "--store-root", store.root, "/usr/bin/ls"], capsys, "/nix/store")
    assert f"nor an item of {store.root}" in line
    # a store in another directory, under the store root: fine, when the item is there
    other = store.root / "opt" / "pkgs"
    (other / "aaaa-tool" / "bin").mkdir(parents=True)
    (other / "aaaa-tool" / "bin" / "tool").write_text("uses /opt/pkgs/bbbb-lib\n")
    (other / "bbbb-lib").mkdir()
    status, out, err = run(
        ["plan", "--store-root", store.root, "/opt/pkgs/aaaa-tool", "--json"], capsys
    )
    assert status == 0, err
    plan = json.loads(out)
    assert plan["store_dir"] == "/opt/pkgs"
    paths = sorted(p for layer in plan["images"][0]["layers"] for p in layer["paths"])
    assert paths == ["/opt/pkgs/aaaa-tool", "/opt/pkgs/bbbb-lib"]
    _refused(
        ["plan", "--store-root", store.root, "/opt/pkgs/cccc-missing"],
        capsys,
        f"nor an item of {other}",
    )


def test_a_path_inside_an_item_stands_for_the_item(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(
        ["plan", "--store-root", store.root, f"{LIBFOO}/lib/deep/data.txt", "--json"], capsys
    )
    assert status == 0, err
    plan = json.loads(out)
    assert plan["images"][0]["roots"] == [LIBFOO]
    paths = sorted(p for layer in plan["images"][0]["layers"] for p in layer["paths"])
    assert paths == sorted([LIBFOO, GLIBC, ZLIB])


def test_result_symlink_names_the_image_after_its_store_item(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = tmp_path / "result-v1"
    result.symlink_to(APP)
    status, out, err = run(["plan", "--store-root", store.root, result, "--json"], capsys)
    assert status == 0, err
    image = json.loads(out)["images"][0]
    assert image["roots"] == [APP]
    assert image["name"] == "app-1.0"
    # a symlink to the store root's copy of the item is the same item
    copy = tmp_path / "result-copy"
    copy.symlink_to(store.files(APP))
    status, out, err = run(["plan", "--store-root", store.root, copy, "--json"], capsys)
    assert status == 0, err
    image = json.loads(out)["images"][0]
    assert (image["roots"], image["name"]) == ([APP], "app-1.0")
