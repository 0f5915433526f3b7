"""A tiny real store for the CLI tests: item directories under a store root, closure JSON files
in ``nix path-info --json`` array form, and plain readers of the images the CLI writes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from closurepack.cli import main

__all__ = [
    "APP",
    "GLIBC",
    "LIBFOO",
    "TOOL",
    "ZLIB",
    "OciImage",
    "Store",
    "app_closure",
    "build_app",
    "build_ok",
    "build_platforms",
    "item",
    "make_store",
    "no_source_date_epoch",
    "platform_args",
    "platform_closures",
    "read_docker_archive",
    "read_oci",
    "run",
    "run_child",
    "run_child_quietly",
    "store",
]

STORE_DIR = "/nix/store"


def item(letter: str, name: str) -> str:
    """``/nix/store/<32 x letter>-name``; ``letter`` must be in Nix's base-32 alphabet."""
    return f"{STORE_DIR}/{letter * 32}-{name}"


GLIBC = item("1", "glibc-2.39")
ZLIB = item("2", "zlib-1.3")
LIBFOO = item("3", "libfoo-1.0")
APP = item("4", "app-1.0")
TOOL = item("5", "tool-2.0")

#: path -> (references, NAR size given in the closure files); sizes differ so "largest" is clear.
GRAPH: dict[str, tuple[tuple[str, ...], int]] = {
    GLIBC: ((), 9000),
    ZLIB: ((GLIBC,), 3000),
    LIBFOO: ((GLIBC, ZLIB), 5000),
    APP: ((LIBFOO, GLIBC), 1000),
    TOOL: ((ZLIB, GLIBC), 2000),
}


@dataclass
class Store:
    """A store root holding the items of :data:`GRAPH` (or another graph)."""

    root: Path
    graph: dict[str, tuple[tuple[str, ...], int]] = field(default_factory=lambda: dict(GRAPH))

    def closure_of(self, roots: Iterable[str]) -> list[str]:
        seen: list[str] = []
        todo = list(roots)
        while todo:
            path = todo.pop()
            if path not in seen:
                seen.append(path)
                todo.extend(self.graph[path][0])
        return sorted(seen)

    def closure_file(self, path: Path, roots: Iterable[str]) -> Path:
        """Write the closure of ``roots`` as ``nix path-info --json -r`` (array form)."""
        entries = [
            {
                "path": p,
                "narSize": self.graph[p][1],
                "references": sorted({*self.graph[p][0], p}),
                "narHash": "sha256-" + "A" * 43 + "=",
            }
            for p in self.closure_of(roots)
        ]
        path.write_text(json.dumps(entries, indent=1))
        return path

    def files(self, path: str) -> Path:
        return self.root / path.lstrip("/")


def make_store(root: Path, graph: dict[str, tuple[tuple[str, ...], int]] | None = None) -> Store:
    """Create every item under ``root``: a bin/ program naming its references, a lib/ file, a
    relative symlink and a nested directory, so layers hold real files of every kind."""
    store = Store(root, dict(graph or GRAPH))
    for path, (refs, _size) in store.graph.items():
        top = store.files(path)
        (top / "bin").mkdir(parents=True)
        program = top / "bin" / path.rsplit("/", 1)[-1].split("-")[1]
        program.write_text("#!/bin/sh\n" + "".join(f"# uses {r}\n" for r in refs))
        program.chmod(0o755)
        (top / "lib" / "deep").mkdir(parents=True)
        (top / "lib" / "deep" / "data.txt").write_bytes(path.encode() * 20)
        (top / "lib" / "link").symlink_to("deep/data.txt")
    return store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """A small store (the items of :data:`GRAPH`) under ``tmp_path/root``."""
    return make_store(tmp_path / "root")


