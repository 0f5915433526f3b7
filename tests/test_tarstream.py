"""Deterministic store tars: byte-level format, readability by tarfile and GNU tar, errors."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from closurepack.errors import ClosureError, OptionError, StoreError
from closurepack.perms import MAX_ID
from closurepack.tarentries import TarEntry, TreeEntry, scan_host_tree
from closurepack.tarheader import REGTYPE, SYMTYPE, tar_header
from closurepack.tarstream import _TarWriter, write_store_tar, write_tree_tar

STORE = "/nix/store"
APP = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-app-1.0"
LIB = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-lib-2.0"
SINGLE = "/nix/store/cccccccccccccccccccccccccccccccc-script.sh"
LONG_DIR = "d" * 120


def host(root: Path, store_path: str) -> Path:
    return root / store_path.lstrip("/")


def make_store(root: Path) -> Path:
    """A small store: nested dirs, an executable, a symlink, hard links, odd names."""
    app = host(root, APP)
    (app / "bin").mkdir(parents=True)
    (app / "bin" / "app").write_bytes(b"#!/bin/sh\necho app\n")
    (app / "bin" / "app").chmod(0o555)
    (app / "share" / "doc").mkdir(parents=True)
    (app / "share" / "doc" / "README").write_text("read me\n")
    (app / "share" / "doc" / "README").chmod(0o444)
    (app / "share" / "doc" / "naïve-ünïcödé.txt").write_text("unicode\n")
    (app / "share" / LONG_DIR / ("f" * 110)).parent.mkdir(parents=True)
    (app / "share" / LONG_DIR / ("f" * 110)).write_bytes(b"long name\n")
    (app / "lib").symlink_to(LIB + "/lib")
    (app / "long-link").symlink_to("/" + "x" * 150)
    (app / "share" / "same-a").write_bytes(b"hard linked\n")
    os.link(app / "share" / "same-a", app / "share" / "same-b")
    lib = host(root, LIB)
    (lib / "lib").mkdir(parents=True)
    (lib / "lib" / "libfoo.so").write_bytes(os.urandom(3000))
    # Nix's store optimisation: a hard link across items
    os.link(app / "share" / "same-a", lib / "lib" / "shared")
    single = host(root, SINGLE)
    single.write_bytes(b"#!/bin/sh\n")
    single.chmod(0o555)
    return root


def tar_of(paths: list[str], root: Path, mtime: int = 1) -> bytes:
    out = io.BytesIO()
    write_store_tar(out, paths, store_root=root, mtime=mtime)
    return out.getvalue()


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


def test_entries_sorted_with_store_parents(tmp_path: Path) -> None:
    root = make_store(tmp_path)
    data = tar_of([LIB, APP], root)
    names = [m.name for m in members(data)]
    assert names[:2] == ["nix", "nix/store"]
    assert [n.encode() for n in names] == sorted(n.encode() for n in names)
    assert f"{APP[1:]}/share/doc/naïve-ünïcödé.txt" in names
    assert f"{APP[1:]}/share/{LONG_DIR}/{'f' * 110}" in names
    for m in members(data):
        assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 1)
        assert m.pax_headers.keys() <= {"path", "linkpath", "size", "hdrcharset"}


def test_modes_links_and_contents(tmp_path: Path) -> None:
    root = make_store(tmp_path)
    data = tar_of([APP, LIB], root)
    by_name = {m.name: m for m in members(data)}
    assert by_name["nix"].mode == 0o755
    assert by_name["nix/store"].isdir()
    assert by_name[f"{APP[1:]}/bin/app"].mode == 0o555
    assert by_name[f"{APP[1:]}/share/doc/README"].mode == 0o444
    lib_link = by_name[f"{APP[1:]}/lib"]
    assert lib_link.issym()
    assert lib_link.linkname == LIB + "/lib"
    assert by_name[f"{APP[1:]}/long-link"].linkname == "/" + "x" * 150
    # Three names share one inode: the first in sort order holds the data, the others link.
    first = f"{APP[1:]}/share/same-a"
    assert by_name[first].isfile()
    assert by_name[f"{APP[1:]}/share/same-b"].islnk()
    assert by_name[f"{APP[1:]}/share/same-b"].linkname == first
    assert by_name[f"{LIB[1:]}/lib/shared"].islnk()
    assert by_name[f"{LIB[1:]}/lib/shared"].linkname == first
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        extracted = tar.extractfile(f"{LIB[1:]}/lib/libfoo.so")
        assert extracted is not None
        assert extracted.read() == host(root, LIB).joinpath("lib/libfoo.so").read_bytes()


def test_hard_links_never_cross_layers(tmp_path: Path) -> None:
    root = make_store(tmp_path)
    # LIB alone: its hard-linked file must be a regular file with its own data.
    by_name = {m.name: m for m in members(tar_of([LIB], root))}
    shared = by_name[f"{LIB[1:]}/lib/shared"]
    assert shared.isfile()
    assert shared.size == len(b"hard linked\n")


def test_same_bytes_after_host_metadata_changes(tmp_path: Path) -> None:
    root = make_store(tmp_path)
    before = tar_of([APP, LIB, SINGLE], root, mtime=1700000000)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            os.utime(path, (12345, 67890), follow_symlinks=False)
    if os.geteuid() == 0:
        os.chown(host(root, LIB) / "lib" / "libfoo.so", 1234, 5678)
    after = tar_of([SINGLE, LIB, APP], root, mtime=1700000000)
    assert before == after
    assert tar_of([APP], root, mtime=2) != tar_of([APP], root, mtime=3)


def test_byte_format(tmp_path: Path) -> None:
    root = make_store(tmp_path)
    data = tar_of([SINGLE], root)
    assert len(data) % 512 == 0
    assert data.endswith(bytes(1024))
    first = data[:512]
    assert first[:4] == b"nix/"
    assert first[257:265] == b"ustar\x0000"
    assert first[265:297] == bytes(32)  # empty user name
    stored = int(first[148:154], 8)
    assert stored == sum(first[:148]) + 8 * 32 + sum(first[156:])
    # Single-file item: one regular file directly under the store dir.
    by_name = {m.name: m for m in members(data)}
    assert by_name[SINGLE[1:]].isfile()
    assert by_name[SINGLE[1:]].mode == 0o555


def test_pax_only_when_needed() -> None:
    plain = tar_header(b"nix/store/x/file", mode=0o444, size=5, mtime=1, typeflag=b"0")
    assert len(plain) == 512
    long_name = b"nix/store/" + b"a" * 140 + b"/" + b"b" * 90
    split = tar_header(long_name, mode=0o444, size=5, mtime=1, typeflag=b"0")
    assert len(split) == 512  # prefix/name split, no PAX
    info = tarfile.TarInfo.frombuf(split, "utf-8", "surrogateescape")
    assert info.name == long_name.decode()
    assert (
        len(
            tar_header(
                b"nix/store/" + b"a" * 150 + b"/" + b"b" * 90,
                mode=0o444,
                size=5,
                mtime=1,
                typeflag=b"0",
            )
        )
        > 512
    )  # prefix would be 160 bytes
    unsplittable = b"nix/store/" + b"c" * 200
    pax = tar_header(unsplittable, mode=0o444, size=5, mtime=1, typeflag=b"0")
    assert len(pax) > 512
    assert pax[156:157] == b"x"
    assert b" path=" + unsplittable + b"\n" in pax
    assert b"atime" not in pax
    assert b"ctime" not in pax


def test_huge_size_goes_to_pax_header() -> None:
    size = 9 * 1024**3
    header = tar_header(b"nix/store/x/big", mode=0o444, size=size, mtime=1, typeflag=b"0")
    with tarfile.open(fileobj=io.BytesIO(header + bytes(1024)), mode="r:") as tar:
        info = tar.next()
        assert info is not None
        assert info.size == size
        assert info.pax_headers["size"] == str(size)


class HeadSink:
    """Keeps the first bytes written and counts the rest."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.head = bytearray()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        if len(self.head) < self.keep:
            self.head += bytes(data[: self.keep - len(self.head)])
        self.size += len(data)
        return len(data)


