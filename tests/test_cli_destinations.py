"""Destinations under stress, through real `closurepack build` runs: parallel builds into one
archive or layout, outputs that are devices or fifos, files that are not archives, layout blobs
independent of the cache, temp files left by killed builds, several tags, the default tag, and
destination checks that fail before any layer is built."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from clistore import APP, Store, read_docker_archive, run

REF = "org.opencontainers.image.ref.name"


@pytest.fixture(autouse=True)
def _no_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


def _cli(*argv: object) -> list[str]:
    return [sys.executable, "-m", "closurepack.cli", *map(str, argv)]


def _one_line_error(err: str, *must_say: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("closurepack: error: ")
    for text in must_say:
        assert text in lines[0], (text, lines[0])


def _oci_archive_refs(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        handle = tar.extractfile("index.json")
        assert handle is not None
        index = json.loads(handle.read())
    return sorted(m["annotations"][REF] for m in index["manifests"])


def _cache_is_empty(cache: Path) -> bool:
    return not [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else True


# 1. parallel builds into one destination keep every tag ----------------------------------------


@pytest.mark.parametrize("kind", ["oci-archive", "oci"])
def test_parallel_builds_into_one_destination_keep_every_tag(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    target = tmp_path / ("img.tar" if kind == "oci-archive" else "layout")
    base = ["build", "--closure", app_closure, "--store-root", store.root, "--quiet",
            "--strategy", "per-item"]  # fmt: skip
    procs = [
        subprocess.Popen(
            _cli(*base, "--cache-dir", tmp_path / f"cache{n}", "--env", f"N={n}",
                 "-o", f"{kind}:{target}:t{n}"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for n in range(4)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    tags = [f"t{n}" for n in range(4)]
    if kind == "oci-archive":
        assert _oci_archive_refs(target) == tags
    else:
        index = json.loads((target / "index.json").read_bytes())
        assert sorted(m["annotations"][REF] for m in index["manifests"]) == tags
    for tag in tags:
        assert run(["verify", f"{kind}:{target}:{tag}"], capsys)[0] == 0
