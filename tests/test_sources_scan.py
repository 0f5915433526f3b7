"""Directory stores: exact NAR sizes and references found as Nix finds them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from closurepack.errors import ClosureError, StoreError
from closurepack.sources import nar_size, scan_closure
from closurepack.sources.scan import NIX_BASE32, ReferenceScanner, scan_item, store_directory
from nixfixture import NixClosure


def _hash(seed: str) -> str:
    digest = hashlib.sha256(seed.encode()).digest()
    return "".join(NIX_BASE32[b % 32] for b in digest)


# An independent NAR writer, straight from the format (Dolstra's thesis, fig. 5.2), to check
# the arithmetic of nar_size against real serialised bytes.
def _nar_str(data: bytes) -> bytes:
    return len(data).to_bytes(8, "little") + data + b"\0" * (-len(data) % 8)


def _nar(path: bytes) -> bytes:
    st = os.lstat(path)
    out = [_nar_str(b"("), _nar_str(b"type")]
    if stat.S_ISLNK(st.st_mode):
        out += [_nar_str(b"symlink"), _nar_str(b"target"), _nar_str(os.readlink(path))]
    elif stat.S_ISREG(st.st_mode):
        out.append(_nar_str(b"regular"))
        if st.st_mode & stat.S_IXUSR:
            out += [_nar_str(b"executable"), _nar_str(b"")]
        with open(path, "rb") as stream:
            out += [_nar_str(b"contents"), _nar_str(stream.read())]
    else:
        out.append(_nar_str(b"directory"))
        for name in sorted(os.listdir(path)):
            out += [_nar_str(b"entry"), _nar_str(b"("), _nar_str(b"name"), _nar_str(name)]
            out += [_nar_str(b"node"), _nar(os.path.join(path, name)), _nar_str(b")")]
    out.append(_nar_str(b")"))
    return b"".join(out)


def _full_nar(path: Path) -> bytes:
    return _nar_str(b"nix-archive-1") + _nar(os.fsencode(path))


def _awkward_tree(root: Path) -> Path:
    (root / "dir/sub/empty").mkdir(parents=True)
    (root / "dir/héllo wörld.txt").write_text("x" * 13)
    (root / "dir/日本.txt").write_bytes(b"")
    (root / "dir/sub/exe").write_bytes(b"#!/bin/sh\necho 1234567\n")
    (root / "dir/sub/exe").chmod(0o755)
    (root / ("n" * 150)).write_bytes(b"\0" * 4097)
    (root / "dir/link").symlink_to("sub/exe")
    (root / "dir/dangling").symlink_to("../nowhere/at/all/x")
    os.link(root / "dir/sub/exe", root / "dir/hard")
    return root


def test_nar_size_matches_a_real_serialisation(tmp_path: Path) -> None:
    tree = _awkward_tree(tmp_path / "tree")
    assert nar_size(tree) == len(_full_nar(tree))
    for child in ("dir/sub/exe", "dir/link", "dir/日本.txt", "dir/sub/empty"):
        assert nar_size(tree / child) == len(_full_nar(tree / child)), child


def test_nar_size_rejects_special_files(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(StoreError, match="fifo"):
        nar_size(tmp_path)


@pytest.mark.integration
def test_nar_size_matches_nix_store_dump(tmp_path: Path) -> None:
    if shutil.which("nix-store") is None:
        pytest.skip("nix-store is not installed")
    tree = _awkward_tree(tmp_path / "tree")
    dumped = subprocess.run(["nix-store", "--dump", str(tree)], capture_output=True, check=True)
    assert nar_size(tree) == len(dumped.stdout) == len(_full_nar(tree))


# The scanner -----------------------------------------------------------------------------------

H1, H2, H3 = _hash("one"), _hash("two"), _hash("three")


def _found(scanner: ReferenceScanner, data: bytes) -> set[bytes]:
    found: set[bytes] = set()
    scanner.scan(data, found)
    return found


def test_scanner_finds_whole_hashes_only() -> None:
    scanner = ReferenceScanner([H1, H2, H3])
    data = f"/nix/store/{H1}-a/lib:{H2[:-1]}\0 and again {H1}".encode()
    assert _found(scanner, data) == {H1.encode()}


def test_scanner_finds_a_hash_inside_a_longer_base32_run() -> None:
    scanner = ReferenceScanner([H1, H2])
    assert _found(scanner, f"abc{H1}xyz{H2}".encode()) == {H1.encode(), H2.encode()}


def test_scanner_handles_hashes_across_chunk_boundaries(tmp_path: Path) -> None:
    scanner = ReferenceScanner([H1, H2, H3])
    data = b"\x00" * 50 + H1.encode() + b"\x01" * 23 + H2.encode() + b"\xff" * 9 + H3.encode()
    path = tmp_path / "blob"
    path.write_bytes(data)
    for chunk_size in (1, 7, 31, 32, 33, 64, 1 << 20):
        found: set[bytes] = set()
        scanner.scan_file(os.fsencode(path), found, chunk_size=chunk_size)
        assert found == {H1.encode(), H2.encode(), H3.encode()}, chunk_size


def test_scanner_literal_fallback_for_other_names(tmp_path: Path) -> None:
    scanner = ReferenceScanner(["libfoo", "foobar", H1])
    # Overlapping occurrences are both found, as Nix's scanner would.
    assert _found(scanner, b"xx libfoobar yy") == {b"libfoo", b"foobar"}
    path = tmp_path / "blob"
    path.write_bytes(b"....libf" + b"oo...." + H1.encode())
    found: set[bytes] = set()
    scanner.scan_file(os.fsencode(path), found, chunk_size=8)
    assert found == {b"libfoo", H1.encode()}


def test_scan_item_reads_contents_symlink_targets_and_names(tmp_path: Path) -> None:
    item = tmp_path / "item"
    (item / "sub").mkdir(parents=True)
    (item / "sub" / "f").write_bytes(b"\x7fELF" + H1.encode() + b"\0")
    (item / "sub" / "l").symlink_to(f"/nix/store/{H2}-b/bin/x")
    (item / f"{H3}-named-after-it").write_bytes(b"")
    scanned = scan_item(item, ReferenceScanner([H1, H2, H3, _hash("absent")]))
    assert scanned.hash_parts == {H1.encode(), H2.encode(), H3.encode()}
    assert scanned.nar_size == len(_full_nar(item))


# scan_closure on a handmade store --------------------------------------------------------------


def _make_store(root: Path) -> dict[str, str]:
    """app -> lib (contents), app -> data (symlink target), lib -> libc (contents),
    data (a single file) and an unrelated item that refers to lib."""
    store = root / "nix" / "store"
    store.mkdir(parents=True)
    names = {key: f"{_hash(key)}-{key}" for key in ("app", "lib", "libc", "data", "other")}
    path = {key: f"/nix/store/{name}" for key, name in names.items()}
    (store / names["libc"] / "lib").mkdir(parents=True)
    (store / names["libc"] / "lib" / "libc.so").write_bytes(b"\x7fELF libc" * 100)
    (store / names["lib"] / "lib").mkdir(parents=True)
    (store / names["lib"] / "lib" / "libx.so").write_bytes(
        b"\x7fELF" + b"\0" * 5000 + f"RPATH={path['libc']}/lib".encode() + b"\0" * 3
    )
    (store / names["data"]).write_text("just data\n")
    (store / names["app"] / "bin").mkdir(parents=True)
    (store / names["app"] / "bin" / "app").write_text(f"#!/bin/sh\nexec {path['lib']}/x $@\n")
    (store / names["app"] / "bin" / "app").chmod(0o555)
    (store / names["app"] / "share").symlink_to(path["data"])
    (store / names["app"] / "self").symlink_to(f"{path['app']}/bin")  # a self-reference
    (store / names["other"]).write_text(f"uses {path['lib']}\n")
    (store / ".links").mkdir()  # Nix's hard-link pool: not an item
    return path


def test_scan_closure_whole_store(tmp_path: Path) -> None:
    path = _make_store(tmp_path)
    closure = scan_closure(tmp_path)
    assert sorted(closure.items) == sorted(path.values())
    refs = {p: i.references for p, i in closure.items.items()}
    assert refs == {
        path["app"]: tuple(sorted([path["lib"], path["data"]])),
        path["lib"]: (path["libc"],),
        path["libc"]: (),
        path["data"]: (),
        path["other"]: (path["lib"],),
    }
    assert sorted(closure.roots) == sorted([path["app"], path["other"]])
    for p, item in closure.items.items():
        assert item.nar_size == len(_full_nar(tmp_path / p.lstrip("/")))
    assert closure.source == str(tmp_path / "nix" / "store")


def test_scan_closure_of_given_paths_only(tmp_path: Path) -> None:
    path = _make_store(tmp_path)
    closure = scan_closure(tmp_path, paths=[path["lib"]])
    assert sorted(closure.items) == sorted([path["lib"], path["libc"]])
    assert closure.roots == (path["lib"],)
    both = scan_closure(tmp_path, paths=[path["data"], path["app"]])
    assert both.roots == (path["data"], path["app"])
    assert path["other"] not in both


def test_scan_closure_store_root_is_the_store_directory(tmp_path: Path) -> None:
    path = _make_store(tmp_path)
    store = tmp_path / "nix" / "store"
    assert store_directory(store, "/nix/store") == store
    direct = scan_closure(store, paths=[path["app"]])
    chroot = scan_closure(tmp_path, paths=[path["app"]])
    assert direct.items == chroot.items


def test_scan_closure_other_store_dir_and_names(tmp_path: Path) -> None:
    """A store that is not Nix's: no hashes, so the literal text before '-' is looked for."""
    store = tmp_path / "opt" / "pkgs"
    (store / "tool-1.0" / "bin").mkdir(parents=True)
    (store / "tool-1.0" / "bin" / "tool").write_text("load /opt/pkgs/zlibx-1.3/lib\n")
    (store / "zlibx-1.3" / "lib").mkdir(parents=True)
    closure = scan_closure(tmp_path, store_dir="/opt/pkgs")
    assert closure.store_dir == "/opt/pkgs"
    assert closure.items["/opt/pkgs/tool-1.0"].references == ("/opt/pkgs/zlibx-1.3",)


