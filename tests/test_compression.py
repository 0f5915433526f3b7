"""Compressors: deterministic output, round trips, level mapping, corrupt input."""

from __future__ import annotations

import email
import gzip
import io
import os
import random
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest
import zstandard

from closurepack.compression import codec_identity, open_compressor, resolve_level
from closurepack.decompression import open_decompressed
from closurepack.errors import ImageError, OptionError

# compressible but not trivial: text with some random bytes mixed in
DATA = b"".join(b"line %d of the test data\n" % i + os.urandom(8) for i in range(200_000))


def compress(compression: str, data: bytes, *, chunk: int = 100_000, **kwargs: int) -> bytes:
    out = io.BytesIO()
    comp = open_compressor(compression, out, **kwargs)
    view = memoryview(data)
    for start in range(0, len(data), chunk):
        comp.write(view[start : start + chunk])
    comp.close()
    return out.getvalue()


def drain(compression: str, source: io.BytesIO) -> int:
    total = 0
    with open_decompressed(compression, source) as reader:
        while chunk := reader.read(1 << 20):
            total += len(chunk)
    return total


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_round_trip(compression: str) -> None:
    blob = compress(compression, DATA)
    with open_decompressed(compression, io.BytesIO(blob)) as reader:
        assert reader.read() == DATA
    if compression != "none":
        assert len(blob) < len(DATA) // 2


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_output_independent_of_threads(compression: str) -> None:
    assert compress(compression, DATA, threads=1) == compress(compression, DATA, threads=3)


