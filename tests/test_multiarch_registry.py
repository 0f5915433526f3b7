"""Multi-platform images and a real registry (Debian's docker-registry on 127.0.0.1): the
index is pushed last, after every platform's manifest; shared layers are uploaded once (counted
from the registry's access log); skopeo reads the index, podman pulls the right image for
``--arch``, and closurepack reads it back (inspect, verify, copy, --from, --platform)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from clistore import Store, build_platforms, run
from closurepack.registry import record
from nixfixture import NixClosure
from registry_fixtures import Registry
from runtimes import PodmanRunner, require_tool, run_tool

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_source_date_epoch")]

INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def _raw_bytes(ref: str) -> bytes:
    argv = ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"]
    proc = subprocess.run(argv, capture_output=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def _raw(ref: str) -> dict[str, Any]:
    found = json.loads(_raw_bytes(ref))
    assert isinstance(found, dict)
    return found


def _uploads(registry: Registry, since: int = 0) -> Counter[str]:
    """How many times each blob digest was uploaded (finished: PUT ...?digest=)."""
    found: Counter[str] = Counter()
    for request in registry.blob_writes(since):
        match = re.search(r"[?&]digest=sha256(?::|%3A)([0-9a-f]{64})", request.path)
        if request.method == "PUT" and match:
            found[f"sha256:{match.group(1)}"] += 1
    return found


def test_index_pushed_last_and_shared_layers_uploaded_once(
    registry: Registry,
    store: Store,
    platform_closures: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    require_tool("skopeo")
    host = registry.host
    out = build_platforms(
        store,
        platform_closures,
        f"docker://{host}/multi:1",
        capsys,
        "--tag",
        "multi:2",
        cache=tmp_path / "c",
    )
    name, _, digest = out.partition("@")
    assert name == f"{host}/multi"
    index = _raw(f"{host}/multi:1")
    assert index["mediaType"] == INDEX
    assert _raw(f"{host}/multi:2") == index
    assert _raw(f"{host}/multi@{digest}") == index
    entries = index["manifests"]
    assert [e["platform"] for e in entries] == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux"},
    ]
    manifests = [_raw(f"{host}/multi@{e['digest']}") for e in entries]
    layers = [[d["digest"] for d in m["layers"]] for m in manifests]
    shared = set(layers[0]) & set(layers[1])
    assert len(shared) >= 2
    uploads = _uploads(registry)
    every = set(layers[0]) | set(layers[1]) | {m["config"]["digest"] for m in manifests}
    assert set(uploads) == every
    assert max(uploads.values()) == 1  # each blob once, the shared ones included

    # every platform's manifest went in by digest before any tag named the index
    puts = [r.path for r in registry.requests() if r.method == "PUT" and "/manifests/" in r.path]
    by_digest = [i for i, p in enumerate(puts) if "/manifests/sha256:" in p]
    tagged = [i for i, p in enumerate(puts) if p.endswith(("/manifests/1", "/manifests/2"))]
    assert len(by_digest) == 2
    assert len(tagged) == 2
    assert max(by_digest) < min(tagged)

    # pushed again: nothing is sent
    mark = registry.mark()
    again = build_platforms(
        store, platform_closures, f"docker://{host}/multi:1", capsys, cache=tmp_path / "c"
    )
    assert again == out
    assert [r for r in registry.requests(mark) if r.method in ("POST", "PATCH", "PUT")] == []

    # read back by closurepack
    status, text, err = run(["inspect", "--json", f"docker://{host}/multi:1"], capsys)
    assert status == 0, err
    info = json.loads(text)
    assert [p["platform"] for p in info["index"]["platforms"]] == ["linux/amd64", "linux/arm64"]
    assert info["index"]["digest"] == digest
    status, text, err = run(
        ["inspect", "--json", "--platform", "linux/arm64", f"docker://{host}/multi:1"], capsys
    )
    assert status == 0, err
    assert json.loads(text)["manifest_digest"] == entries[1]["digest"]
    status, text, err = run(["verify", f"docker://{host}/multi:1"], capsys)
    assert status == 0, err
    status, text, err = run(
        ["inspect", "--platform", "linux/s390x", f"docker://{host}/multi:1"], capsys
    )
    assert status == 2
    assert err == (
        f"closurepack: error: docker://{host}/multi:1: the index has no image for"
        " linux/s390x"
        " (platforms: linux/amd64, linux/arm64); choose another with --platform\n"
    )

    # copied to a layout: every platform, the index byte for byte
    layout = tmp_path / "copied"
    status, text, err = run(["copy", f"docker://{host}/multi:1", f"oci:{layout}:c"], capsys)
    assert status == 0, err
    assert text.strip() == digest
    raw = json.loads(run_tool("skopeo", "inspect", "--raw", f"oci:{layout}:c"))
    assert raw == index
    # and back to another repository of the registry: mounted, nothing uploaded
    mark = registry.mark()
    status, text, err = run(["copy", f"oci:{layout}:c", f"docker://{host}/other:c"], capsys)
    assert status == 0, err
    assert text.strip() == f"{host}/other@{digest}"
    assert _uploads(registry, mark)  # (a layout has no record of the registry: it uploads)
    mark = registry.mark()
    status, text, err = run(
        ["copy", f"docker://{host}/multi:1", f"docker://{host}/third:c"], capsys
    )
    assert status == 0, err
    assert _uploads(registry, mark) == Counter()  # within a registry: mounted


def test_docker_format_pushes_a_manifest_list(
    registry: Registry,
    store: Store,
    platform_closures: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    require_tool("skopeo")
    host = registry.host
    out = build_platforms(
        store, platform_closures, f"docker://{host}/list:1", capsys, "--format", "docker",
        cache=tmp_path / "c",
    )  # fmt: skip
    body = _raw_bytes(f"{host}/list:1")
    assert out == f"{host}/list@sha256:{hashlib.sha256(body).hexdigest()}"
    listed = json.loads(body)
    assert listed["mediaType"] == DOCKER_LIST
    entries = listed["manifests"]
    assert [e["mediaType"] for e in entries] == [DOCKER_MANIFEST, DOCKER_MANIFEST]
    for entry in entries:
        manifest = _raw(f"{host}/list@{entry['digest']}")
        assert manifest["mediaType"] == DOCKER_MANIFEST
    status, text, err = run(["verify", f"docker://{host}/list:1"], capsys)
    assert status == 0, err
    assert text == f"docker://{host}/list:1: ok\n"


def test_podman_pulls_each_platform(
    registry: Registry,
    nix_closure: NixClosure,
    podman_runner: PodmanRunner,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """amd64 is the fixture app (podman runs it); arm64 is one item of its closure, which
    cannot run here: only which manifest podman picks is checked."""
    host = registry.host
    argv = [
        "build",
        "--platform",
        f"linux/amd64={nix_closure.app}",
        "--platform",
        f"linux/arm64={nix_closure.item('data')}",
        "--entrypoint",
        nix_closure.entrypoint,
        "--cache-dir",
        tmp_path / "cache",
        "-q",
        "-o",
        f"docker://{host}/podman:1",
    ]
    status, out, err = run(argv, capsys)
    assert status == 0, err
    ref = f"{host}/podman:1"
    assert out.startswith(f"{host}/podman@sha256:")
    require_tool("skopeo")
    configs = {  # podman's image ID is the config's digest
        e["platform"]["architecture"]: _raw(f"{host}/podman@{e['digest']}")["config"]["digest"]
        for e in _raw(ref)["manifests"]
    }
    for arch in ("arm64", "amd64"):  # amd64 last: the tag then names the image podman runs
        run_tool(*podman_runner.command("pull", "--tls-verify=false", "--arch", arch, ref))
        shown = run_tool(
            *podman_runner.command(
                "image", "inspect", ref, "--format", "{{.Architecture}} sha256:{{.Id}}"
            )
        ).split()
        assert shown == [arch, configs[arch]]
    assert podman_runner.run(ref) == nix_closure.expected_output


def test_a_single_image_previous_of_a_multi_platform_build_is_read_with_one_manifest_get(
    registry: Registry,
    store: Store,
    platform_closures: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--previous docker://... naming a single image, in a build of several platforms: the
    registry's log shows one GET of the tag's manifest (not one to learn it is no index and
    one more to read the image)."""
    host = registry.host
    status, _, err = run(
        ["build", "--closure", platform_closures["amd64"], "--store-root", store.root, "-q",
         "--no-cache", "--entrypoint", "/bin/app", "-o", f"docker://{host}/prev/app:1"],
        capsys,
    )  # fmt: skip
    assert status == 0, err
    mark = registry.mark()
    build_platforms(
        store, platform_closures, f"oci:{tmp_path / 'layout'}:v2", capsys,
        "--previous", f"docker://{host}/prev/app:1", cache=tmp_path / "c",
    )  # fmt: skip
    gets = [r for r in registry.requests(mark) if r.method == "GET" and "/manifests/" in r.path]
    assert [(r.path, r.status) for r in gets] == [("/v2/prev/app/manifests/1", 200)]


def test_a_multi_platform_push_writes_the_blob_record_once(  # noqa: PLR0917 - fixtures
    registry: Registry,
    store: Store,
    platform_closures: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The record of where blobs were seen is rewritten once for the whole push (not once per
    platform manifest and again for the index), and names every blob of every platform."""
    writes: list[Path] = []
    real = record.atomic_write

    def counting(path: Path, *args: Any, **kwargs: Any) -> Any:
        if path.name == record.RECORD_NAME:
            writes.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(record, "atomic_write", counting)
    host = registry.host
    build_platforms(
        store, platform_closures, f"docker://{host}/rec:1", capsys, cache=tmp_path / "c"
    )
    assert writes == [tmp_path / "c" / record.RECORD_NAME]
    index = _raw(f"{host}/rec:1")
    manifests = [_raw(f"{host}/rec@{e['digest']}") for e in index["manifests"]]
    blobs = {d["digest"] for m in manifests for d in [m["config"], *m["layers"]]}
    kept = json.loads(writes[0].read_text())["registries"][host]
    assert {d for d, repos in kept.items() if "rec" in repos} == blobs
