"""One-pass layer builds: digests match the bytes, builds are reproducible, keys are sound."""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest

from closurepack.build import BuildOptions
from closurepack.compression import open_compressor
from closurepack.decompression import open_decompressed
from closurepack.digest import HashingWriter
from closurepack.errors import OptionError, StoreError
from closurepack.layerbuild import build_store_layer, build_tree_layer, layer_key
from closurepack.mediatypes import MediaType
from closurepack.tarentries import TreeEntry
from closurepack.tarstream import write_store_tar

APP = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-app-1.0"
LIB = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-lib-2.0"


def make_store(root: Path) -> Path:
    app = root / APP[1:]
    (app / "bin").mkdir(parents=True)
    (app / "bin" / "app").write_bytes(b"#!/bin/sh\n" + os.urandom(200_000))
    (app / "bin" / "app").chmod(0o555)
    (app / "lib").symlink_to(LIB + "/lib")
    lib = root / LIB[1:]
    (lib / "lib").mkdir(parents=True)
    (lib / "lib" / "libfoo.so").write_bytes(b"ELF" * 300_000)
    return root


def build(root: Path, dest: Path, compression: str, **kwargs: object) -> object:
    return build_store_layer(
        [APP, LIB],
        store_root=root,
        store_dir="/nix/store",
        compression=compression,
        dest_dir=dest,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("compression", "media_type"),
    [
        ("gzip", MediaType.OCI_LAYER_GZIP),
        ("zstd", MediaType.OCI_LAYER_ZSTD),
        ("none", MediaType.OCI_LAYER),
    ],
)
def test_digests_describe_the_blob(tmp_path: Path, compression: str, media_type: str) -> None:
    root = make_store(tmp_path / "store")
    layer = build_store_layer(
        [LIB, APP, APP],
        store_root=root,
        store_dir="/nix/store",
        compression=compression,
        dest_dir=tmp_path / "out",
    )
    blob = layer.blob_path.read_bytes()
    assert layer.blob_path == tmp_path / "out" / layer.digest.hex
    assert layer.digest.hex == hashlib.sha256(blob).hexdigest()
    assert layer.size == len(blob)
    assert layer.media_type == media_type
    assert layer.paths == (APP, LIB)
    with open_decompressed(compression, io.BytesIO(blob)) as reader:
        tar = reader.read()
    assert layer.diff_id.hex == hashlib.sha256(tar).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        names = archive.getnames()
    assert f"{APP[1:]}/bin/app" in names
    assert f"{LIB[1:]}/lib/libfoo.so" in names
    assert sorted(os.listdir(tmp_path / "out")) == [layer.digest.hex]  # no temp files left


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_reproducible_despite_host_metadata(tmp_path: Path, compression: str) -> None:
    root = make_store(tmp_path / "store")
    first = build_store_layer(
        [APP, LIB], store_root=root, store_dir="/nix/store", compression=compression,
        dest_dir=tmp_path / "a", threads=1,
    )  # fmt: skip
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(Path(dirpath, name), (1, 2), follow_symlinks=False)
    second = build_store_layer(
        [LIB, APP], store_root=root, store_dir="/nix/store", compression=compression,
        dest_dir=tmp_path / "b", threads=4,
    )  # fmt: skip
    assert (first.digest, first.diff_id, first.size) == (second.digest, second.diff_id, second.size)
    # The uncompressed tar is the same whatever the compression.
    none = build_store_layer(
        [APP, LIB], store_root=root, store_dir="/nix/store", compression="none",
        dest_dir=tmp_path / "c",
    )  # fmt: skip
    assert none.diff_id == first.diff_id


def test_mtime_changes_the_layer(tmp_path: Path) -> None:
    root = make_store(tmp_path / "store")
    a = build_store_layer(
        [APP], store_root=root, store_dir="/nix/store", dest_dir=tmp_path, mtime=1
    )
    b = build_store_layer(
        [APP], store_root=root, store_dir="/nix/store", dest_dir=tmp_path, mtime=2
    )
    assert a.diff_id != b.diff_id


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_errors_leave_nothing_behind(tmp_path: Path, compression: str) -> None:
    root = make_store(tmp_path / "store")
    os.mkfifo(root / APP[1:] / "fifo")
    out = tmp_path / "out"
    threads_before = set(threading.enumerate())
    with pytest.raises(StoreError, match="is a fifo"):
        build_store_layer(
            [APP], store_root=root, store_dir="/nix/store", dest_dir=out, compression=compression
        )
    assert list(out.iterdir()) == []
    assert set(threading.enumerate()) <= threads_before  # no codec thread left running
    with pytest.raises(OptionError, match="not an item of the store /gnu/store"):
        build_store_layer([APP], store_root=root, store_dir="/gnu/store", dest_dir=out)
    with pytest.raises(OptionError, match="level"):
        build_store_layer([LIB], store_root=root, store_dir="/nix/store", dest_dir=out, level=42)