def test_scan_closure_errors(tmp_path: Path) -> None:
    path = _make_store(tmp_path)
    with pytest.raises(ClosureError, match="is not in the store"):
        scan_closure(tmp_path, paths=["/nix/store/" + _hash("missing") + "-missing"])
    with pytest.raises(ClosureError, match="not a direct child of the store /nix/store"):
        scan_closure(tmp_path, paths=["/gnu/store/" + path["app"].rsplit("/", 1)[1]])
    with pytest.raises(ClosureError, match=r"'\.\.'"):
        scan_closure(tmp_path, paths=["/nix/store/../etc"])
    with pytest.raises(StoreError, match="not a directory"):
        scan_closure(tmp_path / "absent")
    os.mkfifo(tmp_path / path["app"].lstrip("/") / "fifo")
    with pytest.raises(StoreError, match="cannot be stored in a NAR"):
        scan_closure(tmp_path)


# The real Nix fixture, copied under a store root -----------------------------------------------

NIX_PATH_INFO = ["nix", "--extra-experimental-features", "nix-command", "path-info", "--json", "-r"]


@pytest.mark.integration
def test_scan_of_copied_fixture_equals_nix(nix_closure: NixClosure, tmp_path: Path) -> None:
    nix_closure.copy_under(tmp_path)
    out = subprocess.run(
        [*NIX_PATH_INFO, nix_closure.app],
        capture_output=True,
        check=True,
    ).stdout
    nix = {o["path"]: o for o in json.loads(out)}
    closure = scan_closure(tmp_path, paths=[nix_closure.app])
    assert sorted(closure.items) == sorted(nix_closure.paths)
    for path, item in closure.items.items():
        assert item.references == tuple(sorted(set(nix[path]["references"]) - {path})), path
        assert item.nar_size == nix[path]["narSize"], path
    assert closure.roots == (nix_closure.app,)
