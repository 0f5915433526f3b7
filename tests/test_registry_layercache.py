"""A registry as a layer cache shared by builders (--cache-to / --cache-from), against a real
docker-registry: machine A builds and publishes, machine B (an empty cache dir, and a store whose
item directories are gone) takes every layer from the registry; requests are counted from the
registry's own access log."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from clistore import APP, GRAPH, LIBFOO, Store, item, make_store, read_oci, run
from closurepack.cache import LayerCache
from closurepack.digest import Digest
from closurepack.layerbuild import layer_key
from closurepack.registry.cachemapping import (
    ARTIFACT_TYPE,
    CACHE_TAG,
    CONFIG_TYPE,
    MAPPING_TYPE,
)
from closurepack.validate import inspect_image
from registry_auth_fixtures import PASSWORD, USER, AuthRegistry, TokenServer
from registry_fixtures import Registry, start_registry

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_source_date_epoch")]


def _build(
    store: Store,
    closure: Path,
    dest: str,
    capsys: pytest.CaptureFixture[str],
    *extra: object,
    cache: Path,
    quiet_ok: bool = True,
) -> tuple[str, str]:
    argv = ["build", "--closure", closure, "--store-root", store.root, "--cache-dir", cache,
            "--entrypoint", "/bin/app", "-q", "-o", dest, *extra]  # fmt: skip
    status, out, err = run(argv, capsys)
    assert status == 0, err
    if quiet_ok:
        assert err == ""
    return out.strip(), err


def _hide(store: Store, keep: tuple[str, ...] = ()) -> Path:
    """Move every item directory but ``keep`` out of the store root (any tar of them fails)."""
    away = store.root.parent / "away"
    away.mkdir()
    for path in store.graph:
        if path not in keep and store.files(path).exists():
            shutil.move(store.files(path), away / path.rsplit("/", 1)[-1])
    return away


def _verify(image: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(["verify", image], capsys)
    assert status == 0, err
    assert out.strip().endswith(": ok")


def _get(url: str, accept: str = "*/*") -> tuple[bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read(), dict(response.headers)


def _mapping(registry: Registry, repo: str = "cache", tag: str = CACHE_TAG) -> dict[str, object]:
    body, _ = _get(
        f"http://{registry.host}/v2/{repo}/manifests/{tag}",
        "application/vnd.oci.image.manifest.v1+json",
    )
    manifest = json.loads(body)
    assert manifest["artifactType"] == ARTIFACT_TYPE
    assert manifest["config"]["mediaType"] == CONFIG_TYPE
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == MAPPING_TYPE
    data, _ = _get(f"http://{registry.host}/v2/{repo}/blobs/{layer['digest']}")
    obj = json.loads(data)
    assert isinstance(obj, dict)
    return obj


def _put(url: str, data: bytes, content_type: str, method: str = "PUT") -> None:
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": content_type}
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def _publish_raw(registry: Registry, repo: str, mapping: bytes) -> None:
    """Write ``mapping`` as the layer cache of ``repo`` with plain HTTP requests."""
    descriptors = [
        {"digest": str(_upload_blob(registry, repo, blob)), "size": len(blob)}
        for blob in (b"{}", mapping)
    ]
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": CONFIG_TYPE, **descriptors[0]},
        "layers": [{"mediaType": MAPPING_TYPE, **descriptors[1]}],
    }
    _put(
        f"http://{registry.host}/v2/{repo}/manifests/{CACHE_TAG}",
        json.dumps(manifest).encode(),
        "application/vnd.oci.image.manifest.v1+json",
    )


def _key(*paths: str) -> str:
    return layer_key(paths, store_dir="/nix/store", compression="gzip", level=None, mtime=1)


def test_machine_b_builds_nothing_and_uploads_nothing(
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host = registry.host
    first, _ = _build(store, app_closure, f"docker://{host}/app:1", capsys,
                      "--cache-to", f"docker://{host}/cache", cache=tmp_path / "A")  # fmt: skip
    image = inspect_image(f"docker://{host}/app:1")
    store_layers = [layer for layer in image["layers"] if layer["paths"]]
    mapping = _mapping(registry)
    layers = mapping["layers"]
    assert isinstance(layers, dict)
    # one entry per layer (the store layers and the customisation layer on top), naming its
    # blob, which the cache repository holds
    assert len(layers) == len(image["layers"]) == len(store_layers) + 1
    assert {v["digest"] for v in layers.values()} == {layer["digest"] for layer in image["layers"]}
    for layer in store_layers:
        entry = layers[_key(*layer["paths"])]
        assert entry == {"digest": layer["digest"], "size": layer["size"],
                         "mediaType": layer["media_type"], "diff_id": layer["diff_id"]}  # fmt: skip
    for layer in image["layers"]:
        _get(f"http://{host}/v2/cache/blobs/{layer['digest']}")

    _hide(store)
    mark = registry.mark()
    second, _ = _build(store, app_closure, f"docker://{host}/app:2", capsys,
                       "--cache-from", f"docker://{host}/cache", cache=tmp_path / "B")  # fmt: skip
    assert second == first  # the same image, though no store file could be read
    assert registry.blob_writes(mark) == []
    assert [r for r in registry.requests(mark) if r.method in ("PATCH", "DELETE")] == []
    _verify(f"docker://{host}/app:2", capsys)


def test_another_repository_gets_the_layers_mounted_from_the_cache(
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host = registry.host
    _build(store, app_closure, f"docker://{host}/app:1", capsys,
           "--cache-to", f"docker://{host}/cache", cache=tmp_path / "A")  # fmt: skip
    _hide(store)
    mark = registry.mark()
    _build(store, app_closure, f"docker://{host}/team/other:1", capsys,
           "--cache-from", f"docker://{host}/cache", cache=tmp_path / "B")  # fmt: skip
    image = inspect_image(f"docker://{host}/team/other:1")
    writes = registry.blob_writes(mark)
    mounts = [r for r in writes if r.method == "POST" and "mount=" in r.path and r.status == 201]
    assert len(mounts) == len(image["layers"])  # the customisation layer's too
    assert all("from=cache" in r.path for r in mounts)
    (sent,) = [r for r in writes if r.method == "PUT"]  # the only blob sent is the config
    assert image["config_digest"].partition(":")[2] in sent.path
    assert [r for r in writes if r.method == "PATCH"] == []
    _verify(f"docker://{host}/team/other:1", capsys)


def test_oci_destination_downloads_the_blobs_into_the_local_cache(
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host = registry.host
    _build(store, app_closure, f"docker://{host}/app:1", capsys,
           "--cache-to", f"docker://{host}/cache:v1", cache=tmp_path / "A")  # fmt: skip
    image = inspect_image(f"docker://{host}/app:1")
    _hide(store)
    mark = registry.mark()
    layout = tmp_path / "layout"
    out, _ = _build(store, app_closure, f"oci:{layout}:app", capsys,
                    "--cache-from", f"docker://{host}/cache:v1", cache=tmp_path / "B")  # fmt: skip
    assert out == image["manifest_digest"]
    _verify(f"oci:{layout}:app", capsys)
    store_layers = [layer for layer in image["layers"] if layer["paths"]]
    gets = {r.path.rsplit("/", 1)[-1] for r in registry.requests(mark) if r.method == "GET"}
    assert {layer["digest"] for layer in store_layers} <= gets
    with LayerCache(tmp_path / "B") as cache:  # normal entries: a rebuild uses them offline
        for layer in store_layers:
            hit = cache.get(_key(*layer["paths"]))
            assert hit is not None
            assert str(hit.digest) == layer["digest"]
    mark = registry.mark()
    again, _ = _build(store, app_closure, f"oci:{layout}:again", capsys, cache=tmp_path / "B")
    assert again == out
    assert registry.requests(mark) == []


def test_app_update_builds_only_the_app_layer(
    registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = registry.host
    app2 = item("6", "app-2.0")
    store = make_store(tmp_path / "root", {**GRAPH, app2: GRAPH[APP]})
    v1 = store.closure_file(tmp_path / "v1.json", [APP])
    v2 = store.closure_file(tmp_path / "v2.json", [app2])
    _build(store, v1, f"docker://{host}/app:1", capsys,
           "--cache-to", f"docker://{host}/cache", cache=tmp_path / "A")  # fmt: skip
    _hide(store, keep=(app2,))  # B can read the new app's files, nothing else
    mark = registry.mark()
    _build(store, v2, f"docker://{host}/app:2", capsys, "--cache-from", f"docker://{host}/cache",
           "--cache-to", f"docker://{host}/cache", cache=tmp_path / "B")  # fmt: skip
    image = inspect_image(f"docker://{host}/app:2")
    app_layer = next(layer for layer in image["layers"] if app2 in layer["paths"])
    assert app_layer["paths"] == [app2]
    _verify(f"docker://{host}/app:2", capsys)
    with LayerCache(tmp_path / "B") as cache:  # built here: the only layer in B's cache
        assert cache.usage().entries == 1
        assert cache.get(_key(app2)) is not None
    # the update is merged into the mapping; v1's entries stay
    layers = _mapping(registry)["layers"]
    assert isinstance(layers, dict)
    assert layers[_key(app2)]["digest"] == app_layer["digest"]
    assert _key(APP) in layers
    # to the image's repository only the new app layer and the config were sent ...
    sent = {
        re.sub(r".*[?&]digest=sha256(?::|%3A)([0-9a-f]{64}).*", r"sha256:\1", r.path)
        for r in registry.blob_writes(mark)
        if r.method == "PUT" and r.path.startswith("/v2/app/")
    }
    assert sent == {app_layer["digest"], image["config_digest"]}
    # ... and the cache repository got the app layer by a mount from there
    mounted = [r for r in registry.blob_writes(mark) if r.path.startswith("/v2/cache/")
               and "mount=" in r.path and r.status == 201]  # fmt: skip
    assert len(mounted) == 1
    assert "from=app" in mounted[0].path


def _upload_blob(registry: Registry, repo: str, blob: bytes) -> Digest:
    base = f"http://{registry.host}/v2/{repo}"
    request = urllib.request.Request(f"{base}/blobs/uploads/", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        location = response.headers["Location"]
    sep = "&" if "?" in location else "?"
    url = location if location.startswith("http") else f"http://{registry.host}{location}"
    _put(f"{url}{sep}digest={Digest.of_bytes(blob)}", blob, "application/octet-stream")
    return Digest.of_bytes(blob)


def _corrupt(registry: Registry, mapping: dict[str, Any], key: str, **entry: object) -> None:
    layers = mapping["layers"]
    assert isinstance(layers, dict)
    layers[key] = {**layers[key], **entry}
    _publish_raw(registry, "cache", json.dumps(mapping).encode())


def _restore(store: Store, away: Path) -> None:
    for path in store.graph:
        moved = away / path.rsplit("/", 1)[-1]
        if moved.exists():
            shutil.move(moved, store.files(path))


def test_wrong_entries_in_the_mapping_never_make_a_wrong_image(
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host = registry.host
    good, _ = _build(store, app_closure, f"docker://{host}/app:1", capsys,
                     "--cache-to", f"docker://{host}/cache", cache=tmp_path / "A")  # fmt: skip
    image = inspect_image(f"docker://{host}/app:1")
    app_layer = next(layer for layer in image["layers"] if layer["paths"] == [APP])
    original = _mapping(registry)
    away = _hide(store, keep=(APP,))
    warning = (
        f"closurepack: warning: layer cache {host}/cache:{CACHE_TAG}: layer {_key(APP)[:12]}: "
    )

    def build_b(dest: str, cache: str) -> str:
        _, err = _build(store, app_closure, dest, capsys, "--cache-from",
                        f"docker://{host}/cache", cache=tmp_path / cache,
                        quiet_ok=False)  # fmt: skip
        (line,) = err.splitlines()
        assert line.startswith(warning)
        assert line.endswith("; building it")
        return line

    # pushed: the app's entry names a blob the registry has, of another size (the config)
    _corrupt(registry, json.loads(json.dumps(original)), _key(APP), digest=image["config_digest"])
    line = build_b(f"docker://{host}/app:2", "B")
    assert f"blob {image['config_digest']} of {host}/cache:{CACHE_TAG}: " in line
    assert "404" in line
    assert inspect_image(f"docker://{host}/app:2")["manifest_digest"] == image["manifest_digest"]

    # downloaded: the blob is there, digest-true and of that size, but not a layer of that
    # diff_id (checked while it streams)
    plain = b"not the app's layer"
    other = gzip.compress(plain, mtime=0)
    digest = _upload_blob(registry, "cache", other)
    _corrupt(registry, json.loads(json.dumps(original)), _key(APP), digest=str(digest),
             size=len(other))  # fmt: skip
    layout = tmp_path / "layout"
    line = build_b(f"oci:{layout}", "C")
    assert (
        f"its diff_id is {Digest.of_bytes(b'not the app' + chr(39).encode() + b's layer')}" in line
    )
    assert f"{host}/app@" + read_oci(layout).index["manifests"][0]["digest"] == good
    _verify(f"oci:{layout}", capsys)
    with LayerCache(tmp_path / "C") as cache:  # the app's layer was built, and is right
        hit = cache.get(_key(APP))
        assert hit is not None
        assert str(hit.digest) == app_layer["digest"]

    # an entry naming another layer's blob (digest and size): the two entries disagree on its
    # diff_id, so neither is used (which one lies cannot be told)
    libfoo = original["layers"][_key(LIBFOO)]
    _corrupt(registry, json.loads(json.dumps(original)), _key(APP), digest=libfoo["digest"],
             size=libfoo["size"])  # fmt: skip
    _restore(store, away)
    out, err = _build(store, app_closure, f"docker://{host}/app:3", capsys, "--cache-from",
                      f"docker://{host}/cache", "--cache-to", f"docker://{host}/cache",
                      cache=tmp_path / "D", quiet_ok=False)  # fmt: skip
    (line,) = err.splitlines()
    assert line == (
        f"closurepack: warning: layer cache {host}/cache:{CACHE_TAG}: blob {libfoo['digest']}"
        " is named with different sizes or diff_ids; those entries are ignored"
    )
    assert out == good
    _verify(f"docker://{host}/app:3", capsys)
    # ... and writing the cache again put the right entries back (the newer entry wins)
    layers = _mapping(registry)["layers"]
    assert isinstance(layers, dict)
    assert layers[_key(APP)] == original["layers"][_key(APP)]
    assert layers[_key(LIBFOO)] == libfoo
    assert list(layers)[-1] in (_key(APP), _key(LIBFOO))  # changed entries go last


def test_malformed_mapping_is_one_warning(
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host = registry.host
    _publish_raw(registry, "cache", b'{"format": "closurepack-layer-cache-1", "layers": [1]}')
    _, err = _build(store, app_closure, f"docker://{host}/app:1", capsys,
                    "--cache-from", f"docker://{host}/cache", cache=tmp_path / "B",
                      quiet_ok=False)  # fmt: skip
    (line,) = err.splitlines()
    assert line.startswith(f"closurepack: warning: layer cache {host}/cache:{CACHE_TAG}: mapping")
    assert line.endswith("; ignored")
    _verify(f"docker://{host}/app:1", capsys)


def test_missing_cache_repository_builds_normally_with_one_warning(
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host = registry.host
    layout = tmp_path / "layout"
    _, err = _build(store, app_closure, f"oci:{layout}", capsys,
                    "--cache-from", f"docker://{host}/nothere", cache=tmp_path / "B",
                    quiet_ok=False)  # fmt: skip
    (line,) = err.splitlines()
    assert line == (
        f"closurepack: warning: layer cache {host}/nothere:{CACHE_TAG} does not exist (yet);"
        " building without it"
    )
    _verify(f"oci:{layout}", capsys)


def test_cache_to_a_tag_holding_an_image_is_refused_before_building(
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host = registry.host
    _build(store, app_closure, f"docker://{host}/app:1", capsys, cache=tmp_path / "A")
    before = inspect_image(f"docker://{host}/app:1")
    argv = ["build", "--closure", app_closure, "--store-root", store.root, "--cache-dir",
            tmp_path / "B", "-q", "-o", f"oci:{tmp_path / 'layout'}",
            "--cache-to", f"docker://{host}/app:1"]  # fmt: skip
    status, _, err = run(argv, capsys)
    assert status == 5
    (line,) = err.splitlines()
    assert "holds something else than a layer cache" in line
    assert not (tmp_path / "layout").exists()
    assert inspect_image(f"docker://{host}/app:1") == before


def test_bad_cache_reference_is_an_option_error(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["build", "--closure", app_closure, "--store-root", store.root, "-q",
            "-o", f"oci:{tmp_path / 'layout'}", "--cache-from", f"oci:{tmp_path}"]  # fmt: skip
    status, _, err = run(argv, capsys)
    assert status == 2
    assert err.strip().endswith("--cache-from 'oci:" + str(tmp_path) + "': expected"
                                " docker://HOST/REPO[:TAG]")  # fmt: skip


def test_without_a_local_cache_both_ways_work(
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host = registry.host
    first, _ = _build(store, app_closure, f"oci:{tmp_path / 'a'}", capsys, "--no-cache",
                      "--cache-to", f"docker://{host}/cache", cache=tmp_path / "A")  # fmt: skip
    assert not (tmp_path / "A").exists()
    layers = _mapping(registry)["layers"]
    assert isinstance(layers, dict)
    assert len(layers) == len(read_oci(tmp_path / "a").layer_digests)
    _hide(store)
    second, _ = _build(store, app_closure, f"docker-archive:{tmp_path / 'b.tar'}", capsys,
                       "--no-cache", "--cache-from", f"docker://{host}/cache",
                       cache=tmp_path / "B")  # fmt: skip
    assert second == first
    assert not (tmp_path / "B").exists()
    _verify(f"docker-archive:{tmp_path / 'b.tar'}", capsys)


def test_cache_to_the_image_tag_itself_is_refused(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["build", "--closure", app_closure, "--store-root", store.root, "-q",
            "-o", "docker://localhost:5999/app",
            "--cache-to", "docker://localhost:5999/app:latest"]  # fmt: skip
    status, _, err = run(argv, capsys)
    assert status == 2
    assert err == (
        "closurepack: error: --cache-to 'docker://localhost:5999/app:latest': that is the"
        " image's own tag\n"
    )


def test_cache_on_another_registry_is_downloaded_then_pushed(
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host = registry.host
    _build(store, app_closure, f"docker://{host}/app:1", capsys,
           "--cache-to", f"docker://{host}/cache", cache=tmp_path / "A")  # fmt: skip
    image = inspect_image(f"docker://{host}/app:1")
    _hide(store)
    with start_registry(tmp_path / "second") as other:
        out, _ = _build(store, app_closure, f"docker://{other.host}/app:1", capsys,
                        "--cache-from", f"docker://{host}/cache", cache=tmp_path / "B")  # fmt: skip
        assert out == f"{other.host}/app@{image['manifest_digest']}"
        uploaded = {r.path for r in other.blob_writes() if r.method == "PUT"}
        assert len(uploaded) == len(image["layers"]) + 1  # every layer and the config
        _verify(f"docker://{other.host}/app:1", capsys)
    with LayerCache(tmp_path / "B") as cache:
        assert cache.usage().entries == len(image["layers"])


def test_token_registry_mounts_from_the_cache_with_one_token_scope(
    token_registry: AuthRegistry,
    token_server: TokenServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = make_store(tmp_path / "root")
    app_closure = store.closure_file(tmp_path / "app.json", [APP])
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    host = token_registry.host
    creds = ("--creds", f"{USER}:{PASSWORD}")
    _build(store, app_closure, f"docker://{host}/tokened/app:1", capsys, *creds,
           "--cache-to", f"docker://{host}/tokened/cache", cache=tmp_path / "A")  # fmt: skip
    _hide(store)
    token_server.reset()
    out, _ = _build(store, app_closure, f"docker://{host}/tokened/other:1", capsys, *creds,
                    "--cache-from", f"docker://{host}/tokened/cache",
                    cache=tmp_path / "B")  # fmt: skip
    assert out.startswith(f"{host}/tokened/other@sha256:")
    # the push's token covers pulling from the cache repository, so every layer was mounted
    # (nothing was downloaded into B's cache)
    pushes = [r["scopes"] for r in token_server.requests
              if "repository:tokened/other:pull,push" in r["scopes"]]  # fmt: skip
    assert pushes
    assert all("repository:tokened/cache:pull" in scopes for scopes in pushes)
    with LayerCache(tmp_path / "B") as cache:
        assert cache.usage().entries == 0
    status, verified, err = run(["verify", f"docker://{host}/tokened/other:1", *creds], capsys)
    assert status == 0, err
    assert verified.strip().endswith(": ok")


def test_zstd_chunked_layers_keep_their_annotations_through_the_cache(
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The mapping records each zstd:chunked layer's annotations, so an image made from the
    cache (mounted into a registry, or downloaded into a layout) has the same descriptors."""
    host = registry.host
    chunked = ("--compression", "zstd:chunked")
    first, _ = _build(store, app_closure, f"docker://{host}/app:1", capsys, *chunked,
                      "--cache-to", f"docker://{host}/cache", cache=tmp_path / "A")  # fmt: skip
    layers = _mapping(registry)["layers"]
    assert isinstance(layers, dict)
    assert all(
        "io.github.containers.zstd-chunked.manifest-checksum" in v["annotations"]
        for v in layers.values()
    )
    _hide(store)
    second, _ = _build(store, app_closure, f"docker://{host}/app:2", capsys, *chunked,
                       "--cache-from", f"docker://{host}/cache", cache=tmp_path / "B")  # fmt: skip
    assert second == first
    layout = tmp_path / "layout"
    _build(store, app_closure, f"oci:{layout}", capsys, *chunked,
           "--cache-from", f"docker://{host}/cache", cache=tmp_path / "C")  # fmt: skip
    descriptors = read_oci(layout).manifest["layers"]
    assert {d["digest"]: d["annotations"] for d in descriptors} == {
        v["digest"]: v["annotations"] for v in layers.values()
    }
    _verify(f"oci:{layout}", capsys)