@pytest.mark.slow
def test_sparse_file_over_8_gib(tmp_path: Path) -> None:
    item = "/nix/store/dddddddddddddddddddddddddddddddd-big"
    big = host(tmp_path, item) / "big.img"
    big.parent.mkdir(parents=True)
    size = 8 * 1024**3 + 4096
    with big.open("wb") as handle:
        handle.truncate(size)  # sparse: no disk used
    sink = HeadSink(8192)
    write_store_tar(sink, [item], store_root=tmp_path, mtime=1)
    headers = bytes(sink.head)
    # three directories, the PAX header and its one record block, the file header, the data
    # and the two end blocks: nothing more
    assert sink.size == 3 * 512 + 2 * 512 + 512 + size + 1024
    with tarfile.open(fileobj=io.BytesIO(headers), mode="r|") as tar:
        names = {}
        for info in tar:
            names[info.name] = info
            if info.name.endswith("big.img"):
                break
    assert names[item[1:] + "/big.img"].size == size
    assert names[item[1:] + "/big.img"].pax_headers["size"] == str(size)


def test_fifo_is_refused(tmp_path: Path) -> None:
    item = "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-bad"
    directory = host(tmp_path, item)
    directory.mkdir(parents=True)
    os.mkfifo(directory / "pipe")
    with pytest.raises(StoreError, match=r"pipe: is a fifo; store items may hold only files"):
        tar_of([item], tmp_path)


