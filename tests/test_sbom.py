"""``build --sbom``: SPDX 2.3 and CycloneDX 1.6 documents of the closure, checked by the
reference validators (spdx-tools, cyclonedx-python-lib), NAR hashes checked against Nix's own
``nix-hash``, and the artifacts attached to oci: layouts and oci-archives (OCI schemas) and to a
real registry without a referrers API (the ``sha256-<hex>`` fallback tag)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tarfile
import threading
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from hypothesis import given, settings
from hypothesis import strategies as st
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from clistore import APP, GLIBC, GRAPH, LIBFOO, ZLIB, Store, read_oci, run
from closurepack import sbom as sbom_module
from closurepack import storedb
from closurepack.artifacts import parse_referrer
from closurepack.errors import ClosurepackError, StoreError
from closurepack.sbom import SbomOptions
from closurepack.sources import narhash
from closurepack.sources.narhash import nar_digest, parse_nar_hash
from handmade import oci_validator
from nixfixture import NixClosure
from registry_fixtures import Registry
from runtimes import require_tool

SPDX = "application/spdx+json"
CYCLONEDX = "application/vnd.cyclonedx+json"
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def _spdx_problems(path: Path) -> list[str]:
    document = parse_file(str(path))
    return [m.validation_message for m in validate_full_spdx_document(document)]


def _cyclonedx_problems(data: bytes) -> object:
    return JsonStrictValidator(SchemaVersion.V1_6).validate_str(data.decode())


def _closure_without_hashes(store: Store, path: Path) -> Path:
    """The closure file of APP with no narHash at all: the hashes must come from the files."""
    entries = json.loads(store.closure_file(path, [APP]).read_text())
    for entry in entries:
        del entry["narHash"]
    path.write_text(json.dumps(entries))
    return path


def _build(
    capsys: pytest.CaptureFixture[str], closure: Path, store: Store, dest: str, *extra: str
) -> str:
    status, out, err = run(
        ["build", "--closure", closure, "--store-root", store.root, "-o", dest,
         "--no-cache", "-q", "--cmd", "/bin/app", *extra],
        capsys,
    )  # fmt: skip
    assert status == 0, err
    return out.strip()


# NAR hashes ------------------------------------------------------------------------------------


def test_nar_hash_is_nix_hash_of_every_kind_of_file(tmp_path: Path) -> None:
    require_tool("nix-hash")
    top = tmp_path / "item"
    (top / "bin").mkdir(parents=True)
    (top / "bin" / "prog").write_bytes(b"#!/bin/sh\necho hi\n")
    (top / "bin" / "prog").chmod(0o755)
    (top / "lib" / "deep").mkdir(parents=True)
    (top / "lib" / "deep" / "seven").write_bytes(b"1234567")  # padded to 8
    (top / "lib" / "deep" / "eight").write_bytes(b"12345678")
    (top / "lib" / "empty").write_bytes(b"")
    (top / "lib" / "link").symlink_to("deep/seven")
    (top / "Zupper").write_bytes(b"sorted by bytes: before 'bin'")
    (top / "empty-dir").mkdir()
    for path in (top, top / "bin" / "prog", top / "lib" / "link"):
        expected = subprocess.run(
            ["nix-hash", "--type", "sha256", str(path)], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert nar_digest(path).sha256.hex() == expected


def test_nix32_decoding_matches_nix_hash(tmp_path: Path) -> None:
    require_tool("nix-hash")
    for data in (b"", b"a", b"closurepack"):
        hex_text = hashlib.sha256(data).hexdigest()
        nix32 = subprocess.run(
            ["nix-hash", "--type", "sha256", "--to-base32", hex_text],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        assert parse_nar_hash(f"sha256:{nix32}", where="x").hex() == hex_text


def test_every_spelling_of_a_nar_hash() -> None:
    digest = bytes(range(32))

    assert (
        parse_nar_hash("sha256-" + base64.b64encode(digest).decode(), where="x").hex()
        == digest.hex()
    )
    assert parse_nar_hash("sha256:" + digest.hex(), where="x").hex() == digest.hex()
    for bad in ("md5:abc", "sha256-AAAA", "sha256:eeee", "sha256:" + "e" * 52, "nonsense"):
        with pytest.raises(StoreError, match=r"^f.json: /nix/store/x: NAR hash "):
            parse_nar_hash(bad, where="f.json: /nix/store/x").hex()


# The documents ---------------------------------------------------------------------------------


def test_both_documents_validate_and_hold_every_item_once(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    closure = _closure_without_hashes(store, tmp_path / "app.json")
    out = tmp_path / "out" / "app.sbom.json"
    out.parent.mkdir()
    _build(capsys, closure, store, f"oci:{tmp_path / 'layout'}:v1",
           "--sbom", "spdx", "--sbom", "cyclonedx", "--sbom-out", out)  # fmt: skip
    spdx_file, cdx_file = out.parent / "app.sbom.spdx.json", out.parent / "app.sbom.cdx.json"
    assert sorted(p.name for p in out.parent.iterdir()) == [cdx_file.name, spdx_file.name]
    assert _spdx_problems(spdx_file) == []
    assert _cyclonedx_problems(cdx_file.read_bytes()) is None

    items = store.closure_of([APP])
    hashes = {
        p: nar_digest(store.files(p)).sha256.hex() for p in items
    }  # from the files: no narHash given
    image = read_oci(tmp_path / "layout", "v1")

    spdx = json.loads(spdx_file.read_text())
    packages = spdx["packages"]
    by_id = {p["SPDXID"]: p for p in packages}
    root = by_id["SPDXRef-Image"]
    assert root["checksums"] == [
        {"algorithm": "SHA256", "checksumValue": image.manifest["config"]["digest"][7:]}
    ]
    store_paths = {}
    for package in packages[1:]:
        (locator,) = [
            r["referenceLocator"]
            for r in package["externalRefs"]
            if r["referenceType"] == "store-path"
        ]
        store_paths[package["SPDXID"]] = locator
        assert package["checksums"] == [{"algorithm": "SHA256", "checksumValue": hashes[locator]}]
    assert sorted(store_paths.values()) == items  # each item exactly once
    assert len(store_paths) == len(items)
    glibc = next(p for p in packages if p.get("name") == "glibc")
    assert glibc["versionInfo"] == "2.39"
    assert {"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
            "referenceLocator": "pkg:nix/glibc@2.39"} in glibc["externalRefs"]  # fmt: skip
    depends = {
        (store_paths[r["spdxElementId"]], store_paths[r["relatedSpdxElement"]])
        for r in spdx["relationships"]
        if r["relationshipType"] == "DEPENDS_ON" and r["spdxElementId"] != "SPDXRef-Image"
    }
    assert depends == {(p, ref) for p in items for ref in GRAPH[p][0]}
    described = [r for r in spdx["relationships"] if r["relationshipType"] == "DESCRIBES"]
    assert described == [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                          "relatedSpdxElement": "SPDXRef-Image"}]  # fmt: skip
    contained = [r["relatedSpdxElement"] for r in spdx["relationships"]
                 if r["relationshipType"] == "CONTAINS"]  # fmt: skip
    assert sorted(store_paths[c] for c in contained) == items
    assert spdx["creationInfo"]["created"] == "1970-01-01T00:00:01Z"

    cdx = json.loads(cdx_file.read_text())
    components = cdx["components"]
    assert sorted(c["bom-ref"] for c in components) == items
    assert len(components) == len(items)
    for component in components:
        assert component["hashes"] == [{"alg": "SHA-256", "content": hashes[component["bom-ref"]]}]
    graph = {d["ref"]: set(d["dependsOn"]) for d in cdx["dependencies"]}
    image_ref = cdx["metadata"]["component"]["bom-ref"]
    assert graph.pop(image_ref) == {APP}
    assert graph == {p: set(GRAPH[p][0]) for p in items}
    assert cdx["metadata"]["component"]["type"] == "container"


def test_sbom_and_store_database_hash_each_item_once(
    store: Store,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--sbom with --nix-db: an item without a narHash is NAR-hashed once, its digest shared by
    the SBOM and the store database (both hold the files' own hash)."""
    calls: Counter[str] = Counter()
    real = narhash.nar_digest

    def counting(path: Path | str | bytes) -> narhash.NarDigest:
        calls[os.fsdecode(path)] += 1
        return real(path)

    for module in (narhash, sbom_module, storedb):  # wherever the hashing function is looked up
        if hasattr(module, "nar_digest"):
            monkeypatch.setattr(module, "nar_digest", counting)
    closure = _closure_without_hashes(store, tmp_path / "app.json")
    out = tmp_path / "app.cdx.json"
    _build(capsys, closure, store, f"oci:{tmp_path / 'layout'}:v1", "--sbom", "cyclonedx",
           "--sbom-out", out, "--nix-db")  # fmt: skip
    items = store.closure_of([APP])
    assert sorted(calls) == sorted(str(store.files(p)) for p in items)
    assert set(calls.values()) == {1}
    expected = {p: real(store.files(p)).sha256.hex() for p in items}
    sbom_hashes = {
        c["bom-ref"]: c["hashes"][0]["content"] for c in json.loads(out.read_text())["components"]
    }
    assert sbom_hashes == expected
    image = read_oci(tmp_path / "layout", "v1")
    database = image.layer_file(len(image.layer_digests) - 1, "nix/var/nix/db/db.sqlite")
    assert _valid_paths(database, tmp_path) == {p: "sha256:" + h for p, h in expected.items()}


