"""``-o -`` streams layers while the others are still being built (bottom first, the same bytes
as a docker-archive file), blobs this process built are copied by the kernel without a second
hash, and an uncompressed layer is hashed once (its tar digest is its blob digest)."""

from __future__ import annotations

import fcntl
import io
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from clistore import APP, Store, read_docker_archive
from closurepack.build import LayerEvent, ProgressCallback, stream_order
from closurepack.buildjob import build_image
from closurepack.buildoptions import BuildInput, LayerOptions
from closurepack.digest import Digest, HashingWriter
from closurepack.errors import DestinationError
from closurepack.jobsetup import ImageOptions
from closurepack.transports._tar import TarWriter
from closurepack.transports.reference import parse_destination
from closurepack.transports.stdout import PIPE_SIZE, LayerStreamer, widen_pipe


class _Recorder(io.BytesIO):
    """Standard output's buffer: what was written, readable at any time."""

    def isatty(self) -> bool:
        return False


def test_first_layer_leaves_before_the_last_is_built(
    store: Store, app_closure: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = _Recorder()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(recorder))
    seen: list[tuple[int, int, int]] = []  # (layer index, of total, bytes out when reported)
    # Layers go out on a thread of their own: once the second layer is built (and the three
    # above it are not), wait a while for the bottom one's bytes; a stream that sent nothing
    # before the build ended would not give them.
    bottom_end = [0]

    def progress(event: LayerEvent) -> None:
        if event.index == 1 and bottom_end[0]:
            deadline = time.monotonic() + 60
            while len(recorder.getvalue()) < bottom_end[0] and time.monotonic() < deadline:
                time.sleep(0.01)
        seen.append((event.index, event.total, len(recorder.getvalue())))

    def build(dest: str, report: ProgressCallback | None = None) -> None:
        build_image(
            BuildInput(closure_files=[app_closure], store_root=store.root, strategy="per-item"),
            layer_options=LayerOptions(jobs=1, compression="none", cache_dir=tmp_path / "cache"),
            image=ImageOptions(cmd=("/bin/app",)),
            dest=dest,
            progress=report,
        )

    archive = tmp_path / "image.tar"
    build(f"docker-archive:{archive}")
    whole = archive.read_bytes()
    manifest, _ = read_docker_archive(archive)
    with tarfile.open(archive) as tar:
        member = tar.getmember(manifest[0]["Layers"][0])
        bottom_end[0] = member.offset_data + member.size
    build("-", progress)
    assert recorder.getvalue() == whole
    total = seen[0][1]
    assert total == 5  # four store items, one layer each, and the customisation layer
    second_built = next(out for index, _, out in seen if index == 1)
    # the bottom layer was out before the layers above the second one were built
    assert bottom_end[0] <= second_built < len(whole)


def test_a_failure_midway_leaves_a_cut_off_stream_and_one_error_line(
    store: Store, tmp_path: Path
) -> None:
    os.mkfifo(store.files(APP) / "lib" / "pipe")
    closure = store.closure_file(tmp_path / "app.json", [APP])
    argv = [sys.executable, "-m", "closurepack.cli", "build", "--closure", str(closure),
            "--store-root", str(store.root), "--strategy", "per-item", "--jobs", "1",
            "--no-cache", "--compression", "none", "-q", "-o", "-"]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, check=False, timeout=120)
    assert result.returncode != 0
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("closurepack: error: ")
    assert "pipe: is a fifo" in lines[0]
    # the layers below the app's went out already: a stream cannot be taken back
    assert result.stdout
    assert b"manifest.json" not in result.stdout


def test_hashing_writer_same_as_takes_the_others_digest() -> None:
    tar_hash = HashingWriter()
    sink = io.BytesIO()
    blob = HashingWriter(sink, same_as=tar_hash)
    for chunk in (b"abc", b"defg" * 1000):
        tar_hash.write(chunk)
        blob.write(chunk)
    assert blob.digest == tar_hash.digest == Digest.of_bytes(sink.getvalue())
    assert blob.size == len(sink.getvalue())
    blob.write(b"x")  # bytes the other did not see: no digest to give
    with pytest.raises(ValueError, match="4003 bytes hashed, 4004 written"):
        _ = blob.digest


def _tar_of_blob(tmp_path: Path, data: bytes, *, trusted: bool, size: int | None = None) -> bytes:
    blob = tmp_path / "blob"
    blob.write_bytes(data)
    out_path = tmp_path / f"out-{trusted}"
    with out_path.open("wb") as out, blob.open("rb") as src:
        tar = TarWriter(out, mtime=1)
        tar.add_blob(
            "x/layer.tar",
            src,
            size=len(data) if size is None else size,
            digest=Digest.of_bytes(data),
            trusted=trusted,
        )
        tar.close()
    return out_path.read_bytes()


def test_trusted_blob_is_sent_by_the_kernel_with_the_same_bytes(tmp_path: Path) -> None:
    data = os.urandom(3 << 20) + b"tail"
    assert _tar_of_blob(tmp_path, data, trusted=True) == _tar_of_blob(tmp_path, data, trusted=False)


def test_trusted_blob_of_another_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DestinationError, match="is not 10 bytes long"):
        _tar_of_blob(tmp_path, b"0123456789abc", trusted=True, size=10)


