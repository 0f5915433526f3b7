"""closurepack diff: real images of an old and an updated closure, and plans, compared."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from clistore import (
    APP,
    GLIBC,
    GRAPH,
    LIBFOO,
    TOOL,
    ZLIB,
    Store,
    item,
    make_store,
    read_docker_archive,
    read_oci,
    run,
)
from closurepack.storenames import split_name

# The update: app 1.0 -> 1.1, libfoo rebuilt at the same version (it no longer needs zlib, so
# zlib leaves the closure), and the new app needs a new item, newdep.
APP2 = item("6", "app-1.1")
LIBFOO2 = item("7", "libfoo-1.0")
NEWDEP = item("8", "newdep-0.1")
UPDATED = {
    **GRAPH,
    LIBFOO2: ((GLIBC,), 5200),
    NEWDEP: ((GLIBC,), 700),
    APP2: ((LIBFOO2, NEWDEP, GLIBC), 1100),
}


@pytest.fixture
def updated(tmp_path: Path) -> Store:
    return make_store(tmp_path / "root", UPDATED)


def _build(store: Store, closure: Path, dest: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["build", "-q", "--closure", closure, "--store-root", store.root, "--no-cache"]
    status, _, err = run([*argv, "--strategy", "per-item", "--cmd", "app", "-o", dest], capsys)
    assert status == 0, err


def _diff_json(argv: list[Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    status, out, err = run(["diff", "--json", *argv], capsys)
    assert status == 0, err
    result: dict[str, Any] = json.loads(out)
    jsonschema.validate(result, DIFF_SCHEMA)
    return result


_LAYER = {
    "type": "object",
    "required": ["status", "size", "paths", "index", "old_index", "replaces", "diff_id"],
    "additionalProperties": False,
    "properties": {
        "status": {"enum": ["kept", "changed", "added", "removed"]},
        "size": {"type": "integer", "minimum": 0},
        "paths": {"type": "array", "items": {"type": "string"}},
        "index": {"type": ["integer", "null"]},
        "old_index": {"type": ["integer", "null"]},
        "replaces": {"type": "array", "items": {"type": "integer"}},
        "diff_id": {"type": ["string", "null"]},
    },
}
_SIDE = {
    "type": "object",
    "required": ["source", "kind", "layers", "size"],
    "properties": {
        "source": {"type": "string"},
        "kind": {"enum": ["image", "plan"]},
        "layers": {"type": "integer"},
        "size": {"type": "integer"},
    },
}
_CHANGE = {
    "type": "object",
    "required": ["name", "old_path", "new_path", "old_version", "new_version"],
    "properties": {k: {"type": "string"} for k in ("name", "old_path", "new_path")},
}
DIFF_SCHEMA = {
    "type": "object",
    "required": [
        "format", "version", "old", "new", "size_kind", "summary", "pull_bytes",
        "pull_bytes_chain", "layers", "items",
    ],
    "properties": {
        "format": {"const": "closurepack-diff"},
        "version": {"const": 1},
        "old": _SIDE,
        "new": _SIDE,
        "size_kind": {"enum": ["compressed", "nar"]},
        "summary": {
            "type": "object",
            "required": ["kept", "changed", "added", "removed"],
            "additionalProperties": {"type": "integer"},
        },
        "pull_bytes": {"type": "integer"},
        "pull_bytes_chain": {"type": "integer"},
        "layers": {"type": "array", "items": _LAYER},
        "items": {
            "type": "object",
            "required": ["added", "removed", "changed", "kept"],
            "properties": {
                "added": {"type": "array", "items": {"type": "string"}},
                "removed": {"type": "array", "items": {"type": "string"}},
                "changed": {"type": "array", "items": _CHANGE},
                "kept": {"type": "integer"},
            },
        },
    },
}  # fmt: skip


def _oci_archive_manifest(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, config) of an oci-archive with one image, read with tarfile and json only."""
    with tarfile.open(path) as tar:

        def blob(digest: str) -> Any:
            handle = tar.extractfile(f"blobs/sha256/{digest.split(':', 1)[1]}")
            assert handle is not None
            return json.loads(handle.read())

        index_file = tar.extractfile("index.json")
        assert index_file is not None
        manifest = blob(json.loads(index_file.read())["manifests"][0]["digest"])
        return manifest, blob(manifest["config"]["digest"])