@pytest.fixture
def app_closure(store: Store, tmp_path: Path) -> Path:
    """The closure file of :data:`APP` in ``store``."""
    return store.closure_file(tmp_path / "app.json", [APP])


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the CLI in-process; return (status, stdout, stderr)."""
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def run_child(
    argv: Iterable[object],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a child process (``python -m closurepack.cli``); its output as text, any
    exit status (``preexec_fn``: test_disk_full's file size limit)."""
    return subprocess.run(
        [sys.executable, "-m", "closurepack.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        check=False,
        timeout=timeout,
        preexec_fn=preexec_fn,
    )


def run_child_quietly(argv: Iterable[object]) -> str:
    """What the CLI run by :func:`run_child` prints, checked to succeed with nothing on
    stderr."""
    result = run_child(argv)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout.strip()


@pytest.fixture
def no_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``SOURCE_DATE_EPOCH`` from the environment the tests run in (CI sets one)."""
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


@pytest.fixture
def platform_closures(store: Store, tmp_path: Path) -> dict[str, Path]:
    """Closures of two platforms sharing glibc and zlib (the "arch-independent" items):
    amd64's is :data:`APP`'s, arm64's :data:`TOOL`'s."""
    return {
        "amd64": store.closure_file(tmp_path / "app.json", [APP]),
        "arm64": store.closure_file(tmp_path / "tool.json", [TOOL]),
    }


def platform_args(store: Store, closures: dict[str, Path]) -> list[object]:
    """``--store-root`` and a ``--platform linux/ARCH=CLOSURE`` per entry of ``closures``."""
    argv: list[object] = ["--store-root", store.root]
    for arch, closure in closures.items():
        argv += ["--platform", f"linux/{arch}={closure}"]
    return argv


def build_ok(capsys: pytest.CaptureFixture[str], *argv: object, quiet: bool = True) -> str:
    """``closurepack build -q ARGV``, which must succeed (and with ``quiet`` say nothing on
    stderr); what it printed, stripped."""
    status, out, err = run(["build", "-q", *map(str, argv)], capsys)
    assert status == 0, err
    if quiet:
        assert err == ""
    return out.strip()


def build_app(
    store: Store,
    closure: Path,
    dest: str,
    capsys: pytest.CaptureFixture[str],
    *extra: object,
    cache: Path,
) -> str:
    """``closure`` of ``store`` built to ``dest`` through the cache ``cache``, entrypoint
    ``/bin/app``: the reference or digest printed."""
    argv = ["--closure", closure, "--store-root", store.root, "--cache-dir", cache]
    return build_ok(capsys, *argv, "--entrypoint", "/bin/app", "-o", dest, *extra)


def build_platforms(
    store: Store,
    closures: dict[str, Path],
    dest: str,
    capsys: pytest.CaptureFixture[str],
    *extra: object,
    cache: Path,
) -> str:
    """One image per entry of ``closures`` (see :func:`platform_args`) under an index at
    ``dest``, through the cache ``cache``, entrypoint ``/bin/app``: the digest printed."""
    argv = [*platform_args(store, closures), "--cache-dir", cache, "--entrypoint", "/bin/app"]
    return build_ok(capsys, *argv, "-o", dest, *extra)


@dataclass
class OciImage:
    """An image read back from an OCI layout with nothing but json and tarfile."""

    layout: Path
    index: dict[str, Any]
    manifest: dict[str, Any]
    config: dict[str, Any]

    def blob(self, digest: str) -> bytes:
        return (self.layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()

    @property
    def layer_digests(self) -> list[str]:
        return [layer["digest"] for layer in self.manifest["layers"]]

    def layer_members(self, number: int) -> dict[str, tarfile.TarInfo]:
        """The tar entries of layer ``number`` (bottom = 0), decompressed by media type."""
        descriptor = self.manifest["layers"][number]
        data = self.blob(descriptor["digest"])
        if descriptor["mediaType"].endswith("+zstd"):
            import zstandard

            data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            return {m.name: m for m in tar.getmembers()}

    def layer_file(self, number: int, name: str) -> bytes:
        descriptor = self.manifest["layers"][number]
        data = self.blob(descriptor["digest"])
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            handle = tar.extractfile(name)
            assert handle is not None
            return handle.read()


def read_oci(layout: Path, tag: str | None = None) -> OciImage:
    index = json.loads((layout / "index.json").read_text())
    entries = index["manifests"]
    if tag is not None:
        entries = [
            m
            for m in entries
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
        ]
    assert len(entries) == 1, entries
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / entries[0]["digest"].split(":", 1)[1]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].split(":", 1)[1]).read_bytes())
    return OciImage(layout, index, manifest, config)


def read_docker_archive(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(manifest.json, the config of its only image) of a docker-archive."""
    with tarfile.open(path) as tar:
        manifest_file = tar.extractfile("manifest.json")
        assert manifest_file is not None
        manifest = json.loads(manifest_file.read())
        config_file = tar.extractfile(manifest[0]["Config"])
        assert config_file is not None
        return manifest, json.loads(config_file.read())
