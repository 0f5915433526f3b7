"""``closurepack copy SRC DEST`` between transports, checked with real tools: a real registry
(its access log counts uploads and mounts), skopeo, podman and umoci."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from clistore import APP, GLIBC, Store, run
from closurepack.copying import manifest_flavour, with_flavour
from closurepack.image import Image
from closurepack.mediatypes import MediaType
from closurepack.readback import read_image
from closurepack.transports import write_image
from closurepack.validate import verify_image
from handmade import busybox_image, oci_validator
from registry_auth_fixtures import PASSWORD, USER, AuthRegistry
from registry_fixtures import Registry
from runtimes import PodmanRunner, require_tool, run_tool

GREETING = "hi from closurepack\n"
SPDX = "application/spdx+json"
CYCLONEDX = "application/vnd.cyclonedx+json"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Image, str]:
    """The runnable busybox image in an OCI layout, tagged ``1``."""
    base = tmp_path_factory.mktemp("copysrc")
    image = busybox_image(base / "layers")
    ref = f"oci:{base / 'layout'}:1"
    write_image(image, ref)
    return image, ref


def _copy(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, out, err = run(["copy", *argv], capsys)
    assert code == 0, err
    assert err == ""
    return out.strip()


def _copy_to_layout(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, image: Image, src: str, *extra: str
) -> Path:
    """Copy ``src`` to a new ``oci:`` layout: its manifest is ``image``'s, and it verifies."""
    layout = tmp_path / "layout"
    assert _copy(capsys, src, f"oci:{layout}", *extra) == str(image.manifest_digest)
    assert verify_image(f"oci:{layout}") == []
    return layout


def _pushed(
    capsys: pytest.CaptureFixture[str],
    source: tuple[Image, str],
    host: str,
    repo: str,
    *extra: str,
) -> tuple[Image, str, str]:
    """The source image copied to ``docker://HOST/REPO``: the image, that reference and what
    copy printed."""
    image, ref = source
    dest = f"docker://{host}/{repo}"
    return image, dest, _copy(capsys, ref, dest, *extra)


def _layer_digests(image: Image) -> list[str]:
    return [str(layer.digest) for layer in image.layers]


def _skopeo(*argv: str) -> dict[str, object]:
    require_tool("skopeo")
    result: dict[str, object] = json.loads(run_tool("skopeo", *argv))
    return result


# --- without a registry -------------------------------------------------------------------


def test_oci_to_docker_archive_to_oci_keeps_every_digest(
    tmp_path: Path, source: tuple[Image, str], capsys: pytest.CaptureFixture[str]
) -> None:
    image, ref = source
    archive = tmp_path / "a.tar"
    printed = _copy(capsys, ref, f"docker-archive:{archive}")
    # the archive has no manifest: the one printed is made as a build makes it
    assert printed == str(image.manifest_digest)
    layout = tmp_path / "back"
    assert _copy(capsys, f"docker-archive:{archive}", f"oci:{layout}:x") == printed
    back = read_image(f"oci:{layout}:x")
    assert back.config_bytes == image.config_bytes
    assert _layer_digests(back) == _layer_digests(image)
    assert verify_image(f"oci:{layout}:x") == []


@pytest.mark.integration
def test_docker_archive_to_oci_is_read_by_umoci_and_skopeo(
    tmp_path: Path, source: tuple[Image, str], capsys: pytest.CaptureFixture[str]
) -> None:
    image, ref = source
    archive = tmp_path / "a.tar"
    _copy(capsys, ref, f"docker-archive:{archive}:cp/copy:1")
    layout = tmp_path / "layout"
    printed = _copy(capsys, f"docker-archive:{archive}", f"oci:{layout}:t")
    info = _skopeo("inspect", f"oci:{layout}:t")
    assert info["Digest"] == printed
    assert info["Layers"] == _layer_digests(image)
    require_tool("umoci")
    bundle = tmp_path / "bundle"
    run_tool("umoci", "unpack", "--image", f"{layout}:t", bundle)
    assert (bundle / "rootfs/etc/greeting").read_text() == GREETING
    assert verify_image(f"oci:{layout}:t") == []


