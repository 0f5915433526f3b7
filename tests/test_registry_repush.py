"""Re-pushing to a real registry: with the push record, one GET of the tag; a whole push HEADs
every blob, even those the tag's manifest names (a blob can be deleted under a tag that stays:
tests/test_registry_repair.py), and leaves a tag already holding the manifest alone. An answer
that does not hold up is not trusted. Requests are counted from the registry's access log."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from clistore import APP, GRAPH, Store, build_app, item, make_store, run
from closurepack.digest import Digest
from closurepack.errors import ImageError
from closurepack.mediatypes import MediaType
from closurepack.registry import RegistryOptions, parse_reference
from closurepack.registry.client import open_client
from closurepack.registry.tagged import manifest_blobs, read_tag
from closurepack.validate import inspect_image, verify_image
from registry_fixtures import Registry, Request, start_registry
from test_registry_faults import Fault, FaultProxy

pytestmark = pytest.mark.integration

_HEX = re.compile(r"sha256:[0-9a-f]{64}")


@pytest.fixture(autouse=True)
def _no_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    server = FaultProxy(registry.host)
    try:
        yield server
    finally:
        server.close()


def _push(
    store: Store, closure: Path, dest: str, cache: Path, capsys: pytest.CaptureFixture[str]
) -> str:
    return build_app(store, closure, dest, capsys, cache=cache)


def _heads(requests: list[Request]) -> list[str]:
    """The digests of the blobs checked with HEAD."""
    return [m[0] for r in requests if r.method == "HEAD" and (m := _HEX.search(r.path)) is not None]


def _blobs(dest: str) -> set[str]:
    image = inspect_image(dest)
    return {str(image["config_digest"])} | {str(la["digest"]) for la in image["layers"]}


def test_repush_of_an_unchanged_image_is_one_manifest_get(
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dest = f"docker://{registry.host}/app:1"
    first = _push(store, app_closure, dest, tmp_path / "c", capsys)
    mark = registry.mark()
    assert _push(store, app_closure, dest, tmp_path / "c", capsys) == first
    later = registry.requests(mark)
    # the push record's shortcut: the ping, then the tag's manifest; no HEAD, nothing sent
    assert [(r.method, r.path) for r in later if r.path != "/v2/"] == [
        ("GET", "/v2/app/manifests/1")
    ]
    assert verify_image(dest) == []


def test_update_checks_every_blob_and_uploads_only_the_new_ones(
    registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app2 = item("6", "app-2.0")
    store = make_store(tmp_path / "root", {**GRAPH, app2: GRAPH[APP]})
    dest = f"docker://{registry.host}/app:1"
    _push(store, store.closure_file(tmp_path / "v1.json", [APP]), dest, tmp_path / "c", capsys)
    before = _blobs(dest)
    mark = registry.mark()
    _push(store, store.closure_file(tmp_path / "v2.json", [app2]), dest, tmp_path / "c", capsys)
    later = registry.requests(mark)
    new = _blobs(dest) - before
    assert len(new) == 2  # the app's layer and the config
    assert sorted(_heads(later)) == sorted(_blobs(dest))  # even those the old manifest names
    uploaded = {r.path.rpartition("digest=")[2].replace("%3A", ":") for r in later
                if r.method == "PUT" and "/blobs/uploads/" in r.path}  # fmt: skip
    assert uploaded == new
    assert [r.method for r in later if "/manifests/" in r.path] == ["GET", "PUT"]
    assert verify_image(dest) == []


def test_a_tag_answer_with_a_wrong_digest_is_not_trusted(
    registry: Registry,
    proxy: FaultProxy,
    *,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _push(store, app_closure, f"docker://{registry.host}/app:1", tmp_path / "c", capsys)
    blobs = _blobs(f"docker://{registry.host}/app:1")

    def lie(headers: dict[str, str]) -> None:
        headers["Docker-Content-Digest"] = "sha256:" + "0" * 64

    proxy.faults = [Fault("GET", "/manifests/1", lie)]
    mark = registry.mark()
    argv = ["build", "--closure", app_closure, "--store-root", store.root, "--cache-dir",
            tmp_path / "c", "--entrypoint", "/bin/app", "-q", "-o",
            f"docker://{proxy.host}/app:1"]  # fmt: skip
    status, _, err = run(argv, capsys)
    assert status == 0, err
    assert f"said sha256:{'0' * 64} for bytes whose digest is sha256:" in err
    assert "not trusted" in err
    later = registry.requests(mark)
    assert sorted(_heads(later)) == sorted(blobs)  # every blob checked after all
    assert [r.method for r in later if "/manifests/" in r.path] == ["GET", "HEAD"]


def test_a_failing_tag_read_only_costs_the_shortcut(
    registry: Registry,
    proxy: FaultProxy,
    *,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _push(store, app_closure, f"docker://{registry.host}/app:1", tmp_path / "c", capsys)
    proxy.faults = [Fault("GET", "/manifests/1", 400, times=100)]
    mark = registry.mark()
    _push(store, app_closure, f"docker://{proxy.host}/app:1", tmp_path / "c", capsys)
    later = registry.requests(mark)
    assert sorted(_heads(later)) == sorted(_blobs(f"docker://{registry.host}/app:1"))
    assert next(s.answer for s in proxy.seen if "/manifests/1" in s.path) == 400
    assert [r.method for r in later if "/manifests/" in r.path] == ["HEAD"]


def _put(client: httpx.Client, url: str, body: bytes, media_type: str) -> None:
    answer = client.put(url, content=body, headers={"Content-Type": media_type})
    assert answer.status_code == 201, answer.text


#: Top-level settings after the http section: foreign layers may name https URLs.
_FOREIGN_URLS = "validation:\n  manifests:\n    urls:\n      allow:\n        - ^https?://\n"


def test_foreign_layers_are_not_taken_as_held(tmp_path: Path) -> None:
    with start_registry(tmp_path / "registry", extra_config=_FOREIGN_URLS) as registry:
        _check_foreign_layers(registry)


def _check_foreign_layers(registry: Registry) -> None:
    # a real registry takes a manifest naming a non-distributable layer it lacks (with URLs)
    base = f"http://{registry.host}/v2/ext"
    config = b"{}"
    foreign = Digest.of_bytes(b"elsewhere")
    with httpx.Client() as client:
        answer = client.post(f"{base}/blobs/uploads/")
        assert answer.status_code == 202
        location = httpx.URL(base).join(answer.headers["Location"])
        done = client.put(
            str(location.copy_merge_params({"digest": str(Digest.of_bytes(config))})),
            content=config,
        )
        assert done.status_code == 201
        manifest = {
            "schemaVersion": 2,
            "mediaType": str(MediaType.OCI_MANIFEST),
            "config": {
                "mediaType": str(MediaType.OCI_CONFIG),
                "digest": str(Digest.of_bytes(config)),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                    "digest": str(foreign),
                    "size": 9,
                    "urls": ["https://example.invalid/layer"],
                }
            ],
        }
        body = json.dumps(manifest).encode()
        _put(client, f"{base}/manifests/1", body, str(MediaType.OCI_MANIFEST))
    ref = parse_reference(f"docker://{registry.host}/ext:1", for_push=True)
    with open_client(ref, RegistryOptions(), ["repository:ext:pull"]) as client:
        state = read_tag(client, "1")
        missing = read_tag(client, "2")
    assert state.digest == Digest.of_bytes(body)
    assert state.blobs == {Digest.of_bytes(config): len(config)}  # the foreign layer left out
    assert foreign not in state.blobs
    assert missing.digest is None
    assert missing.blobs == {}


def _manifest(**changes: object) -> bytes:
    obj: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": str(MediaType.OCI_MANIFEST),
        "config": {
            "mediaType": str(MediaType.OCI_CONFIG),
            "digest": "sha256:" + "a" * 64,
            "size": 2,
        },
        "layers": [
            {"mediaType": str(MediaType.OCI_LAYER_GZIP), "digest": "sha256:" + "b" * 64, "size": 10}
        ],
    }
    obj.update(changes)
    return json.dumps(obj).encode()


def test_manifest_blobs_of_a_good_manifest() -> None:
    found = manifest_blobs(_manifest(), str(MediaType.OCI_MANIFEST))
    assert found == {Digest("a" * 64): 2, Digest("b" * 64): 10}
    # a Docker manifest named only by its body is one too
    docker = _manifest(mediaType=str(MediaType.DOCKER_MANIFEST))
    assert len(manifest_blobs(docker, "")) == 2


def test_a_blob_named_with_two_sizes_is_not_known() -> None:
    layers = [
        {"mediaType": str(MediaType.OCI_LAYER_GZIP), "digest": "sha256:" + "b" * 64, "size": n}
        for n in (10, 11)
    ]
    assert manifest_blobs(_manifest(layers=layers), "") == {Digest("a" * 64): 2}


@pytest.mark.parametrize(
    ("body", "media_type", "problem"),
    [
        (b"[]", "", "not a JSON object"),
        (_manifest(mediaType=str(MediaType.OCI_INDEX)), "", "not an image manifest"),
        (_manifest(), str(MediaType.DOCKER_MANIFEST), "not an image manifest"),
        (_manifest(layers=None), "", "no layer list"),
        (_manifest(layers=["x"]), "", "a descriptor is not an object"),
        (_manifest(config={"digest": "sha256:" + "a" * 64, "size": True}), "", "without"),
        (_manifest(config={"digest": "md5:00", "size": 1}), "", "invalid digest"),
    ],
)
def test_manifest_blobs_refuses_what_is_not_an_image_manifest(
    body: bytes, media_type: str, problem: str
) -> None:
    with pytest.raises(ImageError, match=problem):
        manifest_blobs(body, media_type)


def test_the_command_line_loads_no_console_library_to_push(
    registry: Registry, store: Store, app_closure: Path, tmp_path: Path
) -> None:
    """httpx's own command line (rich's console, pygments) is not loaded by a quiet push: a
    fifth of a re-push's start-up."""
    program = (
        "import sys\n"
        "from closurepack.cli import main\n"
        "status = main(sys.argv[1:])\n"
        "print(status, 'httpx' in sys.modules,"
        " sorted(m for m in sys.modules if m.split('.')[0] in ('rich', 'pygments')))\n"
    )
    done = _push_in_child(program, registry, store, app_closure, tmp_path / "c")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "0 True []"


