"""`closurepack build-layer`, `assemble`, `verify` and `inspect` through ``cli.main``: layers
built one by one and assembled equal a direct build; corrupt blobs and tampered images are
reported, one line per problem."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from clistore import APP, GLIBC, LIBFOO, TOOL, ZLIB, Store, read_oci, run


@pytest.fixture(autouse=True)
def _no_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


@pytest.fixture
def plan(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    closure = store.closure_file(tmp_path / "app.json", [APP])
    out = tmp_path / "plan.json"
    status, _, err = run(
        ["plan", "--closure", closure, "--strategy", "popularity", "--max-layers", "4", "-o", out],
        capsys,
    )
    assert status == 0, err
    return out


def _ok(argv: list[object], capsys: pytest.CaptureFixture[str]) -> str:
    status, out, err = run(argv, capsys)
    assert status == 0, err
    return out


def _fails(argv: list[object], capsys: pytest.CaptureFixture[str], status: int, *says: str) -> str:
    code, out, err = run(argv, capsys)
    assert code == status, err
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for text in says:
        assert text in err, (text, err)
    return err


def _plan_layers(plan: Path) -> list[list[str]]:
    return [layer["paths"] for layer in json.loads(plan.read_text())["images"][0]["layers"]]


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_layers_built_one_by_one_assemble_to_the_direct_build(
    compression: str,
    store: Store,
    plan: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    layers = _plan_layers(plan)
    assert len(layers) == 3
    dirs = []
    for number in range(len(layers)):
        out_dir = tmp_path / "layers" / str(number)
        printed = _ok(
            ["build-layer", "--plan", plan, "--layer", number, "--store-root", store.root,
             "--compression", compression, "--mtime", "7", "-o", out_dir],
            capsys,
        )  # fmt: skip
        assert printed.strip() == str(out_dir / "layer.json")
        descriptor = json.loads((out_dir / "layer.json").read_text())
        assert descriptor["paths"] == layers[number]
        assert (out_dir / descriptor["blob"]).stat().st_size == descriptor["size"]
        dirs.append(out_dir)
    common = ["--compression", compression, "--created", "7", "--mtime", "7",
              "--entrypoint", f"{APP}/bin/app"]  # fmt: skip
    assembled = tmp_path / "assembled"
    digest = _ok(["assemble", *dirs, *common, "-o", f"oci:{assembled}"], capsys)
    direct = tmp_path / "direct"
    digest2 = _ok(
        ["build", "--plan", plan, "--store-root", store.root, "--no-cache", *common,
         "-o", f"oci:{direct}"],
        capsys,
    )  # fmt: skip
    assert digest == digest2
    one, two = read_oci(assembled), read_oci(direct)
    assert one.layer_digests == two.layer_digests
    assert one.config == two.config
    # descriptor files work as well as their directories
    again = _ok(
        ["assemble", *(d / "layer.json" for d in dirs), *common, "-o", f"oci:{tmp_path / 'x'}"],
        capsys,
    )
    assert again == digest


def test_build_layer_from_store_paths_equals_the_plan_layer(
    store: Store, plan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layers = _plan_layers(plan)
    number = next(i for i, paths in enumerate(layers) if len(paths) > 1)
    from_plan = tmp_path / "from-plan"
    _ok(["build-layer", "--plan", plan, "--layer", number, "--store-root", store.root,
         "-o", from_plan], capsys)  # fmt: skip
    from_paths = tmp_path / "from-paths"
    _ok(["build-layer", *reversed(layers[number]), "--store-root", store.root,
         "-o", from_paths], capsys)  # fmt: skip
    one = json.loads((from_plan / "layer.json").read_text())
    two = json.loads((from_paths / "layer.json").read_text())
    assert one == two
    assert (from_plan / one["blob"]).read_bytes() == (from_paths / two["blob"]).read_bytes()


def test_build_layer_ignores_source_date_epoch_and_takes_mtime(
    store: Store,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _ok(["build-layer", GLIBC, "--store-root", store.root, "-o", tmp_path / "plain"], capsys)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    _ok(["build-layer", GLIBC, "--store-root", store.root, "-o", tmp_path / "sde"], capsys)
    _ok(["build-layer", GLIBC, "--store-root", store.root, "--mtime", "5",
         "-o", tmp_path / "mtime"], capsys)  # fmt: skip
    plain, sde, mtime = (
        json.loads((tmp_path / name / "layer.json").read_text())
        for name in ("plain", "sde", "mtime")
    )
    assert plain["digest"] == sde["digest"]
    assert mtime["digest"] != plain["digest"]
    _fails(["build-layer", GLIBC, "--mtime", "", "-o", tmp_path / "x"], capsys, 2, "--mtime ''")


def test_build_layer_bad_input(
    store: Store, plan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    _fails(["build-layer", "--plan", plan, "--layer", "3", "-o", out], capsys, 2,
           "--layer", "between 0 and 2", str(plan))  # fmt: skip
    _fails(["build-layer", "--plan", plan, "-o", out], capsys, 2, "--layer")
    _fails(["build-layer", "-o", out], capsys, 2, "--plan", "store paths")
    _fails(["build-layer", "--plan", plan, "--layer", "0", APP, "-o", out], capsys, 2, "not both")
    _fails(["build-layer", "--plan", plan, "--layer", "0", "--image", "5", "-o", out], capsys, 2,
           "no image 5")  # fmt: skip
    assert not out.exists()
    # a missing store item: nothing is left behind, not even the directory
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(["build-layer", "--plan", plan, "--layer", "0", "--store-root", empty, "-o", out],
           capsys, 3, "not found", str(empty))  # fmt: skip
    assert not out.exists()
    # into an existing directory: it stays, without a descriptor or blob
    out.mkdir()
    (out / "keep").write_text("x")
    _fails(["build-layer", GLIBC, "--store-root", empty, "-o", out], capsys, 3, GLIBC)
    assert os.listdir(out) == ["keep"]


def _built_layers(
    store: Store, plan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> list[Path]:
    dirs = []
    for number in range(len(_plan_layers(plan))):
        out_dir = tmp_path / "layers" / str(number)
        _ok(["build-layer", "--plan", plan, "--layer", number, "--store-root", store.root,
             "-o", out_dir], capsys)  # fmt: skip
        dirs.append(out_dir)
    return dirs


def _blob(layer_dir: Path) -> Path:
    return layer_dir / json.loads((layer_dir / "layer.json").read_text())["blob"]


def test_assemble_rejects_a_corrupt_blob_before_writing(
    store: Store, plan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dirs = _built_layers(store, plan, tmp_path, capsys)
    archive = tmp_path / "image.tar"
    blob = _blob(dirs[1])
    good = blob.read_bytes()
    # one byte more: the size no longer matches
    blob.write_bytes(good + b"x")
    _fails(["assemble", *dirs, "-o", f"docker-archive:{archive}"], capsys, 4,
           str(dirs[1] / "layer.json"), f"{len(good) + 1} bytes", str(len(good)))  # fmt: skip
    # same size, one byte changed: the digest no longer matches
    blob.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    _fails(["assemble", *dirs, "-o", f"docker-archive:{archive}"], capsys, 4,
           str(dirs[1] / "layer.json"), "digest")  # fmt: skip
    # the blob is gone
    blob.unlink()
    _fails(["assemble", *dirs, "-o", f"docker-archive:{archive}"], capsys, 4,
           str(dirs[1] / "layer.json"), "cannot read blob")  # fmt: skip
    assert not archive.exists()
    # a descriptor that is not one
    (tmp_path / "bogus.json").write_text('{"format": "something-else"}')
    _fails(["assemble", tmp_path / "bogus.json", "-o", f"docker-archive:{archive}"], capsys, 4,
           "bogus.json", "not a closurepack layer descriptor")  # fmt: skip
    (tmp_path / "broken.json").write_text("{")
    _fails(["assemble", tmp_path / "broken.json", "-o", f"docker-archive:{archive}"], capsys, 4,
           "broken.json")  # fmt: skip
    _fails(["assemble", tmp_path / "absent", "-o", f"docker-archive:{archive}"], capsys, 2,
           "absent", "does not exist")  # fmt: skip
    _fails(["assemble", dirs[0], "-o", "nowhere:x"], capsys, 2, "nowhere:x")
    assert not archive.exists()


def test_assemble_with_customisation_and_from(
    store: Store, plan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dirs = _built_layers(store, plan, tmp_path, capsys)
    base_closure = store.closure_file(tmp_path / "tool.json", [TOOL])
    base = tmp_path / "base.tar"
    _ok(["build", "--closure", base_closure, "--store-root", store.root, "--strategy", "single",
         "--no-cache", "--no-tmp", "--env", "LANG=C", "-o", f"docker-archive:{base}"],
        capsys)  # fmt: skip
    dest = tmp_path / "layout"
    _ok(["assemble", *dirs, "--from", f"docker-archive:{base}", "--symlink", f"/bin={APP}/bin",
         "--env", "A=1", "-o", f"oci:{dest}:v2"], capsys)  # fmt: skip
    image = read_oci(dest, tag="v2")
    assert len(image.manifest["layers"]) == 1 + 3 + 1
    assert sorted(image.config["config"]["Env"]) == ["A=1", "LANG=C"]
    assert image.layer_members(4)["bin"].linkname == f"{APP}/bin"
    assert _ok(["verify", f"oci:{dest}:v2"], capsys).strip() == f"oci:{dest}:v2: ok"


# verify and inspect -----------------------------------------------------------------------------


@pytest.fixture
def layout(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    closure = store.closure_file(tmp_path / "both.json", [APP, TOOL])
    dest = tmp_path / "layout"
    _ok(["build", "--closure", closure, "--store-root", store.root, "--strategy", "per-item",
         "--no-cache", "--label", "team=core", "-o", f"oci:{dest}"], capsys)  # fmt: skip
    return dest


def test_verify_a_good_image(layout: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(["verify", f"oci:{layout}"], capsys)
    assert (status, out, err) == (0, f"oci:{layout}: ok\n", "")


def test_verify_lists_every_problem_of_a_tampered_image(
    layout: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = read_oci(layout)
    blobs = layout / "blobs" / "sha256"
    tampered = [image.layer_digests[0], image.layer_digests[3]]
    for digest in tampered:
        path = blobs / digest[7:]
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.chmod(0o644)
        path.write_bytes(bytes(data))
    (blobs / image.layer_digests[5][7:]).unlink()
    status, out, err = run(["verify", f"oci:{layout}"], capsys)
    assert status == 4
    assert out == ""
    lines = err.splitlines()
    assert "Traceback" not in err
    for digest in [*tampered, image.layer_digests[5]]:
        assert any(digest[7:] in line for line in lines), digest
    assert lines[-1].startswith("closurepack: error: ")
    assert "problem" in lines[-1]
    assert len(lines) >= 4
    missing = [line for line in lines if image.layer_digests[5][7:] in line]
    assert any("missing" in line for line in missing)


def test_verify_and_inspect_of_something_that_is_no_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file.txt").write_text("hello")
    for command in ("verify", "inspect"):
        # sources: bad input (2), never the destination status (5), never called a destination
        err = _fails([command, f"docker-archive:{tmp_path / 'file.txt'}"], capsys, 2, "file.txt")
        assert "destination" not in err
        err = _fails([command, f"oci:{tmp_path / 'none'}"], capsys, 2, "none", "no such image")
        assert "destination" not in err
        _fails([command, "-"], capsys, 2, "standard output")
        err = _fails([command, "http://example"], capsys, 2, "image 'http://example'")
        assert "destination" not in err


def test_inspect_text_shows_layers_sizes_and_items(
    layout: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _ok(["inspect", f"oci:{layout}"], capsys)
    image = read_oci(layout)
    assert image.manifest["config"]["digest"] in out
    for descriptor in image.manifest["layers"]:
        assert descriptor["digest"][:19] in out
    for path in (GLIBC, ZLIB, LIBFOO, APP, TOOL):
        assert path in out
    assert "customisation" in out
    summary = next(line.split() for line in out.splitlines() if line.startswith("total"))
    assert summary[:3] == ["total", "6", "layers,"]
    assert summary[4:] in (["KiB", "compressed"], ["B", "compressed"])


def test_inspect_text_config_fields_units_and_counts(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = store.files(GLIBC) / "lib" / "big.bin"
    big.write_bytes(os.urandom(3 << 20))  # incompressible: the layer is about 3 MiB
    dest = tmp_path / "one"
    _ok(["build", GLIBC, "--store-root", store.root, "--no-cache", "--no-tmp",
         "--expose", "8080", "--expose", "53/udp", "--volume", "/data", "-o", f"oci:{dest}"],
        capsys)  # fmt: skip
    out = _ok(["inspect", f"oci:{dest}"], capsys)
    lines = out.splitlines()
    assert "ExposedPorts 53/udp 8080/tcp" in lines
    assert "Volumes      /data" in lines
    assert "{" not in out  # no dict repr anywhere
    total = next(line for line in lines if line.startswith("total"))
    assert total.split()[1:3] == ["1", "layer,"]
    assert total.split()[4:] == ["MiB", "compressed"]
    assert float(total.split()[3]) == pytest.approx(3.0, abs=0.1)
    row = next(line for line in lines if line.startswith("    0  "))
    assert row.split()[2:6] == [total.split()[3], "MiB", "1", "store"]
    assert row.split()[6] == "item"
    plan = _ok(["plan", GLIBC, "--store-root", store.root, "--max-layers", "1"], capsys)
    assert "max 1 layer " in plan
    assert "1 store layer, 1 item, " in plan


def test_inspect_json(layout: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = json.loads(_ok(["inspect", "--json", f"oci:{layout}"], capsys))
    image = read_oci(layout)
    assert info["config_digest"] == image.manifest["config"]["digest"]
    assert [layer["digest"] for layer in info["layers"]] == image.layer_digests
    assert [layer["size"] for layer in info["layers"]] == [
        d["size"] for d in image.manifest["layers"]
    ]
    assert info["total_size"] == sum(d["size"] for d in image.manifest["layers"])
    items = [p for layer in info["layers"] for p in layer["paths"]]
    assert sorted(items) == sorted([GLIBC, ZLIB, LIBFOO, APP, TOOL])
    assert info["layers"][-1]["paths"] == []
    assert info["config"]["Labels"] == {"team": "core"}
    assert info["platform"]["os"] == "linux"


def test_verify_and_inspect_docker_archive_and_oci_archive(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    closure = store.closure_file(tmp_path / "app.json", [APP])
    infos = []
    for dest in (f"docker-archive:{tmp_path / 'a.tar'}", f"oci-archive:{tmp_path / 'b.tar'}"):
        _ok(["build", "--closure", closure, "--store-root", store.root, "--cache-dir",
             tmp_path / "cache", "-o", dest], capsys)  # fmt: skip
        assert _ok(["verify", dest], capsys) == f"{dest}: ok\n"
        info = json.loads(_ok(["inspect", "--json", dest], capsys))
        infos.append([(layer["diff_id"], layer["paths"]) for layer in info["layers"]])
    assert infos[0] == infos[1]
    shutil.rmtree(tmp_path / "cache")


def test_build_layer_store_paths_name_items(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole = tmp_path / "whole"
    _ok(["build-layer", GLIBC, "--store-root", store.root, "-o", whole], capsys)
    inside = tmp_path / "inside"
    _ok(["build-layer", f"{GLIBC}/lib/deep", "--store-root", store.root, "-o", inside], capsys)
    one = json.loads((whole / "layer.json").read_text())
    assert one == json.loads((inside / "layer.json").read_text())
    assert one["paths"] == [GLIBC]
    out = tmp_path / "out"
    gnu = "/gnu/store/" + "9" * 32 + "-bash"
    _fails(["build-layer", GLIBC, gnu, "--store-root", store.root, "-o", out], capsys, 2,
           "different stores", "/gnu/store", "/nix/store")  # fmt: skip
    _fails(["build-layer", "relative", "--store-root", store.root, "-o", out], capsys, 2,
           "relative", "not a store path")  # fmt: skip
    _fails(["build-layer", "/nix/store/../etc", "--store-root", store.root, "-o", out], capsys, 2,
           "/nix/store/../etc")  # fmt: skip
    _fails(["build-layer", GLIBC, "--layer", "0", "--store-root", store.root, "-o", out], capsys,
           2, "--layer", "--plan")  # fmt: skip
    _fails(["build-layer", GLIBC, "--store-root", store.root, "--compression", "zstd",
            "--level", "0", "-o", out], capsys, 2, "--level 0", "zstd")  # fmt: skip
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    _fails(["build-layer", GLIBC, "--store-root", store.root, "-o", a_file], capsys, 5,
           str(a_file), "cannot create")  # fmt: skip
    assert a_file.read_text() == "x"
    assert not out.exists()
