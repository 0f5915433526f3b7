"""closurepack.pagecache: a file's pages written out, then dropped from the page cache, its
bytes unchanged; and ``-o -`` does it for the blobs it has just built, not for cache hits."""

from __future__ import annotations

import hashlib
import io
import os
import sys
from pathlib import Path

import pytest

from clistore import Store
from closurepack import pagecache
from closurepack.buildjob import build_image
from closurepack.buildoptions import BuildInput, LayerOptions
from closurepack.jobsetup import ImageOptions
from runtimes import require_tool, run_tool


class _Recorder(io.BytesIO):
    def isatty(self) -> bool:
        return False


def _resident_bytes(path: Path) -> int:
    """How much of ``path`` is in the page cache (util-linux's fincore)."""
    out = run_tool(require_tool("fincore"), "--bytes", "--noheadings", "--output", "RES", path)
    return int(out.strip())


def _on_a_disk(path: Path) -> None:
    fs = run_tool(require_tool("stat"), "-f", "-c", "%T", path).strip()
    if fs in ("tmpfs", "ramfs"):
        pytest.skip(f"{path} is on {fs}: its pages are the file, they cannot be dropped")


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise here")
@pytest.mark.parametrize("sync_file_range", [True, False], ids=["sync_file_range", "fdatasync"])
def test_dropped_pages_leave_the_page_cache_and_the_bytes_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync_file_range: bool
) -> None:
    _on_a_disk(tmp_path)
    if not sync_file_range:  # a libc without it: drop_pages waits with fdatasync
        monkeypatch.setattr(pagecache, "_looked_up", True)
        monkeypatch.setattr(pagecache, "_found", None)
    data = os.urandom(4 << 20) + b"tail"
    blob = tmp_path / "blob"
    with blob.open("wb") as out:
        out.write(data)  # dirty pages in the page cache, none on the disk yet
        out.flush()
        pagecache.start_writeback(out.fileno())
    assert _resident_bytes(blob) >= 4 << 20
    with blob.open("rb") as again:
        assert again.read() == data
        pagecache.drop_pages(again.fileno())
    assert _resident_bytes(blob) == 0
    assert blob.read_bytes() == data  # read back from the disk


def test_drop_pages_of_what_is_no_file_does_nothing() -> None:
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"x")
        pagecache.start_writeback(write_end)  # (sync_file_range: ESPIPE, only logged)
        pagecache.drop_pages(read_end)
        assert os.read(read_end, 1) == b"x"
    finally:
        os.close(read_end)
        os.close(write_end)


def _blob_of(fd: int) -> str:
    return Path(os.readlink(f"/proc/self/fd/{fd}")).name


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_a_stream_drops_the_pages_of_the_blobs_it_built_and_not_of_cache_hits(
    store: Store, app_closure: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str]] = []  # (what, blob name)
    real_start, real_drop = pagecache.start_writeback, pagecache.drop_pages

    def start(fd: int) -> None:
        calls.append(("start", _blob_of(fd)))
        real_start(fd)

    def drop(fd: int) -> None:
        calls.append(("drop", _blob_of(fd)))
        real_drop(fd)

    monkeypatch.setattr(pagecache, "start_writeback", start)
    monkeypatch.setattr(pagecache, "drop_pages", drop)
    cache = tmp_path / "cache"

    def build(dest: str, cache_dir: Path) -> None:
        build_image(
            BuildInput(closure_files=[app_closure], store_root=store.root, strategy="per-item"),
            layer_options=LayerOptions(jobs=2, compression="none", cache_dir=cache_dir),
            image=ImageOptions(cmd=("/bin/app",)),
            dest=dest,
        )

    archive = tmp_path / "image.tar"
    build(f"docker-archive:{archive}", tmp_path / "cache-file")
    assert calls == []  # an archive file keeps the page cache as it is
    streams = []
    for _ in range(2):  # cold: every layer built; warm: every store layer a cache hit
        recorder = _Recorder()
        monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(recorder))
        build("-", cache)
        streams.append((recorder.getvalue(), list(calls)))
        calls.clear()
    (cold, cold_calls), (warm, warm_calls) = streams
    assert cold == warm == archive.read_bytes()
    blobs = sorted(p.name for p in (cache / "blobs" / "sha256").iterdir())
    assert len(blobs) == 4  # four store items, one layer each
    for name in blobs:  # every cached blob still holds its bytes
        assert hashlib.sha256((cache / "blobs" / "sha256" / name).read_bytes()).hexdigest() == name
    # each built blob (the store layers and the customisation layer) has its writeback
    # started once built and is dropped once sent: the cache's four and the scratch
    # customisation blob (a layer may be sent before its writeback is started: the sender
    # does not wait for that)
    started = sorted(name for what, name in cold_calls if what == "start")
    assert started == sorted(name for what, name in cold_calls if what == "drop")
    assert len(started) == 5
    assert set(blobs) < set(started)
    # warm: the store layers were cache hits and stay in the page cache; the customisation
    # layer is built again (it is not cached)
    assert [name for _, name in warm_calls if name in blobs] == []
    assert len(warm_calls) == 2


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise here")
def test_pages_that_could_not_be_written_out_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _on_a_disk(tmp_path)
    blob = tmp_path / "blob"
    with blob.open("wb") as out:
        out.write(os.urandom(1 << 20))
        out.flush()
        os.fsync(out.fileno())  # clean pages: a POSIX_FADV_DONTNEED would drop them

    def write_error(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(pagecache, "_looked_up", True)
    monkeypatch.setattr(pagecache, "_found", None)  # the fdatasync path, made to fail
    monkeypatch.setattr(os, "fdatasync", write_error)
    with blob.open("rb") as again:
        again.read()
        pagecache.drop_pages(again.fileno())
    assert _resident_bytes(blob) == 1 << 20  # kept: they may be the only good copy