def test_layer_key_covers_what_changes_the_bytes() -> None:
    base = {"store_dir": "/nix/store", "compression": "gzip", "level": None, "mtime": 1}
    key = layer_key([APP, LIB], **base)  # type: ignore[arg-type]
    assert len(key) == 64
    assert key == layer_key([LIB, APP, APP], **base)  # type: ignore[arg-type]
    variants = [
        layer_key([APP], **base),  # type: ignore[arg-type]
        layer_key([APP, LIB], **{**base, "compression": "zstd"}),  # type: ignore[arg-type]
        layer_key([APP, LIB], **{**base, "level": 1}),  # type: ignore[arg-type]
        layer_key([APP, LIB], **{**base, "mtime": 2}),  # type: ignore[arg-type]
        layer_key([APP, LIB], **{**base, "store_dir": "/gnu/store"}),  # type: ignore[arg-type]
        layer_key([APP, LIB], **base, nar_hashes={APP: "sha256:x"}),  # type: ignore[arg-type]
    ]
    assert len({key, *variants}) == len(variants) + 1
    # levels that map to the same library level build the same bytes, hence the same key
    assert layer_key([APP], **{**base, "level": 9}) == layer_key([APP], **{**base, "level": 6})  # type: ignore[arg-type]


def test_tree_layer(tmp_path: Path) -> None:
    entries = [
        TreeEntry("etc/passwd", "file", data=b"root:x:0:0::/root:/bin/sh\n"),
        TreeEntry("bin/sh", "symlink", target=f"{APP}/bin/app"),
    ]
    layer = build_tree_layer(entries, compression="zstd", dest_dir=tmp_path, mtime=7)
    again = build_tree_layer(reversed(entries), compression="zstd", dest_dir=tmp_path, mtime=7)
    assert layer.digest == again.digest
    assert layer.paths == ()
    assert layer.comment == "customisation"
    with layer.open() as blob, open_decompressed("zstd", blob) as reader:
        tar = reader.read()
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        assert archive.getnames() == ["bin", "bin/sh", "etc", "etc/passwd"]


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_pipeline_matches_plain_tar_then_compress(tmp_path: Path, compression: str) -> None:
    """The threaded one-pass build gives the bytes of the obvious two-step recipe."""
    root = make_store(tmp_path / "store")
    (root / APP[1:] / "big").write_bytes(os.urandom(3_500_000))  # spans several blocks
    layer = build_store_layer(
        [APP, LIB], store_root=root, store_dir="/nix/store", compression=compression,
        dest_dir=tmp_path / "out",
    )  # fmt: skip
    assert_two_step_bytes(layer, [APP, LIB], root, compression)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_chunks_reused_across_layers_carry_nothing_over(tmp_path: Path, compression: str) -> None:
    """Layers take the 1 MiB chunks earlier layers gave back, full of their bytes: a small
    layer after a large one (and after a failed one) is still exactly its own tar."""
    from closurepack import layerbuild

    root = make_store(tmp_path / "store")
    noise = [TreeEntry("noise", "file", data=os.urandom(9 << 20))]
    build_tree_layer(noise, compression=compression, dest_dir=tmp_path / "noise")
    bad = [*noise, TreeEntry("z-bad", "file", source=tmp_path)]  # fails after 9 MiB
    with pytest.raises(StoreError, match="cannot read"):
        build_tree_layer(bad, compression=compression, dest_dir=tmp_path / "bad")
    assert layerbuild._spare_chunks  # what the next layer takes
    layer = build(root, tmp_path / "out", compression)
    tar = io.BytesIO()
    write_store_tar(tar, [APP, LIB], store_root=root, mtime=1)
    assert layer.diff_id.hex == hashlib.sha256(tar.getvalue()).hexdigest()  # type: ignore[attr-defined]
    with layer.open() as blob, open_decompressed(compression, blob) as reader:  # type: ignore[attr-defined]
        assert reader.read() == tar.getvalue()


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_failure_mid_stream_stops_codec_threads(tmp_path: Path, compression: str) -> None:
    threads_before = set(threading.enumerate())
    entries = [
        TreeEntry("a-big", "file", data=os.urandom(3_000_000)),  # codec threads get busy
        TreeEntry("b-bad", "file", source=tmp_path),  # a directory: reading it fails
    ]
    with pytest.raises(StoreError, match="cannot read") as failure:
        build_tree_layer(entries, compression=compression, dest_dir=tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
    # the traceback keeps the build's frames (and its compressor) alive: the threads must
    # have been stopped explicitly, not by garbage collection
    assert failure.traceback
    assert set(threading.enumerate()) <= threads_before


def started_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the Python threads started from now on (the codecs' C threads are not
    seen)."""
    started: list[str] = []
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        started.append(self.name)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    return started


def assert_two_step_bytes(layer: Any, paths: list[str], root: Path, compression: str) -> None:
    """``layer``'s blob and diff_id are those of the tar written alone, then compressed."""
    tar = io.BytesIO()
    write_store_tar(tar, paths, store_root=root, mtime=1)
    blob = io.BytesIO()
    compressor = open_compressor(compression, blob, threads=1)
    compressor.write(tar.getvalue())
    compressor.close()
    assert layer.blob_path.read_bytes() == blob.getvalue()
    assert layer.diff_id.hex == hashlib.sha256(tar.getvalue()).hexdigest()


@pytest.mark.parametrize("compression", ["gzip", "zstd", "zstd:chunked", "none"])
@pytest.mark.parametrize("size", [5_000, 3_500_000])
def test_small_layer_built_without_a_compress_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: str, size: int
) -> None:
    """A tar within one chunk is compressed on the calling thread, larger ones on the
    compressing thread: the bytes are the two-step recipe's either way."""
    root = tmp_path / "store"
    (root / APP[1:]).mkdir(parents=True)
    (root / APP[1:] / "data").write_bytes(os.urandom(size))
    started = started_threads(monkeypatch)
    layer = build_store_layer(
        [APP], store_root=root, store_dir="/nix/store", compression=compression,
        dest_dir=tmp_path / "out",
    )  # fmt: skip
    assert ("closurepack-compress" in started) == (size > 1 << 20)
    assert_two_step_bytes(layer, [APP], root, compression)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_failure_in_a_small_layer_leaves_nothing(tmp_path: Path, compression: str) -> None:
    threads_before = set(threading.enumerate())
    entries = [
        TreeEntry("a-small", "file", data=b"x" * 1000),
        TreeEntry("b-bad", "file", source=tmp_path),  # a directory: reading it fails
    ]
    with pytest.raises(StoreError, match="cannot read"):
        build_tree_layer(entries, compression=compression, dest_dir=tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
    assert set(threading.enumerate()) <= threads_before
    # the codec is left fit for the next layer
    again = build_tree_layer(entries[:1], compression=compression, dest_dir=tmp_path / "out")
    assert again.size == again.blob_path.stat().st_size


def test_codec_failure_seen_at_finish_still_ends_the_thread() -> None:
    """A codec error the last chunk's flush finds makes finish raise, and the compressing
    thread, which waits for the end of its queue, is still told to stop."""
    from closurepack import layerbuild

    class Failing:
        def write(self, data: object, /) -> int:
            raise OSError("disk full")

        def close(self) -> None:
            pass

    pipe = layerbuild._Pipe(
        lambda sink: Failing(), io.BytesIO(), where="test", tar_hash=HashingWriter()
    )
    pipe.write(bytes(1 << 20))  # one whole chunk: queued, and the codec fails on it
    for _ in range(1000):
        if pipe._error is not None:
            break
        threading.Event().wait(0.01)
    assert pipe._error is not None
    pipe.write(b"more")  # a chunk begun: finish has to flush it, and sees the error
    with pytest.raises(StoreError, match="disk full"):
        pipe.finish()
    pipe._thread.join(timeout=10)
    assert not pipe._thread.is_alive()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"compression": "lz4"},
            "unknown compression 'lz4'; choose one of gzip, zstd, zstd:chunked, none",
        ),
        ({"compression": "gzip", "level": 12}, "gzip level 12 is out of range"),
        ({"compression": "zstd", "level": 0}, "zstd level 0 is out of range"),
        ({"jobs": 0}, "--jobs must be at least 1"),
    ],
)
def test_build_options_are_checked_when_made(options: dict[str, Any], message: str) -> None:
    with pytest.raises(OptionError, match=re.escape(message)):
        BuildOptions(**options)
