"""End to end: a closure built by real Nix becomes every kind of image, and real tools load,
validate and run them (podman, Docker, umoci, skopeo), reproducibly."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clistore import run_child_quietly
from closurepack.cli import main
from nixfixture import NixClosure
from runtimes import DockerEngine, PodmanRunner, require_tool, run_tool

pytestmark = pytest.mark.integration


def _build(nix: NixClosure, dest: str, *extra: str, cache: Path) -> str:
    """Run ``closurepack build`` on the fixture; return the manifest digest it prints."""
    argv = [
        "build",
        nix.app,
        "--entrypoint",
        nix.entrypoint,
        "--tag",
        "e2e/app:1",
        "--cache-dir",
        str(cache),
        "--created",
        "2024-01-02T03:04:05Z",
        "--env",
        "GREETING=hi",
        "--quiet",
        "-o",
        dest,
        *extra,
    ]
    return run_child_quietly(argv)


@pytest.fixture(scope="module")
def images(nix_closure: NixClosure, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The fixture closure as docker-archive (gzip and zstd), oci layout and oci-archive."""
    out = tmp_path_factory.mktemp("images")
    cache = out / "cache"
    built = {
        "docker-archive": out / "app.tar",
        "docker-archive-zstd": out / "app-zstd.tar",
        "oci": out / "layout",
        "oci-archive": out / "app-oci.tar",
    }
    _build(nix_closure, f"docker-archive:{built['docker-archive']}", cache=cache)
    _build(
        nix_closure,
        f"docker-archive:{built['docker-archive-zstd']}",
        "--compression",
        "zstd",
        cache=cache,
    )
    _build(nix_closure, f"oci:{built['oci']}:app", cache=cache)
    _build(nix_closure, f"oci-archive:{built['oci-archive']}", cache=cache)
    return built


def test_the_closure_is_real(nix_closure: NixClosure) -> None:
    # The store paths exist and the app runs on the host, printing what the images must print.
    assert len(nix_closure.paths) == 4
    host = subprocess.run([nix_closure.entrypoint], capture_output=True, text=True, check=True)
    assert host.stdout == nix_closure.expected_output


@pytest.mark.parametrize("kind", ["docker-archive", "docker-archive-zstd", "oci-archive"])
def test_podman_loads_and_runs(
    images: dict[str, Path], nix_closure: NixClosure, podman_runner: PodmanRunner, kind: str
) -> None:
    ref = podman_runner.load(images[kind])
    assert podman_runner.run(ref) == nix_closure.expected_output


def test_docker_loads_and_runs(
    images: dict[str, Path], nix_closure: NixClosure, docker_engine: DockerEngine
) -> None:
    ref = docker_engine.load(images["docker-archive"])
    assert docker_engine.run(ref) == nix_closure.expected_output
    env = json.loads(
        docker_engine.docker("image", "inspect", ref, "--format", "{{json .Config.Env}}")
    )
    assert "GREETING=hi" in env


def test_docker_loads_zstd_layers(
    images: dict[str, Path], nix_closure: NixClosure, docker_engine: DockerEngine
) -> None:
    ref = docker_engine.load(images["docker-archive-zstd"])
    assert docker_engine.run(ref) == nix_closure.expected_output


def test_stdout_stream_pipes_into_podman_load(
    nix_closure: NixClosure, podman_runner: PodmanRunner, tmp_path: Path
) -> None:
    build = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "closurepack.cli",
            "build",
            nix_closure.app,
            "--entrypoint",
            nix_closure.entrypoint,
            "--tag",
            "e2e/stream:1",
            "--cache-dir",
            str(tmp_path / "cache"),
            "-o",
            "-",
        ],
        stdout=subprocess.PIPE,
    )
    assert build.stdout is not None
    with build.stdout:
        load = subprocess.run(
            podman_runner.command("load"), stdin=build.stdout, capture_output=True, check=False
        )
    assert build.wait() == 0
    assert load.returncode == 0, load.stderr
    assert podman_runner.run("localhost/e2e/stream:1") == nix_closure.expected_output