def _many_jobs_data() -> bytes:
    """~40 MiB: five of zstd's 8 MiB jobs at level 3 (DATA fits in one, where the worker count
    cannot matter; its single-threaded mode gives other bytes here, job boundaries show) and
    forty of ISA-L's 1 MiB blocks; cheap to make and to compress."""
    rng = random.Random(11)
    words = [
        bytes(rng.choice(b"abcdefghijklmnop") for _ in range(rng.randint(2, 9)))
        for _ in range(4096)
    ]
    line = b" ".join(rng.choice(words) for _ in range(1 << 16)) + b"\n"
    return b"".join(bytes([i]) + line for i in range(((40 << 20) // len(line)) + 1))


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_output_independent_of_threads_across_many_jobs(compression: str) -> None:
    # a layer gets as many codec threads as there are idle cores when it starts, so the bytes
    # must be those of one thread for every count (and every write size the pipe uses)
    data = _many_jobs_data()
    one = compress(compression, data, threads=1, chunk=1 << 20)
    for threads in (2, 3, 4):
        assert compress(compression, data, threads=threads, chunk=(1 << 20) - threads) == one
    with open_decompressed(compression, io.BytesIO(one)) as reader:
        assert reader.read() == data


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_output_independent_of_write_sizes(compression: str) -> None:
    expected = compress(compression, DATA)
    for chunk in (512, 4096 + 17, 1 << 20, (1 << 20) + 1, 3 << 20, len(DATA)):
        assert compress(compression, DATA, chunk=chunk) == expected, chunk


@pytest.mark.parametrize("level", [0, 1, 4, 6])
def test_gzip_bytes_are_those_of_isal_threaded_writer(level: int) -> None:
    # gzipblocks drives ISA-L's block compressor itself; the layer digests are pinned to the
    # bytes of isal.igzip_threaded's writer, so both must agree for every size around a block
    import isal.igzip_threaded

    from closurepack.compression import resolve_level

    class Kept(io.BytesIO):
        def close(self) -> None:  # igzip_threaded closes the file it is given
            pass

    data = _many_jobs_data()[: (3 << 20) + 5000]
    for size in (0, 1, 1000, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 2 << 20, len(data)):
        expected = Kept()
        writer = isal.igzip_threaded.open(  # type: ignore[no-untyped-call]
            expected, "wb", compresslevel=resolve_level("gzip", level), block_size=1 << 20
        )
        for start in range(0, size, 1 << 20):
            writer.write(data[start : min(size, start + (1 << 20))])
        writer.close()
        for threads in (1, 2):
            made = compress("gzip", data[:size], chunk=300_001, level=level, threads=threads)
            assert made == expected.getvalue(), (size, threads)


def test_gzip_header_has_no_name_and_mtime_zero() -> None:
    blob = compress("gzip", DATA)
    assert blob[:3] == b"\x1f\x8b\x08"
    flags = blob[3]
    assert flags & 0x08 == 0  # FNAME
    assert flags & 0x10 == 0  # FCOMMENT
    assert blob[4:8] == b"\0\0\0\0"  # MTIME
    assert gzip.decompress(blob) == DATA  # the standard library agrees


def test_zstd_readable_by_reference_library() -> None:
    blob = compress("zstd", DATA)
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob))
    assert reader.read() == DATA


@pytest.mark.integration
@pytest.mark.parametrize(("compression", "tool"), [("gzip", "gzip"), ("zstd", "zstd")])
def test_command_line_tools_decompress(compression: str, tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    blob = compress(compression, DATA)
    result = subprocess.run([tool, "-dc"], input=blob, capture_output=True, check=True)
    assert result.stdout == DATA


def test_levels_change_output_and_identity() -> None:
    assert resolve_level("gzip", None) == 3
    assert [resolve_level("gzip", lvl) for lvl in range(10)] == [0, 1, 1, 1, 2, 2, 3, 3, 3, 3]
    assert resolve_level("zstd", None) == 3
    assert codec_identity("gzip", 9) == codec_identity("gzip", 6)
    assert codec_identity("gzip", 1) != codec_identity("gzip", 6)
    assert codec_identity("zstd", 3) != codec_identity("zstd", 4)
    assert zstandard.__version__ in codec_identity("zstd", None)
    # real text: the standard library's email package sources
    text = b"".join(p.read_bytes() for p in sorted(Path(email.__file__).parent.glob("*.py")))
    assert len(text) > 100_000
    assert len(compress("zstd", text, level=1)) > len(compress("zstd", text, level=19))
    assert len(compress("gzip", text, level=1)) > len(compress("gzip", text, level=6))


@pytest.mark.parametrize(
    ("compression", "level"), [("gzip", 10), ("gzip", -1), ("zstd", 23), ("zstd", 0), ("lz4", 1)]
)
def test_bad_level_or_codec(compression: str, level: int) -> None:
    with pytest.raises(OptionError):
        open_compressor(compression, io.BytesIO(), level=level)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_corrupt_stream_is_an_image_error(compression: str) -> None:
    blob = bytearray(compress(compression, DATA))
    blob[len(blob) // 2 : len(blob) // 2 + 64] = bytes(64)
    source = io.BytesIO(bytes(blob))
    source.name = "layer.blob"  # type: ignore[misc]
    with pytest.raises(ImageError, match=rf"layer.blob: corrupt {compression} stream"):
        drain(compression, source)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_any_damaged_byte_is_an_image_error(compression: str) -> None:
    # Flip each byte of a small blob in turn: whatever the decoder notices (a bad header, a bad
    # deflate distance, a checksum, a frame cut short) must come out as ImageError, never as
    # the codec's own error, and never as different data. The only flips that decode at all
    # are gzip's unchecked header fields MTIME, XFL and OS (bytes 4-9, RFC 1952), which give
    # the same data back; zstd has no such field (its frame content checksum covers the data,
    # and a damaged block size leaves the data ending inside a frame).
    data = random.Random(0).randbytes(2000) + b"some text, repeated " * 500
    blob = compress(compression, data)
    decoded: dict[int, bool] = {}
    for offset in range(len(blob)):
        damaged = bytearray(blob)
        damaged[offset] ^= 0xFF
        try:
            with open_decompressed(compression, io.BytesIO(bytes(damaged))) as reader:
                decoded[offset] = reader.read() == data
        except ImageError:
            pass
    silent = {4, 5, 6, 7, 8, 9} if compression == "gzip" else set()
    assert decoded == dict.fromkeys(silent, True)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_every_truncation_is_an_image_error(compression: str) -> None:
    """Cut anywhere (zstd's stream reader alone returns what it decoded so far, silently)."""
    data = random.Random(2).randbytes(3000) + b"text " * 3000
    blob = compress(compression, data)
    for end in range(len(blob)):
        with pytest.raises(ImageError, match=f"corrupt {compression} stream"):
            drain(compression, io.BytesIO(blob[:end]))
        if compression == "zstd":  # reading everything at once checks the end too
            with (
                pytest.raises(ImageError, match="ends inside a frame"),
                open_decompressed(compression, io.BytesIO(blob[:end])) as reader,
            ):
                reader.read()


def test_zstd_frames_one_after_another_and_skippable_frames_are_read() -> None:
    one, two = compress("zstd", b"first " * 1000), compress("zstd", b"second " * 1000)
    skippable = (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"12345"
    with open_decompressed("zstd", io.BytesIO(one + skippable + two)) as reader:
        assert reader.read() == b"first " * 1000 + b"second " * 1000
    with pytest.raises(ImageError, match="not a zstd frame"):
        drain("zstd", io.BytesIO(one + b"garbage!"))


def test_truncated_gzip_is_an_image_error() -> None:
    blob = compress("gzip", DATA)[:-100]
    with pytest.raises(ImageError), open_decompressed("gzip", io.BytesIO(blob)) as reader:
        reader.read()
    # sanity: zlib itself also refuses it
    with pytest.raises(zlib.error):
        zlib.decompress(blob, 31)


def _fresh_zstd(data: bytes) -> bytes:
    obj = zstandard.ZstdCompressor(level=3, threads=2, write_checksum=True).compressobj()
    return b"".join(obj.compress(data[i : i + 100_000]) for i in range(0, len(data), 100_000)) + (
        obj.flush()
    )


def test_reused_zstd_context_gives_the_bytes_of_a_fresh_one() -> None:
    # layers reuse idle zstd contexts (their buffers and workers); a context whose frame was
    # abandoned mid-stream by a failed write must not leak anything into the next frame either
    class Broken(io.BytesIO):
        def write(self, data: object, /) -> int:
            raise OSError("disk full")

    def fail_midway() -> None:  # as layerbuild's pipe does: close after the failed write
        broken = open_compressor("zstd", Broken(), threads=2)
        data = DATA * 3  # past zstd's first 8 MiB job: output, and the error, come mid-stream
        try:
            for start in range(0, len(data), 1 << 20):
                broken.write(data[start : start + (1 << 20)])
        finally:
            broken.close()

    expected, small = _fresh_zstd(DATA), _fresh_zstd(DATA[:1000])
    for _ in range(2):
        with pytest.raises(OSError, match="disk full"):
            fail_midway()
        assert compress("zstd", DATA, threads=2) == expected
        assert compress("zstd", DATA[:1000], threads=2) == small
        assert compress("zstd", DATA, threads=2) == expected


def test_gzip_identity_follows_what_isal_makes_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """ISA-L's kernels differ by CPU and so may its bytes: the identity (hence layer keys)
    carries a fingerprint of its output on a probe, so other bytes make another identity."""
    import isal.isal_zlib

    from closurepack import compression

    before = codec_identity("gzip", None)
    assert before == codec_identity("gzip", 9)
    other = zlib.compressobj  # another deflater: other, equally valid bytes

    compression._isal_probe.cache_clear()
    monkeypatch.setattr(isal.isal_zlib, "compressobj", other)
    try:
        changed = codec_identity("gzip", None)
    finally:
        monkeypatch.undo()
        compression._isal_probe.cache_clear()
    assert changed != before
    assert changed.rpartition("/probe-")[0] == before.rpartition("/probe-")[0]
    assert codec_identity("gzip", None) == before
