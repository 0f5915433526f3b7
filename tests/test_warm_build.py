"""A warm rebuild's layers: hits found on the calling thread, builder threads only for what
is left to build (none for a single layer), every layer's key and bytes as before."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clistore import APP, GRAPH, run
from clistore import item as item_named
from clistore import make_store as make_cli_store
from closurepack.build import BuildOptions, LayerEvent, build_keyed_layers
from closurepack.cache import LayerCache
from closurepack.plan import ImagePlan, PlannedLayer
from test_layerbuild import started_threads

STORE_DIR = "/nix/store"


def item(n: int) -> str:
    return f"{STORE_DIR}/{str(n) * 32}-item{n}"


def make_store(root: Path, count: int) -> list[str]:
    paths = []
    for n in range(count):
        directory = root / item(n)[1:]
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "data").write_bytes(os.urandom(20_000 + 1000 * n))
        paths.append(item(n))
    return paths


def build(
    tmp_path: Path, paths: list[str], *, verify: str = "auto"
) -> tuple[list[tuple[str, object]], list[LayerEvent]]:
    events: list[LayerEvent] = []
    plan = ImagePlan(tuple(PlannedLayer((p,), 1000 + i) for i, p in enumerate(paths)))
    with LayerCache(tmp_path / "cache", verify=verify) as cache:  # type: ignore[arg-type]
        options = BuildOptions(
            store_root=tmp_path / "store", compression="zstd", jobs=2, cache=cache
        )
        keyed = build_keyed_layers(plan, options=options, work_dir=tmp_path, progress=events.append)
    return keyed, events  # type: ignore[return-value]


def test_hits_and_a_single_miss_start_no_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = make_store(tmp_path / "store", 6)
    cold, _ = build(tmp_path, paths)
    started = started_threads(monkeypatch)
    warm, events = build(tmp_path, paths)
    assert warm == cold
    assert started == []
    assert sorted(e.index for e in events) == list(range(6))
    assert all(e.cached and e.total == 6 for e in events)
    # one item changed (a new store path): the others are hits, it is built here
    (tmp_path / "store" / item(9)[1:]).mkdir(parents=True)
    (tmp_path / "store" / item(9)[1:] / "data").write_bytes(b"changed")
    changed = [*paths[:-1], item(9)]
    rebuilt, events = build(tmp_path, changed)
    assert started == []
    assert rebuilt[:-1] == cold[:-1]
    assert [e.index for e in events if not e.cached] == [5]
    # two to build: builder threads, and the same layers as one at a time
    (tmp_path / "store" / item(9)[1:] / "data").unlink()
    (tmp_path / "store" / item(9)[1:]).rmdir()
    for layer in (tmp_path / "cache" / "keys").iterdir():
        layer.unlink()
    del started[:]
    again, _ = build(tmp_path, paths[:2])
    assert sum(name.startswith("layer") for name in started) == 2
    assert again == cold[:2]


def test_hits_that_need_hashing_go_to_the_builders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --cache-verify full every hit is rehashed, on the builder threads."""
    paths = make_store(tmp_path / "store", 3)
    cold, _ = build(tmp_path, paths)
    started = started_threads(monkeypatch)
    warm, events = build(tmp_path, paths, verify="full")
    assert warm == cold
    assert all(e.cached for e in events)
    assert sum(name.startswith("layer") for name in started) == 2


def test_warm_rebuild_into_its_layout_starts_no_builder_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`closurepack build -o oci:DIR` again after the application changed (a new store path):
    the unchanged layers are hits, the new one and its layout blob are made on the main
    thread (zstd's workers are threads of libzstd), the new config and manifest are placed
    at once, a thread each (their fsyncs together), and the blobs' directory is fsynced on a
    thread while index.json is; the layout is a no-cache build's."""
    new_app = item_named("6", "app-1.1")
    graph = {**GRAPH, new_app: GRAPH[APP]}
    store = make_cli_store(tmp_path / "root", graph)
    old = ["--closure", store.closure_file(tmp_path / "old.json", [APP])]
    new = ["--closure", store.closure_file(tmp_path / "new.json", [new_app])]
    common = ["build", "--quiet", "--store-root", store.root, "--compression", "zstd"]
    cache = ["--cache-dir", tmp_path / "cache", "--jobs", "2", "-o", f"oci:{tmp_path / 'oci'}"]
    assert run([*common, *old, *cache], capsys)[0] == 0
    started = started_threads(monkeypatch)
    code, out, err = run([*common, *new, *cache], capsys)
    assert code == 0, err
    assert started == ["blob_0", "blob_1", "fsync-dir"]
    fresh = tmp_path / "fresh"
    assert run([*common, *new, "--no-cache", "-o", f"oci:{fresh}"], capsys)[1] == out
    for name in (
        "index.json",
        *(f"blobs/sha256/{p.name}" for p in (fresh / "blobs/sha256").iterdir()),
    ):
        assert (fresh / name).read_bytes() == (tmp_path / "oci" / name).read_bytes()


_PROGRAM = (
    "import sys\n"
    "from closurepack.cli import main\n"
    "status = main(sys.argv[2:])\n"
    "print(status, sorted(m for m in sys.modules if m in sys.argv[1].split(',')))\n"
)

#: Modules an oci: build of one platform, without --sbom, attachments or artifacts, never needs.
_NOT_FOR_OCI = (
    "closurepack.sbom,closurepack.imageindex,closurepack.platforms,closurepack.artifacts,"
    "closurepack.pushrecord,closurepack.registry.reference,concurrent.futures.thread"
)


def test_a_plain_oci_rebuild_imports_no_index_sbom_or_thread_pool(tmp_path: Path) -> None:
    """The start-up of a warm oci: rebuild (its unchanged layers hits, one new layer) loads
    none of the multi-platform, SBOM and artifact modules, nor the push records (a registry
    push's) or a thread pool; an --sbom build does load what it needs."""
    store = make_cli_store(tmp_path / "root")
    closure = store.closure_file(tmp_path / "app.json", [APP])
    argv = ["build", "-q", "--closure", closure, "--store-root", store.root, "--compression",
            "zstd", "--cache-dir", tmp_path / "c", "-o", f"oci:{tmp_path / 'out'}"]  # fmt: skip

    def loaded(extra: list[object]) -> str:
        done = subprocess.run(
            [sys.executable, "-c", _PROGRAM, _NOT_FOR_OCI, *map(str, argv + extra)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()[-1]

    loaded([])  # cold: the layers are built (by builder threads)
    assert loaded([]) == "0 []"
    with_sbom = loaded(["--sbom", "spdx"])
    assert "'closurepack.sbom'" in with_sbom
    assert "'closurepack.artifacts'" in with_sbom


def test_builders_share_the_cpus_from_the_first_layer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every layer of a build with two builders gets half the CPUs, the first one (started
    before the other builder) too; a layer built alone gets them all."""
    from closurepack import layerbuild

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    threads: list[int] = []
    real = layerbuild.open_compressor

    def spy(compression: str, sink: object, **kwargs: int) -> object:
        threads.append(kwargs["threads"])
        return real(compression, sink, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(layerbuild, "open_compressor", spy)
    paths = make_store(tmp_path / "store", 6)
    cold, _ = build(tmp_path, paths)
    assert threads == [2] * 6
    with layerbuild.sharing_cpus(2), layerbuild.sharing_cpus(2):
        assert layerbuild._fair_share() == 1
    del threads[:]
    for layer in (tmp_path / "cache" / "keys").iterdir():
        layer.unlink()
    again, _ = build(tmp_path, paths[:1])
    assert threads == [4]
    assert again == cold[:1]
