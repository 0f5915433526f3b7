"""zstd:chunked layers: the blob is the tar in zstd (checked with the real ``zstd``), its TOC and
tar-split describe that tar exactly, the bytes are deterministic, the check of ``verify`` passes
on a good layer and names what a lying TOC gets wrong, and the CLI writes the annotations to
OCI destinations and refuses docker-archive."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import fastcrc
import pytest
import zstandard

from clistore import Store, read_oci, run
from closurepack import chunkedcheck, decompression, validate
from closurepack.chunked import MAX_CHUNK, MIN_CHUNK
from closurepack.chunkedcheck import check_chunked_layer
from closurepack.chunkedtoc import (
    CHECKSUM_KEYS,
    POSITION_KEYS,
    TARSPLIT_KEY,
    annotations_for,
    footer_bytes,
    parse_position,
    skippable_frame,
)
from closurepack.errors import StoreError
from closurepack.layer import BuiltLayer
from closurepack.layerbuild import build_store_layer, layer_key

ITEM = "/nix/store/" + "a" * 32 + "-chunky-1.0"
LONG = "d" * 60 + "/" + "n" * 120  # a name ustar cannot hold: a PAX header


def _make_item(root: Path) -> Path:
    """An item with every kind of entry: big files (several chunks, and one past the writer's
    8 MiB window), small and empty files, a long and a non-ASCII name, a symlink, a hard link."""
    top = root / ITEM.lstrip("/")
    (top / "lib").mkdir(parents=True)
    rnd = random.Random(5)
    (top / "lib" / "big.so").write_bytes(rnd.randbytes(700_000))
    text = b"".join(b"line %d of a compressible file\n" % i for i in range(400_000))
    (top / "lib" / "huge.txt").write_bytes(text)  # ~12 MB
    (top / "small").write_text("hello\n")
    (top / "empty").write_bytes(b"")
    (top / "bin").mkdir()
    (top / "bin" / "run").write_text("#!/bin/sh\necho run\n")
    (top / "bin" / "run").chmod(0o755)
    (top / "bin" / "sh").symlink_to("run")
    os.link(top / "small", top / "small-link")
    (top / "日本語.txt").write_text("konnichiwa\n")
    (top / LONG).parent.mkdir(parents=True)
    (top / LONG).write_bytes(rnd.randbytes(70_000))
    return top


@pytest.fixture
def item_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    _make_item(root)
    return root


def _build(root: Path, dest: Path, *, threads: int = 0, level: int | None = None) -> BuiltLayer:
    dest.mkdir(parents=True, exist_ok=True)
    return build_store_layer(
        [ITEM],
        store_root=root,
        store_dir="/nix/store",
        compression="zstd:chunked",
        level=level,
        dest_dir=dest,
        threads=threads,
    )


def _toc(blob: bytes, annotations: dict[str, str]) -> dict[str, Any]:
    offset, length, plain, _ = parse_position(annotations[POSITION_KEYS[0]], 4)
    data = zstandard.ZstdDecompressor().decompress(blob[offset : offset + length])
    assert len(data) == plain
    toc: dict[str, Any] = json.loads(data)
    return toc


def _frames(blob: bytes, start: int, end: int) -> bytes:
    with zstandard.ZstdDecompressor().stream_reader(blob[start:end], read_across_frames=True) as r:
        return r.read()


def test_the_blob_is_the_tar_in_zstd_for_the_real_zstd(item_root: Path, tmp_path: Path) -> None:
    layer = _build(item_root, tmp_path / "out")
    out = subprocess.run(
        ["zstd", "-dc", str(layer.blob_path)], capture_output=True, check=True
    ).stdout
    assert "sha256:" + hashlib.sha256(out).hexdigest() == str(layer.diff_id)
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        names = tar.getnames()
    assert ITEM.lstrip("/") + "/" + LONG in names
    assert len(layer.blob_path.read_bytes()) == layer.size


def test_the_toc_locates_every_file_and_chunk(item_root: Path, tmp_path: Path) -> None:
    layer = _build(item_root, tmp_path / "out")
    blob = layer.blob_path.read_bytes()
    annotations = dict(layer.annotations)
    # both annotation names, the same values; the tar-split position for current readers
    assert {annotations[k] for k in CHECKSUM_KEYS} == {
        "sha256:" + hashlib.sha256(blob[slice(*_span(annotations))]).hexdigest()
    }
    assert len({annotations[k] for k in POSITION_KEYS}) == 1
    assert TARSPLIT_KEY in annotations
    toc = _toc(blob, annotations)
    assert toc["version"] == 1
    entries = toc["entries"]
    by_name = {e["name"]: e for e in entries if e["type"] != "chunk"}
    prefix = ITEM.lstrip("/")
    assert by_name["nix/"]["type"] == "dir"
    assert by_name[prefix + "/bin/sh"] == {
        "type": "symlink",
        "name": prefix + "/bin/sh",
        "linkName": "run",
        "mode": 0o777,
        "modtime": "1970-01-01T00:00:01Z",
    }
    link = by_name[prefix + "/small-link"]
    assert (link["type"], link["linkName"]) == ("hardlink", prefix + "/small")
    assert by_name[prefix + "/bin/run"]["mode"] == 0o755
    assert "digest" not in by_name[prefix + "/empty"]
    for name, entry in by_name.items():
        if entry["type"] != "reg" or not entry.get("size"):
            continue
        content = (item_root / name).read_bytes()
        assert entry["size"] == len(content)
        assert entry["digest"] == "sha256:" + hashlib.sha256(content).hexdigest()
        assert _frames(blob, entry["offset"], entry["endOffset"]) == content
    # the big files are cut into content-defined chunks, each its own frame, contiguous
    for name in (prefix + "/lib/big.so", prefix + "/lib/huge.txt"):
        content = (item_root / name).read_bytes()
        chunks = [
            by_name[name],
            *(e for e in entries if e["type"] == "chunk" and e["name"] == name),
        ]
        assert len(chunks) > 2
        at = 0
        for number, chunk in enumerate(chunks):
            # the file's own entry ends where the file does; its first chunk, at the next one
            end = chunks[1]["offset"] if number == 0 else chunk["endOffset"]
            data = _frames(blob, chunk["offset"], end)
            assert chunk.get("chunkOffset", 0) == at
            assert chunk["chunkSize"] == len(data)
            assert MIN_CHUNK <= len(data) <= MAX_CHUNK or chunk is chunks[-1]
            assert chunk["chunkDigest"] == "sha256:" + hashlib.sha256(data).hexdigest()
            assert content[at : at + len(data)] == data
            at += len(data)
        assert at == len(content)


def _span(annotations: dict[str, str]) -> tuple[int, int]:
    offset, length, _, _ = parse_position(annotations[POSITION_KEYS[0]], 4)
    return offset, offset + length


def test_the_tar_split_rebuilds_the_tar_from_the_files(item_root: Path, tmp_path: Path) -> None:
    """As a partial pull does: segments as they are, each file's content from the files on
    disk (here the source), CRC-64 of each checked, the result digested against the diff_id."""
    layer = _build(item_root, tmp_path / "out")
    blob = layer.blob_path.read_bytes()
    (
        offset,
        length,
        plain,
    ) = parse_position(layer.annotations[TARSPLIT_KEY], 3)
    toc = _toc(blob, dict(layer.annotations))
    compressed = blob[offset : offset + length]
    assert toc["tarSplitDigest"] == "sha256:" + hashlib.sha256(compressed).hexdigest()
    lines = zstandard.ZstdDecompressor().decompress(compressed)
    assert len(lines) == plain
    rebuilt = hashlib.sha256()
    files = 0
    for position, line in enumerate(lines.splitlines()):
        entry = json.loads(line)
        assert entry["position"] == position
        if entry["type"] == 2:
            rebuilt.update(base64.b64decode(entry["payload"]))
        elif entry.get("size"):
            content = (item_root / entry["name"]).read_bytes()
            crc = fastcrc.crc64.go_iso(content).to_bytes(8, "big")
            assert base64.b64decode(entry["payload"]) == crc
            rebuilt.update(content)
            files += 1
    assert "sha256:" + rebuilt.hexdigest() == str(layer.diff_id)
    assert files == 6


def test_same_input_same_bytes_for_any_thread_count(item_root: Path, tmp_path: Path) -> None:
    one = _build(item_root, tmp_path / "one", threads=1)
    two = _build(item_root, tmp_path / "two", threads=2)
    assert one.blob_path.read_bytes() == two.blob_path.read_bytes()
    assert one.annotations == two.annotations
    other_level = _build(item_root, tmp_path / "nine", level=9)
    assert other_level.digest != one.digest
    assert other_level.diff_id == one.diff_id


def test_the_layer_key_names_the_codec() -> None:
    def key(compression: str) -> str:
        return layer_key(
            [ITEM], store_dir="/nix/store", compression=compression, level=None, mtime=1
        )

    assert len({key("zstd"), key("zstd:chunked"), key("gzip")}) == 3


def test_a_name_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    top = root / ITEM.lstrip("/")
    top.mkdir(parents=True)
    (top / os.fsdecode(b"bad-\xff")).write_text("x")
    with pytest.raises(StoreError) as info:
        _build(root, tmp_path / "out")
    message = str(info.value)
    assert "\n" not in message
    assert "not UTF-8" in message
    assert "zstd:chunked" in message


def test_the_check_passes_on_a_good_layer(item_root: Path, tmp_path: Path) -> None:
    layer = _build(item_root, tmp_path / "out")
    assert check_chunked_layer(layer.open, layer.annotations, where="L") == []


def _relabel(blob: bytes, annotations: dict[str, str], edit: Any) -> tuple[bytes, dict[str, str]]:
    """The blob with its TOC changed by ``edit`` (and its trailing frames and annotations
    rewritten to match, so only the lie ``edit`` told is left to find)."""
    toc_at, _toc_len, _, _ = parse_position(annotations[POSITION_KEYS[0]], 4)
    split_at, split_len, split_plain = parse_position(annotations[TARSPLIT_KEY], 3)
    toc = _toc(blob, annotations)
    edit(toc["entries"])
    toc_plain = json.dumps(toc).encode()
    toc_z = zstandard.ZstdCompressor().compress(toc_plain)
    body = blob[: toc_at - 8]
    split = blob[split_at : split_at + split_len]
    new_toc = (len(body) + 8, len(toc_z), len(toc_plain))
    new_split = (new_toc[0] + len(toc_z) + 8, split_len, split_plain)
    out = (
        body
        + skippable_frame(toc_z)
        + skippable_frame(split)
        + skippable_frame(footer_bytes(new_toc, new_split))
    )
    digest = "sha256:" + hashlib.sha256(toc_z).hexdigest()
    return out, annotations_for(digest, new_toc, new_split)


def _check(tmp_path: Path, blob: bytes, annotations: dict[str, str]) -> list[str]:
    path = tmp_path / "edited"
    path.write_bytes(blob)
    return check_chunked_layer(lambda: path.open("rb"), annotations, where="L")


def _entry(entries: list[dict[str, Any]], suffix: str) -> dict[str, Any]:
    return next(e for e in entries if e["name"].endswith(suffix) and e["type"] != "chunk")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda es: _entry(es, "/small").update(digest="sha256:" + "0" * 64), "/small: TOC digest"),
        (lambda es: _entry(es, "/small").update(mode=0o600), "/small: TOC says"),
        (lambda es: _entry(es, "/bin/sh").update(linkName="elsewhere"), "/bin/sh: TOC says"),
        (
            lambda es: next(e for e in es if e["type"] == "chunk").update(chunkOffset=1),
            "chunk 1: offset is",
        ),
        (
            lambda es: next(e for e in es if e["type"] == "chunk").update(
                chunkDigest="sha256:" + "1" * 64
            ),
            "chunk 1: digest is",
        ),
        (lambda es: _entry(es, "/small").update(offset=1), "small"),
        (lambda es: es.pop(), "entries"),
    ],
)
def test_the_check_names_each_lie_of_the_toc(
    item_root: Path, tmp_path: Path, edit: Any, expected: str
) -> None:
    layer = _build(item_root, tmp_path / "out")
    blob, annotations = _relabel(layer.blob_path.read_bytes(), dict(layer.annotations), edit)
    problems = _check(tmp_path, blob, annotations)
    assert problems, "the edited TOC passed"
    assert all(p.startswith("L: zstd:chunked: ") and "\n" not in p for p in problems)
    assert any(expected in p for p in problems), problems


def test_the_check_catches_wrong_annotations_and_footer(item_root: Path, tmp_path: Path) -> None:
    layer = _build(item_root, tmp_path / "out")
    blob = layer.blob_path.read_bytes()
    good = dict(layer.annotations)
    wrong_digest = good | {CHECKSUM_KEYS[0]: "sha256:" + "2" * 64}
    assert "different TOC digests" in _check(tmp_path, blob, wrong_digest)[0]
    both_wrong = good | dict.fromkeys(CHECKSUM_KEYS, "sha256:" + "2" * 64)
    assert "the TOC's digest is" in _check(tmp_path, blob, both_wrong)[0]
    no_split = {k: v for k, v in good.items() if k != TARSPLIT_KEY}
    assert "is missing" in _check(tmp_path, blob, no_split)[0]
    cut = blob[:-1]
    assert "footer" in _check(tmp_path, cut, good)[0]
    # a damaged tar-split segment: same length, different bytes, digests made to match
    offset, length, plain = parse_position(good[TARSPLIT_KEY], 3)
    lines = zstandard.ZstdDecompressor().decompress(blob[offset : offset + length]).splitlines()
    first = json.loads(lines[0])
    raw = bytearray(base64.b64decode(first["payload"]))
    raw[0] ^= 1
    first["payload"] = base64.b64encode(bytes(raw)).decode()
    lines[0] = json.dumps(first, separators=(",", ":")).encode()
    new_split = zstandard.ZstdCompressor().compress(b"\n".join(lines) + b"\n")
    toc_at, _toc_len, _, _ = parse_position(good[POSITION_KEYS[0]], 4)
    body = blob[: toc_at - 8]
    toc = _toc(blob, good)
    toc["tarSplitDigest"] = "sha256:" + hashlib.sha256(new_split).hexdigest()
    toc_z = zstandard.ZstdCompressor().compress(json.dumps(toc).encode())
    toc_pos = (len(body) + 8, len(toc_z), len(json.dumps(toc).encode()))
    split_pos = (toc_pos[0] + len(toc_z) + 8, len(new_split), plain)
    edited = (
        body
        + skippable_frame(toc_z)
        + skippable_frame(new_split)
        + skippable_frame(footer_bytes(toc_pos, split_pos))
    )
    annotations = annotations_for("sha256:" + hashlib.sha256(toc_z).hexdigest(), toc_pos, split_pos)
    problems = _check(tmp_path, edited, annotations)
    assert any("tar-split segment 0 differs" in p for p in problems), problems
    assert struct.unpack("<I", edited[-72:-68])[0] == 0x184D2A50


# --- through the CLI ----------------------------------------------------------------------


@pytest.fixture
def chunky_store(tmp_path: Path) -> tuple[Store, Path]:
    root = tmp_path / "root"
    _make_item(root)
    store = Store(root, {ITEM: ((), 1000)})
    return store, store.closure_file(tmp_path / "closure.json", [ITEM])


def test_oci_layouts_carry_the_annotations_and_verify_checks_the_toc(
    chunky_store: tuple[Store, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, closure = chunky_store
    layout = tmp_path / "layout"
    argv = ["build", "--store-root", store.root, "--closure", closure, "--quiet"]
    argv += ["--compression", "zstd:chunked", "--cache-dir", tmp_path / "cache"]
    status, _, err = run([*argv, "-o", f"oci:{layout}:one"], capsys)
    assert status == 0, err
    image = read_oci(layout, "one")
    chunked = [la for la in image.manifest["layers"] if la.get("annotations")]
    assert chunked, image.manifest
    for descriptor in chunked:
        assert descriptor["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
        assert set(descriptor["annotations"]) == {*CHECKSUM_KEYS, *POSITION_KEYS, TARSPLIT_KEY}
    status, out, err = run(["verify", f"oci:{layout}:one"], capsys)
    assert status == 0, err
    assert out.strip().endswith("ok")
    # a cache hit gives the same layers with the same annotations
    status, _, err = run([*argv, "-o", f"oci:{layout}:two"], capsys)
    assert status == 0, err
    assert read_oci(layout, "two").manifest == image.manifest
    # skopeo reads the layout and keeps the annotations
    raw = subprocess.run(
        [shutil.which("skopeo") or "skopeo", "inspect", "--raw", f"oci:{layout}:two"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(raw)["layers"] == image.manifest["layers"]


def test_verify_decompresses_each_chunked_layer_once(
    chunky_store: tuple[Store, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """verify reads the diff_id, the TOC's entries and the tar-split's from one decompression
    of each zstd:chunked blob (the decompressor is wrapped where the modules look it up)."""
    store, closure = chunky_store
    layout = tmp_path / "layout"
    argv = ["build", "--store-root", store.root, "--closure", closure, "--quiet", "--no-cache"]
    status, _, err = run([*argv, "--compression", "zstd:chunked", "-o", f"oci:{layout}"], capsys)
    assert status == 0, err
    layers = read_oci(layout).manifest["layers"]
    opened: list[str] = []
    real = decompression.open_decompressed

    def counting(compression: str, src: Any) -> Any:
        opened.append(compression)
        return real(compression, src)

    for module in (decompression, validate, chunkedcheck):
        if hasattr(module, "open_decompressed"):
            monkeypatch.setattr(module, "open_decompressed", counting)
    status, out, err = run(["verify", f"oci:{layout}"], capsys)
    assert status == 0, err
    assert out.strip().endswith("ok")
    assert len(opened) == len(layers)  # one decompression per layer, chunked or not
    assert sum(bool(la.get("annotations")) for la in layers) >= 1


def test_verify_reports_a_layout_whose_toc_lies(
    chunky_store: tuple[Store, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, closure = chunky_store
    layout = tmp_path / "layout"
    argv = ["build", "--store-root", store.root, "--closure", closure, "--quiet", "--no-cache"]
    status, _, err = run([*argv, "--compression", "zstd:chunked", "-o", f"oci:{layout}"], capsys)
    assert status == 0, err
    image = read_oci(layout)
    descriptor = next(la for la in image.manifest["layers"] if la.get("annotations"))
    blob_path = layout / "blobs" / "sha256" / descriptor["digest"].split(":", 1)[1]
    # the annotation says another TOC: rewrite the manifest (and index) to match
    descriptor["annotations"][CHECKSUM_KEYS[1]] = "sha256:" + "3" * 64
    manifest = json.dumps(image.manifest).encode()
    digest = hashlib.sha256(manifest).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(manifest)
    index = image.index
    index["manifests"][0] |= {"digest": "sha256:" + digest, "size": len(manifest)}
    (layout / "index.json").write_text(json.dumps(index))
    status, out, err = run(["verify", f"oci:{layout}"], capsys)
    assert status != 0
    assert "different TOC digests" in out + err
    assert blob_path.exists()


@pytest.mark.parametrize(
    ("dest", "extra", "says"),
    [
        ("docker-archive:{tmp}/a.tar", (), "docker-archive"),
        ("-", (), "docker-archive"),
        ("docker://127.0.0.1:1/x:y", ("--format", "docker"), "--format docker"),
    ],
)
def test_destinations_without_layer_annotations_are_refused(
    chunky_store: tuple[Store, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    dest: str,
    extra: tuple[str, ...],
    says: str,
) -> None:
    store, closure = chunky_store
    argv = ["build", "--store-root", store.root, "--closure", closure, "--quiet", "--no-cache"]
    argv += ["--compression", "zstd:chunked", *extra, "-o", dest.format(tmp=tmp_path)]
    status, _out, err = run(argv, capsys)
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert says in lines[0]
    assert "zstd:chunked" in lines[0]
    assert not (tmp_path / "a.tar").exists()


def test_assemble_refuses_chunked_descriptors_for_docker_archive(
    chunky_store: tuple[Store, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, _ = chunky_store
    out_dir = tmp_path / "layers"
    status, _, err = run(
        [
            "build-layer",
            "--store-root",
            store.root,
            "--compression",
            "zstd:chunked",
            "-o",
            out_dir,
            ITEM,
        ],
        capsys,
    )
    assert status == 0, err
    descriptors = [out_dir / "layer.json"]
    assert descriptors
    text = json.loads(descriptors[0].read_text())
    assert text["annotations"][CHECKSUM_KEYS[0]].startswith("sha256:")
    status, _, err = run(
        ["assemble", *descriptors, "-o", f"docker-archive:{tmp_path / 'a.tar'}"], capsys
    )
    assert status == 2
    assert "zstd:chunked" in err
    assert len(err.strip().splitlines()) == 1
    status, _, err = run(["assemble", *descriptors, "-o", f"oci:{tmp_path / 'oci'}"], capsys)
    assert status == 0, err
    status, out, err = run(["verify", f"oci:{tmp_path / 'oci'}"], capsys)
    assert status == 0, out + err