def test_tls_contexts_are_made_once_per_setting(tmp_path: Path) -> None:
    from closurepack.errors import RegistryError
    from closurepack.registry.client import ssl_context

    verified = ssl_context(RegistryOptions(), "registry.example:5000")
    assert ssl_context(RegistryOptions(jobs=2), "other.example") is verified
    assert verified.cert_store_stats()["x509_ca"] > 0  # the system trust store
    insecure = ssl_context(RegistryOptions(tls_verify=False), "registry.example:5000")
    assert insecure is not verified
    assert insecure.cert_store_stats()["x509_ca"] == 0  # nothing verified, nothing loaded
    # a failure is not kept: once the directory is right, the next call succeeds
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "client.cert").write_text("not a certificate")
    options = RegistryOptions(cert_dir=certs)
    with pytest.raises(RegistryError, match=r"client\.cert has no client\.key"):
        ssl_context(options, "registry.example")
    (certs / "client.cert").unlink()
    assert ssl_context(options, "registry.example") is ssl_context(options, "elsewhere")


def test_the_command_pushes_and_re_pushes_without_the_async_libraries(
    registry: Registry, store: Store, app_closure: Path, tmp_path: Path
) -> None:
    """Run as the command (main() with the process's argv), closurepack keeps anyio and trio
    out of httpcore (its async side only); a push and a recorded re-push work without them."""
    program = (
        "import sys\n"
        "from closurepack.cli import main\n"
        "status = main()\n"
        "print(status, [sys.modules.get(m, 'absent') for m in ('anyio', 'trio')])\n"
    )
    for _ in range(2):
        mark = registry.mark()
        done = _push_in_child(program, registry, store, app_closure, tmp_path / "c")
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == "0 [None, None]"
    # the re-push: the ping and the tag's manifest read, no blob asked about
    asked = {(r.method, r.path.partition("?")[0]) for r in registry.requests(mark)}
    assert asked == {("GET", "/v2/"), ("GET", "/v2/app/manifests/1")}


def _push_in_child(
    program: str, registry: Registry, store: Store, app_closure: Path, cache: Path
) -> subprocess.CompletedProcess[str]:
    """``program`` run by a fresh Python with, as its arguments, a quiet build of the app
    pushed to ``registry`` as ``app:1`` through ``cache``."""
    argv = ["build", "--closure", app_closure, "--store-root", store.root, "--cache-dir", cache,
            "--entrypoint", "/bin/app", "-q", "-o", f"docker://{registry.host}/app:1"]  # fmt: skip
    return subprocess.run(
        [sys.executable, "-c", program, *map(str, argv)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