def test_umoci_unpacks_the_layout_and_the_rootfs_runs(
    images: dict[str, Path], nix_closure: NixClosure, tmp_path: Path
) -> None:
    require_tool("umoci")
    bundle = tmp_path / "bundle"
    run_tool("umoci", "unpack", "--image", f"{images['oci']}:app", bundle)
    rootfs = bundle / "rootfs"
    data = nix_closure.item("data")
    assert (rootfs / data.lstrip("/") / "héllo wörld.txt").read_text().startswith("hello")
    assert (rootfs / "tmp").stat().st_mode & 0o7777 == 0o1777
    # Every store item came through; the app runs from the unpacked root file system.
    for path in nix_closure.paths:
        assert (rootfs / path.lstrip("/")).exists() or (rootfs / path.lstrip("/")).is_symlink()
    ran = subprocess.run(
        ["chroot", str(rootfs), nix_closure.entrypoint], capture_output=True, text=True, check=False
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == nix_closure.expected_output


@pytest.mark.parametrize("kind", ["docker-archive", "oci", "oci-archive"])
def test_skopeo_inspects_and_copies(images: dict[str, Path], kind: str, tmp_path: Path) -> None:
    require_tool("skopeo")
    ref = f"oci:{images[kind]}:app" if kind == "oci" else f"{kind}:{images[kind]}"
    info = json.loads(run_tool("skopeo", "inspect", ref))
    assert info["Architecture"]
    assert len(info["Layers"]) == 5  # four store items in four layers + customisation
    run_tool("skopeo", "copy", ref, f"oci:{tmp_path / 'copy'}:copied")
    copied = json.loads((tmp_path / "copy" / "index.json").read_text())
    assert copied["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "copied"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_jobs_and_cache_do_not_change_a_byte(
    nix_closure: NixClosure, tmp_path: Path, compression: str
) -> None:
    cache = tmp_path / "cache"
    cold = tmp_path / "cold.tar"
    warm = tmp_path / "warm.tar"
    uncached = tmp_path / "uncached.tar"
    args = ("--compression", compression)
    digest_cold = _build(nix_closure, f"oci-archive:{cold}", *args, "--jobs", "1", cache=cache)
    digest_warm = _build(nix_closure, f"oci-archive:{warm}", *args, "--jobs", "4", cache=cache)
    digest_none = _build(
        nix_closure, f"oci-archive:{uncached}", *args, "--jobs", "3", "--no-cache", cache=cache
    )
    assert digest_cold == digest_warm == digest_none
    assert _sha256(cold) == _sha256(warm) == _sha256(uncached)


def test_verify_accepts_our_images_and_rejects_a_flipped_byte(
    images: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for kind in ("docker-archive", "oci-archive"):
        assert main(["verify", f"{kind}:{images[kind]}"]) == 0
    assert main(["verify", f"oci:{images['oci']}:app"]) == 0
    capsys.readouterr()

    layout = tmp_path / "layout"
    shutil.copytree(images["oci"], layout)
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs" / "sha256" / manifest_digest).read_bytes())
    biggest = max(manifest["layers"], key=lambda d: d["size"])
    blob = layout / "blobs" / "sha256" / biggest["digest"].split(":")[1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))

    assert main(["verify", f"oci:{layout}:app"]) == 4
    err = capsys.readouterr().err
    assert biggest["digest"] in err


def test_inspect_lists_the_store_items_of_each_layer(
    images: dict[str, Path], nix_closure: NixClosure, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inspect", "--json", f"docker-archive:{images['docker-archive']}"]) == 0
    info = json.loads(capsys.readouterr().out)
    listed = sorted(p for layer in info["layers"] for p in layer.get("paths", []))
    assert listed == sorted(nix_closure.paths)