@pytest.mark.parametrize("dest", ["oci", "-"])
def test_layers_start_largest_first_unless_streamed(
    store: Store, app_closure: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dest: str
) -> None:
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(_Recorder()))
    events: list[LayerEvent] = []
    build_image(
        BuildInput(closure_files=[app_closure], store_root=store.root, strategy="per-item"),
        layer_options=LayerOptions(jobs=1, no_cache=True),
        image=ImageOptions(cmd=("/bin/app",)),
        dest=f"oci:{tmp_path / 'layout'}" if dest == "oci" else "-",
        progress=events.append,
    )
    store_layers = [e for e in events if e.index < e.total - 1]  # (not the customisation layer)
    sizes = [e.planned_size for e in store_layers]
    assert len(set(sizes)) == len(sizes) == 4
    if dest == "oci":
        assert sizes == sorted(sizes, reverse=True)
    else:
        assert [e.index for e in store_layers] == [0, 1, 2, 3]


class _ClosedPipe(_Recorder):
    """A reader that goes away after the first few KiB."""

    def write(self, data: object) -> int:  # type: ignore[override]
        if self.tell() > 4096:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(data)  # type: ignore[arg-type]


def test_a_reader_that_goes_away_stops_the_build_with_one_error(
    store: Store, app_closure: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the layers go out on a thread of their own: its write error still ends the build
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(_ClosedPipe()))
    with pytest.raises(DestinationError, match=r"^standard output: cannot write image: .*Broken"):
        build_image(
            BuildInput(closure_files=[app_closure], store_root=store.root, strategy="per-item"),
            layer_options=LayerOptions(jobs=1, compression="none", cache_dir=tmp_path / "cache"),
            image=ImageOptions(cmd=("/bin/app",)),
            dest="-",
        )


def test_a_slow_reader_does_not_hold_up_the_build(
    store: Store, app_closure: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    released = threading.Event()

    class Stalled(_Recorder):
        """A reader that takes nothing until every store layer is built (10 s at most)."""

        def write(self, data: object) -> int:  # type: ignore[override]
            if not released.wait(timeout=10):
                released.set()  # the build waited for the reader: let it end (and fail)
            return super().write(data)  # type: ignore[arg-type]

    out = Stalled()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out))
    out_when_built: dict[int, int] = {}

    def progress(event: LayerEvent) -> None:
        out_when_built[event.index] = len(out.getvalue())
        if event.index == event.total - 2:  # the last store layer
            released.set()

    build_image(
        BuildInput(closure_files=[app_closure], store_root=store.root, strategy="per-item"),
        layer_options=LayerOptions(jobs=1, compression="none", cache_dir=tmp_path / "cache"),
        image=ImageOptions(cmd=("/bin/app",)),
        dest="-",
        progress=progress,
    )
    # every store layer was built while the reader took nothing: none waited for the writes
    assert [out_when_built[i] for i in range(4)] == [0, 0, 0, 0]
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        assert "manifest.json" in tar.getnames()


def _pipe_size(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)


@pytest.mark.skipif(not hasattr(fcntl, "F_SETPIPE_SZ"), reason="Linux pipes only")
def test_a_pipe_on_standard_output_is_widened_before_the_stream(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    try:
        assert _pipe_size(write_end) < PIPE_SIZE  # the kernel's default, 64 KiB
        with open(write_end, "wb", closefd=False) as out:
            LayerStreamer(parse_destination("-"), created="1970-01-01T00:00:01Z", stream=out)
        assert _pipe_size(write_end) == PIPE_SIZE
        # never narrowed; a regular file is left as it is
        with open(write_end, "wb", closefd=False) as out:
            widen_pipe(out, size=PIPE_SIZE // 2)
        assert _pipe_size(write_end) == PIPE_SIZE
        with (tmp_path / "file").open("wb") as regular:
            widen_pipe(regular)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_stream_order_starts_the_layers_that_would_end_last_early() -> None:
    # an application (50) over small libraries: started in its turn, two builders would
    # spend its whole build with one of them idle
    sizes = [3, 1, 1, 2, 1, 1, 50, 4]
    assert stream_order(sizes, jobs=1) == list(range(8))
    order = stream_order(sizes, jobs=2)
    assert order[:3] == [0, 6, 7]  # bottom (the stream starts), then the large top ones
    assert order[3:] == [1, 2, 3, 4, 5]  # the rest bottom first
    # with more builders the share of the layers above is smaller: more start early
    assert stream_order([1, 1, 1, 6, 1, 8, 1], jobs=4)[:4] == [0, 5, 3, 6]
    for jobs in (1, 2, 3, 8):
        assert sorted(stream_order(sizes, jobs=jobs)) == list(range(8))
    # equal layers: bottom first but for the top one
    assert stream_order([5] * 6, jobs=2) == [0, 5, 1, 2, 3, 4]
    assert stream_order([], jobs=2) == []
    assert stream_order([7, 9], jobs=2) == [0, 1]


def test_a_stream_built_out_of_order_has_the_archive_file_bytes(
    store: Store, app_closure: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # two jobs: the top store layer starts second (stream_order), is ready before the ones
    # below it and must wait for them
    recorder = _Recorder()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(recorder))
    ready: list[int] = []

    def build(dest: str, cache: str) -> None:
        build_image(
            BuildInput(closure_files=[app_closure], store_root=store.root, strategy="per-item"),
            layer_options=LayerOptions(jobs=2, compression="none", cache_dir=tmp_path / cache),
            image=ImageOptions(cmd=("/bin/app",)),
            dest=dest,
            progress=lambda event: ready.append(event.index),
        )

    archive = tmp_path / "image.tar"
    build(f"docker-archive:{archive}", "cache-file")
    ready.clear()
    build("-", "cache-stream")
    assert sorted(ready) == [0, 1, 2, 3, 4]
    assert recorder.getvalue() == archive.read_bytes()
