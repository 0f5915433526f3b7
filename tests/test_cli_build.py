"""`closurepack build` through ``cli.main``: plans from files, image selection, compression,
determinism across jobs and cache states, image config, the customisation layer, --from,
--max-layers, stdout, and failures that leave every destination and the cache as they were."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from clistore import (
    APP,
    GLIBC,
    LIBFOO,
    TOOL,
    ZLIB,
    Store,
    make_store,
    read_docker_archive,
    read_oci,
    run,
)
from closurepack.cli import main

pytestmark = pytest.mark.usefixtures("no_source_date_epoch")


def _build(
    argv: list[object], capsys: pytest.CaptureFixture[str], *, status: int = 0
) -> tuple[str, str]:
    """Build quietly (progress lines are tested on their own) and expect ``status``."""
    code, out, err = run(["build", "--quiet", *argv], capsys)
    assert code == status, err
    return out, err


def _base_argv(store: Store, closure: Path) -> list[object]:
    return ["--closure", closure, "--store-root", store.root]


def _one_line_error(err: str, *must_say: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("closurepack: error: ")
    assert "Traceback" not in err
    for text in must_say:
        assert text in lines[0], (text, lines[0])


# plans, images, compression --------------------------------------------------------------------


def test_plan_file_built_elsewhere_needs_only_the_store_root(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "plan.json"
    assert (
        run(["plan", "--closure", app_closure, "--strategy", "popularity", "-o", plan], capsys)[0]
        == 0
    )
    direct = tmp_path / "direct"
    out, _ = _build(
        [
            *_base_argv(store, app_closure),
            "--strategy",
            "popularity",
            "--no-cache",
            "-o",
            f"oci:{direct}",
        ],
        capsys,
    )
    # "another machine": only the plan and the store files, no closure file
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(plan, elsewhere / "plan.json")
    app_closure.unlink()
    from_plan = tmp_path / "from-plan"
    out2, _ = _build(
        [
            "--plan",
            elsewhere / "plan.json",
            "--store-root",
            store.root,
            "--no-cache",
            "-o",
            f"oci:{from_plan}",
        ],
        capsys,
    )
    assert out == out2
    assert out.strip().startswith("sha256:")
    image = read_oci(from_plan)
    planned = json.loads(plan.read_text())["images"][0]["layers"]
    recorded = json.loads(image.config["config"]["Labels"]["dev.closurepack.layers"])
    diff_ids = image.config["rootfs"]["diff_ids"]
    assert [recorded[d] for d in diff_ids[: len(planned)]] == [layer["paths"] for layer in planned]
    assert len(diff_ids) == len(planned) + 1  # and the customisation layer (/tmp)


def test_image_by_index_and_by_name(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = store.closure_file(tmp_path / "app.json", [APP])
    tool = store.closure_file(tmp_path / "tool.json", [TOOL])
    plan = tmp_path / "plan.json"
    status, _, err = run(["plan", "--closure", app, "--closure", tool, "-o", plan], capsys)
    assert status == 0, err

    def by_plan(selector: str) -> list[object]:
        return ["--plan", plan, "--image", selector, "--store-root", store.root]

    digests = {}
    for selector in ("0", "1", "app", "tool"):
        dest = tmp_path / f"img-{selector}"
        out, _ = _build([*by_plan(selector), "--no-cache", "--no-tmp", "-o", f"oci:{dest}"], capsys)
        digests[selector] = out.strip()
        paths = {
            p
            for ps in json.loads(
                read_oci(dest).config["config"]["Labels"]["dev.closurepack.layers"]
            ).values()
            for p in ps
        }
        assert sorted(paths) == store.closure_of([APP if selector in ("0", "app") else TOOL])
    assert digests["0"] == digests["app"]
    assert digests["1"] == digests["tool"]
    assert digests["0"] != digests["1"]
    # from the closures directly, --image picks one of the images planned together
    dest = tmp_path / "direct"
    out, _ = _build(
        [
            "--closure",
            app,
            "--closure",
            tool,
            "--store-root",
            store.root,
            "--image",
            "tool",
            "--no-cache",
            "--no-tmp",
            "-o",
            f"oci:{dest}",
        ],
        capsys,
    )
    assert out.strip() == digests["tool"]
    # without --image a two-image plan is refused, naming the plan
    _, err = _build(
        ["--plan", plan, "--store-root", store.root, "-o", f"oci:{dest}"], capsys, status=2
    )
    _one_line_error(err, str(plan), "2 images", "--image")
    for selector, text in (("2", "no image 2"), ("nope", "no image named 'nope'")):
        _, err = _build([*by_plan(selector), "-o", f"oci:{tmp_path / 'x'}"], capsys, status=2)
        _one_line_error(err, str(plan), text)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("compression", "media_type"),
    [
        ("gzip", "application/vnd.oci.image.layer.v1.tar+gzip"),
        ("zstd", "application/vnd.oci.image.layer.v1.tar+zstd"),
        ("none", "application/vnd.oci.image.layer.v1.tar"),
    ],
)
def test_compression_media_types(
    compression: str,
    *,
    media_type: str,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dest = tmp_path / "layout"
    argv = [*_base_argv(store, app_closure), "--compression", compression]
    _build([*argv, "--cache-dir", tmp_path / "cache", "-o", f"oci:{dest}"], capsys)
    image = read_oci(dest)
    assert {layer["mediaType"] for layer in image.manifest["layers"]} == {media_type}
    magic = {"gzip": b"\x1f\x8b", "zstd": b"\x28\xb5\x2f\xfd"}.get(compression)
    for digest in image.layer_digests:
        blob = image.blob(digest)
        if magic:
            assert blob.startswith(magic)
        else:
            assert tarfile.is_tarfile(image.layout / "blobs" / "sha256" / digest[7:])
    members = image.layer_members(0)
    assert any(name.startswith("nix/store/") for name in members)
    # docker-archive: Docker's own media types in the manifest
    archive = tmp_path / "image.tar"
    _build([*argv, "--cache-dir", tmp_path / "cache", "-o", f"docker-archive:{archive}"], capsys)
    assert run(["verify", f"docker-archive:{archive}"], capsys)[0] == 0


def test_jobs_and_cache_states_give_identical_archives(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    both = store.closure_file(tmp_path / "both.json", [APP, TOOL])
    argv = [*_base_argv(store, both), "--strategy", "per-item", "--symlink", "/bin=" + APP + "/bin"]
    cache = tmp_path / "cache"
    outputs = {}
    for name, extra in {
        "cold-1": ["--jobs", "1", "--cache-dir", cache],
        "warm-4": ["--jobs", "4", "--cache-dir", cache],
        "warm-1": ["--jobs", "1", "--cache-dir", cache],
        "nocache-4": ["--jobs", "4", "--no-cache"],
        "cold-4": ["--jobs", "4", "--cache-dir", tmp_path / "cache2"],
    }.items():
        dest = tmp_path / f"{name}.tar"
        out, _ = _build([*argv, *extra, "-o", f"docker-archive:{dest}"], capsys)
        outputs[name] = (out, dest.read_bytes())
    first = outputs["cold-1"]
    for name, value in outputs.items():
        assert value == first, name
    # the warm builds read the store no more: they work with the store files gone
    shutil.rmtree(store.root)
    dest = tmp_path / "warm-no-store.tar"
    out, _ = _build([*argv, "--cache-dir", cache, "-o", f"docker-archive:{dest}"], capsys)
    assert (out, dest.read_bytes()) == first


def test_no_cache_writes_no_cache(
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home_cache = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home_cache))
    _build([*_base_argv(store, app_closure), "--no-cache", "-o", f"oci:{tmp_path / 'a'}"], capsys)
    assert not home_cache.exists()
    _build([*_base_argv(store, app_closure), "-o", f"oci:{tmp_path / 'b'}"], capsys)
    assert home_cache.exists()  # the default cache is used without --no-cache
    assert read_oci(tmp_path / "a").manifest == read_oci(tmp_path / "b").manifest


# the image config -------------------------------------------------------------------------------


def test_image_config_fields(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "layout"
    _build(
        [
            *_base_argv(store, app_closure),
            "--no-cache",
            "--entrypoint", f'["{APP}/bin/app", "--serve"]',
            "--cmd", "--port 8080 'two words'",
            "--env", "PATH=/bin",
            "--env", "EMPTY=",
            "--env", "EQ=a=b",
            "--workdir", "/srv",
            "--user", "1000:1000",
            "--label", "org.example.team=core",
            "--label", "note=x=y",
            "--expose", "8080",
            "--expose", "53/udp",
            "--expose", "80/UDP",
            "--expose", "9/Sctp",
            "--volume", "/data",
            "--stop-signal", "SIGINT",
            "--created", "1700000000",
            "--arch", "arm64",
            "-o", f"oci:{dest}",
        ],
        capsys,
    )  # fmt: skip
    image = read_oci(dest)
    config = image.config["config"]
    assert config["Entrypoint"] == [f"{APP}/bin/app", "--serve"]
    assert config["Cmd"] == ["--port", "8080", "two words"]
    assert config["Env"] == ["PATH=/bin", "EMPTY=", "EQ=a=b"]
    assert config["WorkingDir"] == "/srv"
    assert config["User"] == "1000:1000"
    assert config["Labels"]["org.example.team"] == "core"
    assert config["Labels"]["note"] == "x=y"
    assert config["ExposedPorts"] == {"8080/tcp": {}, "53/udp": {}, "80/udp": {}, "9/sctp": {}}
    assert config["Volumes"] == {"/data": {}}
    assert config["StopSignal"] == "SIGINT"
    assert image.config["created"] == "2023-11-14T22:13:20Z"
    assert image.config["architecture"] == "arm64"
    assert image.config["os"] == "linux"
    assert image.manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    # --created is the image's time, not its files': they keep the store's mtime 1
    assert {m.mtime for m in image.layer_members(0).values()} == {1}


@pytest.mark.parametrize(
    ("created", "env", "expected"),
    [
        (None, None, "1970-01-01T00:00:01Z"),
        ("0", None, "1970-01-01T00:00:00Z"),
        ("2024-02-29T12:00:00Z", None, "2024-02-29T12:00:00Z"),
        ("2024-02-29T13:00:00+01:00", None, "2024-02-29T12:00:00Z"),
        ("2024-02-29", None, "2024-02-29T00:00:00Z"),
        (None, "1234567890", "2009-02-13T23:31:30Z"),
        ("5", "1234567890", "1970-01-01T00:00:05Z"),  # --created wins
    ],
)
def test_created_time(
    created: str | None,
    *,
    env: str | None,
    expected: str,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if env is not None:
        monkeypatch.setenv("SOURCE_DATE_EPOCH", env)
    dest = tmp_path / "layout"
    argv = [*_base_argv(store, app_closure), "--no-cache", "-o", f"oci:{dest}"]
    if created is not None:
        argv += ["--created", created]
    _build(argv, capsys)
    image = read_oci(dest)
    assert image.config["created"] == expected
    assert {h["created"] for h in image.config["history"]} == {expected}


def test_created_and_source_date_epoch_change_no_layer_and_mtime_does(
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A CI that sets SOURCE_DATE_EPOCH to the commit time must get the same layers every commit.
    cache = tmp_path / "cache"
    argv = [*_base_argv(store, app_closure), "--strategy", "per-item", "--cache-dir", cache]
    images = {}
    for name, created, epoch in (("a", "1700000000", None), ("b", None, "1234567890")):
        if epoch is None:
            monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
        else:
            monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch)
        dest = tmp_path / name
        _build([*argv, *(["--created", created] if created else []), "-o", f"oci:{dest}"], capsys)
        images[name] = read_oci(dest)
    a, b = images["a"], images["b"]
    assert a.config["created"] != b.config["created"]
    assert len(a.layer_digests) == 5  # 4 store layers and /tmp
    assert a.layer_digests == b.layer_digests
    assert a.config["rootfs"] == b.config["rootfs"]
    for number in range(5):
        assert {m.mtime for m in a.layer_members(number).values()} == {1}
    # --mtime sets the files' mtime (and so the layer key: no stale cache hit)
    dest = tmp_path / "m"
    _build([*argv, "--mtime", "1700000000", "-o", f"oci:{dest}"], capsys)
    m = read_oci(dest)
    assert not set(m.layer_digests) & set(a.layer_digests)
    for number in range(5):
        assert {mem.mtime for mem in m.layer_members(number).values()} == {1700000000}


def test_an_image_without_entrypoint_or_cmd_gets_a_warning(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*_base_argv(store, app_closure), "--no-cache"]
    out, err = _build([*argv, "-o", f"oci:{tmp_path / 'bare'}"], capsys)
    assert out.startswith("sha256:")
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("closurepack: warning: ")
    assert "no Entrypoint and no Cmd" in lines[0]
    assert str(tmp_path / "bare") in lines[0]
    for given in (["--entrypoint", "/bin/app"], ["--cmd", "/bin/app"]):
        _, err = _build([*argv, *given, "-o", f"oci:{tmp_path / given[0][2:]}"], capsys)
        assert err == ""
    # an Entrypoint the --from image has counts too
    _, err = _build(
        [*argv, "--from", f"oci:{tmp_path / 'cmd'}", "-o", f"oci:{tmp_path / 'derived'}"], capsys
    )
    assert err == ""


def test_created_now_is_the_current_time(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import datetime
    import time

    before = int(time.time())
    _build(
        [
            *_base_argv(store, app_closure),
            "--no-cache",
            "--created",
            "now",
            "-o",
            f"oci:{tmp_path / 'l'}",
        ],
        capsys,
    )
    created = read_oci(tmp_path / "l").config["created"]
    moment = datetime.datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    assert before <= moment <= time.time() + 1


@pytest.mark.parametrize(
    ("option", "value", "must_say"),
    [
        ("--env", "NOEQUALS", ("--env", "NOEQUALS", "KEY=VALUE")),
        ("--env", "=x", ("--env", "KEY=VALUE")),
        ("--label", "novalue", ("--label", "novalue", "KEY=VALUE")),
        ("--expose", "http", ("--expose", "http")),
        ("--expose", "70000", ("--expose", "70000")),
        ("--expose", "80/icmp", ("--expose", "80/icmp")),
        ("--created", "yesterday", ("--created", "yesterday")),
        ("--created", "-5", ("--created", "-5")),
        ("--symlink", "/bin", ("--symlink", "/bin", "KEY=VALUE")),
        ("--symlink", "bin=/x", ("--symlink", "bin=/x", "absolute")),
        ("--symlink", "/=/x", ("--symlink", "/=/x")),
        ("--symlink", "/a/../b=/x", ("--symlink", "/a/../b=/x")),
        ("--symlink", "/a=", ("--symlink", "/a=", "empty target")),
        ("--created", "99999999999999", ("--created", "9999")),
        ("--entrypoint", '["a", 1]', ("--entrypoint", "array of strings")),
        ("--entrypoint", '{"a":1}', ("--entrypoint", '{"a":1}', "array of strings")),
        ("--cmd", ' {"a": [1]}', ("--cmd", "array of strings")),
        ("--env", "FO O=x", ("--env", "FO O=x", "KEY")),
        ("--env", "\tX=1", ("--env", "KEY")),
        ("--created", "", ("--created ''", "expected")),
        ("--mtime", "", ("--mtime ''", "expected")),
        ("--mtime", "soon", ("--mtime 'soon'",)),
        ("--entrypoint", "[oops", ("--entrypoint", "JSON")),
        ("--cmd", "'unclosed", ("--cmd", "quotation")),
        ("--workdir", "relative", ("--workdir", "relative", "absolute")),
        ("--volume", "data", ("--volume", "data", "absolute")),
        ("--arch", "z80", ("--arch", "z80")),
        ("--user", "a b", ("--user", "a b")),
        ("--jobs", "0", ("--jobs", "0")),
        ("--tag", "Bad:Name", ("Bad:Name",)),
        ("--compression", "lz4", ("--compression", "lz4")),
        ("--level", "10", ("--level 10", "gzip")),
        ("--level", "-8", ("--level -8", "gzip")),
    ],
)
def test_bad_option_values(
    option: str,
    *,
    value: str,
    must_say: tuple[str, ...],
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dest = tmp_path / "out.tar"
    cache = tmp_path / "cache"
    _, err = _build(
        [
            *_base_argv(store, app_closure),
            f"{option}={value}",
            "--cache-dir",
            cache,
            "-o",
            f"docker-archive:{dest}",
        ],
        capsys,
        status=2,
    )
    _one_line_error(err, *must_say)
    assert not dest.exists()
    assert not cache.exists() or not any((cache / "blobs").rglob("*"))
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["app.json", "root", *(["cache"] if cache.exists() else [])]
    )


# the customisation layer ------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["build", "build-layer", "assemble"])
def test_level_with_compression_none_is_refused(
    command: str,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dest = tmp_path / "out"
    inputs = {
        "build": [*_base_argv(store, app_closure), "--no-cache", "-o", f"oci:{dest}"],
        "build-layer": [GLIBC, "--store-root", store.root, "-o", dest],
        "assemble": [tmp_path, "-o", f"oci:{dest}"],
    }[command]
    code, out, err = run([command, *inputs, "--compression", "none", "--level", "3"], capsys)
    assert (code, out) == (2, "")
    _one_line_error(err, "--level 3", "--compression none")
    assert not dest.exists()


def test_customisation_layer_contents(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = tmp_path / "extra"
    (extra / "etc" / "app").mkdir(parents=True)
    (extra / "etc" / "app" / "config.toml").write_text("port = 8080\n")
    (extra / "run.sh").write_text("#!/bin/sh\n")
    (extra / "run.sh").chmod(0o755)
    (extra / "current").symlink_to(APP)
    os.utime(extra / "run.sh", (12345, 12345))
    dest = tmp_path / "layout"
    argv = [
        *_base_argv(store, app_closure),
        "--no-cache",
        "--symlink", f"/bin={APP}/bin",
        "--symlink", f"/usr/lib/libfoo={LIBFOO}/lib",
        "--extra", extra,
        "--user", "app",
        "-o", f"oci:{dest}",
    ]  # fmt: skip
    digest, _ = _build(argv, capsys)
    image = read_oci(dest)
    top = len(image.manifest["layers"]) - 1
    members = image.layer_members(top)
    assert image.config["history"][-1]["comment"] == "customisation"
    assert members["bin"].issym()
    assert members["bin"].linkname == f"{APP}/bin"
    assert members["usr/lib/libfoo"].linkname == f"{LIBFOO}/lib"
    assert members["usr"].isdir()
    assert members["usr/lib"].isdir()
    assert members["tmp"].isdir()
    assert members["tmp"].mode == 0o1777
    assert members["run.sh"].mode == 0o755
    assert members["etc/app/config.toml"].mode == 0o644
    assert image.layer_file(top, "etc/app/config.toml") == b"port = 8080\n"
    assert members["current"].linkname == APP
    assert (members["home/app"].uid, members["home/app"].gid) == (1000, 1000)
    for member in members.values():  # deterministic: owner root (but app's home), fixed mtime
        owner = (1000, 1000) if member.name == "home/app" else (0, 0)
        assert (member.uid, member.gid, member.mtime) == (*owner, 1), member.name
        assert (member.uname, member.gname) == ("", "") or (member.uname, member.gname) == (
            "root",
            "root",
        )
    passwd = image.layer_file(top, "etc/passwd").decode().splitlines()
    group = image.layer_file(top, "etc/group").decode().splitlines()
    assert passwd[0].startswith("root:x:0:0:")
    assert any(line.startswith("app:x:1000:1000:") for line in passwd)
    assert any(line.startswith("app:x:1000:") for line in group)
    assert image.config["config"]["User"] == "app"
    # the same inputs give the same image, whatever the host's mtimes of the extra tree
    os.utime(extra / "run.sh", (99999, 99999))
    again, _ = _build([*argv[:-2], "-o", f"oci:{tmp_path / 'again'}"], capsys)
    assert again == digest


def test_numeric_user_adds_no_passwd_and_no_tmp_means_no_layer(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = tmp_path / "plain"
    _build(
        [
            *_base_argv(store, app_closure),
            "--no-cache",
            "--strategy",
            "single",
            "-o",
            f"oci:{plain}",
        ],
        capsys,
    )
    image = read_oci(plain)
    assert len(image.manifest["layers"]) == 2
    assert sorted(image.layer_members(1)) == ["tmp"]
    numeric = tmp_path / "numeric"
    _build(
        [
            *_base_argv(store, app_closure),
            "--no-cache",
            "--strategy",
            "single",
            "--user",
            "1000",
            "-o",
            f"oci:{numeric}",
        ],
        capsys,
    )
    assert sorted(read_oci(numeric).layer_members(1)) == ["tmp"]
    bare = tmp_path / "bare"
    _build(
        [
            *_base_argv(store, app_closure),
            "--no-cache",
            "--strategy",
            "single",
            "--no-tmp",
            "--user",
            "0:0",
            "-o",
            f"oci:{bare}",
        ],
        capsys,
    )
    image = read_oci(bare)
    assert len(image.manifest["layers"]) == 1
    assert len(image.config["history"]) == 1
    assert image.config["history"][0]["comment"] == (
        "4 store items: glibc-2.39, zlib-1.3, libfoo-1.0, app-1.0"
    )


def test_customisation_conflicts(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = tmp_path / "extra"
    (extra / "bin").mkdir(parents=True)
    dest = tmp_path / "out"
    _, err = _build(
        [
            *_base_argv(store, app_closure),
            "--no-cache",
            "--extra",
            extra,
            "--symlink",
            "/bin=/x",
            "-o",
            f"oci:{dest}",
        ],
        capsys,
        status=2,
    )
    _one_line_error(err, "--symlink /bin")
    _, err = _build(
        [
            *_base_argv(store, app_closure),
            "--no-cache",
            "--symlink",
            "/a=/x",
            "--symlink",
            "/a=/y",
            "-o",
            f"oci:{dest}",
        ],
        capsys,
        status=2,
    )
    _one_line_error(err, "/a", "twice")
    _, err = _build(
        [
            *_base_argv(store, app_closure),
            "--no-cache",
            "--extra",
            tmp_path / "missing",
            "-o",
            f"oci:{dest}",
        ],
        capsys,
        status=2,
    )
    _one_line_error(err, "--extra", "missing")
    assert not dest.exists()


@pytest.mark.parametrize(
    ("tree", "options", "must_say"),
    [
        ({"etc/passwd": "x:x:0:0::/:/bin/sh\n"}, ["--user", "app"], ("/etc/passwd", "--user app")),
        ({"etc/group": "x:x:0:\n"}, ["--user", "1000:staff"], ("/etc/group", "--user 1000:staff")),
        ({"nix/store/evil": "x"}, [], ("--extra", "/nix/store", "store")),
        ({f"{APP.lstrip('/')}/bin/app": "x"}, [], ("--extra", APP)),
        ({"nix/var/x": "x"}, [], ("--extra", "/nix ")),
        ({}, ["--symlink", "/nix=/elsewhere"], ("--symlink /nix=/elsewhere",)),
        ({}, ["--symlink", "/nix/store=/elsewhere"], ("--symlink /nix/store=",)),
        ({}, ["--symlink", f"{GLIBC}=/elsewhere"], ("--symlink", GLIBC)),
        ({}, ["--symlink", f"{GLIBC}/lib/x=/elsewhere"], ("--symlink", GLIBC)),
    ],
)
def test_extra_and_symlink_may_not_replace_generated_files_or_cover_the_store(
    tree: dict[str, str],
    *,
    options: list[str],
    must_say: tuple[str, ...],
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    for name, text in tree.items():
        (extra / name).parent.mkdir(parents=True, exist_ok=True)
        (extra / name).write_text(text)
    dest = tmp_path / "out"
    cache = tmp_path / "cache"
    _, err = _build(
        [*_base_argv(store, app_closure), "--cache-dir", cache, "--extra", extra, *options,
         "-o", f"oci:{dest}"],
        capsys,
        status=2,
    )  # fmt: skip
    _one_line_error(err, *must_say)
    assert not dest.exists()
    assert not cache.exists()


def test_extra_tree_owner(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = tmp_path / "extra"
    (extra / "srv" / "data").mkdir(parents=True)
    (extra / "srv" / "data" / "run.sh").write_text("#!/bin/sh\n")
    (extra / "srv" / "data" / "run.sh").chmod(0o750)
    (extra / "srv" / "link").symlink_to("data/run.sh")
    plain = tmp_path / "plain"
    (plain / "etc").mkdir(parents=True)
    (plain / "etc" / "motd").write_text("hi\n")
    dest = tmp_path / "layout"
    _build([*_base_argv(store, app_closure), "--no-cache", "--extra", f"{extra}:1000:100",
            "--extra", plain, "-o", f"oci:{dest}"], capsys)  # fmt: skip
    image = read_oci(dest)
    members = image.layer_members(len(image.layer_digests) - 1)
    for name in ("srv", "srv/data", "srv/data/run.sh", "srv/link"):
        assert (members[name].uid, members[name].gid) == (1000, 100), name
    assert members["srv/data/run.sh"].mode == 0o750
    assert (members["etc/motd"].uid, members["etc/motd"].gid) == (0, 0)
    assert (members["tmp"].uid, members["tmp"].gid) == (0, 0)
    for value, says in ((f"{extra}:1000", "no such directory"), (f"{extra}:1:99999999", "at most")):
        _, err = _build([*_base_argv(store, app_closure), "--no-cache", "--extra", value,
                         "-o", f"oci:{tmp_path / 'x'}"], capsys, status=2)  # fmt: skip
        _one_line_error(err, "--extra", says)


def test_fifo_in_extra_tree_is_refused(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    os.mkfifo(extra / "pipe")
    dest = tmp_path / "out.tar"
    code, out, err = run(
        [
            "build",
            *_base_argv(store, app_closure),
            "--no-cache",
            "--extra",
            extra,
            "-o",
            f"docker-archive:{dest}",
        ],
        capsys,
    )
    assert code in (2, 3)
    assert out == ""
    _one_line_error(err, "pipe", "fifo")
    assert not dest.exists()


# --from -----------------------------------------------------------------------------------------


def _base_image(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A two-store-layer image (glibc, zlib) with Env and a label, as a docker-archive."""
    base_closure = store.closure_file(tmp_path / "base.json", [ZLIB])
    archive = tmp_path / "base.tar"
    _build(
        [*_base_argv(store, base_closure), "--strategy", "per-item", "--no-cache", "--no-tmp",
         "--env", "PATH=/base/bin", "--env", "LANG=C", "--label", "from=base",
         "-o", f"docker-archive:{archive}"],
        capsys,
    )  # fmt: skip
    return archive