def test_oci_archive_round_trip_and_tags(
    tmp_path: Path, source: tuple[Image, str], capsys: pytest.CaptureFixture[str]
) -> None:
    image, ref = source
    archive = tmp_path / "o.tar"
    _copy(capsys, ref, f"oci-archive:{archive}", "--tag", "cp/a:one", "--tag", "cp/a:two")
    for tag in ("one", "two"):
        copied = read_image(f"oci-archive:{archive}:{tag}")
        assert copied.manifest_bytes == image.manifest_bytes  # OCI to OCI: byte for byte
        assert verify_image(f"oci-archive:{archive}:{tag}") == []
    docker = tmp_path / "d.tar"
    _copy(capsys, f"oci-archive:{archive}:two", f"docker-archive:{docker}", "--tag", "cp/b:1")
    with tarfile.open(docker) as tar:
        handle = tar.extractfile("manifest.json")
        assert handle is not None
        assert json.loads(handle.read())[0]["RepoTags"] == ["cp/b:1"]


def test_copy_to_an_oci_layout_again_rewrites_no_blob(
    tmp_path: Path, source: tuple[Image, str], capsys: pytest.CaptureFixture[str]
) -> None:
    image, ref = source
    layout = tmp_path / "layout"
    _copy(capsys, ref, f"oci:{layout}:a")
    blobs = {p.name: p.stat().st_ino for p in (layout / "blobs/sha256").iterdir()}
    assert {layer.digest.hex for layer in image.layers} <= blobs.keys()
    _copy(capsys, ref, f"oci:{layout}:b")
    assert {p.name: p.stat().st_ino for p in (layout / "blobs/sha256").iterdir()} == blobs
    index = json.loads((layout / "index.json").read_bytes())
    names = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
    assert names == ["a", "b"]


def test_missing_source_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        ["copy", f"oci:{tmp_path / 'nope'}", f"docker-archive:{tmp_path / 'out.tar'}"], capsys
    )
    assert code == 2
    assert out == ""
    missing = tmp_path / "nope"
    assert err == f"closurepack: error: oci:{missing}: no such image: {missing} does not exist\n"
    assert list(tmp_path.iterdir()) == []


def test_corrupt_source_blob_leaves_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = busybox_image(tmp_path / "layers")
    layout = tmp_path / "src"
    write_image(image, f"oci:{layout}")
    blob = layout / "blobs/sha256" / image.layers[1].digest.hex
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for dest in (f"docker-archive:{out_dir / 'd.tar'}", f"oci-archive:{out_dir / 'o.tar'}"):
        code, _, err = run(["copy", f"oci:{layout}", dest], capsys)
        assert code != 0
        assert err.count("\n") == 1
        assert str(image.layers[1].digest) in err
    assert list(out_dir.iterdir()) == []
    code, _, err = run(["copy", f"oci:{layout}", f"oci:{out_dir / 'l'}"], capsys)
    assert code != 0
    assert err.count("\n") == 1
    assert not (out_dir / "l" / "index.json").exists()  # no tag points at a bad blob


