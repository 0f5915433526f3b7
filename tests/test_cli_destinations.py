"""Destinations under stress, through real `closurepack build` runs: parallel builds into one
archive or layout, outputs that are devices or fifos, files that are not archives, layout blobs
independent of the cache, temp files left by killed builds, several tags, the default tag, and
destination checks that fail before any layer is built."""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import pty
import socket
import stat
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from clistore import APP, TOOL, Store, read_docker_archive, run
from closurepack._fs import clone_blob, sweep_stale_temps
from closurepack.digest import Digest

REF = "org.opencontainers.image.ref.name"


@pytest.fixture(autouse=True)
def _no_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


def _cli(*argv: object) -> list[str]:
    return [sys.executable, "-m", "closurepack.cli", *map(str, argv)]


def _one_line_error(err: str, *must_say: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("closurepack: error: ")
    for text in must_say:
        assert text in lines[0], (text, lines[0])


def _oci_archive_refs(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        handle = tar.extractfile("index.json")
        assert handle is not None
        index = json.loads(handle.read())
    return sorted(m["annotations"][REF] for m in index["manifests"])


def _cache_is_empty(cache: Path) -> bool:
    return not [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else True


# 1. parallel builds into one destination keep every tag ----------------------------------------


@pytest.mark.parametrize("kind", ["oci-archive", "oci"])
def test_parallel_builds_into_one_destination_keep_every_tag(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    target = tmp_path / ("img.tar" if kind == "oci-archive" else "layout")
    base = ["build", "--closure", app_closure, "--store-root", store.root, "--quiet",
            "--strategy", "per-item"]  # fmt: skip
    procs = []
    for n in range(4):
        argv = [*base, "--cache-dir", tmp_path / f"cache{n}", "--env", f"N={n}",
                "-o", f"{kind}:{target}:t{n}"]  # fmt: skip
        procs.append(subprocess.Popen(_cli(*argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    tags = [f"t{n}" for n in range(4)]
    if kind == "oci-archive":
        assert _oci_archive_refs(target) == tags
    else:
        index = json.loads((target / "index.json").read_bytes())
        assert sorted(m["annotations"][REF] for m in index["manifests"]) == tags
    for tag in tags:
        assert run(["verify", f"{kind}:{target}:{tag}"], capsys)[0] == 0


# 2. an output that is a device or a fifo is written to, never replaced ---------------------------


def _null_device(path: Path) -> Path:
    """A character device 1,3 (what /dev/null is) at ``path``; skips where mknod is refused."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs root (CAP_MKNOD)")
    return path


def _read_fifo(path: Path) -> tuple[threading.Thread, list[bytes]]:
    """A thread reading everything written to the fifo ``path``."""
    got: list[bytes] = []

    def reader() -> None:
        with path.open("rb") as handle:
            got.append(handle.read())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    return thread, got


def test_plan_output_to_a_device_keeps_the_device(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    null = _null_device(tmp_path / "null")
    status, _, err = run(
        ["plan", "--closure", app_closure, "--store-root", store.root, "-o", null], capsys
    )
    assert status == 0, err
    assert stat.S_ISCHR(null.stat().st_mode)
    assert null.stat().st_rdev == os.makedev(1, 3)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    # a socket cannot be opened for writing: an error naming it, and the socket stays
    sock_path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        status, _, err = run(
            ["plan", "--closure", app_closure, "--store-root", store.root, "-o", sock_path],
            capsys,
        )
    assert status == 5
    _one_line_error(err, str(sock_path))
    assert stat.S_ISSOCK(sock_path.stat().st_mode)


def test_plan_output_to_a_fifo_is_written_through_it(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "plan.fifo"
    os.mkfifo(fifo)
    thread, got = _read_fifo(fifo)
    status, _, err = run(
        ["plan", "--closure", app_closure, "--store-root", store.root, "-o", fifo], capsys
    )
    thread.join(timeout=30)
    assert status == 0, err
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert json.loads(got[0])["images"][0]["layers"]


@pytest.mark.parametrize("kind", ["docker-archive", "oci-archive"])
def test_archive_to_a_fifo_or_a_device(
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kind: str,
) -> None:
    argv = ["build", "--closure", app_closure, "--store-root", store.root,
            "--cache-dir", tmp_path / "cache"]  # fmt: skip
    fifo = tmp_path / "image.fifo"
    os.mkfifo(fifo)
    thread, got = _read_fifo(fifo)
    status, _, err = run([*argv, "-o", f"{kind}:{fifo}"], capsys)
    thread.join(timeout=30)
    assert status == 0, err
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    copy = tmp_path / "copy.tar"
    copy.write_bytes(got[0])
    assert run(["verify", f"{kind}:{copy}"], capsys)[0] == 0

    null = _null_device(tmp_path / "null")
    status, _, err = run([*argv, "-o", f"{kind}:{null}"], capsys)
    assert status == 0, err
    assert stat.S_ISCHR(null.stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.json", "cache", "copy.tar",
                                                         "image.fifo", "null", "root"]  # fmt: skip


# 3. a docker-archive never replaces a file that is not one ----------------------------------------


def test_docker_archive_refuses_to_replace_a_file_that_is_not_one(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    argv = ["build", "--closure", app_closure, "--store-root", store.root, "--cache-dir", cache]
    notes = tmp_path / "notes.txt"
    notes.write_text("precious")
    oci = tmp_path / "oci.tar"
    assert run([*argv, "--no-cache", "-o", f"oci-archive:{oci}"], capsys)[0] == 0
    oci_bytes = oci.read_bytes()
    for path in (notes, oci):
        status, out, err = run([*argv, "-o", f"docker-archive:{path}"], capsys)
        assert status == 5
        assert out == ""
        _one_line_error(err, str(path), "not a docker-archive")
    assert notes.read_text() == "precious"
    assert oci.read_bytes() == oci_bytes
    assert _cache_is_empty(cache)  # refused before any layer was built

    archive = tmp_path / "img.tar"
    assert run([*argv, "--tag", "one:1", "-o", f"docker-archive:{archive}"], capsys)[0] == 0
    assert run([*argv, "--tag", "two:2", "-o", f"docker-archive:{archive}"], capsys)[0] == 0
    assert read_docker_archive(archive)[0][0]["RepoTags"] == ["two:2"]


# 4. layout blobs are copies, and a bad blob already there is replaced ----------------------------


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))


def test_layout_blobs_share_no_inode_with_the_cache(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    layout = tmp_path / "layout"
    argv = ["build", "--closure", app_closure, "--store-root", store.root, "--cache-dir", cache,
            "--strategy", "per-item"]  # fmt: skip
    for _ in range(2):  # the second build reuses the cached layers
        assert run([*argv, "-o", f"oci:{layout}"], capsys)[0] == 0
    pairs = []
    for cached in sorted((cache / "blobs" / "sha256").iterdir()):
        in_layout = layout / "blobs" / "sha256" / cached.name
        assert in_layout.exists()
        assert not in_layout.samefile(cached)
        pairs.append((cached, in_layout))
    assert len(pairs) >= 3

    cached, in_layout = pairs[0]
    cached_bytes = cached.read_bytes()
    _flip_last_byte(in_layout)
    assert cached.read_bytes() == cached_bytes
    assert in_layout.read_bytes() != cached_bytes
    cached, in_layout = pairs[1]
    layout_bytes = in_layout.read_bytes()
    _flip_last_byte(cached)
    assert in_layout.read_bytes() == layout_bytes


def test_a_bad_blob_in_the_layout_is_replaced(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = tmp_path / "layout"
    argv = ["build", "--closure", app_closure, "--store-root", store.root, "--cache-dir",
            tmp_path / "cache", "--strategy", "per-item", "-o", f"oci:{layout}"]  # fmt: skip
    assert run(argv, capsys)[0] == 0
    manifest_hex = json.loads((layout / "index.json").read_bytes())["manifests"][0]["digest"][7:]
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / manifest_hex).read_bytes())
    layers = [d["digest"][7:] for d in manifest["layers"]]
    _flip_last_byte(blobs / layers[0])  # same size, wrong content
    (blobs / layers[1]).write_bytes((blobs / layers[1]).read_bytes()[:-10])  # wrong size
    _flip_last_byte(blobs / manifest["config"]["digest"][7:])  # small blobs too
    assert run(["verify", f"oci:{layout}"], capsys)[0] == 4
    assert run(argv, capsys)[0] == 0
    status, _, err = run(["verify", f"oci:{layout}"], capsys)
    assert status == 0, err


def test_clone_blob_makes_a_file_of_its_own(tmp_path: Path) -> None:
    """A reflink where the filesystem has them, else a kernel copy (ext4, tmpfs: issue 11's
    cold build into a layout no longer reads and rehashes its blobs in Python): in both cases
    an independent inode with the same bytes, nothing left behind."""
    source = tmp_path / "source"
    source.write_bytes(b"layer bytes" * 300_000)  # several MiB: more than one kernel call
    digest = Digest.of_bytes(source.read_bytes())
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    assert clone_blob(blobs, source, digest)
    clone = blobs / digest.hex
    assert not clone.samefile(source)
    assert clone.read_bytes() == source.read_bytes()
    assert [p.name for p in blobs.iterdir()] == [digest.hex]
    assert clone.stat().st_mode & 0o777 == 0o644
    clone.write_bytes(b"changed")  # its own file: the source is untouched
    assert Digest.of_bytes(source.read_bytes()) == digest
    with pytest.raises(FileNotFoundError):
        clone_blob(blobs, tmp_path / "missing", digest)
    assert [p.name for p in blobs.iterdir() if p.name.endswith(".tmp")] == []


def test_clone_blob_refuses_a_source_that_ends_early(tmp_path: Path) -> None:
    """The kernel copy checks it copied every byte the source's size promised: a source that
    shrinks while copied is an error, nothing is left in the layout."""
    source = tmp_path / "source"
    source.write_bytes(b"x" * 4096)
    digest = Digest.of_bytes(source.read_bytes())
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    real = os.copy_file_range

    def shrinking(src: int, dst: int, count: int, offset_src: int | None = None) -> int:
        os.truncate(source, 100)  # the blob changes under the copy
        return real(src, dst, count, offset_src)

    def no_reflink(*args: object) -> int:
        raise OSError(errno.EOPNOTSUPP, "no reflinks here")  # as on ext4 or tmpfs

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fcntl, "ioctl", no_reflink)
        mp.setattr(os, "copy_file_range", shrinking)
        mp.setattr(os, "sendfile", lambda *a: 0)  # (in case the filesystem refuses the first)
        with pytest.raises(OSError, match="blob ended after 100 of 4096 bytes"):
            clone_blob(blobs, source, digest)
    assert list(blobs.iterdir()) == []


# 5. temp files of killed builds are swept by later builds to the same place --------------------

# Runs a real build whose process kills itself with SIGKILL once it has copied part of a layer
# into the destination (the kill -9 of a user, at the worst moment, made deterministic).
_KILLED_MID_WRITE = """
import os, signal, sys
from closurepack.cli import main
from closurepack.layer import BuiltLayer

class Dying:
    def __init__(self, handle):
        self.handle, self.reads = handle, 0
    def _tick(self):
        self.reads += 1
        if self.reads > 1:
            os.kill(os.getpid(), signal.SIGKILL)
    def read(self, *args):
        self._tick()
        return self.handle.read(*args)
    def readinto(self, buffer):
        self._tick()
        return self.handle.readinto(buffer)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.handle.close()

opener = BuiltLayer.open
BuiltLayer.open = lambda self: Dying(opener(self))
main(sys.argv[1:])
"""


def _temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("kind", ["docker-archive", "oci-archive", "oci"])
def test_temp_files_of_a_killed_build_are_swept_by_the_next(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    # a layer big enough to be copied in more than one read
    (store.files(APP) / "lib" / "big").write_bytes(os.urandom(3 << 20))
    closure = store.closure_file(tmp_path / "app.json", [APP])
    out = tmp_path / "out"
    out.mkdir()
    target = out / ("img" if kind == "oci" else "img.tar")
    where = target / "blobs" / "sha256" if kind == "oci" else out
    argv = ["build", "--closure", closure, "--store-root", store.root, "--cache-dir",
            tmp_path / "cache", "--compression", "none", "-o", f"{kind}:{target}"]  # fmt: skip
    left: list[list[str]] = []
    for _ in range(2):
        killed = subprocess.run(
            [sys.executable, "-c", _KILLED_MID_WRITE, *map(str, argv)],
            capture_output=True,
            check=False,
            timeout=120,
        )
        assert killed.returncode == -9, killed.stderr
        # an oci: layout's layer blobs are copied while the build goes on, in the staging
        # directory the build holds in the layout; a layer the killed run before had cached
        # is not staged but copied into blobs/ at the end, so a run may die there
        left.append(_temps(where) if kind != "oci" else _staged_temps(target) + _temps_in(where))
    # each killed write leaves its temp files (an oci: layout places its layer blobs several
    # at a time, so there may be more than one); the second run swept the first one's
    assert all(left), left
    assert not set(left[0]) & set(left[1]), left
    if kind != "oci":
        assert [len(names) for names in left] == [1, 1], left
    if kind == "oci":  # (killed before the layout was written: a write that began makes it)
        (target / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        where.mkdir(parents=True, exist_ok=True)

    # a temp file a live writer holds (locked), and one newer than the next build: both stay
    live = where / ".live.12345678.tmp"
    live.write_bytes(b"being written")
    os.utime(live, (1, 1))
    newer = where / ".newer.12345678.tmp"
    newer.write_bytes(b"just started")
    os.utime(newer, (2**31, 2**31))
    with live.open("rb") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        status, _, err = run([*argv, "--tag", "img:ok"], capsys)
        assert status == 0, err
    assert _temps(where) == sorted([live.name, newer.name])
    if kind == "oci":
        assert _staged_temps(target) == []
        assert sorted(p.name for p in target.iterdir()) == ["blobs", "index.json", "oci-layout"]
    assert run(["verify", f"{kind}:{target}"], capsys)[0] == 0


def _temps_in(directory: Path) -> list[str]:
    return _temps(directory) if directory.is_dir() else []


def _staged_temps(layout: Path) -> list[str]:
    """The temp files in the staging directories of ``layout`` (``.closurepack-staging-*``)."""
    return sorted(
        f"{staging.name}/{name}"
        for staging in layout.glob(".closurepack-staging-*")
        for name in _temps(staging)
    )


def test_sweep_stale_temps_takes_only_old_unlocked_temp_files(tmp_path: Path) -> None:
    names = [".a.1.tmp", ".a.2.tmp", ".b.1.tmp", ".a.3.keep", "a.4.tmp"]
    for name in names:
        (tmp_path / name).write_text(name)
        os.utime(tmp_path / name, (100, 100))
    (tmp_path / ".a.dir.tmp").mkdir()
    with (tmp_path / ".a.2.tmp").open("rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        assert sweep_stale_temps(tmp_path, prefix=".a.", started=99) == 0  # all newer
        assert sweep_stale_temps(tmp_path, prefix=".a.", started=101) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".a.2.tmp", ".b.1.tmp", ".a.3.keep", "a.4.tmp", ".a.dir.tmp"]
    )
    assert sweep_stale_temps(tmp_path / "missing", started=101) == 0


# 6. every --tag is written ----------------------------------------------------------------------


def _stdout_archive_tags(argv: list[object], tmp_path: Path) -> list[str]:
    result = subprocess.run(_cli(*argv, "-o", "-"), capture_output=True, check=True, timeout=120)
    copy = tmp_path / "stdout.tar"
    copy.write_bytes(result.stdout)
    tags: list[str] = read_docker_archive(copy)[0][0]["RepoTags"]
    return tags


@pytest.mark.parametrize("command", ["build", "assemble"])
def test_every_tag_is_written(
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    if command == "build":
        argv: list[object] = ["build", "--closure", app_closure, "--store-root", store.root,
                              "--cache-dir", tmp_path / "cache"]  # fmt: skip
    else:
        layer = tmp_path / "layer"
        assert run(["build-layer", APP, "--store-root", store.root, "-o", layer], capsys)[0] == 0
        argv = ["assemble", layer]
    tags = ["--tag", "app:1.0", "--tag", "reg.io/team/app:2", "--tag", "app:1.0", "--tag", "b"]
    archive = tmp_path / "img.tar"
    assert run([*argv, *tags, "-o", f"docker-archive:{archive}"], capsys)[0] == 0
    manifest, _ = read_docker_archive(archive)
    assert manifest[0]["RepoTags"] == ["app:1.0", "reg.io/team/app:2", "b:latest"]
    with tarfile.open(archive) as tar:
        handle = tar.extractfile("repositories")
        assert handle is not None
        assert sorted(json.loads(handle.read())) == ["app", "b", "reg.io/team/app"]

    for kind, target in [("oci", tmp_path / "layout"), ("oci-archive", tmp_path / "oci.tar")]:
        assert run([*argv, *tags, "-o", f"{kind}:{target}:own"], capsys)[0] == 0
        for tag in ("own", "1.0", "2", "latest"):
            assert run(["verify", f"{kind}:{target}:{tag}"], capsys)[0] == 0
    index = json.loads((tmp_path / "layout" / "index.json").read_bytes())
    assert [m["annotations"][REF] for m in index["manifests"]] == ["own", "1.0", "2", "latest"]
    assert len({m["digest"] for m in index["manifests"]}) == 1
    assert _oci_archive_refs(tmp_path / "oci.tar") == ["1.0", "2", "latest", "own"]

    assert _stdout_archive_tags([*argv, *tags], tmp_path) == [
        "app:1.0",
        "reg.io/team/app:2",
        "b:latest",
    ]
    status, _, err = run(
        [*argv, "--tag", "ok:1", "--tag", "Bad Tag", "-o", f"oci:{tmp_path / 'x'}"], capsys
    )
    assert status == 2
    _one_line_error(err, "Bad Tag")
    assert not (tmp_path / "x").exists()


# 7. the default tag is the image's name -----------------------------------------------------------


def test_the_default_tag_is_the_image_name(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = ["--cache-dir", tmp_path / "cache"]
    root = ["--store-root", store.root]

    def repo_tags(*argv: object) -> list[str]:
        archive = tmp_path / "img.tar"
        status, _, err = run(["build", *argv, *root, *cache, "-o", f"docker-archive:{archive}"],
                             capsys)  # fmt: skip
        assert status == 0, err
        tags: list[str] = read_docker_archive(archive)[0][0]["RepoTags"]
        return tags

    assert repo_tags("--closure", app_closure) == ["app:latest"]  # the closure file's name
    tool = store.closure_file(tmp_path / "My Tool.json", [TOOL])
    assert repo_tags("--closure", tool) == ["my-tool:latest"]
    assert repo_tags(TOOL) == ["tool-2.0:latest"]  # the store path's package name
    plan = tmp_path / "plan.json"
    status, _, err = run(["plan", "--closure", app_closure, "--closure", tool, *root, "-o", plan],
                         capsys)  # fmt: skip
    assert status == 0, err
    assert repo_tags("--plan", plan, "--image", "1") == ["my-tool:latest"]
    assert repo_tags("--plan", plan, "--image", "app", "--tag", "x:y") == ["x:y"]
    assert _stdout_archive_tags(["build", "--closure", app_closure, *root, *cache], tmp_path) == [
        "app:latest"
    ]


# 8. every destination check happens before any layer is built ---------------------------------


def test_stdout_on_a_terminal_fails_before_any_layer_is_built(
    app_closure: Path, tmp_path: Path
) -> None:
    """With no store files, a build that got as far as its first layer would fail with 3."""
    empty = tmp_path / "empty"
    empty.mkdir()
    cache = tmp_path / "cache"
    leader, follower = pty.openpty()
    try:
        result = subprocess.run(
            _cli("build", "--closure", app_closure, "--store-root", empty, "--cache-dir", cache,
                 "-o", "-"),
            stdout=follower,
            stderr=subprocess.PIPE,
            check=False,
            timeout=60,
        )  # fmt: skip
    finally:
        os.close(follower)
        os.close(leader)
    assert result.returncode == 5, result.stderr
    _one_line_error(result.stderr.decode(), "standard output is a terminal")
    assert not cache.exists()


@pytest.mark.skipif(not os.path.ismount("/sys"), reason="needs sysfs on /sys")
def test_unwritable_destinations_fail_before_any_layer_is_built(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """sysfs lets nobody, root included, create a file: the destination cannot be written,
    and that is found out by trying, before the build (which would fail with 3 here)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    cache = tmp_path / "cache"
    sys_dests = [
        "docker-archive:/sys/closurepack-test.tar",
        "oci-archive:/sys/closurepack-test.tar",
        "oci:/sys/closurepack-test",
        "oci:/sys/closurepack-test/deeper/layout",
    ]
    for dest in sys_dests:
        status, out, err = run(
            ["build", "--closure", app_closure, "--store-root", empty, "--cache-dir", cache,
             "-o", dest],
            capsys,
        )  # fmt: skip
        assert status == 5, err
        assert out == ""
        _one_line_error(err, dest.split(":", 1)[1], "cannot")
        assert not cache.exists()


def test_an_unreadable_index_fails_before_any_layer_is_built(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    argv = ["build", "--closure", app_closure, "--store-root", store.root]
    layout = tmp_path / "layout"
    archive = tmp_path / "oci.tar"
    for dest in (f"oci:{layout}", f"oci-archive:{archive}"):
        assert run([*argv, "--no-cache", "-o", dest], capsys)[0] == 0
    (layout / "index.json").write_text("{not json")
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m)) for m in tar.getmembers()]
        broken = tmp_path / "broken.tar"
        with tarfile.open(broken, "w") as out:
            for member, handle in members:
                data = handle.read() if handle is not None else b""
                if member.name == "index.json":
                    data = b"[1, 2"
                    member.size = len(data)
                out.addfile(member, io.BytesIO(data) if handle is not None else None)
    broken.replace(archive)
    for dest, says in ((f"oci:{layout}", "index.json"), (f"oci-archive:{archive}", "index.json")):
        status, _, err = run([*argv, "--cache-dir", cache, "-o", dest], capsys)
        assert status == 5, err
        _one_line_error(err, says)
    assert not cache.exists()