def test_from_puts_the_base_layers_underneath_and_merges_env(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = _base_image(store, tmp_path, capsys)
    base_manifest, base_config = read_docker_archive(base)
    dest = tmp_path / "layout"
    _build(
        [*_base_argv(store, app_closure), "--no-cache", "--strategy", "per-item",
         "--from", f"docker-archive:{base}", "--env", "PATH=/app/bin", "--env", "MODE=prod",
         "-o", f"oci:{dest}"],
        capsys,
    )  # fmt: skip
    image = read_oci(dest)
    diff_ids = image.config["rootfs"]["diff_ids"]
    assert diff_ids[:2] == base_config["rootfs"]["diff_ids"]
    # base (glibc, zlib), then only the app's own items (libfoo, app): what the base image
    # records it holds is not added again; then the customisation layer
    assert len(diff_ids) == 2 + 2 + 1
    recorded = json.loads(image.config["config"]["Labels"]["dev.closurepack.layers"])
    assert [recorded.get(d) for d in diff_ids] == [[GLIBC], [ZLIB], [LIBFOO], [APP], None]
    env = image.config["config"]["Env"]
    assert sorted(env) == sorted(["PATH=/app/bin", "LANG=C", "MODE=prod"])
    assert image.config["config"]["Labels"]["from"] == "base"
    assert run(["verify", f"oci:{dest}"], capsys)[0] == 0
    assert len(base_manifest[0]["Layers"]) == 2


def test_from_a_closurepack_image_adds_no_second_identical_customisation_layer(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base_closure = store.closure_file(tmp_path / "base.json", [ZLIB])
    base = tmp_path / "base"
    _build([*_base_argv(store, base_closure), "--no-cache", "--strategy", "single",
            "-o", f"oci:{base}"], capsys)  # fmt: skip
    base_ids = read_oci(base).config["rootfs"]["diff_ids"]
    assert len(base_ids) == 2  # glibc + zlib, then /tmp
    dest = tmp_path / "layout"
    argv = [*_base_argv(store, app_closure), "--no-cache", "--strategy", "single"]
    _build([*argv, "--from", f"oci:{base}", "-o", f"oci:{dest}"], capsys)
    image = read_oci(dest)
    diff_ids = image.config["rootfs"]["diff_ids"]
    # the base's layers, then one store layer (libfoo, app): no second /tmp layer
    assert diff_ids[:2] == base_ids
    assert len(diff_ids) == 3
    assert len(set(diff_ids)) == 3
    assert {name.split("/")[0] for name in image.layer_members(2)} == {"nix"}
    assert len(image.config["history"]) == 3
    assert run(["verify", f"oci:{dest}"], capsys)[0] == 0
    # a customisation layer that does add something is still added
    _build([*argv, "--from", f"oci:{base}", "--symlink", "/bin=/x", "-o", f"oci:{dest}:s"], capsys)
    with_link = read_oci(dest, tag="s")
    assert len(with_link.config["rootfs"]["diff_ids"]) == 4
    assert "bin" in with_link.layer_members(3)


@pytest.mark.parametrize(
    ("max_layers", "extra", "status", "layers"),
    [
        ("5", [], 0, 5),  # base 2 + 2 store layers + /tmp
        ("4", [], 0, 4),  # base 2 + 1 store layer + /tmp
        ("4", ["--symlink", "/bin=/x"], 0, 4),
        ("3", [], 0, 3),  # base 2 + 1 store layer, /tmp left out
        ("3", ["--symlink", "/bin=/x"], 2, 0),
        ("2", [], 2, 0),  # no room for any store layer
    ],
)
def test_max_layers_counts_from_and_customisation_layers(
    max_layers: str,
    *,
    extra: list[str],
    status: int,
    layers: int,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = _base_image(store, tmp_path, capsys)
    dest = tmp_path / "layout"
    _, err = _build(
        [*_base_argv(store, app_closure), "--no-cache", "--from", f"docker-archive:{base}",
         "--max-layers", max_layers, *extra, "-o", f"oci:{dest}"],
        capsys,
        status=status,
    )  # fmt: skip
    if status:
        _one_line_error(err, f"--max-layers {max_layers}")
        assert not dest.exists()
    else:
        assert len(read_oci(dest).manifest["layers"]) == layers


def test_max_layers_one(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "one"
    _build(
        [*_base_argv(store, app_closure), "--no-cache", "--max-layers", "1", "-o", f"oci:{dest}"],
        capsys,
    )
    image = read_oci(dest)
    assert len(image.manifest["layers"]) == 1
    assert "tmp" not in image.layer_members(0)
    for extra in (["--symlink", "/bin=/x"], ["--extra", str(tmp_path)], ["--user", "app"]):
        _, err = _build(
            [
                *_base_argv(store, app_closure),
                "--no-cache",
                "--max-layers",
                "1",
                *extra,
                "-o",
                f"oci:{tmp_path / 'no'}",
            ],
            capsys,
            status=2,
        )
        _one_line_error(err, "--max-layers 1", "customisation layer", "--max-layers to 2")
    assert not (tmp_path / "no").exists()
    two = tmp_path / "two"
    _build(
        [
            *_base_argv(store, app_closure),
            "--no-cache",
            "--max-layers",
            "2",
            "--symlink",
            "/bin=/x",
            "-o",
            f"oci:{two}",
        ],
        capsys,
    )
    assert len(read_oci(two).manifest["layers"]) == 2


def test_max_layers_with_a_plan_file(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "plan.json"
    run(["plan", "--closure", app_closure, "--strategy", "per-item", "-o", plan], capsys)
    argv: list[object] = ["--plan", plan, "--store-root", store.root, "--no-cache"]
    _, err = _build([*argv, "--max-layers", "3", "-o", f"oci:{tmp_path / 'x'}"], capsys, status=2)
    _one_line_error(err, "--max-layers 3", "4 store layers", str(plan))
    _build([*argv, "--max-layers", "4", "-o", f"oci:{tmp_path / 'four'}"], capsys)
    assert len(read_oci(tmp_path / "four").manifest["layers"]) == 4  # /tmp left out
    _build([*argv, "-o", f"oci:{tmp_path / 'five'}"], capsys)  # the plan's own limit (100)
    assert len(read_oci(tmp_path / "five").manifest["layers"]) == 5
    _, err = _build(
        [*argv, "--strategy", "single", "-o", f"oci:{tmp_path / 'x'}"], capsys, status=2
    )
    _one_line_error(err, "--strategy", "--plan")


# stdout -----------------------------------------------------------------------------------------


def test_stdout_is_the_same_docker_archive(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "file.tar"
    digest, _ = _build(
        [
            *_base_argv(store, app_closure),
            "--cache-dir",
            tmp_path / "cache",
            "--tag",
            "app:1",
            "--cmd",
            "/bin/app",
            "-o",
            f"docker-archive:{archive}",
        ],
        capsys,
    )
    result = subprocess.run(
        [sys.executable, "-m", "closurepack.cli", "build",
         *map(str, _base_argv(store, app_closure)), "--cache-dir", str(tmp_path / "cache"),
         "--tag", "app:1", "--cmd", "/bin/app", "-q", "-o", "-"],
        capture_output=True,
        check=False,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    assert result.stdout == archive.read_bytes()
    assert digest.startswith("sha256:")
    # without -q the digest goes to stderr: stdout holds nothing but the archive
    loud = subprocess.run(
        [sys.executable, "-m", "closurepack.cli", "build",
         *map(str, _base_argv(store, app_closure)), "--cache-dir", str(tmp_path / "cache"),
         "--tag", "app:1", "--cmd", "/bin/app", "-o", "-"],
        capture_output=True,
        check=False,
        timeout=60,
    )  # fmt: skip
    assert loud.returncode == 0
    assert loud.stdout == result.stdout
    *progress, last = loud.stderr.decode().splitlines()
    assert last == digest.strip()
    assert len(progress) == 5
    assert all(line.startswith("layer ") for line in progress)


# failures leave everything as it was ----------------------------------------------------------


def _missing_item_closure(store: Store, tmp_path: Path) -> Path:
    """A closure whose LIBFOO files are gone from the store root (found out mid-build)."""
    broken = make_store(tmp_path / "broken-root")
    shutil.rmtree(broken.files(LIBFOO))
    return broken.closure_file(tmp_path / "broken.json", [APP])


@pytest.mark.parametrize("kind", ["docker-archive", "oci-archive"])
def test_failed_build_keeps_an_existing_archive(
    kind: str, store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    archive = out_dir / "image.tar"
    _build([*_base_argv(store, app_closure), "--no-cache", "-o", f"{kind}:{archive}"], capsys)
    before = archive.read_bytes()
    broken = _missing_item_closure(store, tmp_path)
    cache = tmp_path / "cache"
    for jobs in ("1", "3"):
        _, err = _build(
            ["--closure", broken, "--store-root", tmp_path / "broken-root",
             "--strategy", "per-item", "--jobs", jobs, "--cache-dir", cache, "--env", "A=1",
             "-o", f"{kind}:{archive}"],
            capsys,
            status=3,
        )  # fmt: skip
        _one_line_error(err, LIBFOO, "not found")
        assert archive.read_bytes() == before
        assert os.listdir(out_dir) == ["image.tar"]
    # the cache holds only complete, valid layers: the next good build from it verifies
    good = tmp_path / "good.tar"
    _build(
        [
            "--closure",
            broken,
            "--store-root",
            store.root,
            "--strategy",
            "per-item",
            "--cache-dir",
            cache,
            "-o",
            f"docker-archive:{good}",
        ],
        capsys,
    )
    assert run(["verify", f"docker-archive:{good}"], capsys)[0] == 0
    assert not list(cache.rglob("*.tmp"))


def test_failed_build_keeps_an_existing_oci_tag(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = tmp_path / "layout"
    _build([*_base_argv(store, app_closure), "--no-cache", "-o", f"oci:{layout}:v1"], capsys)
    snapshot = {p.relative_to(layout): p.read_bytes() for p in layout.rglob("*") if p.is_file()}
    broken = _missing_item_closure(store, tmp_path)
    _, err = _build(
        [
            "--closure",
            broken,
            "--store-root",
            tmp_path / "broken-root",
            "--no-cache",
            "-o",
            f"oci:{layout}:v1",
        ],
        capsys,
        status=3,
    )
    _one_line_error(err, LIBFOO)
    after = {p.relative_to(layout): p.read_bytes() for p in layout.rglob("*") if p.is_file()}
    assert after == snapshot
    assert run(["verify", f"oci:{layout}:v1"], capsys)[0] == 0


def test_fifo_in_a_store_item(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.mkfifo(store.files(GLIBC) / "lib" / "control")
    archive = tmp_path / "image.tar"
    cache = tmp_path / "cache"
    _, err = _build(
        [*_base_argv(store, app_closure), "--cache-dir", cache, "-o", f"docker-archive:{archive}"],
        capsys,
        status=3,
    )
    _one_line_error(err, "control", "fifo")
    assert not archive.exists()
    # other layers may have been cached, each complete and valid; the failed one is not there
    for blob in (p for p in (cache / "blobs").rglob("*") if p.is_file()):
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    os.unlink(store.files(GLIBC) / "lib" / "control")
    _build(
        [*_base_argv(store, app_closure), "--cache-dir", cache, "-o", f"docker-archive:{archive}"],
        capsys,
    )
    assert run(["verify", f"docker-archive:{archive}"], capsys)[0] == 0
    assert not list(cache.rglob("*.tmp"))


def test_bad_destinations(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("x")
    cases = [
        ("foo:bar", 2, ("foo:bar",)),
        ("docker-archive:", 2, ("missing path",)),
        ("oci:/tmp/x:bad tag", 2, ("bad tag",)),
        ("docker-archive:x.tar:UPPER:case", 2, ("UPPER",)),
        (f"docker-archive:{tmp_path / 'a-file' / 'x.tar'}", 5, ("a-file",)),
        (f"oci:{tmp_path / 'a-file'}", 5, ("a-file",)),
        (f"docker-archive:{tmp_path / 'no' / 'dir' / 'x.tar'}", 5, ("x.tar",)),
        (f"docker-archive:{tmp_path}", 5, ("is a directory",)),
        (f"oci:{tmp_path}", 5, ("not an OCI layout",)),
    ]
    if os.path.ismount("/sys"):  # sysfs never lets anyone, root included, create a file
        cases.append(
            ("docker-archive:/sys/closurepack-test.tar", 5, ("/sys/closurepack-test.tar",))
        )
        cases.append(("oci:/sys/closurepack-test", 5, ("/sys/closurepack-test",)))
    for dest, status, must_say in cases:
        _, err = _build(
            [*_base_argv(store, app_closure), "--cache-dir", tmp_path / "cache", "-o", dest],
            capsys,
            status=status,
        )
        _one_line_error(err, *must_say)
    assert (tmp_path / "a-file").read_text() == "x"
    assert not (tmp_path / "no").exists()


def test_bad_plan_files(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = {
        "garbage.json": ("{nope", "not valid JSON"),
        "noimages.json": ('{"layers": []}', "not a layer plan"),
        "empty-layer.json": (
            '{"store_dir": "/nix/store", "images": [{"layers": [{"paths": []}]}]}',
            "empty layer",
        ),
        "twice.json": (
            json.dumps(
                {
                    "store_dir": "/nix/store",
                    "images": [{"layers": [{"paths": [APP]}, {"paths": [APP]}]}],
                }
            ),
            "more than one layer",
        ),
        "dotdot.json": (
            json.dumps(
                {
                    "store_dir": "/nix/store",
                    "images": [{"layers": [{"paths": ["/nix/store/../x"]}]}],
                }
            ),
            "'..'",
        ),
        "version.json": ('{"version": 9, "images": []}', "version 9"),
    }
    for name, (text, must_say) in cases.items():
        plan = tmp_path / name
        plan.write_text(text)
        dest = tmp_path / "out.tar"
        _, err = _build(
            ["--plan", plan, "--store-root", store.root, "-o", f"docker-archive:{dest}"],
            capsys,
            status=2,
        )
        _one_line_error(err, str(plan), must_say)
        assert not dest.exists()
    _, err = _build(["--plan", tmp_path / "absent.json", "-o", "-"], capsys, status=2)
    _one_line_error(err, "absent.json", "cannot read")


def test_plan_and_closure_together_is_refused(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "plan.json"
    run(["plan", "--closure", app_closure, "-o", plan], capsys)
    _, err = _build(
        ["--plan", plan, "--closure", app_closure, "-o", f"oci:{tmp_path / 'x'}"], capsys, status=2
    )
    _one_line_error(err, "--plan", "not both")
    _, err = _build(["-o", f"oci:{tmp_path / 'x'}"], capsys, status=2)
    _one_line_error(err, "--closure")
    assert not (tmp_path / "x").exists()


def test_store_root_missing_item_from_plan_file(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "plan.json"
    run(["plan", "--closure", app_closure, "-o", plan], capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    _, err = _build(
        ["--plan", plan, "--store-root", empty, "--no-cache", "-o", f"oci:{tmp_path / 'x'}"],
        capsys,
        status=3,
    )
    _one_line_error(err, str(empty), "not found")
    assert not (tmp_path / "x").exists()
    assert GLIBC in err or ZLIB in err or LIBFOO in err or APP in err


def test_previous_image_layers_are_rebuilt_byte_identical(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lib = store.closure_file(tmp_path / "lib.json", [LIBFOO])
    old = tmp_path / "old"
    _build(
        [*_base_argv(store, lib), "--strategy", "single", "--no-cache", "-o", f"oci:{old}"], capsys
    )
    both = store.closure_file(tmp_path / "both.json", [APP, TOOL])
    new = tmp_path / "new"
    _build(
        [*_base_argv(store, both), "--previous", f"oci:{old}", "--no-cache", "-o", f"oci:{new}"],
        capsys,
    )
    old_image, new_image = read_oci(old), read_oci(new)
    assert new_image.layer_digests[0] == old_image.layer_digests[0]
    assert len(new_image.layer_digests) >= 3


def _big_store(tmp_path: Path) -> tuple[Store, Path]:
    store = make_store(tmp_path / "big-root")
    (store.files(APP) / "payload").write_bytes(os.urandom(1 << 20))
    return store, store.closure_file(tmp_path / "big.json", [APP])


def test_stdout_reader_going_away_is_quiet(tmp_path: Path) -> None:
    store, closure = _big_store(tmp_path)
    argv = [sys.executable, "-m", "closurepack.cli", "build", "--closure", str(closure),
            "--store-root", str(store.root), "--no-cache", "--compression", "none",
            "--cmd", "/bin/app", "-o", "-"]  # fmt: skip
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        assert len(proc.stdout.read(1000)) == 1000
        proc.stdout.close()
        status = proc.wait(timeout=60)
        err = proc.stderr.read()
    assert status == 141
    assert all(line.startswith(b"layer ") for line in err.splitlines()), err  # progress only


def test_stdout_terminal_is_refused(store: Store, app_closure: Path, tmp_path: Path) -> None:
    import pty

    leader, follower = pty.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "closurepack.cli", "build",
             *map(str, _base_argv(store, app_closure)), "--no-cache", "-o", "-"],
            stdout=follower,
            stderr=subprocess.PIPE,
            check=False,
            timeout=60,
        )  # fmt: skip
    finally:
        os.close(follower)
        os.close(leader)
    assert result.returncode == 5
    lines = result.stderr.decode().splitlines()
    assert [line for line in lines if not line.startswith("layer ")] == [
        "closurepack: error: standard output is a terminal: redirect the image archive"
    ]


def _run_with_terminal_stderr(argv: list[str]) -> tuple[int, bytes, str]:
    """Run the CLI with stderr on a pseudo-terminal; return (status, stdout, terminal text)."""
    import pty

    leader, follower = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "closurepack.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=follower,
        env={**os.environ, "COLUMNS": "120", "TERM": "dumb"},
    ) as proc:
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO once the child has closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.stdout is not None
        out = proc.stdout.read()
        status = proc.wait(timeout=60)
    os.close(leader)
    return status, out, b"".join(chunks).decode(errors="replace")


def test_progress_on_a_terminal_and_quiet(store: Store, app_closure: Path, tmp_path: Path) -> None:
    argv = [*map(str, _base_argv(store, app_closure)), "--strategy", "per-item",
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    status, out, terminal = _run_with_terminal_stderr(
        ["build", *argv, "-o", f"oci:{tmp_path / 'a'}"]
    )
    assert status == 0, terminal
    assert out.startswith(b"sha256:")
    for number in range(1, 6):
        assert f"layer {number}/5: " in terminal
    assert "(cached)" not in terminal
    status, _, terminal = _run_with_terminal_stderr(["build", *argv, "-o", f"oci:{tmp_path / 'b'}"])
    assert status == 0
    assert terminal.count("(cached)") == 4  # the store layers; the customisation layer is new
    status, _, terminal = _run_with_terminal_stderr(
        ["build", *argv, "-q", "-o", f"oci:{tmp_path / 'c'}"]
    )
    assert status == 0
    assert "layer" not in terminal


def test_progress_without_a_terminal_is_plain_lines(
    store: Store, app_closure: Path, tmp_path: Path
) -> None:
    # A Nix build or a CI log: stderr is a pipe. Progress is one plain line per layer.
    argv = [sys.executable, "-m", "closurepack.cli", "build",
            *map(str, _base_argv(store, app_closure)), "--strategy", "per-item",
            "--cache-dir", str(tmp_path / "cache"), "--cmd", "/bin/app"]  # fmt: skip
    env = {**os.environ, "TERM": "xterm-256color", "FORCE_COLOR": "1"}
    env.pop("SOURCE_DATE_EPOCH", None)
    result = subprocess.run(
        [*argv, "-o", f"oci:{tmp_path / 'a'}"], capture_output=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"sha256:")
    assert b"\x1b" not in result.stderr
    assert b"\r" not in result.stderr
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 5, lines
    for number, line in enumerate(sorted(lines, key=lambda x: int(x.split()[1].split("/")[0]))):
        assert line.startswith(f"layer {number + 1}/5: "), line
        assert line.split()[4] in ("B", "KiB", "MiB"), line
    quiet = subprocess.run(
        [*argv, "-q", "-o", f"oci:{tmp_path / 'b'}"], capture_output=True, env=env, check=False
    )
    assert quiet.returncode == 0
    assert quiet.stderr == b""


@pytest.mark.parametrize(
    ("user", "passwd", "group"),
    [
        ("app", ["app:x:1000:1000:app:/home/app:/bin/sh"], ["app:x:1000:"]),
        ("app:staff", ["app:x:1000:1000:app:/home/app:/bin/sh"], ["staff:x:1000:"]),
        ("app:100", ["app:x:1000:100:app:/home/app:/bin/sh"], []),
        ("1000:app", [], ["app:x:1000:"]),
        ("1000:users", [], []),  # a uid and the standard group users (100), no user named 1000
        ("root", [], []),
        ("nobody", [], []),  # the standard entry, not a second nobody
        ("nobody:nogroup", [], []),
        ("1000", None, None),
        ("0:0", None, None),
    ],
)
def test_passwd_and_group_for_named_users(
    user: str,
    *,
    passwd: list[str] | None,
    group: list[str] | None,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dest = tmp_path / "layout"
    _build(
        [*_base_argv(store, app_closure), "--no-cache", "--user", user, "-o", f"oci:{dest}"], capsys
    )
    image = read_oci(dest)
    top = len(image.layer_digests) - 1
    members = image.layer_members(top)
    assert image.config["config"]["User"] == user
    if passwd is None:
        assert sorted(members) == ["tmp"]
        return
    lines = image.layer_file(top, "etc/passwd").decode().splitlines()
    assert lines == [
        "root:x:0:0:root:/root:/bin/sh",
        "nobody:x:65534:65534:nobody:/nonexistent:/bin/false",
        *passwd,
    ]
    lines = image.layer_file(top, "etc/group").decode().splitlines()
    assert lines == ["root:x:0:", "users:x:100:", "nogroup:x:65534:", *group]
    assert members["etc/passwd"].mode == 0o644
    # the home the user's entry names exists, owned by the user; none for nobody's /nonexistent
    homes = {m.name: (m.uid, m.gid, m.mode) for m in members.values() if m.isdir()}
    homes = {name: owner for name, owner in homes.items() if name not in ("tmp", "etc")}
    expected = {
        "app": {"home": (0, 0, 0o755), "home/app": (1000, int(passwd[0].split(":")[3]), 0o755)}
        if passwd
        else {},
        "root": {"root": (0, 0, 0o700)},
    }
    assert homes == expected.get(user.partition(":")[0], {})
    assert "nonexistent" not in members


def test_user_on_a_from_image_uses_and_extends_its_passwd(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = tmp_path / "accounts"
    (extra / "etc").mkdir(parents=True)
    (extra / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
        "svc:x:1000:1000:svc:/srv:/bin/sh\n"
    )
    (extra / "etc" / "group").write_text("root:x:0:\nsvc:x:1000:\nusers:x:100:\n")
    base_closure = store.closure_file(tmp_path / "base.json", [ZLIB])
    base = tmp_path / "base.tar"
    _build([*_base_argv(store, base_closure), "--no-cache", "--extra", extra,
            "-o", f"docker-archive:{base}"], capsys)  # fmt: skip
    argv = [*_base_argv(store, app_closure), "--no-cache", "--from", f"docker-archive:{base}"]

    def top(user: str, name: str) -> dict[str, tarfile.TarInfo]:
        _build([*argv, "--user", user, "-o", f"oci:{tmp_path / 'out'}:{name}"], capsys)
        image = read_oci(tmp_path / "out", tag=name)
        members = image.layer_members(len(image.layer_digests) - 1)
        if "etc/passwd" in members:
            files[name] = image.layer_file(len(image.layer_digests) - 1, "etc/passwd").decode()
        if "etc/group" in members:
            groups[name] = image.layer_file(len(image.layer_digests) - 1, "etc/group").decode()
        return members

    files: dict[str, str] = {}
    groups: dict[str, str] = {}
    # users and groups the base has: nothing to add (the base's files stay as they are)
    for number, user in enumerate(["nobody", "svc", "svc:users", "1000:users", "root"]):
        members = top(user, f"t{number}")
        assert "etc/passwd" not in members, user
        assert "etc/group" not in members, user
    # a new user: the base's lines and one more, with the first free uid, its home owned by it
    members = top("app", "new")
    assert files["new"].splitlines() == [
        "root:x:0:0:root:/root:/bin/sh",
        "nobody:x:65534:65534:nobody:/nonexistent:/bin/false",
        "svc:x:1000:1000:svc:/srv:/bin/sh",
        "app:x:1001:1001:app:/home/app:/bin/sh",
    ]
    assert groups["new"].splitlines() == ["root:x:0:", "svc:x:1000:", "users:x:100:", "app:x:1001:"]
    assert (members["home/app"].uid, members["home/app"].gid) == (1001, 1001)
    members = top("app:users", "grouped")
    assert files["grouped"].splitlines()[-1] == "app:x:1001:100:app:/home/app:/bin/sh"
    assert "etc/group" not in members
    # an --extra /etc/passwd is fine when --user needs none written (svc is the base's), and
    # refused when it would replace the one written for a new user
    _build([*argv, "--user", "svc", "--extra", extra, "-o", f"oci:{tmp_path / 'out'}:e"], capsys)
    _, err = _build(
        [*argv, "--user", "app", "--extra", extra, "-o", f"oci:{tmp_path / 'out'}:f"],
        capsys,
        status=2,
    )
    _one_line_error(err, "/etc/passwd", "--user app")


def test_symlink_or_extra_tmp_replaces_the_default_tmp(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "link"
    _build(
        [
            *_base_argv(store, app_closure),
            "--no-cache",
            "--symlink",
            "/tmp=/var/tmp",
            "-o",
            f"oci:{dest}",
        ],
        capsys,
    )
    image = read_oci(dest)
    members = image.layer_members(len(image.layer_digests) - 1)
    assert members["tmp"].issym()
    assert members["tmp"].linkname == "/var/tmp"
    extra = tmp_path / "extra"
    (extra / "tmp").mkdir(parents=True)
    (extra / "tmp").chmod(0o700)
    dest = tmp_path / "extra-tmp"
    _build(
        [*_base_argv(store, app_closure), "--no-cache", "--extra", extra, "-o", f"oci:{dest}"],
        capsys,
    )
    image = read_oci(dest)
    members = image.layer_members(len(image.layer_digests) - 1)
    assert members["tmp"].mode == 0o700


def test_wrong_destination_fails_before_any_layer_is_built(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the store files gone, a build would fail (exit 3) on its first layer: an obviously
    wrong destination must be reported first."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    (tmp_path / "a-file").write_text("x")
    for dest, says in [
        (f"docker-archive:{tmp_path / 'no' / 'x.tar'}", "no directory"),
        (f"oci-archive:{tmp_path}", "is a directory"),
        (f"oci:{tmp_path / 'foreign'}", "not an OCI layout"),
        (f"oci:{tmp_path / 'a-file'}", "not a directory"),
    ]:
        _, err = _build(
            ["--closure", app_closure, "--store-root", empty, "--cache-dir", tmp_path / "cache",
             "-o", dest],
            capsys,
            status=5,
        )  # fmt: skip
        _one_line_error(err, says)
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "cache").exists()


def test_first_failing_layer_stops_the_build(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With one job, the bottom layer fails first and the layers queued above it never start:
    the cache holds nothing afterwards."""
    shutil.rmtree(store.files(GLIBC))
    both = store.closure_file(tmp_path / "both.json", [APP, TOOL])
    cache = tmp_path / "cache"
    _, err = _build(
        [*_base_argv(store, both), "--strategy", "per-item", "--jobs", "1", "--cache-dir", cache,
         "-o", f"oci:{tmp_path / 'out'}"],
        capsys,
        status=3,
    )  # fmt: skip
    _one_line_error(err, GLIBC, "not found")
    assert not [p for p in cache.rglob("*") if p.is_file() and "blobs" in p.parts]
    assert not (tmp_path / "out").exists()


def test_tags(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*_base_argv(store, app_closure), "--cache-dir", tmp_path / "cache"]
    cases = [
        ([], f"docker-archive:{tmp_path / 'a.tar'}", ["app:latest"]),  # the closure's name
        (["--tag", "app:1.0"], f"docker-archive:{tmp_path / 'b.tar'}", ["app:1.0"]),
        (["--tag", "app"], f"docker-archive:{tmp_path / 'c.tar'}", ["app:latest"]),
        (["--tag", "also:x"], f"docker-archive:{tmp_path / 'd.tar'}:reg.io/team/app:2",
         ["reg.io/team/app:2", "also:x"]),
    ]  # fmt: skip
    for extra, dest, repo_tags in cases:
        _build([*argv, *extra, "-o", dest], capsys)
        manifest, _ = read_docker_archive(Path(dest.split(":")[1]))
        assert manifest[0]["RepoTags"] == repo_tags
    layout = tmp_path / "layout"
    _build([*argv, "--tag", "app:v3", "-o", f"oci:{layout}"], capsys)
    _build([*argv, "--env", "X=1", "-o", f"oci:{layout}:v4"], capsys)
    _build([*argv, "-o", f"oci:{layout}"], capsys)
    refs = sorted(
        m["annotations"]["org.opencontainers.image.ref.name"]
        for m in read_oci(layout, tag="v3").index["manifests"]
    )
    assert refs == ["latest", "v3", "v4"]
    assert read_oci(layout, tag="v4").config["config"]["Env"] == ["X=1"]
    assert "Env" not in read_oci(layout, tag="v3").config["config"]


def test_bad_source_date_epoch(
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for value in ("yesterday", "-1", "99999999999"):  # the last one: too late for tar
        monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
        _, err = _build(
            [*_base_argv(store, app_closure), "--no-cache", "-o", f"oci:{tmp_path / 'x'}"],
            capsys,
            status=2,
        )
        _one_line_error(err, "SOURCE_DATE_EPOCH", value)
    assert not (tmp_path / "x").exists()
    # --created wins over a bad SOURCE_DATE_EPOCH, which is then not read at all
    _build(
        [
            *_base_argv(store, app_closure),
            "--no-cache",
            "--created",
            "3",
            "-o",
            f"oci:{tmp_path / 'y'}",
        ],
        capsys,
    )
    assert read_oci(tmp_path / "y").config["created"] == "1970-01-01T00:00:03Z"


def test_created_after_what_tar_holds_is_refused_before_any_work(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Tar headers hold mtimes up to 8**11 - 1 seconds (2242-03-16); --created accepts dates up
    # to 9999, so a later one is refused, naming --created, before any layer or cache is made.
    cache = tmp_path / "cache"
    argv = [*_base_argv(store, app_closure), "--cache-dir", cache, "-o", f"oci:{tmp_path / 'x'}"]
    _, err = _build([*argv, "--created", "2300-01-01"], capsys, status=2)
    _one_line_error(err, "--created 10413792000", "2242-03-16")
    assert not (tmp_path / "x").exists()
    assert not cache.exists()
    _build([*argv, "--created", str(8**11 - 1)], capsys)  # the last second that fits
    assert read_oci(tmp_path / "x").config["created"] == "2242-03-16T12:56:31Z"


def test_failed_build_leaves_existing_cache_entries_intact(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    both = store.closure_file(tmp_path / "both.json", [APP, TOOL])
    cache = tmp_path / "cache"
    argv = [*_base_argv(store, both), "--strategy", "per-item", "--cache-dir", cache,
            "--cmd", "/bin/app"]  # fmt: skip
    first = tmp_path / "first.tar"
    _build([*argv, "-o", f"docker-archive:{first}"], capsys)
    entries = {p: p.read_bytes() for p in cache.rglob("*") if p.is_file() and "blobs" in p.parts}
    assert len(entries) == 5
    # the same layers again, one of them now unreadable: a fifo appears in TOOL
    os.mkfifo(store.files(TOOL) / "lib" / "fifo")
    _, err = _build([*argv, "--no-tmp", "-o", f"docker-archive:{tmp_path / 'x.tar'}"], capsys)
    assert err == ""  # all five come from the cache: the store is not read at all
    shutil.rmtree(store.files(ZLIB))
    moved = store.closure_file(tmp_path / "zlib.json", [ZLIB])  # a layer the cache lacks
    _, err = _build(
        [*_base_argv(store, moved), "--cache-dir", cache, "--strategy", "single",
         "-o", f"docker-archive:{tmp_path / 'y.tar'}"],
        capsys,
        status=3,
    )  # fmt: skip
    _one_line_error(err, ZLIB)
    after = {p: p.read_bytes() for p in cache.rglob("*") if p.is_file() and "blobs" in p.parts}
    assert after == entries
    shutil.rmtree(store.root)
    again = tmp_path / "again.tar"
    _build([*argv, "-o", f"docker-archive:{again}"], capsys)
    assert again.read_bytes() == first.read_bytes()


def test_cache_max_size_evicts_least_recently_used_layers(tmp_path: Path) -> None:
    """--cache-max-size bounds the cache: the layers of an older build are evicted first, the
    ones this build uses are kept."""
    store = make_store(tmp_path / "store")
    for index, path in enumerate(store.graph):
        (store.files(path) / "lib" / "blob.bin").write_bytes(os.urandom(100_000 + index))
    closure = store.closure_file(tmp_path / "closure.json", [APP, TOOL])
    cache = tmp_path / "cache"
    blobs = cache / "blobs" / "sha256"
    common = ["build", "--closure", closure, "--store-root", store.root, "-q"]
    common += ["--compression", "none", "--cache-dir", cache, "--no-tmp"]
    args = [*common, "--strategy", "per-item", "-o", f"oci:{tmp_path / 'a'}"]
    assert main([str(a) for a in [*args, "--cache-max-size", "none"]]) == 0
    assert sum(p.stat().st_size for p in blobs.iterdir()) > 500_000

    args = [*common, "--strategy", "single", "-o", f"oci:{tmp_path / 'b'}"]
    assert main([str(a) for a in [*args, "--cache-max-size", "600K"]]) == 0
    sizes = {p.name: p.stat().st_size for p in blobs.iterdir()}
    assert 500_000 < sum(sizes.values()) <= 600 * 1024
    single = read_oci(tmp_path / "b").layer_digests
    assert [d.split(":")[1] for d in single] == list(sizes)


def test_cache_max_size_must_be_a_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = make_store(tmp_path / "store")
    closure = store.closure_file(tmp_path / "closure.json", [APP])
    argv = ["build", "--closure", closure, "--store-root", store.root, "--cache-max-size", "lots"]
    status, _, err = run([*argv, "-o", f"oci:{tmp_path / 'x'}"], capsys)
    assert status == 2
    assert "--cache-max-size 'lots'" in err
    assert not (tmp_path / "x").exists()


def test_cache_verify_full_rehashes_a_blob_whose_mtime_was_kept(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--cache-verify full catches a cached blob changed in place with its mtime restored
    (which the default check, by size and mtime, cannot see) and rebuilds the layer."""
    cache = tmp_path / "cache"
    args = ["build", "--closure", app_closure, "--store-root", store.root, "-q"]
    args += ["--cache-dir", cache, "--strategy", "per-item", "--compression", "none"]
    status, first, _ = run([*args, "-o", f"oci:{tmp_path / 'a'}"], capsys)
    assert status == 0
    blob = max((cache / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    before = blob.stat()
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    os.utime(blob, ns=(before.st_atime_ns, before.st_mtime_ns))

    status, second, _ = run(
        [*args, "--cache-verify", "full", "-o", f"oci:{tmp_path / 'b'}"], capsys
    )
    assert status == 0
    assert second == first
    assert run(["verify", f"oci:{tmp_path / 'b'}"], capsys)[0] == 0


def test_an_oci_archive_path_holding_something_else_fails_before_any_layer_is_built(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "notes.txt"
    dest.write_text("precious")
    cache = tmp_path / "cache"
    argv = ["build", "--closure", app_closure, "--store-root", store.root]
    status, out, err = run([*argv, "--cache-dir", cache, "-o", f"oci-archive:{dest}"], capsys)
    assert status == 5
    assert out == ""
    assert "not an OCI archive" in err
    assert err.count("\n") == 1
    assert dest.read_text() == "precious"
    assert not (cache / "keys").exists() or not any((cache / "keys").iterdir())
