"""Multi-platform images (``build --platform OS/ARCH=CLOSURE``, repeated) written to OCI
layouts and archives: an image index over one image per platform, shared layers stored once,
read back by skopeo and by closurepack; the options that cannot go with it refused in one line
before anything is built."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from clistore import APP, GLIBC, TOOL, ZLIB, Store, build_platforms, platform_args, run
from closurepack.platforms import host_platform
from handmade import oci_validator
from runtimes import require_tool, run_tool

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"


pytestmark = pytest.mark.usefixtures("no_source_date_epoch")


def _blob(layout: Path, digest: str) -> Any:
    return json.loads((layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes())


def _layer_paths(config: dict[str, Any]) -> list[list[str]]:
    label = json.loads(config["config"]["Labels"]["dev.closurepack.layers"])
    return [label[d] for d in config["rootfs"]["diff_ids"] if d in label]


def test_oci_layout_holds_an_index_over_both_platforms(
    store: Store,
    platform_closures: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    layout = tmp_path / "layout"
    digest = build_platforms(
        store, platform_closures, f"oci:{layout}:v1", capsys, cache=tmp_path / "c"
    )

    top = json.loads((layout / "index.json").read_bytes())
    assert top["manifests"] == [
        {
            "mediaType": INDEX,
            "digest": digest,
            "size": (layout / "blobs/sha256" / digest.split(":")[1]).stat().st_size,
            "annotations": {REF_NAME: "v1"},
        }
    ]
    index = _blob(layout, digest)
    assert [e.message for e in oci_validator("image-index-schema.json").iter_errors(index)] == []
    assert [e.message for e in oci_validator("image-index-schema.json").iter_errors(top)] == []
    assert index["mediaType"] == INDEX
    assert [m["platform"] for m in index["manifests"]] == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux"},
    ]
    manifests = [_blob(layout, m["digest"]) for m in index["manifests"]]
    configs = [_blob(layout, m["config"]["digest"]) for m in manifests]
    assert [(c["os"], c["architecture"]) for c in configs] == [
        ("linux", "amd64"),
        ("linux", "arm64"),
    ]
    for manifest in manifests:
        errors = oci_validator("image-manifest-schema.json").iter_errors(manifest)
        assert [e.message for e in errors] == []
    # each image holds its own closure, nothing of the other's
    amd64_items = {p for paths in _layer_paths(configs[0]) for p in paths}
    arm64_items = {p for paths in _layer_paths(configs[1]) for p in paths}
    assert APP in amd64_items
    assert TOOL not in amd64_items
    assert TOOL in arm64_items
    assert APP not in arm64_items
    # the items both closures share are in layers both images share: one blob each
    layers = [{d["digest"] for d in m["layers"]} for m in manifests]
    shared = layers[0] & layers[1]
    assert len(shared) >= 2  # (glibc's and zlib's layers, and the customisation layer)
    assert {GLIBC, ZLIB} <= amd64_items & arm64_items
    every = layers[0] | layers[1]
    small = {m["digest"] for m in index["manifests"]} | {m["config"]["digest"] for m in manifests}
    stored = {f"sha256:{p.name}" for p in (layout / "blobs" / "sha256").iterdir()}
    assert stored == every | small | {digest}  # each blob once, nothing else

    require_tool("skopeo")
    raw = json.loads(run_tool("skopeo", "inspect", "--raw", f"oci:{layout}:v1"))
    assert raw == index
    copied = tmp_path / "copied"
    run_tool("skopeo", "copy", "--all", f"oci:{layout}:v1", f"dir:{copied}")
    listed = json.loads((copied / "manifest.json").read_bytes())
    assert [m["platform"]["architecture"] for m in listed["manifests"]] == ["amd64", "arm64"]
    for entry in index["manifests"]:
        assert (copied / f"{entry['digest'].split(':')[1]}.manifest.json").is_file()


def test_variant_is_set_in_the_config_and_the_index(
    store: Store,
    platform_closures: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    layout = tmp_path / "layout"
    argv = [
        "build",
        "--store-root",
        store.root,
        "--platform",
        f"linux/arm/v7={platform_closures['arm64']}",
        "--platform",
        f"linux/aarch64={platform_closures['amd64']}",  # machine names are mapped
        "--cache-dir",
        tmp_path / "c",
        "-q",
        "-o",
        f"oci:{layout}",
    ]
    status, out, err = run(argv, capsys)
    assert status == 0, err
    index = _blob(layout, out.strip())
    assert [m["platform"] for m in index["manifests"]] == [
        {"architecture": "arm", "os": "linux", "variant": "v7"},
        {"architecture": "arm64", "os": "linux"},
    ]
    config = _blob(layout, _blob(layout, index["manifests"][0]["digest"])["config"]["digest"])
    assert (config["os"], config["architecture"], config["variant"]) == ("linux", "arm", "v7")


def test_oci_archive_holds_the_index_and_shared_blobs_once(
    store: Store,
    platform_closures: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    archive = tmp_path / "multi.tar"
    digest = build_platforms(
        store, platform_closures, f"oci-archive:{archive}:v1", capsys, cache=tmp_path / "c"
    )
    with tarfile.open(archive) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
        top = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
    assert len(names) == len(set(names))
    assert top["manifests"][0]["mediaType"] == INDEX
    assert top["manifests"][0]["digest"] == digest
    require_tool("skopeo")
    raw = json.loads(run_tool("skopeo", "inspect", "--raw", f"oci-archive:{archive}:v1"))
    assert [m["platform"]["architecture"] for m in raw["manifests"]] == ["amd64", "arm64"]
    # an arm64 image of it, chosen by skopeo as a pull for that platform would be
    arm = json.loads(
        run_tool(
            "skopeo", "--override-arch", "arm64", "inspect", "--config",
            f"oci-archive:{archive}:v1",
        )
    )  # fmt: skip
    assert arm["architecture"] == "arm64"
    # adding a second tag keeps the first one's index and blobs
    build_platforms(
        store, platform_closures, f"oci-archive:{archive}:v2", capsys, cache=tmp_path / "c"
    )
    argv = ["verify", "--platform", "linux/arm64", f"oci-archive:{archive}:v1"]
    status, out, err = run(argv, capsys)
    assert status == 0, err
    assert out == f"oci-archive:{archive}:v1: ok\n"
    status, out, err = run(["verify", f"oci-archive:{archive}:v2"], capsys)
    assert status == 0, err
    assert out == f"oci-archive:{archive}:v2: ok\n"


@pytest.mark.parametrize("dest", ["docker-archive:{tmp}/out.tar", "-"])
def test_docker_archive_cannot_hold_an_index(
    dest: str,
    store: Store,
    platform_closures: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = dest.format(tmp=tmp_path)
    cache = tmp_path / "cache"
    argv = ["build", *platform_args(store, platform_closures), "--cache-dir", cache, "-o", target]
    status, out, err = run(argv, capsys)
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"closurepack: error: {target}: a docker-archive holds one image")
    assert not (tmp_path / "out.tar").exists()
    assert not cache.exists()  # refused before anything was built


@pytest.mark.parametrize(
    "case",
    [
        (["--closure", "{app}"], "--platform names each platform's closure: not with store"),
        ([APP], "--platform names each platform's closure: not with store"),
        (["--arch", "arm64"], "--arch: not with --platform"),
        (["--image", "0"], "--image chooses an image of a plan: not with --platform"),
        (["--platform", "linux/amd64={tool}"], "--platform 'linux/amd64="),
        (["--platform", "linux={tool}"], "--platform 'linux="),
        (["--platform", "linux/vax={tool}"], "unknown architecture"),
        (["--platform", "linux/arm64"], "expected OS/ARCH[/VARIANT]=CLOSURE_OR_STORE_PATH"),
        (["--platform", "linux/riscv64={tmp}/none.json"], "neither a store path nor a graph"),
    ],
)
def test_what_cannot_go_with_platform_is_one_line(
    case: tuple[list[str], str],
    store: Store,
    platform_closures: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    extra, message = case
    cache = tmp_path / "cache"
    values = {
        "app": platform_closures["amd64"],
        "tool": platform_closures["arm64"],
        "tmp": tmp_path,
    }
    argv = [
        "build",
        "--store-root",
        store.root,
        "--platform",
        f"linux/amd64={platform_closures['amd64']}",
        *(e.format(**values) for e in extra),
        "--cache-dir",
        cache,
        "-o",
        f"oci:{tmp_path}/layout",
    ]
    status, out, err = run(argv, capsys)
    assert status == 2, err
    assert out == ""
    assert err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "layout").exists()
    assert not cache.exists()


def _build(capsys: pytest.CaptureFixture[str], *argv: object) -> str:
    status, out, err = run(["build", "-q", *argv], capsys)
    assert status == 0, err
    return out.strip()


def _platform_layers(layout: Path, digest: str) -> dict[str, list[str]]:
    """Platform -> layer digests of each image of the index ``digest``."""
    index = _blob(layout, digest)
    return {
        f"{m['platform']['os']}/{m['platform']['architecture']}": [
            d["digest"] for d in _blob(layout, m["digest"])["layers"]
        ]
        for m in index["manifests"]
    }


def _image_layers(layout: Path, digest: str) -> list[str]:
    return [d["digest"] for d in _blob(layout, digest)["layers"]]


def test_from_an_index_takes_each_platforms_base(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    zlib = store.closure_file(tmp_path / "zlib.json", [ZLIB])
    glibc = store.closure_file(tmp_path / "glibc.json", [GLIBC])
    app = store.closure_file(tmp_path / "app.json", [APP])
    common = ("--store-root", store.root, "--cache-dir", tmp_path / "c")
    layout = tmp_path / "layout"
    base = _build(
        capsys, *common, "--platform", f"linux/amd64={zlib}", "--platform",
        f"linux/arm64={glibc}", "--symlink", "/base=/", "-o", f"oci:{layout}:base",
    )  # fmt: skip
    bases = _platform_layers(layout, base)
    assert bases["linux/amd64"] != bases["linux/arm64"]

    multi = _build(
        capsys, *common, "--platform", f"linux/amd64={app}", "--platform", f"linux/arm64={app}",
        "--from", f"oci:{layout}:base", "-o", f"oci:{layout}:multi",
    )  # fmt: skip
    for platform, layers in _platform_layers(layout, multi).items():
        assert layers[: len(bases[platform])] == bases[platform], platform

    single = _build(
        capsys, *common, "--closure", app, "--arch", "arm64", "--from", f"oci:{layout}:base",
        "-o", f"oci:{layout}:single",
    )  # fmt: skip
    assert _image_layers(layout, single)[: len(bases["linux/arm64"])] == bases["linux/arm64"]

    # a single image under every platform: a warning for the platform it is not of
    status, out, err = run(
        ["build", "-q", *common, "--platform", f"linux/amd64={app}", "--platform",
         f"linux/arm64={app}", "--entrypoint", "/bin/app", "--from", f"oci:{layout}:single",
         "-o", f"oci:{layout}:on-single"],
        capsys,
    )  # fmt: skip
    assert status == 0, err
    assert err == (
        f"closurepack: warning: --from oci:{layout}:single is a linux/arm64 image: the"
        " linux/amd64 image is built on it as it is\n"
    )

    # an index without the host's platform: one line naming the platforms there are
    foreign = _build(
        capsys, *common, "--platform", f"linux/s390x={zlib}", "--platform",
        f"linux/arm/v7={glibc}", "-o", f"oci:{layout}:foreign",
    )  # fmt: skip
    assert foreign
    status, out, err = run(
        ["build", *common, "--closure", app, "--from", f"oci:{layout}:foreign", "-o",
         f"oci:{tmp_path}/other"],
        capsys,
    )  # fmt: skip
    assert status == 2
    assert out == ""
    assert err == (
        f"closurepack: error: {layout}: the index has no image for this host's platform,"
        f" {host_platform()} (platforms: linux/s390x, linux/arm/v7); choose one with"
        " --platform\n"
    )
    assert not (tmp_path / "other").exists()


def test_previous_index_reuses_the_layers_of_the_platform_built(
    store: Store,
    platform_closures: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    layout = tmp_path / "layout"
    first = build_platforms(
        store,
        platform_closures,
        f"oci:{layout}:v1",
        capsys,
        "--strategy",
        "single",
        cache=tmp_path / "c",
    )
    old = _platform_layers(layout, first)
    # `single` for each image, planned together: the items arm64 shares with the other
    # platforms are layers of their own, shared, then its own items, and customisation
    assert len(old["linux/arm64"]) >= 3
    common = ("--store-root", store.root, "--cache-dir", tmp_path / "c", "--entrypoint", "/bin/app")
    # one image for arm64: the arm64 image's store layer is what its closure fits
    single = _build(
        capsys, *common, "--closure", platform_closures["arm64"], "--arch", "arm64", "--previous",
        f"oci:{layout}:v1", "-o", f"oci:{layout}:arm",
    )  # fmt: skip
    assert _image_layers(layout, single) == old["linux/arm64"]
    # a multi-platform build: every platform's image counts. Here the previous arm64 layer
    # (glibc, zlib, tool) is the largest that fits: it is reused only if arm64's image was
    # read, not the host's alone (whose one layer holds glibc only)
    glibc = store.closure_file(tmp_path / "glibc.json", [GLIBC])
    # (one store layer each: planned together with more, glibc would be a layer of its own)
    before = _build(
        capsys, *common, "--strategy", "single", "--max-layers", "2",
        "--platform", f"linux/amd64={glibc}",
        "--platform", f"linux/arm64={platform_closures['arm64']}", "-o", f"oci:{layout}:before",
    )  # fmt: skip
    previous = _platform_layers(layout, before)
    again = build_platforms(
        store, platform_closures, f"oci:{layout}:v2", capsys, "--previous", f"oci:{layout}:before",
        cache=tmp_path / "c",
    )  # fmt: skip
    assert _platform_layers(layout, again)["linux/arm64"] == previous["linux/arm64"]
    fresh = build_platforms(
        store, platform_closures, f"oci:{layout}:v3", capsys, cache=tmp_path / "c"
    )
    assert _platform_layers(layout, fresh)["linux/arm64"] != previous["linux/arm64"]


def test_verify_checks_every_platform_and_the_index(
    store: Store,
    platform_closures: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    layout = tmp_path / "layout"
    digest = build_platforms(
        store, platform_closures, f"oci:{layout}:v1", capsys, cache=tmp_path / "c"
    )
    blobs = layout / "blobs" / "sha256"
    index = _blob(layout, digest)
    # the index lists the arm64 image as s390x's
    index["manifests"][1]["platform"]["architecture"] = "s390x"
    body = json.dumps(index).encode()
    new = hashlib.sha256(body).hexdigest()
    (blobs / new).write_bytes(body)
    top = json.loads((layout / "index.json").read_bytes())
    top["manifests"][0].update(digest=f"sha256:{new}", size=len(body) + 1)  # size wrong too
    (layout / "index.json").write_text(json.dumps(top))
    # and a layer only the arm64 image has is damaged
    arm = _blob(layout, index["manifests"][1]["digest"])
    amd = _blob(layout, index["manifests"][0]["digest"])
    own = [d for d in arm["layers"] if d not in amd["layers"]]
    number = arm["layers"].index(own[0])
    (blobs / own[0]["digest"].split(":")[1]).write_bytes(b"not a layer")

    status, out, err = run(["verify", f"oci:{layout}:v1"], capsys)
    assert status == 4
    assert out == ""
    lines = err.splitlines()
    assert (
        lines[0] == f"oci:{layout}:v1: index: size is {len(body)}, index.json says {len(body) + 1}"
    )
    assert any(line.startswith(f"oci:{layout}:v1: linux/s390x: layer {number} ") for line in lines)
    assert (
        f"oci:{layout}:v1: linux/s390x: config: the image is for linux/arm64, the index lists it"
        " for linux/s390x"
    ) in lines
    assert not any("linux/amd64" in line for line in lines)  # that image is sound
    assert lines[-1].startswith(f"closurepack: error: oci:{layout}:v1: ")
    # --platform verifies that platform's image alone
    status, out, err = run(["verify", "--platform", "linux/amd64", f"oci:{layout}:v1"], capsys)
    assert status == 0, err


def test_diff_and_copy_choose_a_platform(
    store: Store,
    platform_closures: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    archive = tmp_path / "multi.tar"
    build_platforms(
        store, platform_closures, f"oci-archive:{archive}:v1", capsys, cache=tmp_path / "c"
    )
    source = f"oci-archive:{archive}:v1"
    status, out, err = run(["diff", "--json", "--platform", "linux/arm64", source, source], capsys)
    assert status == 0, err
    arm = json.loads(out)
    status, out, err = run(["diff", "--json", "--platform", "linux/amd64", source, source], capsys)
    assert status == 0, err
    assert json.loads(out) != arm
    status, out, err = run(["inspect", "--json", "--platform", "linux/arm64", source], capsys)
    assert status == 0, err
    arm_image = json.loads(out)
    assert arm_image["platform"] == {"architecture": "arm64", "os": "linux"}

    # copy: every platform to an OCI layout; one, with --platform, to a docker-archive
    layout = tmp_path / "layout"
    status, out, err = run(["copy", source, f"oci:{layout}:c"], capsys)
    assert status == 0, err
    assert out.strip() == arm_image["index"]["digest"]
    status, out, err = run(["copy", source, f"docker-archive:{tmp_path}/one.tar"], capsys)
    assert status == 2
    assert err.count("\n") == 1
    assert "or copy one image with --platform OS/ARCH" in err
    assert not (tmp_path / "one.tar").exists()
    one = f"docker-archive:{tmp_path}/one.tar"
    status, out, err = run(["copy", "--platform", "linux/arm64", source, one], capsys)
    assert status == 0, err
    assert out.strip() == arm_image["manifest_digest"]