def test_diff_of_real_images_counts_layers_bytes_and_items(
    updated: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old_closure = updated.closure_file(tmp_path / "old.json", [APP])
    new_closure = updated.closure_file(tmp_path / "new.json", [APP2])
    _build(updated, old_closure, f"docker-archive:{tmp_path / 'old.tar'}", capsys)
    _build(updated, old_closure, f"oci-archive:{tmp_path / 'old-oci.tar'}", capsys)
    _build(updated, new_closure, f"oci:{tmp_path / 'new'}:v2", capsys)

    new_image = read_oci(tmp_path / "new")
    new_ids = new_image.config["rootfs"]["diff_ids"]
    sizes = {
        d: layer["size"] for d, layer in zip(new_ids, new_image.manifest["layers"], strict=True)
    }
    _, old_config = read_docker_archive(tmp_path / "old.tar")
    old_ids = old_config["rootfs"]["diff_ids"]
    expected_pull = sum(size for d, size in sizes.items() if d not in old_ids)
    oci_manifest, oci_config = _oci_archive_manifest(tmp_path / "old-oci.tar")
    assert oci_config["rootfs"]["diff_ids"] == old_ids  # the same image in both archives
    # under the ChainID rule everything above the longest common bottom run is pulled
    common = next(i for i, (a, b) in enumerate(zip(old_ids, new_ids, strict=False)) if a != b)
    expected_chain = sum(sizes[d] for d in new_ids[common:])

    for old in (f"docker-archive:{tmp_path / 'old.tar'}", str(tmp_path / "old-oci.tar"),
                f"oci-archive:{tmp_path / 'old-oci.tar'}"):  # fmt: skip
        result = _diff_json([old, f"oci:{tmp_path / 'new'}:v2"], capsys)
        # glibc and the customisation layer are kept; app and libfoo changed; newdep added;
        # zlib removed
        assert result["summary"] == {"kept": 2, "changed": 2, "added": 1, "removed": 1}, old
        assert result["pull_bytes"] == expected_pull > 0
        assert result["pull_bytes_chain"] == expected_chain >= expected_pull
        assert result["size_kind"] == "compressed"
        assert result["items"]["added"] == [NEWDEP]
        assert result["items"]["removed"] == [ZLIB]
        assert result["items"]["kept"] == 1
        assert result["items"]["changed"] == [
            {"name": "app", "old_path": APP, "new_path": APP2,
             "old_version": "1.0", "new_version": "1.1"},
            {"name": "libfoo", "old_path": LIBFOO, "new_path": LIBFOO2,
             "old_version": "1.0", "new_version": "1.0"},
        ]  # fmt: skip
        by_status = {s: [la for la in result["layers"] if la["status"] == s] for s in _STATUSES}
        assert [la["paths"] for la in by_status["removed"]] == [[ZLIB]]
        assert sorted(la["paths"][0] for la in by_status["changed"]) == sorted([APP2, LIBFOO2])
        kept_ids = {la["diff_id"] for la in by_status["kept"]}
        assert kept_ids == set(new_ids) & set(old_ids)
    assert len(oci_manifest["layers"]) == len(old_ids)

    status, out, err = run(["diff", str(tmp_path / "old.tar"), str(tmp_path / "new")], capsys)
    assert status == 0, err
    assert "2 kept, 2 changed, 1 added, 1 removed" in out
    assert "app: 1.0 -> 1.1" in out
    assert "libfoo: 1.0 (rebuilt)" in out
    assert f"added items:\n  {NEWDEP}" in out
    assert f"removed items:\n  {ZLIB}" in out


_STATUSES = ("kept", "changed", "added", "removed")


def test_an_image_against_itself_keeps_everything(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _build(store, app_closure, f"oci:{tmp_path / 'img'}", capsys)
    result = _diff_json([f"oci:{tmp_path / 'img'}", tmp_path / "img"], capsys)
    layers = len(read_oci(tmp_path / "img").manifest["layers"])
    assert result["summary"] == {"kept": layers, "changed": 0, "added": 0, "removed": 0}
    assert result["pull_bytes"] == result["pull_bytes_chain"] == 0
    assert result["items"] == {"added": [], "removed": [], "changed": [], "kept": 4}


def test_diff_of_plans_uses_item_sets_and_nar_sizes(
    updated: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old_closure = updated.closure_file(tmp_path / "old.json", [APP])
    new_closure = updated.closure_file(tmp_path / "new.json", [APP2])
    tool_closure = updated.closure_file(tmp_path / "tool.json", [TOOL])
    old_plan, new_plan, fleet = tmp_path / "old.plan", tmp_path / "new.plan", tmp_path / "f.plan"
    for closures, out in (
        ([old_closure], old_plan),
        ([new_closure], new_plan),
        ([new_closure, tool_closure], fleet),
    ):
        argv = ["plan", "--strategy", "per-item", "-o", out]
        status, _, err = run([*argv, *(a for c in closures for a in ("--closure", c))], capsys)
        assert status == 0, err
    result = _diff_json([old_plan, new_plan], capsys)
    assert result["size_kind"] == "nar"
    assert result["summary"] == {"kept": 1, "changed": 2, "added": 1, "removed": 1}
    new_layers = json.loads(new_plan.read_text())["images"][0]["layers"]
    old_sets = [set(la["paths"]) for la in json.loads(old_plan.read_text())["images"][0]["layers"]]
    expected = sum(la["size"] for la in new_layers if set(la["paths"]) not in old_sets)
    assert result["pull_bytes"] == expected == UPDATED[APP2][1] + UPDATED[LIBFOO2][1] + 700
    assert [c["name"] for c in result["items"]["changed"]] == ["app", "libfoo"]

    # a plan with several images needs --image (index or name); --old-image for OLD alone
    status, out, err = run(["diff", old_plan, fleet], capsys)
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1
    assert f"{fleet}: the plan has 2 images" in err
    by_name = _diff_json([old_plan, fleet, "--image", "new", "--old-image", "0"], capsys)
    by_index = _diff_json([old_plan, fleet, "--image", "0"], capsys)
    assert by_name["summary"] == by_index["summary"] == result["summary"]
    assert by_name["pull_bytes"] == result["pull_bytes"]
    tool = _diff_json([old_plan, fleet, "--image", "tool", "--old-image", "0"], capsys)
    assert tool["items"]["added"] == [TOOL]


def test_plan_against_image_compares_item_sets(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "app.plan"
    status, _, err = run(
        ["plan", "--closure", app_closure, "--strategy", "per-item", "-o", plan], capsys
    )
    assert status == 0, err
    _build(store, app_closure, f"oci:{tmp_path / 'img'}", capsys)
    result = _diff_json([plan, f"oci:{tmp_path / 'img'}"], capsys)
    # the four store layers match by their items; the image's customisation layer is added
    assert result["summary"] == {"kept": 4, "changed": 0, "added": 1, "removed": 0}
    top = read_oci(tmp_path / "img").manifest["layers"][-1]
    assert result["pull_bytes"] == top["size"]


@pytest.mark.parametrize(
    ("make", "must_say"),
    [
        (lambda d: d / "missing", "no such plan file or image"),
        (lambda d: _write(d / "junk.bin", b"\x00\x01 junk"), "neither a plan (JSON) nor"),
        (lambda d: _write(d / "bad.json", b"{oops"), "not valid JSON"),
        (lambda d: f"oci:{d / 'nolayout'}", "does not exist"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    make: Any, must_say: str, app_closure: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    plan = tmp_path / "ok.plan"
    status, _, err = run(["plan", "--closure", app_closure, "-o", plan], capsys)
    assert status == 0, err
    bad = str(make(tmp_path))
    for argv in ([bad, plan], [plan, bad]):
        status, out, err = run(["diff", *argv], capsys)
        assert status == 2, err
        assert out == ""
        assert err.count("\n") == 1
        assert must_say in err
        assert bad.rsplit(":", maxsplit=1)[-1] in err


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (APP, ("app", "1.0")),
        ("/nix/store/" + "a" * 32 + "-openssl-3.0.13-bin", ("openssl", "3.0.13-bin")),
        ("/nix/store/" + "a" * 32 + "-python3.11-requests-2.31", ("python3.11-requests", "2.31")),
        ("/nix/store/" + "a" * 32 + "-hello", ("hello", "")),
        ("/nix/store/" + "a" * 32 + "-source", ("source", "")),
        ("/gnu/store/" + "a" * 32 + "-guile-3.0.9-debug", ("guile", "3.0.9-debug")),
    ],
)
def test_split_name_follows_parse_drv_name(path: str, expected: tuple[str, str]) -> None:
    assert split_name(path) == expected


def test_several_outputs_of_a_package_pair_by_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def plan(name: str, paths: list[str]) -> Path:
        obj = {"store_dir": "/nix/store", "images": [{"layers": [{"paths": paths, "size": 1}]}]}
        (tmp_path / name).write_text(json.dumps(obj))
        return tmp_path / name

    old = plan("old.json", [item("a", "openssl-3.0.13"), item("b", "openssl-3.0.13-bin")])
    new = plan("new.json", [item("c", "openssl-3.0.14"), item("d", "openssl-3.0.14-bin")])
    result = _diff_json([old, new], capsys)
    assert [(c["old_version"], c["new_version"]) for c in result["items"]["changed"]] == [
        ("3.0.13", "3.0.14"),
        ("3.0.13-bin", "3.0.14-bin"),
    ]
    assert result["summary"] == {"kept": 0, "changed": 1, "added": 0, "removed": 0}
    assert result["items"]["added"] == result["items"]["removed"] == []


@pytest.mark.integration
def test_diff_reads_registry_images(
    updated: Store, registry: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old_closure = updated.closure_file(tmp_path / "old.json", [APP])
    new_closure = updated.closure_file(tmp_path / "new.json", [APP2])
    _build(updated, old_closure, f"docker://{registry.host}/app:1", capsys)
    _build(updated, new_closure, f"docker://{registry.host}/app:2", capsys)
    _build(updated, new_closure, f"oci:{tmp_path / 'new'}", capsys)  # the same bytes, to read
    result = _diff_json(
        [f"docker://{registry.host}/app:1", f"docker://{registry.host}/app:2"], capsys
    )
    assert result["summary"] == {"kept": 2, "changed": 2, "added": 1, "removed": 1}
    manifest = read_oci(tmp_path / "new").manifest
    kept = {la["diff_id"] for la in result["layers"] if la["status"] == "kept"}
    ids = read_oci(tmp_path / "new").config["rootfs"]["diff_ids"]
    sizes = [la["size"] for la in manifest["layers"]]
    assert result["pull_bytes"] == sum(s for d, s in zip(ids, sizes, strict=True) if d not in kept)
    assert [c["name"] for c in result["items"]["changed"]] == ["app", "libfoo"]


def test_unwritable_html_is_one_line(
    app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "ok.plan"
    status, _, err = run(["plan", "--closure", app_closure, "-o", plan], capsys)
    assert status == 0, err
    html = tmp_path / "no-such-dir" / "page.html"
    for argv in (
        ["diff", plan, plan, "--html", html],
        ["plan", "--closure", app_closure, "--html", html],
    ):
        status, out, err = run(argv, capsys)
        assert status == 5, err
        assert out == ""
        assert err.count("\n") == 1
        assert f"{html}: cannot write the HTML page" in err
    assert not html.parent.exists()
