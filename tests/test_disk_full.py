"""A full disk under the destination or the layer cache: one clear line of error, the previous
image byte for byte as it was, no half-written cache entry, and a later build with room works.

Two ways to run out of space: a real 2 MiB tmpfs (needs root and mount; skipped where that is
impossible, a failure instead with CLOSUREPACK_REQUIRE_TOOLS=1), and a file size limit
(RLIMIT_FSIZE: writes fail with EFBIG), which works for everyone."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from clistore import APP, TOOL, Store, run_child
from closurepack.cache import LayerCache

BIG = 3_000_000  # incompressible bytes in one store item: more than the small filesystem holds


def _tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or ``path`` itself) with its bytes; directories as b"/"."""
    if path.is_file():
        return {".": path.read_bytes()}
    found: dict[str, bytes] = {}
    for item in sorted(path.rglob("*")):
        found[str(item.relative_to(path))] = b"/" if item.is_dir() else item.read_bytes()
    return found


def _cli(*argv: object, cwd: Path, limit: int | None = None) -> subprocess.CompletedProcess[str]:
    def set_limit() -> None:  # Python ignores SIGXFSZ, so writes past it fail with EFBIG
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    return run_child(argv, cwd=cwd, env=env, timeout=120, preexec_fn=set_limit)


def _one_line_error(result: subprocess.CompletedProcess[str], status: int, *must: str) -> None:
    assert result.returncode == status, result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("closurepack: error: ")
    for text in must:
        assert text in line, line


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs at ``tmp_path/small`` (unmounted afterwards)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    why = None
    if shutil.which("mount") is None:
        why = "no mount command"
    else:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            why = result.stderr.strip() or f"mount exited {result.returncode}"
    if why is not None:
        message = f"cannot mount a small tmpfs here ({why})"
        if os.environ.get("CLOSUREPACK_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _grow(mount_point: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=32m", str(mount_point)], check=True)


@pytest.fixture
def closures(store: Store, tmp_path: Path) -> tuple[Path, Path]:
    """(a small image's closure, a closure with a :data:`BIG` item) over ``store``."""
    (store.files(TOOL) / "lib" / "big.bin").write_bytes(os.urandom(BIG))
    small = store.closure_file(tmp_path / "small.json", [APP])
    big = store.closure_file(tmp_path / "big.json", [TOOL])
    return small, big


def _build(store: Store, closure: Path, *extra: object) -> list[object]:
    # -q and a --cmd: stderr holds nothing but the one error line under test
    return ["build", "--closure", closure, "--store-root", store.root, "-q", "--cmd", "/x", *extra]


@pytest.mark.parametrize("kind", ["docker-archive", "oci-archive", "oci"])
def test_full_destination_keeps_the_previous_image(
    store: Store, closures: tuple[Path, Path], small_fs: Path, tmp_path: Path, kind: str
) -> None:
    small, big = closures
    dest = small_fs / "image"
    first = _cli(*_build(store, small, "--no-cache", "-o", f"{kind}:{dest}"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = _tree(dest)
    result = _cli(*_build(store, big, "--no-cache", "-o", f"{kind}:{dest}"), cwd=tmp_path)
    _one_line_error(result, 5, str(dest), "No space left on device")
    assert _tree(dest) == before
    assert sorted(p.name for p in small_fs.iterdir()) == ["image"]  # no temp file left
    verify = _cli("verify", f"{kind}:{dest}", cwd=tmp_path)
    assert verify.returncode == 0, verify.stderr
    _grow(small_fs)
    again = _cli(*_build(store, big, "--no-cache", "-o", f"{kind}:{dest}"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert _cli("verify", f"{kind}:{dest}", cwd=tmp_path).returncode == 0


def _assert_no_entry(cache: Path) -> None:
    assert list((cache / "keys").iterdir()) == []
    assert list((cache / "blobs" / "sha256").iterdir()) == []
    assert list((cache / "tmp").iterdir()) == []


def test_full_cache_leaves_no_entry_and_a_later_build_works(
    store: Store, closures: tuple[Path, Path], small_fs: Path, tmp_path: Path
) -> None:
    _, big = closures
    cache, dest = small_fs / "cache", tmp_path / "image.tar"
    first = _cli(*_build(store, big, "--no-cache", "-o", f"docker-archive:{dest}"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = dest.read_bytes()
    argv = _build(store, big, "--strategy", "single", "--cache-dir", cache)
    result = _cli(*argv, "--created", "2", "-o", f"docker-archive:{dest}", cwd=tmp_path)
    _one_line_error(result, 3, f"{cache}: cannot write a layer into the cache", "No space left")
    assert dest.read_bytes() == before
    _assert_no_entry(cache)
    _grow(small_fs)
    result = _cli(*argv, "-o", f"docker-archive:{dest}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert _cli("verify", f"docker-archive:{dest}", cwd=tmp_path).returncode == 0
    (entry,) = (cache / "keys").glob("*.json")
    with LayerCache(cache, verify="full") as check:
        assert check.get(entry.stem) is not None


# -- the same with a file size limit (no root needed) ----------------------------------------


def test_file_size_limit_at_the_destination_keeps_the_previous_image(
    store: Store, closures: tuple[Path, Path], tmp_path: Path
) -> None:
    small, big = closures
    dest, cache = tmp_path / "image.tar", tmp_path / "cache"
    for closure in (small, big):  # the big one only fills the cache: no limit yet
        argv = _build(store, closure, "--cache-dir", cache, "-o", f"docker-archive:{dest}")
        assert _cli(*argv, cwd=tmp_path).returncode == 0
    argv = _build(store, small, "--cache-dir", cache, "-o", f"docker-archive:{dest}")
    assert _cli(*argv, cwd=tmp_path).returncode == 0
    before = dest.read_bytes()
    # every layer is cached: only the archive around the big layer passes the limit
    argv = _build(store, big, "--cache-dir", cache, "-o", f"docker-archive:{dest}")
    result = _cli(*argv, cwd=tmp_path, limit=BIG // 2)
    _one_line_error(result, 5, str(dest), "File too large")
    assert dest.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_file_size_limit_in_the_cache_leaves_no_entry(
    store: Store, closures: tuple[Path, Path], tmp_path: Path
) -> None:
    _, big = closures
    cache, dest = tmp_path / "cache", tmp_path / "image.tar"
    argv = _build(store, big, "--strategy", "single", "--cache-dir", cache, "-o",
                  f"docker-archive:{dest}")  # fmt: skip
    result = _cli(*argv, cwd=tmp_path, limit=BIG // 2)
    _one_line_error(result, 3, f"{cache}: cannot write a layer into the cache", "File too large")
    assert not dest.exists()
    _assert_no_entry(cache)
    result = _cli(*argv, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert _cli("verify", f"docker-archive:{dest}", cwd=tmp_path).returncode == 0
