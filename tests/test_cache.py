"""The layer cache: hits without the store, corruption detected, concurrency, LRU eviction."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import pytest

from closurepack._fs import atomic_write, move_file, put_blob
from closurepack.cache import LayerCache, default_cache_dir
from closurepack.errors import CacheError
from closurepack.layer import BuiltLayer
from closurepack.layerbuild import build_store_layer, layer_key

STORE_DIR = "/nix/store"


def item(n: int) -> str:
    return f"{STORE_DIR}/{str(n) * 32}-item{n}"


def make_item(root: Path, n: int, size: int = 50_000) -> str:
    path = item(n)
    directory = root / path[1:]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data").write_bytes(os.urandom(size))  # incompressible: blob size ~ size
    return path


def key_of(path: str) -> str:
    return layer_key([path], store_dir=STORE_DIR, compression="gzip", level=None, mtime=1)


def builder(root: Path, path: str, calls: list[str] | None = None):  # type: ignore[no-untyped-def]
    def build(dest: Path) -> BuiltLayer:
        if calls is not None:
            calls.append(path)
        return build_store_layer([path], store_root=root, store_dir=STORE_DIR, dest_dir=dest)

    return build


def test_warm_hit_does_not_read_the_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    path = make_item(store, 1)
    cache = LayerCache(tmp_path / "cache")
    calls: list[str] = []
    cold = cache.get_or_build(key_of(path), builder(store, path, calls))
    assert calls == [path]
    assert cold.blob_path == tmp_path / "cache" / "blobs" / "sha256" / cold.digest.hex
    assert not list((tmp_path / "cache" / "tmp").iterdir())
    shutil.rmtree(store)  # a hit must not need the store at all
    fresh = LayerCache(tmp_path / "cache")  # another process, same directory
    warm = fresh.get_or_build(key_of(path), builder(store, path, calls))
    assert calls == [path]
    assert warm == cold
    entry = json.loads((tmp_path / "cache" / "keys" / f"{key_of(path)}.json").read_text())
    assert entry["blob"] == f"../blobs/sha256/{cold.digest.hex}"
    assert fresh.get("0" * 64) is None


def test_corrupt_blob_is_detected_and_rebuilt(tmp_path: Path) -> None:
    store = tmp_path / "store"
    path = make_item(store, 2)
    cache = LayerCache(tmp_path / "cache")
    calls: list[str] = []
    first = cache.get_or_build(key_of(path), builder(store, path, calls))
    blob = bytearray(first.blob_path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # flip one byte, same size
    time.sleep(0.05)  # a later write: the file's mtime moves past the coarse kernel clock tick
    assert first.blob_path.stat().st_mode & 0o777 == 0o444
    first.blob_path.chmod(0o644)
    first.blob_path.write_bytes(bytes(blob))
    assert cache.get(key_of(path)) is None
    assert not first.blob_path.exists()
    second = cache.get_or_build(key_of(path), builder(store, path, calls))
    assert calls == [path, path]
    assert second.digest == first.digest
    assert second.blob_path.read_bytes() != bytes(blob)


def test_full_verification_catches_corruption_that_keeps_mtime(tmp_path: Path) -> None:
    store = tmp_path / "store"
    path = make_item(store, 9)
    layer = LayerCache(tmp_path / "cache").get_or_build(key_of(path), builder(store, path))
    st = layer.blob_path.stat()
    data = bytearray(layer.blob_path.read_bytes())
    data[100] ^= 0x01
    layer.blob_path.chmod(0o644)
    layer.blob_path.write_bytes(bytes(data))
    os.utime(layer.blob_path, ns=(st.st_atime_ns, st.st_mtime_ns))  # hide the write
    # "auto" trusts an unchanged size and mtime (the price of fast warm builds) ...
    assert LayerCache(tmp_path / "cache").get(key_of(path)) is not None
    # ... "full" rehashes every time
    assert LayerCache(tmp_path / "cache", verify="full").get(key_of(path)) is None
    assert not layer.blob_path.exists()


def test_copied_cache_is_rehashed_once(tmp_path: Path) -> None:
    store = tmp_path / "store"
    path = make_item(store, 8)
    LayerCache(tmp_path / "cache").get_or_build(key_of(path), builder(store, path))
    shutil.copytree(tmp_path / "cache", tmp_path / "copy", copy_function=shutil.copyfile)
    entry = tmp_path / "copy" / "keys" / f"{key_of(path)}.json"
    stamp_before = json.loads(entry.read_text())["blob_stamp"]
    copy = LayerCache(tmp_path / "copy")
    hit = copy.get(key_of(path))
    assert hit is not None
    assert hit.blob_path == tmp_path / "copy" / "blobs" / "sha256" / hit.digest.hex
    stamp_after = json.loads(entry.read_text())["blob_stamp"]
    assert stamp_after != stamp_before  # new mtime: rehashed and re-stamped
    assert stamp_after == [hit.size, hit.blob_path.stat().st_mtime_ns]


def test_unread_hits_only_where_get_reads_nothing(tmp_path: Path) -> None:
    """get_unread: what get hands out without hashing, else None with the entry left for
    get (a copy's new mtimes: rehashed by get; "full": always get's)."""
    store = tmp_path / "store"
    path = make_item(store, 7)
    layer = LayerCache(tmp_path / "cache").get_or_build(key_of(path), builder(store, path))
    cache = LayerCache(tmp_path / "cache")
    assert cache.get_unread(key_of(path)) == layer
    assert cache.get_unread("0" * 64) is None
    # a miss makes no use lock file (a cold build asks for every layer on one thread first)
    assert not (tmp_path / "cache" / "locks" / f"{'0' * 64}.use").exists()
    assert (tmp_path / "cache" / "locks" / f"{key_of(path)}.use").exists()
    assert LayerCache(tmp_path / "cache", verify="full").get_unread(key_of(path)) is None
    shutil.copytree(tmp_path / "cache", tmp_path / "copy", copy_function=shutil.copyfile)
    copy = LayerCache(tmp_path / "copy")
    assert copy.get_unread(key_of(path)) is None  # its mtime moved: get must hash it
    assert copy.get(key_of(path)) is not None
    assert copy.get_unread(key_of(path)) is not None  # re-stamped by that hash
    assert LayerCache(tmp_path / "copy", verify="size").get_unread(key_of(path)) is not None
    layer.blob_path.chmod(0o644)
    with layer.blob_path.open("r+b") as handle:
        handle.truncate(layer.size - 1)
    assert cache.get_unread(key_of(path)) is None
    assert (tmp_path / "cache" / "keys" / f"{key_of(path)}.json").exists()  # get's to remove
    assert cache.get(key_of(path)) is None


def test_truncated_blob_and_bad_entry_are_misses(tmp_path: Path) -> None:
    store = tmp_path / "store"
    path = make_item(store, 3)
    cache = LayerCache(tmp_path / "cache", verify="size")
    layer = cache.get_or_build(key_of(path), builder(store, path))
    layer.blob_path.chmod(0o644)
    with layer.blob_path.open("r+b") as handle:
        handle.truncate(layer.size - 1)
    assert cache.get(key_of(path)) is None  # size check even without rehashing
    entry = tmp_path / "cache" / "keys" / f"{key_of(path)}.json"
    cache.get_or_build(key_of(path), builder(store, path))
    entry.write_text("{not json")
    assert cache.get(key_of(path)) is None
    assert not entry.exists()


def _build_in_child(args: tuple[str, str, str]) -> str:
    cache_dir, store, path = args
    cache = LayerCache(Path(cache_dir))
    layer = cache.get_or_build(key_of(path), builder(Path(store), path))
    return str(layer.digest)


def test_concurrent_processes_build_the_same_key(tmp_path: Path) -> None:
    store = tmp_path / "store"
    path = make_item(store, 4, size=2_000_000)
    args = (str(tmp_path / "cache"), str(store), path)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        digests = pool.map(_build_in_child, [args] * 3)
    assert len(set(digests)) == 1
    blobs = list((tmp_path / "cache" / "blobs" / "sha256").iterdir())
    assert [b.name for b in blobs] == [digests[0].split(":")[1]]
    assert LayerCache(tmp_path / "cache").get(key_of(path)) is not None


def test_eviction_removes_least_recently_used(tmp_path: Path) -> None:
    store = tmp_path / "store"
    paths = [make_item(store, n) for n in range(1, 5)]
    root = tmp_path / "cache"
    with LayerCache(root) as builder_cache:  # closed: its layers are no longer in use
        layers = [builder_cache.get_or_build(key_of(p), builder(store, p)) for p in paths]
    size = layers[0].size
    # last use: item 2 oldest, then 1, 4, 3
    for age, p in zip([300, 400, 100, 200], paths, strict=True):
        stamp = time.time() - age
        os.utime(root / "keys" / f"{key_of(p)}.json", (stamp, stamp))
    cache = LayerCache(root, max_bytes=2 * size + size // 2)
    assert cache.total_bytes() == sum(layer.size for layer in layers)
    removed = cache.evict()
    assert removed == [key_of(paths[1]), key_of(paths[0])]
    assert cache.total_bytes() <= cache.max_bytes  # type: ignore[operator]
    assert cache.get(key_of(paths[0])) is None
    assert cache.get(key_of(paths[2])) is not None
    assert cache.get(key_of(paths[3])) is not None


def test_eviction_spares_layers_in_use(tmp_path: Path) -> None:
    store = tmp_path / "store"
    paths = [make_item(store, n) for n in range(5, 8)]
    cache = LayerCache(tmp_path / "cache", max_bytes=1)  # smaller than any layer
    for p in paths:
        cache.get_or_build(key_of(p), builder(store, p))
    # everything was handed out by this cache object: nothing may go
    assert all(cache.get(key_of(p)) is not None for p in paths)
    # nor may another process (here: object) take what this one still uses
    assert LayerCache(tmp_path / "cache", max_bytes=1).evict() == []
    cache.close()
    stale = tmp_path / "cache" / "tmp" / "crashed-build"
    stale.mkdir()
    os.utime(stale, (0, 0))
    fresh = tmp_path / "cache" / "tmp" / "running-build"
    fresh.mkdir()
    other = LayerCache(tmp_path / "cache", max_bytes=1)
    assert len(other.evict()) == 3
    assert other.total_bytes() == 0
    assert not stale.exists()
    assert fresh.exists()


def test_builds_keep_a_running_total_and_trim_when_it_goes_over(tmp_path: Path) -> None:
    store = tmp_path / "store"
    old = [make_item(store, n) for n in range(10, 13)]
    new = [make_item(store, n) for n in range(13, 15)]
    root = tmp_path / "cache"
    earlier = [LayerCache(root).get_or_build(key_of(p), builder(store, p)) for p in old]
    size = earlier[0].size
    for age, p in zip([300, 200, 100], old, strict=True):
        stamp = time.time() - age
        os.utime(root / "keys" / f"{key_of(p)}.json", (stamp, stamp))
    stale = root / "tmp" / "crashed-build"
    stale.mkdir()
    os.utime(stale, (0, 0))
    cache = LayerCache(root, max_bytes=2 * size + size // 2)
    # the first build counts the blobs (3 + 1 layers: over) and trims the oldest two
    cache.get_or_build(key_of(new[0]), builder(store, new[0]))
    assert not stale.exists()
    assert len(list((root / "blobs" / "sha256").iterdir())) == 2
    assert cache.total_bytes() <= 2 * size + size // 2
    entry = root / "keys" / f"{key_of(old[2])}.json"
    assert entry.exists()  # (not cache.get: that would mark it in use)
    # the second is counted in without a recount: over again, so the last old one goes
    cache.get_or_build(key_of(new[1]), builder(store, new[1]))
    assert len(list((root / "blobs" / "sha256").iterdir())) == 2
    assert cache.total_bytes() <= 2 * size + size // 2
    assert not entry.exists()
    assert all(cache.get(key_of(p)) is not None for p in new)


def test_unusable_cache_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(CacheError, match="cannot use the layer cache"):
        LayerCache(blocker / "cache")
    with pytest.raises(CacheError, match="invalid cache key"):
        LayerCache(tmp_path / "ok").get("../escape")


def test_default_cache_dir_reads_environment_at_call_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "closurepack"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "closurepack"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "closurepack"


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    dest = tmp_path / "file.json"
    dest.write_text("old")

    def half_write() -> None:
        with atomic_write(dest) as handle:
            handle.write(b"new, half written")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        half_write()
    assert dest.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.json"]
    with atomic_write(dest, mode=0o600) as handle:
        handle.write(b"new")
    assert dest.read_text() == "new"
    assert dest.stat().st_mode & 0o777 == 0o600


def test_put_blob_is_content_addressed_and_idempotent(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    blobs = tmp_path / "blobs"
    digest, size = put_blob(blobs, io.BytesIO(data))
    assert (str(digest), size) == (f"sha256:{hashlib.sha256(data).hexdigest()}", len(data))
    again = put_blob(blobs, [data[:10], data[10:]], expected=digest)  # chunks, already there
    assert again == (digest, size)
    assert [p.name for p in blobs.iterdir()] == [digest.hex]
    with pytest.raises(ValueError, match="expected"):
        put_blob(blobs, [b"other"], expected=digest)
    assert [p.name for p in blobs.iterdir()] == [digest.hex]
    assert (blobs / digest.hex).read_bytes() == data


def test_move_file_across_filesystems(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem to move from")
    source = shm / f"closurepack-test-{os.getpid()}"
    source.write_bytes(b"blob bytes")
    try:
        move_file(source, tmp_path / "dest")
    finally:
        source.unlink(missing_ok=True)
    assert (tmp_path / "dest").read_bytes() == b"blob bytes"