def test_missing_item_names_item_and_root(tmp_path: Path) -> None:
    item = "/nix/store/ffffffffffffffffffffffffffffffff-gone"
    with pytest.raises(StoreError, match=rf"{item}: store item not found under {tmp_path}"):
        tar_of([item], tmp_path)


def test_bad_store_path_and_mtime(tmp_path: Path) -> None:
    with pytest.raises(ClosureError):
        tar_of(["/nix/store/../etc"], tmp_path)
    root = make_store(tmp_path)
    with pytest.raises(OptionError, match="mtime"):
        tar_of([SINGLE], root, mtime=-1)


def test_guix_store_dir(tmp_path: Path) -> None:
    item = "/gnu/store/gggggggggggggggggggggggggggggggg-hello"
    (host(tmp_path, item) / "bin").mkdir(parents=True)
    (host(tmp_path, item) / "bin" / "hello").write_bytes(b"hi")
    names = [m.name for m in members(tar_of([item], tmp_path))]
    assert names[:3] == ["gnu", "gnu/store", item[1:]]


@pytest.mark.integration
def test_gnu_tar_reads_it(tmp_path: Path) -> None:
    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    root = make_store(tmp_path / "store")
    archive = tmp_path / "layer.tar"
    archive.write_bytes(tar_of([APP, LIB, SINGLE], root))
    listing = subprocess.run(
        ["tar", "--numeric-owner", "-tvf", str(archive)],
        check=True,
        capture_output=True,
        env={**os.environ, "LC_ALL": "C.UTF-8", "TZ": "UTC"},
    ).stdout.decode()
    assert f"{APP[1:]}/share/doc/naïve-ünïcödé.txt" in listing
    assert f"{APP[1:]}/share/{LONG_DIR}/{'f' * 110}" in listing
    assert f"{APP[1:]}/lib -> {LIB}/lib" in listing
    assert f"{APP[1:]}/share/same-b link to {APP[1:]}/share/same-a" in listing
    assert "-r-xr-xr-x 0/0" in listing
    assert "drwxr-xr-x 0/0" in listing
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(out)], check=True)
    extracted = out / APP[1:] / "share" / LONG_DIR / ("f" * 110)
    assert extracted.read_bytes() == b"long name\n"
    assert (out / LIB[1:] / "lib" / "libfoo.so").read_bytes() == (
        host(root, LIB) / "lib" / "libfoo.so"
    ).read_bytes()