def _valid_paths(data: bytes, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "db.sqlite").write_bytes(data)
    connection = sqlite3.connect(tmp_path / "db.sqlite")
    try:
        return dict(connection.execute("SELECT path, hash FROM ValidPaths"))
    finally:
        connection.close()


def test_the_nar_hash_of_the_closure_source_is_used_as_it_is(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    closure = store.closure_file(tmp_path / "app.json", [APP])  # narHash "sha256-AAA...=": zeros
    out = tmp_path / "app.cdx.json"
    _build(capsys, closure, store, f"oci:{tmp_path / 'layout'}", "--sbom", "cyclonedx",
           "--sbom-out", out)  # fmt: skip
    hashes = {c["hashes"][0]["content"] for c in json.loads(out.read_text())["components"]}
    assert hashes == {"0" * 64}


def test_validators_catch_broken_documents(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The validators used above can fail: the same documents, damaged, do not pass."""
    closure = store.closure_file(tmp_path / "app.json", [APP])
    out = tmp_path / "sbom"
    _build(capsys, closure, store, f"oci:{tmp_path / 'layout'}", "--sbom", "spdx",
           "--sbom", "cyclonedx", "--sbom-out", out)  # fmt: skip
    spdx = json.loads((tmp_path / "sbom.spdx.json").read_text())
    spdx["packages"][1]["checksums"][0]["checksumValue"] = "not hex"
    spdx["relationships"].append(
        {"spdxElementId": "SPDXRef-Image", "relationshipType": "DEPENDS_ON",
         "relatedSpdxElement": "SPDXRef-Nothing"}
    )  # fmt: skip
    broken = tmp_path / "broken.spdx.json"
    broken.write_text(json.dumps(spdx))
    assert len(_spdx_problems(broken)) >= 2
    cdx = json.loads((tmp_path / "sbom.cdx.json").read_text())
    cdx["components"][0]["hashes"][0]["alg"] = "SHA-257"
    assert _cyclonedx_problems(json.dumps(cdx).encode()) is not None


def test_two_builds_make_the_same_bytes(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    closure = _closure_without_hashes(store, tmp_path / "app.json")
    results = []
    for run_dir in ("one", "two"):
        (tmp_path / run_dir).mkdir()
        _build(capsys, closure, store, f"oci:{tmp_path / run_dir / 'layout'}", "--sbom", "spdx",
               "--sbom", "cyclonedx", "--sbom-out", tmp_path / run_dir / "sbom.json")  # fmt: skip
        files = sorted((tmp_path / run_dir).glob("sbom.*.json"))
        layout = tmp_path / run_dir / "layout"
        results.append(
            ([f.read_bytes() for f in files], (layout / "index.json").read_bytes(),
             sorted(p.name for p in (layout / "blobs" / "sha256").iterdir()))
        )  # fmt: skip
    assert results[0] == results[1]
    assert len(results[0][0]) == 2
    # --created is the one time in them; it changes the documents, and nothing else does
    (tmp_path / "three").mkdir()
    _build(
        capsys,
        closure,
        store,
        f"oci:{tmp_path / 'three' / 'layout'}",
        "--sbom",
        "spdx",
        "--sbom-out",
        tmp_path / "three" / "sbom.json",
        "--created",
        "2024-01-02T03:04:05Z",
    )
    later = json.loads((tmp_path / "three" / "sbom.json").read_text())
    first = json.loads(results[0][0][1])
    assert later["creationInfo"]["created"] == "2024-01-02T03:04:05Z"
    assert later["documentNamespace"] != first["documentNamespace"]


# oci: layouts and oci-archives -----------------------------------------------------------------


def _artifacts(index: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in index["manifests"] if m.get("artifactType")]


def test_oci_layout_artifacts_validate_against_the_oci_schemas(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    closure = store.closure_file(tmp_path / "app.json", [APP])
    layout = tmp_path / "layout"
    digest = _build(capsys, closure, store, f"oci:{layout}:v1", "--sbom", "spdx",
                    "--sbom", "cyclonedx")  # fmt: skip
    index = json.loads((layout / "index.json").read_text())
    assert list(oci_validator("image-index-schema.json").iter_errors(index)) == []
    entries = _artifacts(index)
    assert [e["artifactType"] for e in entries] == [SPDX, CYCLONEDX]
    image = read_oci(layout, "v1")  # the tag still names the image
    for entry in entries:
        assert "org.opencontainers.image.ref.name" not in entry.get("annotations", {})
        manifest = json.loads(image.blob(entry["digest"]))
        assert list(oci_validator("image-manifest-schema.json").iter_errors(manifest)) == []
        assert manifest["subject"]["digest"] == digest
        assert manifest["artifactType"] == entry["artifactType"]
        assert image.blob(manifest["config"]["digest"]) == b"{}"
        document = image.blob(manifest["layers"][0]["digest"])
        assert manifest["layers"][0]["mediaType"] == entry["artifactType"]
        if entry["artifactType"] == SPDX:
            (tmp_path / "attached.spdx.json").write_bytes(document)
            assert _spdx_problems(tmp_path / "attached.spdx.json") == []
        else:
            assert _cyclonedx_problems(document) is None
    # the layout's one image is still read without a tag, and verify finds it sound
    status, out, err = run(["verify", f"oci:{layout}"], capsys)
    assert status == 0, err
    status, out, _ = run(["inspect", "--json", f"oci:{layout}"], capsys)
    listed = json.loads(out)["artifacts"]
    assert [(a["artifact_type"], a["digest"]) for a in listed] == [
        (e["artifactType"], e["digest"]) for e in entries
    ]
    assert all(a["size"] == e["size"] for a, e in zip(listed, entries, strict=True))
    status, out, _ = run(["inspect", f"oci:{layout}:v1"], capsys)
    assert "2 artifacts attached" in out
    assert f"{SPDX}  {entries[0]['digest']}" in out


def test_skopeo_reads_a_layout_with_artifacts(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_tool("skopeo")
    closure = store.closure_file(tmp_path / "app.json", [APP])
    layout = tmp_path / "layout"
    digest = _build(capsys, closure, store, f"oci:{layout}:v1", "--sbom", "spdx")
    result = subprocess.run(
        ["skopeo", "inspect", f"oci:{layout}:v1"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["Digest"] == digest


def test_oci_archive_holds_the_artifacts_and_keeps_them(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    closure = store.closure_file(tmp_path / "app.json", [APP])
    archive = tmp_path / "app.tar"
    first = _build(capsys, closure, store, f"oci-archive:{archive}:v1", "--sbom", "spdx")
    other = store.closure_file(tmp_path / "zlib.json", [ZLIB])
    second = _build(capsys, other, store, f"oci-archive:{archive}:v2", "--sbom", "cyclonedx")
    with tarfile.open(archive) as tar:
        handle = tar.extractfile("index.json")
        assert handle is not None
        index = json.loads(handle.read())
        entries = _artifacts(index)
        subjects = []
        for entry in entries:
            blob = tar.extractfile(f"blobs/sha256/{entry['digest'][7:]}")
            assert blob is not None
            manifest = json.loads(blob.read())
            subjects.append((manifest["artifactType"], manifest["subject"]["digest"]))
            tar.getmember(f"blobs/sha256/{manifest['layers'][0]['digest'][7:]}")
    assert subjects == [(SPDX, first), (CYCLONEDX, second)]
    require_tool("skopeo")
    result = subprocess.run(
        ["skopeo", "inspect", f"oci-archive:{archive}:v1"], capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["Digest"] == first
    for tag, digest, kind in (("v1", first, SPDX), ("v2", second, CYCLONEDX)):
        status, out, err = run(["inspect", "--json", f"oci-archive:{archive}:{tag}"], capsys)
        assert status == 0, err
        info = json.loads(out)
        assert info["manifest_digest"] == digest
        assert [a["artifact_type"] for a in info["artifacts"]] == [kind]


# What cannot be done, said before anything is built ---------------------------------------------


def test_docker_archive_gets_the_sbom_beside_it_only(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    closure = store.closure_file(tmp_path / "app.json", [APP])
    archive = tmp_path / "app.tar"
    status, _, err = run(
        ["build", "--closure", closure, "--store-root", store.root, "-o",
         f"docker-archive:{archive}", "--sbom", "spdx", "--no-cache", "-q"],
        capsys,
    )  # fmt: skip
    assert status == 2
    assert err.startswith("closurepack: error: --sbom: docker-archive:")
    assert "--sbom-out FILE" in err
    assert not archive.exists()
    _build(capsys, closure, store, f"docker-archive:{archive}", "--sbom", "spdx",
           "--sbom-out", tmp_path / "app.spdx.json")  # fmt: skip
    assert archive.is_file()
    assert _spdx_problems(tmp_path / "app.spdx.json") == []
    status, out, _ = run(["inspect", "--json", f"docker-archive:{archive}"], capsys)
    assert status == 0
    assert json.loads(out)["artifacts"] == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--sbom-out", "x.json"], (2, "--sbom-out needs --sbom spdx or --sbom cyclonedx")),
        (["--sbom", "spdx", "--sbom-out", "nodir/x.json"],
         (5, "--sbom-out nodir/x.json: cannot write: no directory nodir")),
        (["--sbom", "spdx", "--sbom-out", "sub"], (2, "File 'sub' is a directory")),
        (["--sbom", "xml"], (2, "Invalid value for '--sbom'")),
    ],
)  # fmt: skip
def test_bad_sbom_options_fail_before_the_build(  # noqa: PLR0917 - fixtures, parameters
    store: Store,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    expected: tuple[int, str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    closure = store.closure_file(tmp_path / "app.json", [APP])
    status, _, err = run(
        ["build", "--closure", closure, "--store-root", store.root, "-o",
         f"oci:{tmp_path / 'layout'}", "--no-cache", "-q", *args],
        capsys,
    )  # fmt: skip
    assert (status, expected[1] in err) == (expected[0], True), err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "layout").exists()


def test_sbom_with_a_plan_is_refused(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    closure = store.closure_file(tmp_path / "app.json", [APP])
    plan = tmp_path / "plan.json"
    status, _, err = run(["plan", "--closure", closure, "-o", plan], capsys)
    assert status == 0, err
    status, _, err = run(
        ["build", "--plan", plan, "--store-root", store.root, "-o", f"oci:{tmp_path / 'l'}",
         "--sbom", "spdx", "--no-cache", "-q"],
        capsys,
    )  # fmt: skip
    assert status == 2
    assert "--sbom is made from a closure's graph: give the closure, not --plan" in err


def test_an_item_without_nar_hash_or_files_fails_before_the_build(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    closure = _closure_without_hashes(store, tmp_path / "app.json")
    entries = json.loads(closure.read_text())
    for entry in entries:
        entry["narSize"] = 1  # else the loader measures the (missing) files itself
    closure.write_text(json.dumps(entries))
    shutil.rmtree(store.files(ZLIB))
    status, _, err = run(
        ["build", "--closure", closure, "--store-root", store.root, "-o",
         f"oci:{tmp_path / 'layout'}", "--sbom", "spdx", "--no-cache", "-q"],
        capsys,
    )  # fmt: skip
    assert status == 3
    assert err.startswith(f"closurepack: error: {ZLIB}: {closure} gives no narHash")
    assert not (tmp_path / "layout").exists()


def test_sbom_out_names() -> None:
    one = SbomOptions(formats=("cyclonedx",), out=Path("d/app.json"))
    assert one.out_paths() == {"cyclonedx": Path("d/app.json")}
    both = SbomOptions(formats=("spdx", "cyclonedx", "spdx"), out=Path("d/app.json"))
    assert both.formats == ("spdx", "cyclonedx")
    assert both.out_paths() == {
        "spdx": Path("d/app.spdx.json"),
        "cyclonedx": Path("d/app.cdx.json"),
    }
    bare = SbomOptions(formats=("spdx", "cyclonedx"), out=Path("sbom"))
    assert bare.out_paths() == {"spdx": Path("sbom.spdx.json"), "cyclonedx": Path("sbom.cdx.json")}


# One SBOM per platform ----------------------------------------------------------------------------


def _blob_of(dest: str, digest: str, registry: Registry | None) -> bytes:
    """Blob ``digest`` of the image at ``dest`` (an oci: layout, an oci-archive or a registry)."""
    hex_digest = digest.split(":", 1)[1]
    if registry is not None:
        status, body = _get(registry, f"/v2/multi/blobs/{digest}", "*/*")
        assert status == 200
        return body
    path = Path(dest.split(":", 1)[1].rsplit(":", 1)[0])
    if dest.startswith("oci:"):
        return (path / "blobs" / "sha256" / hex_digest).read_bytes()
    with tarfile.open(path) as tar:
        member = tar.extractfile(f"blobs/sha256/{hex_digest}")
        assert member is not None
        return member.read()


@pytest.mark.parametrize("kind", ["oci", "oci-archive", "docker"])
def test_each_platform_image_gets_its_own_sbom(
    kind: str,
    store: Store,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    """build --platform ... --sbom: one SBOM per platform image, describing that platform's
    closure, attached to that image's manifest; inspect --platform lists it."""
    registry: Registry | None = request.getfixturevalue("registry") if kind == "docker" else None
    dest = {
        "oci": f"oci:{tmp_path / 'layout'}:v1",
        "oci-archive": f"oci-archive:{tmp_path / 'multi.tar'}:v1",
        "docker": f"docker://{registry.host}/multi:v1" if registry else "",
    }[kind]
    closures = {
        "amd64": store.closure_file(tmp_path / "app.json", [APP]),
        "arm64": store.closure_file(tmp_path / "glibc.json", [GLIBC]),
    }
    argv = ["build", "-q", "--no-cache", "--store-root", store.root, "--entrypoint", "/bin/app"]
    for arch, closure in closures.items():
        argv += ["--platform", f"linux/{arch}={closure}"]
    status, _, err = run([*argv, "--sbom", "cyclonedx", "-o", dest], capsys)
    assert status == 0, err
    for arch, items in (("amd64", store.closure_of([APP])), ("arm64", store.closure_of([GLIBC]))):
        status, out, err = run(["inspect", "--json", "--platform", f"linux/{arch}", dest], capsys)
        assert status == 0, err
        (artifact,) = json.loads(out)["artifacts"]
        assert artifact["artifact_type"] == CYCLONEDX
        (document,) = artifact["documents"]
        sbom = json.loads(_blob_of(dest, document["digest"], registry))
        assert sorted(c["bom-ref"] for c in sbom["components"]) == items
    if kind == "oci":  # the layout's index: the image under its tag, and the two artifacts
        index = json.loads((tmp_path / "layout" / "index.json").read_text())
        assert sorted(m.get("artifactType", "") for m in index["manifests"]) == [
            "",
            CYCLONEDX,
            CYCLONEDX,
        ]


def test_sbom_out_with_platform_is_one_line(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    closure = store.closure_file(tmp_path / "app.json", [APP])
    status, out, err = run(
        ["build", "--store-root", store.root, "--platform", f"linux/amd64={closure}",
         "--sbom", "spdx", "--sbom-out", tmp_path / "x.json", "-o", f"oci:{tmp_path / 'l'}"],
        capsys,
    )  # fmt: skip
    assert (status, out) == (2, "")
    assert err == (
        "closurepack: error: --sbom-out names one file per format: not with --platform\n"
    )
    assert not (tmp_path / "l").exists()


# A registry without a referrers API -------------------------------------------------------------


def _get(registry: Registry, path: str, accept: str) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://{registry.host}{path}", headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


@pytest.mark.integration
def test_registry_fallback_tag_holds_the_artifacts(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str], registry: Registry
) -> None:
    require_tool("skopeo")
    closure = store.closure_file(tmp_path / "app.json", [APP])
    dest = f"docker://{registry.host}/app:v1"
    pushed = _build(capsys, closure, store, dest, "--sbom", "spdx", "--tls-verify=false")
    digest = pushed.split("@", 1)[1]
    # the registry (distribution 2.8) has no referrers API: the fallback tag was written
    assert any(
        r.method == "GET" and r.path == f"/v2/app/referrers/{digest}" and r.status == 404
        for r in registry.requests()
    )
    tag = "sha256-" + digest[7:]
    status, body = _get(registry, f"/v2/app/manifests/{tag}", INDEX)
    assert status == 200
    index = json.loads(body)
    assert list(oci_validator("image-index-schema.json").iter_errors(index)) == []
    ((entry,),) = [index["manifests"]]
    assert entry["artifactType"] == SPDX
    status, body = _get(registry, f"/v2/app/manifests/{entry['digest']}", MANIFEST)
    assert status == 200
    artifact = json.loads(body)
    assert artifact["subject"]["digest"] == digest
    image_manifest = _get(registry, f"/v2/app/manifests/{digest}", MANIFEST)[1]
    assert artifact["subject"]["size"] == len(image_manifest)
    status, document = _get(registry, f"/v2/app/blobs/{artifact['layers'][0]['digest']}", "*/*")
    assert status == 200
    (tmp_path / "pulled.spdx.json").write_bytes(document)
    assert _spdx_problems(tmp_path / "pulled.spdx.json") == []

    result = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", dest], capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["Digest"] == digest
    # skopeo finds the artifact too, under the fallback tag
    fallback = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/app:{tag}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert fallback.returncode == 0, fallback.stderr
    assert [m["digest"] for m in json.loads(fallback.stdout)["manifests"]] == [entry["digest"]]

    # a second attachment to the same image keeps the first entry (read-modify-write)
    again = _build(capsys, closure, store, dest, "--sbom", "cyclonedx", "--tls-verify=false")
    assert again == pushed
    index = json.loads(_get(registry, f"/v2/app/manifests/{tag}", index["mediaType"])[1])
    assert [m["artifactType"] for m in index["manifests"]] == [SPDX, CYCLONEDX]
    status, out, err = run(["inspect", "--json", "--tls-verify=false", dest], capsys)
    assert status == 0, err
    assert [a["artifact_type"] for a in json.loads(out)["artifacts"]] == [SPDX, CYCLONEDX]


@pytest.mark.integration
def test_registry_artifact_of_a_docker_manifest(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str], registry: Registry
) -> None:
    """--format docker pushes a Docker manifest: the artifact's subject is that manifest."""
    closure = store.closure_file(tmp_path / "app.json", [LIBFOO])
    dest = f"docker://{registry.host}/lib:v1"
    pushed = _build(capsys, closure, store, dest, "--sbom", "cyclonedx", "--format", "docker",
                    "--tls-verify=false")  # fmt: skip
    digest = pushed.split("@", 1)[1]
    status, body = _get(registry, f"/v2/lib/manifests/sha256-{digest[7:]}", INDEX)
    assert status == 200
    (entry,) = json.loads(body)["manifests"]
    artifact = json.loads(_get(registry, f"/v2/lib/manifests/{entry['digest']}", MANIFEST)[1])
    assert artifact["subject"]["mediaType"] == DOCKER_MANIFEST
    assert artifact["subject"]["digest"] == digest
    components = json.loads(
        _get(registry, f"/v2/lib/blobs/{artifact['layers'][0]['digest']}", "*/*")[1]
    )["components"]
    assert sorted(c["bom-ref"] for c in components) == sorted([LIBFOO, GLIBC, ZLIB])


@pytest.mark.integration
def test_a_fallback_tag_holding_an_image_is_not_replaced(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str], registry: Registry
) -> None:
    closure = store.closure_file(tmp_path / "app.json", [APP])
    dest = f"docker://{registry.host}/app:v1"
    digest = _build(capsys, closure, store, dest, "--tls-verify=false").split("@", 1)[1]
    tag = "sha256-" + digest[7:]
    other = store.closure_file(tmp_path / "zlib.json", [ZLIB])
    squatter = _build(capsys, other, store, f"docker://{registry.host}/app:{tag}",
                      "--tls-verify=false").split("@", 1)[1]  # fmt: skip
    status, _, err = run(
        ["build", "--closure", closure, "--store-root", store.root, "-o", dest, "--no-cache",
         "-q", "--cmd", "/bin/app", "--sbom", "spdx", "--tls-verify=false"],
        capsys,
    )  # fmt: skip
    assert status == 5
    assert f"app:{tag}: not an OCI image index" in err
    assert len(err.splitlines()) == 1
    status, body = _get(registry, f"/v2/app/manifests/{tag}", MANIFEST)
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == squatter[7:]


