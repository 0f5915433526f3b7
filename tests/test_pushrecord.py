"""Push records against a real registry: an unchanged re-push stops after the tag's manifest
(with ``--cache-verify full``, after a HEAD of each of its blobs too; nothing of the closure,
the plan, the layer cache or the store is read), and every change of the registry or of the
inputs falls back to the whole build (a deleted blob: tests/test_registry_repair.py). Requests
are counted from the registry's own access log."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from clistore import APP, TOOL, Store, run
from closurepack.pushrecord import RECORDS_DIR, PushRecord
from closurepack.validate import inspect_image, verify_image
from registry_fixtures import Registry, Request

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _no_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


def _argv(store: Store, closure: Path, dest: str, cache: Path, *extra: str) -> list[str]:
    argv = ["build", "--closure", closure, "--store-root", store.root, "--cache-dir", cache,
            "--entrypoint", "/bin/app", "-q", "-o", dest, *extra]  # fmt: skip
    return [str(a) for a in argv]


def _push(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    status, out, err = run(argv, capsys)
    assert status == 0, err
    return out.strip()


def _calls(requests: list[Request]) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in requests if r.path != "/v2/"]


def _uploads(requests: list[Request]) -> list[Request]:
    return [r for r in requests if r.method == "PUT" and "/blobs/uploads/" in r.path]


def _manifest_puts(requests: list[Request]) -> list[Request]:
    return [r for r in requests if r.method == "PUT" and "/manifests/" in r.path]


@pytest.mark.parametrize("verify", ["auto", "full"])
def test_an_unchanged_repush_reads_only_the_tags(
    verify: str,
    *,
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The shortcut reads each tag's manifest; with ``--cache-verify full`` it also HEADs each
    of the manifest's blobs."""
    dest = f"docker://{registry.host}/app:1"
    argv = _argv(store, app_closure, dest, tmp_path / "c", "--tag", "stable")
    first = _push(argv, capsys)
    assert len(list((tmp_path / "c" / RECORDS_DIR).iterdir())) == 1
    # Without the record the build would need the store (and the cached layers) again.
    shutil.rmtree(store.root)
    shutil.rmtree(tmp_path / "c" / "keys")
    mark = registry.mark()
    assert _push([*argv, "--cache-verify", verify], capsys) == first
    calls = _calls(registry.requests(mark))
    assert calls[:2] == [("GET", "/v2/app/manifests/1"), ("GET", "/v2/app/manifests/stable")]
    image = inspect_image(dest)
    blobs = [image["config_digest"], *(la["digest"] for la in image["layers"])]
    heads = sorted(("HEAD", f"/v2/app/blobs/{d}") for d in blobs) if verify == "full" else []
    assert sorted(calls[2:]) == heads
    assert verify_image(dest) == []