def test_tree_tar(tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    (extra / "etc" / "ssl").mkdir(parents=True)
    (extra / "etc" / "ssl" / "cert.pem").write_text("cert\n")
    (extra / "etc" / "ssl" / "cert.pem").chmod(0o600)
    (extra / "bin").symlink_to("/nix/store/x-busybox/bin")
    entries = [
        TreeEntry("etc/passwd", "file", data=b"root:x:0:0::/root:/bin/sh\n"),
        TreeEntry("/tmp", "dir", mode=0o1777),
        TreeEntry("usr/bin/env", "symlink", target="/nix/store/x-coreutils/bin/env"),
        *scan_host_tree(extra),
    ]
    out1, out2 = io.BytesIO(), io.BytesIO()
    write_tree_tar(out1, entries, mtime=5)
    write_tree_tar(out2, list(reversed(entries)), mtime=5)
    assert out1.getvalue() == out2.getvalue()
    by_name = {m.name: m for m in members(out1.getvalue())}
    assert list(by_name) == sorted(by_name, key=str.encode)
    assert by_name["tmp"].mode == 0o1777
    assert by_name["usr"].mode == 0o755  # implied parent
    assert by_name["etc/ssl/cert.pem"].mode == 0o600
    assert by_name["bin"].linkname == "/nix/store/x-busybox/bin"
    assert by_name["etc/passwd"].size == len(b"root:x:0:0::/root:/bin/sh\n")
    assert {m.mtime for m in by_name.values()} == {5}


def test_tree_tar_rejects_duplicates_and_escapes() -> None:
    with pytest.raises(OptionError, match="given twice"):
        write_tree_tar(
            io.BytesIO(),
            [TreeEntry("etc/a", "file", data=b"1"), TreeEntry("etc/a", "file", data=b"2")],
        )
    with pytest.raises(OptionError, match="invalid path"):
        TreeEntry("../etc/passwd", "file")
    with pytest.raises(OptionError, match="without a target"):
        TreeEntry("bin/sh", "symlink")


def test_tree_tar_refuses_entries_below_a_file_or_symlink() -> None:
    with pytest.raises(OptionError, match="bin: is a symlink but other entries are below it"):
        write_tree_tar(
            io.BytesIO(),
            [
                TreeEntry("bin", "symlink", target="/nix/store/x-busybox/bin"),
                TreeEntry("bin/sh", "file", data=b"#!"),
            ],
        )


def test_files_larger_than_a_read_are_whole_in_any_sink(tmp_path: Path) -> None:
    # a plain sink (no write_from) reads files over 1 MiB through the writer's own buffer,
    # made once the first one comes; GNU tar (when there) and tarfile must find them whole
    root = make_store(tmp_path / "store")
    big = os.urandom((5 << 20) // 2 + 7)
    (host(root, LIB) / "lib" / "big.so").write_bytes(big)
    (host(root, LIB) / "lib" / "big2.so").write_bytes(big[::-1])
    data = tar_of([LIB], root)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for name, content in (("big.so", big), ("big2.so", big[::-1])):
            member = tar.extractfile(f"{LIB[1:]}/lib/{name}")
            assert member is not None
            assert member.read() == content
    if shutil.which("tar") is not None:
        archive = tmp_path / "layer.tar"
        archive.write_bytes(data)
        out = tmp_path / "out"
        out.mkdir()
        subprocess.run(["tar", "-xf", str(archive), "-C", str(out)], check=True)
        assert (out / LIB[1:] / "lib" / "big.so").read_bytes() == big


class ReadingSink(io.BytesIO):
    """A sink that reads file contents itself, as the layer pipe does (``write_from``)."""

    def write_from(self, fd: int, size: int) -> int:
        data = b""
        while len(data) < size and (more := os.read(fd, size - len(data))):
            data += more
        self.write(data)
        return len(data)


@pytest.mark.parametrize("sink", [io.BytesIO, ReadingSink])
@pytest.mark.parametrize("size", [1000, 300_000])  # read into the batch / on its own
@pytest.mark.parametrize("change", [-1, 1])
def test_a_file_whose_size_changed_since_it_was_listed_is_refused(
    tmp_path: Path, sink: type[io.BytesIO], size: int, change: int
) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(size + change))
    entry = TarEntry(b"f", "file", 0o444, size, source=os.fsencode(path))
    with pytest.raises(StoreError, match="changed size while being archived"):
        _TarWriter(sink(), 1).write_all([entry])


@settings(deadline=None)
@given(
    name=st.binary(min_size=1, max_size=300),
    linkname=st.binary(max_size=200),
    mode=st.integers(0, 0o7777),
    size=st.integers(0, 1 << 40),
    owner=st.tuples(st.integers(0, MAX_ID), st.integers(0, MAX_ID)),
)
def test_every_header_block_sums_to_its_checksum(
    name: bytes, linkname: bytes, mode: int, size: int, owner: tuple[int, int]
) -> None:
    typeflag = SYMTYPE if linkname else REGTYPE
    data = tar_header(
        name, mode=mode, size=size, mtime=1, typeflag=typeflag, linkname=linkname, owner=owner
    )
    # the first block (a PAX header, when there is one) and the last (the entry's own)
    for block in (data[:512], data[-512:]):
        assert int(block[148:155].rstrip(b"\0 "), 8) == sum(block[:148]) + 8 * 32 + sum(block[156:])
    info = tarfile.TarInfo.frombuf(data[-512:], "utf-8", "surrogateescape")
    assert (info.mode, info.uid, info.gid) == (mode, *owner)


def test_headers_of_one_directory_share_its_prefix_tail() -> None:
    """The tail kept for a prefix is that prefix's: alternating directories, a link name
    beside a prefix, each header as it would be made first (and as tarfile reads it)."""
    from closurepack import tarheader

    one = b"nix/store/" + b"a" * 100
    two = b"nix/store/" + b"b" * 100
    names = [one + b"/x", one + b"/y", two + b"/x", one + b"/z", one + b"/l", one + b"/w"]
    links = [b"", b"", b"", b"", b"target", b""]
    made = []
    for name, link in zip(names, links, strict=True):
        kind = SYMTYPE if link else REGTYPE
        header = tar_header(name, mode=0o644, size=3, mtime=1, typeflag=kind, linkname=link)
        made.append(header)
        tarheader._prefix_tails.clear()  # forget them: the header made from scratch
        assert header == tar_header(name, mode=0o644, size=3, mtime=1, typeflag=kind, linkname=link)
    for header, name, link in zip(made, names, links, strict=True):
        info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        assert (info.name, info.linkname) == (name.decode(), link.decode())