# A registry with the referrers API ---------------------------------------------------------------


class _ReferrersProxy(http.server.ThreadingHTTPServer):
    """Debian's registry has no referrers API: this proxy in front of it adds one, as
    distribution 3 and other registries have it, indexing every manifest PUT with a
    ``subject``; with ``header`` it also answers such a PUT with ``OCI-Subject``."""

    def __init__(self, upstream: str, *, header: bool) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream
        self.header = header
        self.referrers: dict[str, list[dict[str, Any]]] = {}
        self.fallback_reads = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: _ReferrersProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _forward(self) -> None:
        body = self._body()
        match = re.fullmatch(r"/v2/(.+)/referrers/(sha256:[0-9a-f]{64})", self.path)
        if match and self.command == "GET":
            listed = self.server.referrers.get(match[2], [])
            index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": listed}
            self._answer(200, json.dumps(index).encode(), {"Content-Type": INDEX})
            return
        if "/manifests/sha256-" in self.path:
            self.server.fallback_reads += 1
        connection = http.client.HTTPConnection(self.server.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
        headers["Content-Length"] = str(len(body))
        connection.request(self.command, self.path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        out = {k: v for k, v in response.getheaders() if k.lower() not in
               ("content-length", "transfer-encoding", "connection")}  # fmt: skip
        if self.command == "PUT" and "/manifests/" in self.path and response.status == 201:
            manifest = json.loads(body)
            subject = manifest.get("subject")
            if subject:
                self.server.referrers.setdefault(subject["digest"], []).append(
                    {"mediaType": manifest["mediaType"], "size": len(body),
                     "digest": "sha256:" + hashlib.sha256(body).hexdigest(),
                     "artifactType": manifest["artifactType"]}
                )  # fmt: skip
                if self.server.header:
                    out["OCI-Subject"] = subject["digest"]
        connection.close()
        self._answer(response.status, data, out)

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward  # noqa: N815


@pytest.mark.integration
@pytest.mark.parametrize("header", [True, False], ids=["OCI-Subject", "no-header"])
def test_a_registry_with_the_referrers_api_gets_no_fallback_tag(
    store: Store,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    registry: Registry,
    header: bool,
) -> None:
    proxy = _ReferrersProxy(registry.host, header=header)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        closure = store.closure_file(tmp_path / "app.json", [APP])
        dest = f"docker://{proxy.host}/app:v1"
        pushed = _build(capsys, closure, store, dest, "--sbom", "spdx", "--sbom", "cyclonedx",
                        "--tls-verify=false")  # fmt: skip
        digest = pushed.split("@", 1)[1]
        kinds = [m["artifactType"] for m in proxy.referrers[digest]]
        assert kinds == [SPDX, CYCLONEDX]
        assert proxy.fallback_reads == 0
        status, _ = _get(registry, f"/v2/app/manifests/sha256-{digest[7:]}", INDEX)
        assert status == 404  # no fallback tag where the registry indexes referrers
        status, out, err = run(["inspect", "--json", "--tls-verify=false", dest], capsys)
        assert status == 0, err
        assert [a["artifact_type"] for a in json.loads(out)["artifacts"]] == [SPDX, CYCLONEDX]
        assert proxy.fallback_reads == 0
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(timeout=10)


# A real Nix closure ------------------------------------------------------------------------------


@pytest.mark.integration
def test_real_nix_closure_nar_hashes_are_nix_own(
    nix_closure: NixClosure, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """From the store database (hex) and from ``nix path-info --json`` (SRI base64),
    the SBOM's checksums are the NAR hashes of the items' files, as closurepack computes them:
    each spelling is read right, and the NAR walk agrees with Nix's."""
    require_tool("nix")
    info = subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command", "path-info", "--json",
         "--recursive", nix_closure.app],
        capture_output=True, check=True, timeout=120,
    )  # fmt: skip
    closure = tmp_path / "app.json"
    closure.write_bytes(info.stdout)
    expected = {p: nar_digest(p).sha256.hex() for p in nix_closure.paths}
    for source in ([nix_closure.app], ["--closure", closure]):
        out = tmp_path / "sbom.spdx.json"
        status, _, err = run(
            ["build", *source, "--entrypoint", nix_closure.entrypoint, "--no-cache", "-q",
             "-o", f"oci:{tmp_path / 'layout'}", "--sbom", "spdx", "--sbom-out", out],
            capsys,
        )  # fmt: skip
        assert status == 0, err
        assert _spdx_problems(out) == []
        found = {}
        for package in json.loads(out.read_text())["packages"][1:]:
            refs = package["externalRefs"]
            (path,) = [r["referenceLocator"] for r in refs if r["referenceType"] == "store-path"]
            found[path] = package["checksums"][0]["checksumValue"]
        assert found == expected


# Parsers of what a layout or registry holds ----------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8)
    | st.sampled_from(["sha256:" + "a" * 64, "sha256:x", SPDX]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(
        st.sampled_from(["artifactType", "config", "mediaType", "subject", "digest",
                         "annotations", "layers", "size", "x"]),
        children, max_size=5,
    ),
    max_leaves=15,
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(doc=_JSON)
def test_artifact_manifests_parse_or_fail_in_one_line(doc: object) -> None:
    try:
        referrer = parse_referrer(json.dumps(doc).encode(), where="layout: artifact")
    except ClosurepackError as exc:
        message = str(exc)
        assert (message.startswith("layout: artifact"), "\n" in message) == (True, False)
        return
    assert isinstance(referrer.artifact_type, str)
    json.dumps(referrer.to_json_obj())


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=70) | st.builds("sha256:{}".format, st.text(max_size=64)))
def test_nar_hashes_parse_or_fail_in_one_line(value: str) -> None:
    try:
        hex_text = parse_nar_hash(value, where="f.json: /nix/store/x").hex()
    except StoreError as exc:
        message = str(exc)
        assert (message.startswith("f.json: /nix/store/x: NAR hash "), "\n" in message) == (
            True,
            False,
        )
        return
    assert re.fullmatch("[0-9a-f]{64}", hex_text)