def test_the_no_command_warning_is_given_again(
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = _argv(store, app_closure, f"docker://{registry.host}/app:1", tmp_path / "c")
    argv.remove("--entrypoint")
    argv.remove("/bin/app")
    warnings = []
    for _ in range(2):
        status, _, err = run(argv, capsys)
        assert status == 0, err
        warnings.append(err)
    assert "no Entrypoint and no Cmd" in warnings[0]
    assert warnings[1] == warnings[0]


def test_a_deleted_tag_is_pushed_again(
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dest = f"docker://{registry.host}/app:1"
    argv = _argv(store, app_closure, dest, tmp_path / "c")
    digest = _push(argv, capsys).rpartition("@")[2]
    gone = httpx.delete(f"http://{registry.host}/v2/app/manifests/{digest}")
    assert gone.status_code == 202, gone.text
    mark = registry.mark()
    assert _push(argv, capsys).endswith(digest)
    later = registry.requests(mark)
    assert len(_manifest_puts(later)) == 1
    assert _uploads(later) == []  # the blobs are still there: each HEAD finds it
    assert verify_image(dest) == []


def test_a_moved_tag_is_moved_back(
    registry: Registry, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = f"docker://{registry.host}/app:1"
    app = _argv(store, store.closure_file(tmp_path / "app.json", [APP]), dest, tmp_path / "c")
    tool = _argv(store, store.closure_file(tmp_path / "tool.json", [TOOL]), dest, tmp_path / "c")
    first = _push(app, capsys)
    assert _push(tool, capsys) != first  # the tag now names another image
    mark = registry.mark()
    assert _push(app, capsys) == first
    later = registry.requests(mark)
    assert [r.path for r in _manifest_puts(later)] == ["/v2/app/manifests/1"]
    assert inspect_image(dest)["manifest_digest"] == first.rpartition("@")[2]
    assert verify_image(dest) == []


def test_a_wiped_registry_gets_every_blob_again(
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dest = f"docker://{registry.host}/app:1"
    argv = _argv(store, app_closure, dest, tmp_path / "c")
    first = _push(argv, capsys)
    blobs = 1 + len(inspect_image(dest)["layers"])
    shutil.rmtree(registry.root / "data")  # the registry's storage, under the running server
    mark = registry.mark()
    assert _push(argv, capsys) == first
    later = registry.requests(mark)
    assert len(_uploads(later)) == blobs
    assert len(_manifest_puts(later)) == 1
    assert verify_image(dest) == []


def test_a_deleted_cache_blob_is_built_again_when_the_input_changes(
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The record vouches for the registry's image, not for the local cache: a changed input
    builds through the cache, which rebuilds what it lost."""
    dest = f"docker://{registry.host}/app:1"
    cache = tmp_path / "c"
    _push(_argv(store, app_closure, dest, cache), capsys)
    for blob in (cache / "blobs" / "sha256").iterdir():
        blob.unlink()
    mark = registry.mark()
    changed = _push(_argv(store, app_closure, dest, cache, "--env", "MODE=2"), capsys)
    later = registry.requests(mark)
    assert [r.path for r in _manifest_puts(later)] == ["/v2/app/manifests/1"]
    assert len(_uploads(later)) == 1  # only the new config: the layers came out the same
    assert inspect_image(dest)["manifest_digest"] == changed.rpartition("@")[2]
    assert verify_image(dest) == []


@pytest.mark.parametrize(
    "extra",
    [
        ("--env", "MODE=2"),
        ("--cmd", "serve"),
        ("--compression", "zstd"),
        ("--max-layers", "2"),
        ("--label", "a=b"),
        ("--created", "1000"),
    ],
)
def test_a_changed_option_pushes_the_change(
    extra: tuple[str, str],
    registry: Registry,
    *,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dest = f"docker://{registry.host}/app:1"
    first = _push(_argv(store, app_closure, dest, tmp_path / "c"), capsys)
    mark = registry.mark()
    changed = _push(_argv(store, app_closure, dest, tmp_path / "c", *extra), capsys)
    assert changed != first
    assert len(_manifest_puts(registry.requests(mark))) == 1
    assert inspect_image(dest)["manifest_digest"] == changed.rpartition("@")[2]


def test_a_changed_closure_file_pushes_the_change(
    registry: Registry, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = f"docker://{registry.host}/app:1"
    closure = store.closure_file(tmp_path / "app.json", [APP])
    first = _push(_argv(store, closure, dest, tmp_path / "c"), capsys)
    store.closure_file(closure, [APP, TOOL])  # same file name, other content
    changed = _push(_argv(store, closure, dest, tmp_path / "c"), capsys)
    assert changed != first
    assert inspect_image(dest)["manifest_digest"] == changed.rpartition("@")[2]


def test_source_date_epoch_is_an_input(
    registry: Registry,
    *,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dest = f"docker://{registry.host}/app:1"
    argv = _argv(store, app_closure, dest, tmp_path / "c")
    first = _push(argv, capsys)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1000")
    assert _push(argv, capsys) != first


def _options(tmp_path: Path, **changes: object) -> dict[str, object]:
    closure = tmp_path / "app.json"
    if not closure.exists():
        closure.write_text("[]")
    options: dict[str, object] = {
        "dest": "docker://registry.example/app:1",
        "closure_files": (closure,),
        "store_paths": (),
        "tag": (),
        "jobs": None,
        "quiet": False,
        "cache_dir": tmp_path / "c",
        "creds": None,
        "entrypoint": None,
        "cmd": None,
    }
    options.update(changes)
    return options


def test_what_makes_no_record(tmp_path: Path) -> None:
    assert PushRecord.for_build(_options(tmp_path)) is not None
    for changes in (
        {"dest": f"oci:{tmp_path / 'out'}"},
        {"closure_files": (Path("-"),)},
        {"store_paths": ("/nix/store/" + "a" * 32 + "-x",)},
        {"from_image": "docker://registry.example/base:1"},
        {"previous": ("plan.json",)},
        {"cache_from": ("docker://registry.example/cache",)},
        {"sbom_formats": ("spdx",)},
        {"platforms": ("linux/arm64=x.json",)},
        {"no_cache": True},
        {"dest": "docker://registry.example/app@sha256:" + "0" * 64},  # no push destination
        {"closure_files": (tmp_path / "missing.json",)},  # the build says what is wrong
    ):
        assert PushRecord.for_build(_options(tmp_path, **changes)) is None, changes


def test_the_key_ignores_how_the_image_is_built_and_sent(tmp_path: Path) -> None:
    base = PushRecord.for_build(_options(tmp_path))
    assert base is not None
    same = PushRecord.for_build(
        _options(tmp_path, jobs=1, quiet=True, creds="user:secret", cache_verify="full")
    )
    assert same is not None
    assert same.path == base.path
    assert "secret" not in same.path.name
    for changes in (
        {"tag": ("stable",)},
        {"entrypoint": "/bin/app"},
        {"dest": "docker://registry.example/b:1"},
    ):
        other = PushRecord.for_build(_options(tmp_path, **changes))
        assert other is not None
        assert other.path != base.path, changes
    (tmp_path / "app.json").write_text("[ ]")
    edited = PushRecord.for_build(_options(tmp_path))
    assert edited is not None
    assert edited.path != base.path


def test_a_bad_record_is_no_record(tmp_path: Path) -> None:
    record = PushRecord.for_build(_options(tmp_path))
    assert record is not None
    assert record.recorded() is None
    record.path.parent.mkdir(parents=True)
    record.path.write_text("not a digest\n")
    assert record.recorded() is None
    record.save("registry.example/app@sha256:" + "1" * 64)
    assert str(record.recorded()) == "sha256:" + "1" * 64


_PROGRAM = (
    "import sys\n"
    "from closurepack.cli import main\n"
    "status = main(sys.argv[1:])\n"
    "print(status, sorted(m for m in sys.modules if m in sys.argv[0].split(',')))\n"
)


def _modules_loaded(argv: list[str], watched: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM.replace("sys.argv[0]", repr(watched)), *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[-1]


def test_an_unchanged_repush_loads_no_build_machinery(
    registry: Registry, store: Store, app_closure: Path, tmp_path: Path
) -> None:
    """Start-up is most of a re-push: with a record, nothing of the build is even imported."""
    argv = _argv(store, app_closure, f"docker://{registry.host}/app:1", tmp_path / "c")
    watched = "closurepack.buildjob,closurepack.planner,closurepack.compression,isal"
    first = _modules_loaded(argv, watched)
    loaded = "'closurepack.buildjob', 'closurepack.compression', 'closurepack.planner', 'isal'"
    assert first == f"0 [{loaded}]"
    assert _modules_loaded(argv, watched) == "0 []"
    # nor what only other paths use: concurrent.futures (the push's pool; the TLS contexts are
    # waited for without it) and shlex (commands given as shell words)
    assert _modules_loaded(argv, "concurrent.futures,shlex") == "0 []"


def test_a_build_loads_no_zstd_chunked_library(
    store: Store, app_closure: Path, tmp_path: Path
) -> None:
    """importlib.metadata (with email's parsers), pyfastcdc and fastcrc serve zstd:chunked
    layers only: a plain build does not pay for importing them."""
    argv = ["build", "--closure", str(app_closure), "--store-root", str(store.root),
            "--cache-dir", str(tmp_path / "c"), "-q", "-o", f"oci:{tmp_path / 'out'}",
            "--compression", "zstd", "--entrypoint", "/bin/app"]  # fmt: skip
    assert _modules_loaded(argv, "importlib.metadata,pyfastcdc,fastcrc") == "0 []"


def test_no_record_is_written_where_there_is_no_cache(tmp_path: Path) -> None:
    """A build without a usable cache (no home directory, as in a Nix build) leaves nothing."""
    record = PushRecord.for_build(_options(tmp_path, cache_dir=tmp_path / "home" / "cache"))
    assert record is not None
    record.save("registry.example/app@sha256:" + "1" * 64)
    assert not (tmp_path / "home").exists()


def test_the_code_stamps_list_every_regular_file_outside_bytecode(tmp_path: Path) -> None:
    """What the code fingerprint covers, against os.walk: every regular file (a link to one
    too) by path, size and mtime, sorted; nothing under __pycache__, no directory, no dangling
    link."""
    import os

    from closurepack.codestamps import file_stamps as _file_stamps

    root = tmp_path / "pkg"
    (root / "sub" / "__pycache__").mkdir(parents=True)
    (root / "__pycache__").mkdir()
    (root / "a.py").write_text("a")
    (root / "sub" / "b.so").write_bytes(b"bb")
    (root / "sub" / "__pycache__" / "b.pyc").write_bytes(b"c")
    (root / "__pycache__" / "a.pyc").write_bytes(b"c")
    (root / "link.py").symlink_to(root / "a.py")
    (root / "dangling").symlink_to(root / "nowhere")
    expected = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                st = os.stat(path)
                expected.append(f"{path} {st.st_size} {st.st_mtime_ns}")
    assert len(expected) == 3
    assert _file_stamps(str(root)) == sorted(expected)
    os.utime(root / "sub" / "b.so", ns=(1, 1))
    assert _file_stamps(str(root)) != sorted(expected)