def test_bad_options_fail_before_anything_is_read(
    tmp_path: Path, source: tuple[Image, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, ref = source
    for argv, message in (
        (
            [ref, f"oci:{tmp_path / 'x'}", "--format", "docker"],
            "--format docker is for docker:// destinations",
        ),
        ([ref, f"oci:{tmp_path / 'x'}", "--tag", "Bad Name"], "image name 'Bad Name'"),
        ([ref, "docker://127.0.0.1:1/app@sha256:" + "0" * 64], "names a tag, not a digest"),
        ([ref, "nowhere"], "destination 'nowhere'"),
        (["nowhere", f"oci:{tmp_path / 'x'}"], "image 'nowhere': expected docker-archive:PATH"),
        (["-", f"oci:{tmp_path / 'x'}"], "cannot read an image from standard output"),
        (["docker://app:1", f"oci:{tmp_path / 'x'}"], "name the registry host first"),
    ):
        code, out, err = run(["copy", *argv], capsys)
        assert code == 2, err
        assert out == ""
        assert err.count("\n") == 1
        assert message in err
    assert list(tmp_path.iterdir()) == []


def test_flavours(source: tuple[Image, str]) -> None:
    image, _ = source
    assert manifest_flavour(image) == "oci"
    assert with_flavour(image, "oci") is image
    docker = with_flavour(image, "docker")
    assert manifest_flavour(docker) == "docker"
    assert docker.manifest["mediaType"] == MediaType.DOCKER_MANIFEST
    assert docker.config_bytes == image.config_bytes
    assert [d["digest"] for d in docker.manifest["layers"]] == _layer_digests(image)
    assert {d["mediaType"] for d in docker.manifest["layers"]} == {MediaType.DOCKER_LAYER_GZIP}
    assert with_flavour(docker, "oci").manifest_bytes == image.manifest_bytes


# --- with a registry ----------------------------------------------------------------------


@pytest.mark.integration
def test_oci_to_registry_is_pulled_and_run_by_podman(
    source: tuple[Image, str],
    registry: Registry,
    podman_runner: PodmanRunner,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image, dest, printed = _pushed(capsys, source, registry.host, "cp/app:1")
    assert printed == f"{registry.host}/cp/app@{image.manifest_digest}"  # kept byte for byte
    info = _skopeo("inspect", "--tls-verify=false", dest)
    assert info["Digest"] == str(image.manifest_digest)
    assert info["Layers"] == _layer_digests(image)
    assert verify_image(dest) == []
    target = f"{registry.host}/cp/app:1"
    run_tool(*podman_runner.command("pull", "--tls-verify=false", target))
    assert podman_runner.run(target, "/bin/sh", "-c", "cat /etc/greeting") == GREETING


@pytest.mark.integration
def test_registry_to_docker_archive_is_loaded_and_run_by_podman(
    tmp_path: Path,
    source: tuple[Image, str],
    registry: Registry,
    podman_runner: PodmanRunner,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image, pushed, _ = _pushed(capsys, source, registry.host, "cp/load:7", "--format", "docker")
    archive = tmp_path / "d.tar"
    # the archive is named after the source, as docker load and podman load show it
    assert _copy(capsys, pushed, f"docker-archive:{archive}") == str(image.manifest_digest)
    loaded = podman_runner.load(archive)
    assert loaded.endswith(f"{registry.host}/cp/load:7")
    assert podman_runner.run(loaded, "/bin/sh", "-c", "cat /etc/greeting") == GREETING
    assert read_image(f"docker-archive:{archive}").config_bytes == image.config_bytes


@pytest.mark.integration
def test_copy_within_a_registry_mounts_and_a_second_copy_uploads_nothing(
    source: tuple[Image, str], registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    image, repo_a, _ = _pushed(capsys, source, registry.host, "team/a:1")
    mark = registry.mark()
    repo_b = f"docker://{registry.host}/team/b:2"
    assert _copy(capsys, repo_a, repo_b) == f"{registry.host}/team/b@{image.manifest_digest}"
    writes = registry.blob_writes(mark)
    # the two layers and the config, each mounted from team/a: no upload
    assert len(writes) == 3
    assert all(w.method == "POST" and "mount=" in w.path and w.status == 201 for w in writes)
    # and no layer was downloaded: only the config, which the copy reads
    gets = [r.path for r in registry.requests(mark) if r.method == "GET" and "/blobs/" in r.path]
    assert gets == [f"/v2/team/a/blobs/{image.config_digest}"]
    assert verify_image(repo_b) == []
    mark = registry.mark()
    _copy(capsys, repo_a, repo_b)
    assert registry.blob_writes(mark) == []
    assert [r for r in registry.requests(mark) if r.method == "PUT"] == []


@pytest.mark.integration
def test_copy_verify_and_inspect_get_a_single_images_manifest_once(
    tmp_path: Path,
    source: tuple[Image, str],
    registry: Registry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A single image in a registry: copy, verify and inspect each GET its tag's manifest
    once (counted in the registry's log), not once to learn it is no index and once more."""
    image, repo, _ = _pushed(capsys, source, registry.host, "once/app:1")

    def manifest_gets(mark: int) -> list[str]:
        return [
            r.path
            for r in registry.requests(mark)
            if r.method == "GET" and r.path == "/v2/once/app/manifests/1"
        ]

    mark = registry.mark()
    assert _copy(capsys, repo, f"oci:{tmp_path / 'layout'}") == str(image.manifest_digest)
    assert manifest_gets(mark) == ["/v2/once/app/manifests/1"]
    mark = registry.mark()
    assert verify_image(repo) == []
    assert manifest_gets(mark) == ["/v2/once/app/manifests/1"]
    mark = registry.mark()
    code, out, err = run(["inspect", "--json", repo], capsys)
    assert code == 0, err
    assert json.loads(out)["layers"][0]["digest"] == str(image.layers[0].digest)
    assert manifest_gets(mark) == ["/v2/once/app/manifests/1"]


@pytest.mark.integration
def test_registry_to_registry_converts_formats_blobs_unchanged(
    tmp_path: Path,
    source: tuple[Image, str],
    registry: Registry,
    shared_registry: Registry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image, oci, _ = _pushed(capsys, source, registry.host, "fmt/app:oci")
    docker = f"docker://{shared_registry.host}/fmt/app:docker"
    printed = _copy(capsys, oci, docker, "--format", "docker", "--tag", "x:extra")
    raw = json.loads(run_tool("skopeo", "inspect", "--raw", "--tls-verify=false", docker))
    assert raw["mediaType"] == MediaType.DOCKER_MANIFEST
    assert raw["config"]["digest"] == str(image.config_digest)
    assert [layer["digest"] for layer in raw["layers"]] == _layer_digests(image)
    extra = _skopeo(
        "inspect", "--tls-verify=false", f"docker://{shared_registry.host}/fmt/app:extra"
    )
    assert printed.endswith(str(extra["Digest"]))
    # copied on without --format: the Docker manifest as it is; with --format oci: the original
    again = f"docker://{registry.host}/fmt/again:1"
    assert _copy(capsys, docker, again).endswith(printed.partition("@")[2])
    back = f"docker://{registry.host}/fmt/back:1"
    assert _copy(capsys, docker, back, "--format", "oci").endswith(str(image.manifest_digest))
    _copy_to_layout(capsys, tmp_path, image, docker)


@pytest.mark.integration
def test_a_docker_manifest_written_by_skopeo_is_copied_byte_for_byte(
    tmp_path: Path,
    source: tuple[Image, str],
    registry: Registry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image, ref = source
    require_tool("skopeo")
    theirs = f"docker://{registry.host}/sk/app:1"
    run_tool("skopeo", "copy", "--dest-tls-verify=false", "--format", "v2s2", ref, theirs)
    skopeo_digest = str(_skopeo("inspect", "--tls-verify=false", theirs)["Digest"])
    assert skopeo_digest != str(image.manifest_digest)  # skopeo's own JSON, not ours
    ours = f"docker://{registry.host}/sk/copy:1"
    assert _copy(capsys, theirs, ours) == f"{registry.host}/sk/copy@{skopeo_digest}"
    raw = run_tool("skopeo", "inspect", "--raw", "--tls-verify=false", ours)
    assert run_tool("skopeo", "inspect", "--raw", "--tls-verify=false", theirs) == raw
    # an OCI layout holds OCI manifests: the same config and blobs under OCI media types
    _copy_to_layout(capsys, tmp_path, image, theirs)


def test_copy_to_standard_output_streams_a_docker_archive(
    tmp_path: Path, source: tuple[Image, str]
) -> None:
    image, ref = source
    result = subprocess.run(
        [sys.executable, "-m", "closurepack.cli", "copy", ref, "-", "--tag", "cp/out:1"],
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # the digest goes to stderr: standard output holds the archive, and nothing after it
    assert result.stderr.decode() == f"{image.manifest_digest}\n"
    with tarfile.open(fileobj=io.BytesIO(result.stdout)) as tar:
        handle = tar.extractfile("manifest.json")
        assert handle is not None
        assert json.loads(handle.read())[0]["RepoTags"] == ["cp/out:1"]
    archive = tmp_path / "out.tar"
    archive.write_bytes(result.stdout)
    assert verify_image(f"docker-archive:{archive}") == []


@pytest.mark.integration
def test_copy_takes_registry_credentials(
    tmp_path: Path,
    source: tuple[Image, str],
    htpasswd_registry: AuthRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    creds = ["--creds", f"{USER}:{PASSWORD}", "--tls-verify=false"]
    image, dest, printed = _pushed(capsys, source, htpasswd_registry.host, "copied:1", *creds)
    assert printed.endswith(str(image.manifest_digest))
    _copy_to_layout(capsys, tmp_path, image, dest, *creds)
    wrong = "not-the-pw-SECRET-52"
    code, out, err = run(
        ["copy", dest, f"oci:{tmp_path / 'no'}", "--creds", f"{USER}:{wrong}"], capsys
    )
    assert code == 5
    assert out == ""
    (line,) = err.splitlines()
    assert htpasswd_registry.host in line
    assert wrong not in line
    assert PASSWORD not in line
    assert not (tmp_path / "no").exists()


@pytest.mark.integration
def test_missing_registry_source_is_one_line_exit_2(
    tmp_path: Path,
    source: tuple[Image, str],
    registry: Registry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, ref = source
    _copy(capsys, ref, f"docker://{registry.host}/there:1")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for missing in (f"{registry.host}/there:2", f"{registry.host}/nothing:1"):
        expected = f"{missing}: no such image: {registry.host} has no manifest there"
        for argv in (["copy", f"docker://{missing}", f"oci:{out_dir / 'x'}"],
                     ["inspect", f"docker://{missing}"]):  # fmt: skip
            code, out, err = run(argv, capsys)
            assert code == 2, err
            assert out == ""
            assert err == f"closurepack: error: {expected}\n"
    assert list(out_dir.iterdir()) == []


# --- artifacts (SBOMs) carried -------------------------------------------------------------


def _listed(capsys: pytest.CaptureFixture[str], ref: str, *extra: str) -> list[dict[str, Any]]:
    code, out, err = run(["inspect", "--json", *extra, ref], capsys)
    assert code == 0, err
    artifacts: list[dict[str, Any]] = json.loads(out)["artifacts"]
    return artifacts


def _documents(listed: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(a["artifact_type"], d["digest"]) for a in listed for d in a["documents"]]


def _layout_blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs/sha256" / digest.removeprefix("sha256:")).read_bytes()


def _check_layout_schemas(layout: Path) -> list[dict[str, Any]]:
    """The layout's index and each artifact manifest valid under the OCI schemas; those."""
    index = json.loads((layout / "index.json").read_text())
    assert list(oci_validator("image-index-schema.json").iter_errors(index)) == []
    manifests = []
    for entry in index["manifests"]:
        if entry.get("artifactType"):
            manifest = json.loads(_layout_blob(layout, entry["digest"]))
            assert list(oci_validator("image-manifest-schema.json").iter_errors(manifest)) == []
            manifests.append(manifest)
    return manifests


def _build_with_sbom(
    capsys: pytest.CaptureFixture[str], store: Store, dest: str, *platforms: tuple[str, str]
) -> None:
    argv = ["build", "-q", "--no-cache", "--store-root", store.root, "--cmd", "/bin/app"]
    for arch, item in platforms:
        closure = store.closure_file(store.root.parent / f"{arch}.json", [item])
        argv += ["--platform", f"linux/{arch}={closure}"] if arch else ["--closure", closure]
    code, _, err = run([*argv, "--sbom", "spdx", "--sbom", "cyclonedx", "-o", dest], capsys)
    assert code == 0, err


@pytest.mark.integration
def test_sboms_go_with_the_image_from_oci_to_a_registry_to_an_oci_archive(
    tmp_path: Path,
    store: Store,
    registry: Registry,
    shared_registry: Registry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    layout = tmp_path / "layout"
    _build_with_sbom(capsys, store, f"oci:{layout}:v1", ("", APP))
    start = _listed(capsys, f"oci:{layout}:v1")
    assert [a["artifact_type"] for a in start] == [SPDX, CYCLONEDX]
    pushed = f"docker://{registry.host}/sb/app:1"
    _copy(capsys, f"oci:{layout}:v1", pushed)
    assert _listed(capsys, pushed) == start  # the same artifact manifests, byte for byte
    # distribution 2.8 has no referrers API: the fallback tag lists them
    digest = json.loads(run(["inspect", "--json", pushed], capsys)[1])["manifest_digest"]
    tag = f"docker://{registry.host}/sb/app:{digest.replace(':', '-')}"
    raw = json.loads(run_tool("skopeo", "inspect", "--raw", "--tls-verify=false", tag))
    assert [m["digest"] for m in raw["manifests"]] == [a["digest"] for a in start]
    archive = tmp_path / "o.tar"
    _copy(capsys, pushed, f"oci-archive:{archive}:v1")
    assert _listed(capsys, f"oci-archive:{archive}:v1") == start
    back = tmp_path / "back"
    _copy(capsys, f"oci-archive:{archive}:v1", f"oci:{back}")
    for manifest in _check_layout_schemas(back):
        document = manifest["layers"][0]["digest"]
        assert _layout_blob(back, document) == _layout_blob(layout, document)
    # registry to registry: as it is, and as a Docker manifest (the subject rewritten)
    other = f"docker://{shared_registry.host}/sb/app:1"
    _copy(capsys, pushed, other)
    assert _listed(capsys, other) == start
    mark = shared_registry.mark()  # copied again: every blob is there, none is sent
    _copy(capsys, pushed, other)
    assert shared_registry.blob_writes(mark) == []
    assert _listed(capsys, other) == start
    docker = f"docker://{shared_registry.host}/sb/app:docker"
    _copy(capsys, pushed, docker, "--format", "docker")
    converted = _listed(capsys, docker)
    assert _documents(converted) == _documents(start)
    assert {a["digest"] for a in converted}.isdisjoint(a["digest"] for a in start)
    skipped = tmp_path / "skipped"
    _copy(capsys, pushed, f"oci:{skipped}", "--no-artifacts")
    assert _listed(capsys, f"oci:{skipped}") == []


def test_a_docker_archive_leaves_the_artifacts_with_one_warning(
    tmp_path: Path, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = tmp_path / "layout"
    _build_with_sbom(capsys, store, f"oci:{layout}:v1", ("", APP))
    archive = tmp_path / "d.tar"
    code, _, err = run(["copy", f"oci:{layout}:v1", f"docker-archive:{archive}"], capsys)
    assert code == 0, err
    (line,) = err.splitlines()
    assert f"docker-archive:{archive}: a docker-archive holds no artifacts: 2 artifact(s)" in line
    code, _, err = run(
        ["copy", "--no-artifacts", f"oci:{layout}:v1", f"docker-archive:{archive}"], capsys
    )
    assert (code, err) == (0, "")


@pytest.mark.integration
def test_each_platform_images_sboms_are_copied_with_an_index(
    tmp_path: Path, store: Store, registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = tmp_path / "layout"
    _build_with_sbom(capsys, store, f"oci:{layout}:v1", ("amd64", APP), ("arm64", GLIBC))
    pushed = f"docker://{registry.host}/sb/multi:1"
    _copy(capsys, f"oci:{layout}:v1", pushed)
    back = tmp_path / "back"
    _copy(capsys, pushed, f"oci:{back}:v1")
    for arch in ("amd64", "arm64"):
        platform = ("--platform", f"linux/{arch}")
        start = _listed(capsys, f"oci:{layout}:v1", *platform)
        assert len(start) == 2
        assert _listed(capsys, pushed, *platform) == start
        assert _listed(capsys, f"oci:{back}:v1", *platform) == start
    assert len(_check_layout_schemas(back)) == 4