def _layer_dirs(
    store: Store, closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[Path, list[Path]]:
    """The closure planned into a plan file, each layer built by build-layer into a dir."""
    status, out, err = run(["plan", "--closure", closure, "--json"], capsys)
    assert status == 0, err
    plan = tmp_path / "plan.json"
    plan.write_text(out)
    dirs = []
    for number in range(len(json.loads(out)["images"][0]["layers"])):
        out_dir = tmp_path / "layers" / str(number)
        argv = ["build-layer", "--plan", plan, "--layer", number, "--store-root", store.root,
                "-o", out_dir]  # fmt: skip
        status, _, err = run(argv, capsys)
        assert status == 0, err
        dirs.append(out_dir)
    return plan, dirs


def _assemble(dirs: list[Path], dest: str, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    status, out, err = run(["assemble", *dirs, "--entrypoint", "/bin/app", "-o", dest, *extra],
                           capsys)  # fmt: skip
    assert status == 0, err
    assert err == ""
    return out.strip()


def test_assemble_publishes_the_layers_build_then_takes(
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host = registry.host
    plan, dirs = _layer_dirs(store, app_closure, tmp_path, capsys)
    first = _assemble(dirs, f"docker://{host}/app:1", capsys,
                      "--cache-to", f"docker://{host}/cache")  # fmt: skip
    image = inspect_image(f"docker://{host}/app:1")
    layers = _mapping(registry)["layers"]
    assert isinstance(layers, dict)
    assert len(layers) == len(image["layers"])  # the store layers and the customisation layer
    for layer in (la for la in image["layers"] if la["paths"]):
        assert layers[_key(*layer["paths"])]["digest"] == layer["digest"]  # build's keys
    _hide(store)
    mark = registry.mark()
    argv = ["build", "--plan", plan, "--store-root", store.root, "--cache-dir", tmp_path / "B",
            "--entrypoint", "/bin/app", "-q", "--cache-from", f"docker://{host}/cache",
            "-o", f"docker://{host}/app:2"]  # fmt: skip
    status, second, err = run(argv, capsys)
    assert status == 0, err
    assert second.strip().partition("@")[2] == first.partition("@")[2]  # same, nothing tarred
    assert registry.blob_writes(mark) == []
    _verify(f"docker://{host}/app:2", capsys)


def test_assemble_mounts_what_the_cache_holds_instead_of_uploading(
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host = registry.host
    _build(store, app_closure, f"docker://{host}/app:1", capsys,
           "--cache-to", f"docker://{host}/cache", cache=tmp_path / "A")  # fmt: skip
    _, dirs = _layer_dirs(store, app_closure, tmp_path, capsys)
    mark = registry.mark()
    dest = f"docker://{host}/team/other:1"
    _assemble(dirs, dest, capsys, "--cache-from", f"docker://{host}/cache")
    image = inspect_image(dest)
    writes = registry.blob_writes(mark)
    mounts = [r for r in writes if r.method == "POST" and "mount=" in r.path and r.status == 201]
    assert len(mounts) == len(image["layers"])  # the customisation layer's too
    assert all("from=cache" in r.path for r in mounts)
    (sent,) = [r for r in writes if r.method == "PUT"]  # the only blob sent is the config
    assert image["config_digest"].partition(":")[2] in sent.path
    _verify(dest, capsys)


def test_assemble_of_descriptors_without_a_key_shares_nothing_of_them(
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host = registry.host
    _, dirs = _layer_dirs(store, app_closure, tmp_path, capsys)
    for directory in dirs:  # as an older build-layer wrote them
        descriptor = json.loads((directory / "layer.json").read_text())
        del descriptor["key"]
        (directory / "layer.json").write_text(json.dumps(descriptor))
    (bad := tmp_path / "bad").mkdir()
    shutil.copytree(dirs[0], bad, dirs_exist_ok=True)
    descriptor = json.loads((bad / "layer.json").read_text())
    (bad / "layer.json").write_text(json.dumps({**descriptor, "key": "../x"}))
    status, out, err = run(["assemble", bad, "-o", f"docker://{host}/app:0", "--cache-to",
                            f"docker://{host}/cache"], capsys)  # fmt: skip
    assert (status, out) == (4, "")
    assert (
        err
        == f"closurepack: error: {bad / 'layer.json'}: invalid layer descriptor: bad key '../x'\n"
    )
    _assemble(dirs, f"docker://{host}/app:1", capsys, "--cache-to", f"docker://{host}/cache")
    layers = _mapping(registry)["layers"]
    assert isinstance(layers, dict)
    assert len(layers) == 1  # the customisation layer only