@pytest.mark.parametrize("kind", ["oci", "oci-archive"])
def test_an_image_replaced_under_its_tag_takes_its_sboms_along(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    closure = store.closure_file(tmp_path / "app.json", [APP])
    where = tmp_path / ("layout" if kind == "oci" else "app.tar")
    first = _build(capsys, closure, store, f"{kind}:{where}:v1", "--sbom", "spdx")
    _build(capsys, closure, store, f"{kind}:{where}:v2", "--sbom", "cyclonedx",
           "--created", "2024-01-01T00:00:00Z")  # fmt: skip

    def listed(tag: str) -> list[tuple[str, str]]:
        status, out, err = run(["inspect", "--json", f"{kind}:{where}:{tag}"], capsys)
        assert status == 0, err
        return [(a["artifact_type"], a["digest"]) for a in json.loads(out)["artifacts"]]

    def entries() -> list[dict[str, Any]]:
        if kind == "oci":
            return _artifacts(json.loads((where / "index.json").read_text()))
        with tarfile.open(where) as tar:
            handle = tar.extractfile("index.json")
            assert handle is not None
            return _artifacts(json.loads(handle.read()))

    v2 = listed("v2")
    assert len(entries()) == 2
    second = _build(capsys, closure, store, f"{kind}:{where}:v1", "--sbom", "spdx",
                    "--created", "2025-01-01T00:00:00Z")  # fmt: skip
    assert second != first
    (new,) = listed("v1")
    assert listed("v2") == v2  # the other tag's SBOM is kept
    assert sorted(e["digest"] for e in entries()) == sorted([new[1], v2[0][1]])
    # a build without --sbom replacing v2 drops v2's SBOM too
    assert _build(capsys, closure, store, f"{kind}:{where}:v2") == first  # same image as v1 was
    assert listed("v2") == []
    assert [e["digest"] for e in entries()] == [new[1]]
