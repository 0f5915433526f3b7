"""Pushing to and reading from a real registry (Debian's docker-registry on 127.0.0.1): what
closurepack pushes is read back by skopeo and by closurepack itself, and the registry's own access
log shows that nothing is uploaded twice and that blobs are mounted across repositories."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from clistore import APP, GRAPH, Store, build_app, item, make_store, run
from closurepack.errors import OptionError
from closurepack.registry import RegistryOptions, is_loopback, parse_reference
from closurepack.validate import inspect_image
from registry_fixtures import Registry
from runtimes import require_tool, run_tool

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_source_date_epoch")]


def _uploaded_digests(registry: Registry, since: int) -> set[str]:
    """The digests of the blob uploads the registry finished (PUT ...?digest=)."""
    found = set()
    for request in registry.blob_writes(since):
        match = re.search(r"[?&]digest=sha256(?::|%3A)([0-9a-f]{64})", request.path)
        if request.method == "PUT" and match:
            found.add(f"sha256:{match.group(1)}")
    return found


def _blobs(image: dict[str, object]) -> set[str]:
    layers = image["layers"]
    assert isinstance(layers, list)
    return {str(image["config_digest"])} | {str(layer["digest"]) for layer in layers}


def test_push_is_read_back_by_skopeo(
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    require_tool("skopeo")
    out = build_app(
        store, app_closure, f"docker://{registry.host}/app:1", capsys, cache=tmp_path / "c"
    )
    name, _, digest = out.partition("@")
    assert name == f"{registry.host}/app"
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)

    info = json.loads(
        run_tool("skopeo", "inspect", "--tls-verify=false", f"docker://{registry.host}/app:1")
    )
    assert info["Digest"] == digest
    raw = json.loads(
        run_tool("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{out}")
    )
    assert raw["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert info["Layers"] == [layer["digest"] for layer in raw["layers"]]

    layout = tmp_path / "copied"
    run_tool(
        "skopeo",
        "copy",
        "--src-tls-verify=false",
        f"docker://{registry.host}/app:1",
        f"oci:{layout}:copy",
    )
    status, verified, err = run(["verify", f"oci:{layout}:copy"], capsys)
    assert status == 0, err
    assert verified.strip().endswith(": ok")
    # skopeo copied the manifest byte for byte: same digest in the layout
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["digest"] == digest


def test_repush_uploads_nothing(
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dest = f"docker://{registry.host}/app:1"
    first = build_app(store, app_closure, dest, capsys, cache=tmp_path / "c")
    assert _uploaded_digests(registry, 0)  # the first push did upload
    mark = registry.mark()
    second = build_app(store, app_closure, dest, capsys, cache=tmp_path / "c")
    assert second == first
    later = registry.requests(mark)
    assert later  # it did talk to the registry ...
    writes = [r for r in later if r.method in ("POST", "PATCH", "PUT")]
    assert writes == []  # ... but only to look: no blob, no manifest sent again
    # A fresh cache (so no record of where blobs are) still finds them all by HEAD.
    mark = registry.mark()
    third = build_app(store, app_closure, dest, capsys, cache=tmp_path / "c2")
    assert third == first
    assert registry.blob_writes(mark) == []


def test_app_update_uploads_only_its_layer_and_the_config(
    registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Version 2 of the app is a new store item with the same dependencies.
    app2 = item("6", "app-2.0")
    store = make_store(tmp_path / "root", {**GRAPH, app2: GRAPH[APP]})
    dest = f"docker://{registry.host}/app:1"
    build_app(
        store, store.closure_file(tmp_path / "v1.json", [APP]), dest, capsys, cache=tmp_path / "c"
    )
    before = inspect_image(dest)
    mark = registry.mark()
    closure = store.closure_file(tmp_path / "v2.json", [app2])
    build_app(store, closure, dest, capsys, cache=tmp_path / "c")
    after = inspect_image(dest)
    new_blobs = _blobs(after) - _blobs(before)
    app_layers = [layer for layer in after["layers"] if app2 in layer["paths"]]
    assert len(app_layers) == 1
    assert new_blobs == {after["config_digest"], app_layers[0]["digest"]}
    assert _uploaded_digests(registry, mark) == new_blobs
    uploads = [r for r in registry.blob_writes(mark) if r.method == "POST"]
    assert len(uploads) == 2


def test_second_repository_mounts_every_blob(
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cache = tmp_path / "c"
    build_app(store, app_closure, f"docker://{registry.host}/app:1", capsys, cache=cache)
    assert (cache / "registry-blobs.json").is_file()
    mark = registry.mark()
    out = build_app(
        store, app_closure, f"docker://{registry.host}/team/other:2", capsys, cache=cache
    )
    writes = registry.blob_writes(mark)
    blobs = _blobs(inspect_image(f"docker://{registry.host}/team/other:2"))
    mounts = [r for r in writes if r.method == "POST" and "mount=" in r.path and r.status == 201]
    assert len(mounts) == len(blobs)
    assert all("from=app" in r.path for r in mounts)
    assert [r for r in writes if r.method in ("PUT", "PATCH")] == []
    assert out.startswith(f"{registry.host}/team/other@sha256:")


def test_unreadable_blob_record_is_only_a_lost_hint(
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cache = tmp_path / "c"
    build_app(store, app_closure, f"docker://{registry.host}/app:1", capsys, cache=cache)
    record = cache / "registry-blobs.json"
    record.write_text("{not json")
    mark = registry.mark()
    dest = f"docker://{registry.host}/other:1"
    argv = ["build", "--closure", app_closure, "--store-root", store.root, "--cache-dir", cache,
            "--entrypoint", "/bin/app", "-q", "-o", dest]  # fmt: skip
    status, _, err = run(argv, capsys)
    assert status == 0, err
    (line,) = err.splitlines()  # said once, as a warning, not at every blob
    assert line.startswith(f"closurepack: warning: {record}: unreadable blob record")
    writes = registry.blob_writes(mark)
    assert writes  # uploaded, since nothing said where the blobs were
    assert not [r for r in writes if "mount=" in r.path]
    written = json.loads(record.read_text())  # and the record is whole again
    blobs = written["registries"][registry.host]
    assert len(blobs) == len(writes) // 2  # a POST and a PUT per blob
    assert all(repos == ["other"] for repos in blobs.values())


def test_docker_format_pushes_a_schema2_manifest(
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    require_tool("skopeo")
    dest = f"docker://{registry.host}/app:docker"
    out = build_app(store, app_closure, dest, capsys, "--format", "docker", cache=tmp_path / "c")
    raw = json.loads(run_tool("skopeo", "inspect", "--raw", "--tls-verify=false", dest))
    assert raw["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert raw["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert {layer["mediaType"] for layer in raw["layers"]} == {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    }
    status, verified, err = run(["verify", f"docker://{out}"], capsys)
    assert status == 0, err
    assert verified.strip() == f"docker://{out}: ok"


def test_format_docker_needs_a_registry(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["build", "--closure", app_closure, "--store-root", store.root, "--cache-dir",
            tmp_path / "c", "--format", "docker", "-o", f"oci:{tmp_path / 'l'}"]  # fmt: skip
    status, out, err = run(argv, capsys)
    assert status == 2
    assert out == ""
    assert "--format docker is for docker:// destinations" in err
    assert not (tmp_path / "c").exists()


def test_inspect_and_verify_docker_reference(
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = build_app(
        store, app_closure, f"docker://{registry.host}/app:1", capsys, cache=tmp_path / "c"
    )
    status, text, err = run(["inspect", "--json", f"docker://{registry.host}/app:1"], capsys)
    assert status == 0, err
    info = json.loads(text)
    assert info["manifest_digest"] == out.partition("@")[2]
    assert any(APP in layer["paths"] for layer in info["layers"])
    status, text, err = run(["verify", f"docker://{out}"], capsys)
    assert (status, text.strip(), err) == (0, f"docker://{out}: ok", "")


def test_verify_catches_a_blob_changed_in_the_registry(
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dest = f"docker://{registry.host}/app:1"
    build_app(store, app_closure, dest, capsys, cache=tmp_path / "c")
    layer = inspect_image(dest)["layers"][0]["digest"].partition(":")[2]
    data = next((registry.root / "data").rglob(f"blobs/sha256/{layer[:2]}/{layer}/data"))
    blob = bytearray(data.read_bytes())
    blob[-1] ^= 0xFF
    data.write_bytes(bytes(blob))
    status, text, err = run(["verify", dest], capsys)
    assert status == 4
    assert text == ""
    assert f"layer 0 (sha256:{layer})" in err
    assert "digest is sha256:" in err


def test_build_from_and_previous_docker_references(
    registry: Registry, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from clistore import GLIBC, ZLIB

    cache = tmp_path / "c"
    base_closure = store.closure_file(tmp_path / "base.json", [ZLIB])
    app_closure = store.closure_file(tmp_path / "app.json", [APP])
    base = f"docker://{registry.host}/base:1"
    build_app(store, base_closure, base, capsys, "--no-tmp", cache=cache)
    base_layers = [la["digest"] for la in inspect_image(base)["layers"]]
    mark = registry.mark()
    dest = f"docker://{registry.host}/app:1"
    build_app(store, app_closure, dest, capsys, "--from", base, cache=tmp_path / "fresh")
    info = inspect_image(dest)
    layers = [la["digest"] for la in info["layers"]]
    assert layers[: len(base_layers)] == base_layers
    store_paths = [p for la in info["layers"] for p in la["paths"]]
    assert sorted(store_paths) == sorted(set(store_paths))  # nothing added twice
    assert {GLIBC, ZLIB, APP} <= set(store_paths)
    # The base layers were mounted from base (read there, so recorded), not sent again.
    writes = registry.blob_writes(mark)
    mounted = {r.path for r in writes if "mount=" in r.path and r.status == 201}
    assert len(mounted) == len(base_layers)
    assert not _uploaded_digests(registry, mark) & set(base_layers)

    # --previous docker://: the earlier image's layers are reused as they are.
    mark = registry.mark()
    again = build_app(
        store, app_closure, dest, capsys, "--from", base, "--previous", dest, cache=cache
    )
    assert again.partition("@")[2] == info["manifest_digest"]
    assert registry.blob_writes(mark) == []


def test_assemble_pushes_build_layer_descriptors(
    registry: Registry, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(
        ["build-layer", APP, "--store-root", store.root, "-o", tmp_path / "layer"], capsys
    )
    assert status == 0, err
    dest = f"docker://{registry.host}/assembled:1"
    status, out, err = run(["assemble", out.strip(), "-o", dest], capsys)
    assert status == 0, err
    assert out.startswith(f"{registry.host}/assembled@sha256:")
    info = inspect_image(dest)
    assert info["layers"][0]["paths"] == [APP]
    assert len(info["layers"]) == 2  # and the customisation layer (/tmp)


@pytest.mark.parametrize(
    ("dest", "message"),
    [
        ("docker://app:1", "name the registry host first"),
        ("docker://localhost:5000/App:1", "invalid repository 'App'"),
        ("docker://localhost:5000/app:-x", "invalid tag '-x'"),
        ("docker://localhost:5000/app@sha256:" + "a" * 64, "names a tag, not a digest"),
        ("docker://localhost:99999/app:1", "invalid registry host"),
    ],
)
def test_bad_destination_fails_before_any_layer(
    dest: str,
    message: str,
    *,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["build", "--closure", app_closure, "--store-root", store.root,
            "--cache-dir", tmp_path / "c", "-o", dest]  # fmt: skip
    status, out, err = run(argv, capsys)
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "c").exists()


def test_misspelt_registry_destination_names_docker_form(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["build", "--closure", app_closure, "--store-root", store.root,
            "--cache-dir", tmp_path / "c", "-o", "docker:/localhost/app:1"]  # fmt: skip
    status, out, err = run(argv, capsys)
    assert (status, out) == (2, "")
    assert "docker://HOST/REPO[:TAG]" in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--tls-verify", "--no-tls-verify"), "contradict each other"),
        (("--tls-verify=maybe",), "'maybe' is not a valid boolean"),
    ],
)
def test_tls_verify_spellings(
    flags: tuple[str, ...],
    message: str,
    *,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["build", "--closure", app_closure, "--store-root", store.root,
            "--cache-dir", tmp_path / "c", "-o", "docker://localhost:1/app:1", *flags]  # fmt: skip
    status, out, err = run(argv, capsys)
    assert (status, out) == (2, "")
    assert message in err
    assert err.count("\n") == 1


def test_layers_are_pushed_while_the_build_goes_on(
    registry: Registry, store: Store, app_closure: Path, tmp_path: Path
) -> None:
    import time

    from closurepack.build import LayerEvent
    from closurepack.buildjob import build_image
    from closurepack.buildoptions import BuildInput, LayerOptions
    from closurepack.jobsetup import ImageOptions

    events: list[LayerEvent] = []
    seen_during_build: list[bool] = []

    def progress(event: LayerEvent) -> None:
        events.append(event)
        if event.index == event.total - 1:  # the top layer: the others are built already
            first = events[0].layer.digest.hex
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if any(r.method == "PUT" and first in r.path for r in registry.requests()):
                    seen_during_build.append(True)
                    return
            seen_during_build.append(False)

    out = build_image(
        BuildInput(closure_files=[app_closure], store_root=store.root),
        dest=f"docker://{registry.host}/app:1",
        layer_options=LayerOptions(cache_dir=tmp_path / "c", jobs=1),
        image=ImageOptions(entrypoint=("/bin/app",)),
        progress=progress,
    )
    assert len(events) > 2
    assert seen_during_build == [True]
    assert out.startswith(f"{registry.host}/app@")


def test_every_tag_is_pushed(
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from closurepack.readback import read_image
    from closurepack.registry.push import push_image

    out = build_app(
        store, app_closure, f"docker://{registry.host}/app:1", capsys, cache=tmp_path / "c"
    )
    image = read_image(f"docker://{out}")
    ref = parse_reference(f"docker://{registry.host}/copy", for_push=True)
    digest = push_image(image, ref, options=RegistryOptions(), tags=["a", "b"])
    assert f"{registry.host}/app@{digest}" == out
    for tag in ("a", "b"):
        assert inspect_image(f"docker://{registry.host}/copy:{tag}")["manifest_digest"] == str(
            digest
        )


def test_unreachable_registry_is_one_line(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from registry_fixtures import free_port

    port = free_port()  # nothing listens there
    argv = ["build", "--closure", app_closure, "--store-root", store.root,
            "--cache-dir", tmp_path / "c", "-o", f"docker://127.0.0.1:{port}/app:1",
            "--no-tls-verify"]  # fmt: skip
    status, out, err = run(argv, capsys)
    assert status == 5
    assert out == ""
    assert err.count("\n") == 1
    assert f"registry ping: 127.0.0.1:{port}: ConnectError" in err
    assert "after 5 tries" in err


@pytest.mark.parametrize(
    ("text", "host", "repository", "reference"),
    [
        ("docker://127.0.0.1:5000/app:1", "127.0.0.1:5000", "app", "1"),
        ("docker://localhost/a/b.c/d-e__f", "localhost", "a/b.c/d-e__f", "latest"),
        ("docker://[::1]:5000/app", "[::1]:5000", "app", "latest"),
        ("docker://docker.io/debian:12", "docker.io", "library/debian", "12"),
        ("docker://example.com/x@sha256:" + "b" * 64, "example.com", "x", "sha256:" + "b" * 64),
    ],
)
def test_reference_parsing(text: str, host: str, repository: str, reference: str) -> None:
    ref = parse_reference(text)
    assert (ref.host, ref.repository, ref.reference) == (host, repository, reference)


def test_docker_hub_api_host_and_string_forms() -> None:
    ref = parse_reference("docker://docker.io/debian:12")
    assert ref.registry == "registry-1.docker.io"
    assert str(ref) == "docker.io/library/debian:12"
    with pytest.raises(OptionError, match="invalid digest"):
        parse_reference("docker://example.com/x@sha256:nothex")
    with pytest.raises(OptionError, match="expected docker://HOST/REPO"):
        parse_reference("docker://")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.8.9.10", True),
        ("[::1]:5000", True),
        ("10.0.0.1:5000", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    assert RegistryOptions().plain_http_allowed(host) is loopback
    assert RegistryOptions(insecure_hosts=(host,)).plain_http_allowed(host)
    assert RegistryOptions(tls_verify=False).plain_http_allowed(host)


def test_options_are_validated(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="retries"):
        RegistryOptions(retries=-1)
    with pytest.raises(OptionError, match="jobs"):
        RegistryOptions(jobs=0)
    with pytest.raises(OptionError, match="--cert-dir"):
        RegistryOptions(cert_dir=tmp_path / "missing")
    assert "secret" not in repr(RegistryOptions(creds="user:secret"))
