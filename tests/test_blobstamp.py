"""A rebuild into an ``oci:`` layout keeps the layer blobs an earlier build wrote there without
reading them again, as long as each is the very file that build recorded (inode, size, mtime,
ctime); a blob changed in place (even with its mtime put back), replaced by a look-alike, or
never recorded is rehashed, and replaced when bad. Layout and cache never share a file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from clistore import APP, Store, read_oci
from closurepack.blobstamp import BlobStamps
from closurepack.buildjob import build_image
from closurepack.buildoptions import BuildInput, LayerOptions
from closurepack.digest import Digest
from closurepack.jobsetup import ImageOptions
from closurepack.transports import layoutblobs, layoutstaging


def _build(store: Store, closure: Path, layout: Path, cache: Path) -> None:
    build_image(
        BuildInput(closure_files=[closure], store_root=store.root, strategy="per-item"),
        layer_options=LayerOptions(compression="zstd", cache_dir=cache),
        image=ImageOptions(cmd=("/bin/app",)),
        dest=f"oci:{layout}",
    )


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the layout blobs the oci transport reads to check them (when it writes
    them, or while the build goes on: the layers built are staged then)."""
    seen: list[str] = []
    real = layoutblobs.blob_is_good

    def counting(path: Path, digest: Digest, size: int) -> bool:
        seen.append(path.name)
        return real(path, digest, size)

    monkeypatch.setattr(layoutblobs, "blob_is_good", counting)
    monkeypatch.setattr(layoutstaging, "blob_is_good", counting)
    return seen


def _layer_blobs(layout: Path) -> list[Path]:
    image = read_oci(layout)
    return [layout / "blobs" / "sha256" / d.split(":")[1] for d in image.layer_digests]


def test_unchanged_layout_blobs_are_neither_read_nor_rewritten(
    store: Store, app_closure: Path, tmp_path: Path, hashed: list[str]
) -> None:
    layout, cache = tmp_path / "layout", tmp_path / "cache"
    _build(store, app_closure, layout, cache)
    blobs = _layer_blobs(layout)
    before = {p: os.stat(p) for p in blobs}
    hashed.clear()
    _build(store, app_closure, layout, cache)
    assert hashed == []
    compared = 0
    for path, st in before.items():
        now = os.stat(path)
        assert (now.st_ino, now.st_mtime_ns, now.st_ctime_ns) == (
            st.st_ino,
            st.st_mtime_ns,
            st.st_ctime_ns,
        )
        cached = cache / "blobs" / "sha256" / path.name
        if cached.exists():  # (the customisation layer is not cached)
            assert os.stat(cached).st_ino != now.st_ino  # a file of its own, never a link
            compared += 1
    assert compared == len(blobs) - 1


def test_blob_changed_in_place_with_its_mtime_restored_is_replaced(
    store: Store, app_closure: Path, tmp_path: Path, hashed: list[str]
) -> None:
    layout, cache = tmp_path / "layout", tmp_path / "cache"
    _build(store, app_closure, layout, cache)
    victim = _layer_blobs(layout)[0]
    good = victim.read_bytes()
    st = os.stat(victim)
    os.chmod(victim, 0o644)
    with victim.open("r+b") as f:  # a byte flipped in place, as root could
        f.seek(len(good) // 2)
        f.write(bytes([good[len(good) // 2] ^ 0xFF]))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(victim).st_mtime_ns == st.st_mtime_ns
    hashed.clear()
    _build(store, app_closure, layout, cache)
    assert hashed == [victim.name]
    assert victim.read_bytes() == good
    assert (cache / "blobs" / "sha256" / victim.name).read_bytes() == good


def test_a_look_alike_file_is_rehashed_and_replaced(
    store: Store, app_closure: Path, tmp_path: Path, hashed: list[str]
) -> None:
    layout, cache = tmp_path / "layout", tmp_path / "cache"
    _build(store, app_closure, layout, cache)
    victim = _layer_blobs(layout)[-1]
    good = victim.read_bytes()
    fake = tmp_path / "fake"
    fake.write_bytes(bytes(len(good)))  # same size, same mtime, another file
    shutil.copystat(victim, fake)
    os.replace(fake, victim)
    hashed.clear()
    _build(store, app_closure, layout, cache)
    assert hashed == [victim.name]
    assert victim.read_bytes() == good


def test_a_layout_blob_never_recorded_is_hashed_once_then_trusted(
    store: Store, tmp_path: Path, hashed: list[str]
) -> None:
    closure = store.closure_file(tmp_path / "app.json", [APP])
    layout, cache = tmp_path / "layout", tmp_path / "cache"
    _build(store, closure, layout, cache)
    shutil.rmtree(cache / "stamps")
    hashed.clear()
    _build(store, closure, layout, cache)
    assert sorted(hashed) == sorted(p.name for p in _layer_blobs(layout))
    hashed.clear()
    _build(store, closure, layout, cache)
    assert hashed == []


def test_stamps_match_only_the_recorded_digest_size_and_file(tmp_path: Path) -> None:
    stamps = BlobStamps(tmp_path / "stamps")
    blob = tmp_path / "blob"
    blob.write_bytes(b"content")
    digest = Digest.of_bytes(b"content")
    assert not stamps.matches(blob, digest, 7)  # no record yet
    stamps.record(blob, digest)
    assert stamps.matches(blob, digest, 7)
    assert not stamps.matches(blob, digest, 8)
    assert not stamps.matches(blob, Digest.of_bytes(b"other"), 7)
    assert not stamps.matches(tmp_path / "absent", digest, 7)
    (record,) = (tmp_path / "stamps").iterdir()
    text = record.read_bytes()
    for other in (text + b"x", text[:-1], text.replace(b"\n", b" \n")):
        record.write_bytes(other)  # (the blob's inode is untouched)
        assert not stamps.matches(blob, digest, 7)
    record.write_bytes(text)
    assert stamps.matches(blob, digest, 7)
    os.chmod(blob, 0o600)  # any change of the inode moves its ctime on
    assert not stamps.matches(blob, digest, 7)
