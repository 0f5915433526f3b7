"""End to end through a registry: a closure built by real Nix is pushed by closurepack and
pulled and run by podman and Docker, and pulled (unpacked, so every diff_id is checked) by
containerd's ctr."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clistore import run_child_quietly
from nixfixture import NixClosure
from registry_fixtures import Containerd, Registry
from runtimes import DockerEngine, PodmanRunner

pytestmark = pytest.mark.integration


def _push(nix: NixClosure, dest: str, *extra: str, cache: Path) -> str:
    """``closurepack build ... -o docker://...`` in a subprocess; return what it prints."""
    argv = [
        "build",
        nix.app,
        "--entrypoint",
        nix.entrypoint,
        "--cache-dir",
        str(cache),
        "--quiet",
        "-o",
        dest,
        *extra,
    ]
    return run_child_quietly(argv)


@pytest.fixture(scope="module")
def pushed(
    nix_closure: NixClosure, shared_registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """The fixture closure pushed as OCI (app:1) and as Docker schema 2 (app:docker)."""
    cache = tmp_path_factory.mktemp("cache")
    host = shared_registry.host
    return {
        "oci": _push(nix_closure, f"docker://{host}/app:1", cache=cache),
        "docker": _push(
            nix_closure, f"docker://{host}/app:docker", "--format", "docker", cache=cache
        ),
    }


def test_podman_pulls_and_runs(
    pushed: dict[str, str],
    shared_registry: Registry,
    nix_closure: NixClosure,
    podman_runner: PodmanRunner,
) -> None:
    from runtimes import run_tool

    ref = f"{shared_registry.host}/app:1"
    run_tool(*podman_runner.command("pull", "--tls-verify=false", ref))
    assert podman_runner.run(ref) == nix_closure.expected_output
    # (.Digest may be another manifest's when the session's podman had the image already)
    digests = run_tool(
        *podman_runner.command("image", "inspect", ref, "--format", "{{json .RepoDigests}}")
    )
    assert pushed["oci"] in json.loads(digests)


def test_docker_pulls_and_runs(
    pushed: dict[str, str],
    shared_registry: Registry,
    nix_closure: NixClosure,
    docker_engine: DockerEngine,
) -> None:
    # dockerd treats 127.0.0.0/8 as an insecure registry by default: plain HTTP is fine.
    ref = f"{shared_registry.host}/app:docker"
    docker_engine.docker("pull", ref)
    assert docker_engine.run(ref) == nix_closure.expected_output
    digests = docker_engine.docker("image", "inspect", ref, "--format", "{{json .RepoDigests}}")
    assert pushed["docker"] in digests


def test_ctr_pulls_and_unpacks(
    pushed: dict[str, str], shared_registry: Registry, containerd: Containerd
) -> None:
    ref = f"{shared_registry.host}/app:1"
    containerd.ctr("images", "pull", "--plain-http", "--snapshotter", "native", ref)
    listing = containerd.ctr("images", "ls")
    assert pushed["oci"].partition("@")[2] in listing
    # unpacked: the snapshot exists, so every layer's diff_id matched the config's
    check = containerd.ctr("images", "check")
    assert "complete" in check
