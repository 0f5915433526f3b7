"""A cold build's tail (issue 11). A build into an ``oci:`` layout places each layer's blob
while the other layers are built: copied into a staging directory of the layout as its layer
is done, renamed into ``blobs/sha256`` only when the image is written, so a build that fails
leaves the layout as it was, staging directory and all gone; a blob already there and good is
not copied again. The customisation layer is built beside the last store layers, unless a
single store layer is built (it then has every CPU)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import pytest

from clistore import APP, TOOL, Store, read_oci
from closurepack import build as build_module
from closurepack import buildjob
from closurepack.buildoptions import BuildInput, LayerOptions
from closurepack.image import ImageLayer
from closurepack.jobsetup import ImageOptions
from closurepack.transports import layoutblobs, layoutstaging, oci_layout
from closurepack.transports.layoutstaging import STAGING_PREFIX
from closurepack.validate import verify_image


def _build(
    store: Store, closure: Path, layout: Path, cache: Path, *, jobs: int = 2, codec: str = "zstd"
) -> str:
    return buildjob.build_image(
        BuildInput(closure_files=[closure], store_root=store.root, strategy="per-item"),
        layer_options=LayerOptions(compression=codec, cache_dir=cache, jobs=jobs),
        image=ImageOptions(cmd=("/bin/app",)),
        dest=f"oci:{layout}",
    )


def _tree(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under ``root`` by relative name: inode, mtime (ns) and bytes."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            st = path.stat()
            found[str(path.relative_to(root))] = (st.st_ino, st.st_mtime_ns, path.read_bytes())
    return found


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Path]]:
    """Each layer blob copy made (by staging or by ``write_blobs``): digest hex, directory."""
    seen: list[tuple[str, Path]] = []
    lock = threading.Lock()
    real = layoutblobs.copy_layer

    def counting(layer: ImageLayer, directory: Path) -> None:
        with lock:
            seen.append((layer.digest.hex, directory))
        real(layer, directory)

    monkeypatch.setattr(layoutblobs, "copy_layer", counting)
    monkeypatch.setattr(layoutstaging, "copy_layer", counting)
    return seen


def test_a_cold_build_stages_every_layer_blob_before_the_layout_is_written(
    store: Store, app_closure: Path, tmp_path: Path, copies: list[tuple[str, Path]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    layout, cache = tmp_path / "layout", tmp_path / "cache"
    at_write: list[tuple[int, list[str]]] = []
    real = oci_layout.write_blobs

    def watched(image: object, root: Path, **kwargs: object) -> bool:
        blobs = root / "blobs" / "sha256"
        present = sorted(p.name for p in blobs.iterdir()) if blobs.exists() else []
        at_write.append((len(copies), present))
        return real(image, root, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(oci_layout, "write_blobs", watched)
    digest = _build(store, app_closure, layout, cache)
    image = read_oci(layout)
    layers = [d.split(":")[1] for d in image.layer_digests]
    # every layer (the store's and the customisation layer) copied once, all into the staging
    # directory, all before write_blobs, when blobs/ held none of them yet
    assert sorted(hex_digest for hex_digest, _ in copies) == sorted(layers)
    assert {directory.name.startswith(STAGING_PREFIX) for _, directory in copies} == {True}
    assert {directory.parent for _, directory in copies} == {layout}
    assert at_write == [(len(layers), [])]
    assert verify_image(f"oci:{layout}") == []
    assert image.index["manifests"][0]["digest"] == digest
    assert not [p for p in layout.iterdir() if p.name.startswith(STAGING_PREFIX)]
    for hex_digest in layers[:-1]:  # (the customisation layer is not cached)
        blob = layout / "blobs" / "sha256" / hex_digest
        cached = cache / "blobs" / "sha256" / hex_digest
        assert blob.read_bytes() == cached.read_bytes()
        assert blob.stat().st_ino != cached.stat().st_ino


def test_staged_blobs_are_those_of_a_build_that_places_them_at_the_end(
    store: Store, app_closure: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staged_tree = tmp_path / "staged"
    _build(store, app_closure, staged_tree, tmp_path / "cache1")
    monkeypatch.setattr(buildjob, "image_staging", lambda *_, **__: contextlib.nullcontext())
    late_tree = tmp_path / "late"
    _build(store, app_closure, late_tree, tmp_path / "cache2")
    files = _tree(staged_tree)
    assert len(files) == len(_tree(late_tree)) > 3
    assert {k: v[2] for k, v in files.items()} == {k: v[2] for k, v in _tree(late_tree).items()}


def _failing_last_build(monkeypatch: pytest.MonkeyPatch, copies: list[tuple[str, Path]]) -> None:
    """Make the last store layer a build starts (the smallest, APP's, with one job: largest
    first) fail once a layer before it is staged."""
    real = build_module.build_store_layer

    def failing(paths: tuple[str, ...], **kwargs: object) -> object:
        if APP in paths:
            deadline = time.monotonic() + 10
            while not copies and time.monotonic() < deadline:
                time.sleep(0.01)
            raise OSError(5, "simulated read error")
        return real(paths, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(build_module, "build_store_layer", failing)


def test_a_failed_build_leaves_the_old_layout_as_it_was(
    store: Store, app_closure: Path, tmp_path: Path, copies: list[tuple[str, Path]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    layout = tmp_path / "layout"
    _build(store, app_closure, layout, tmp_path / "cache")
    before = _tree(layout)
    copies.clear()
    # another image (gzip, and a layer of its own): every layer new, built and offered
    both = store.closure_file(tmp_path / "both.json", [APP, TOOL])
    _failing_last_build(monkeypatch, copies)
    with pytest.raises(Exception, match="simulated read error"):
        _build(store, both, layout, tmp_path / "cache2", jobs=1, codec="gzip")
    assert copies  # (something was staged before the failure)
    assert _tree(layout) == before  # index.json, blobs: the same files, the same bytes
    assert sorted(p.name for p in layout.iterdir()) == ["blobs", "index.json", "oci-layout"]
    assert verify_image(f"oci:{layout}") == []


def test_a_failed_build_into_a_new_directory_leaves_none(
    store: Store, tmp_path: Path, copies: list[tuple[str, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = tmp_path / "new" / "layout"
    both = store.closure_file(tmp_path / "both.json", [APP, TOOL])
    _failing_last_build(monkeypatch, copies)
    with pytest.raises(Exception, match="simulated read error"):
        _build(store, both, layout, tmp_path / "cache", jobs=1)
    assert copies
    assert not layout.exists()


def test_good_blobs_in_the_layout_are_not_copied_again(
    store: Store, app_closure: Path, tmp_path: Path, copies: list[tuple[str, Path]]
) -> None:
    layout = tmp_path / "layout"
    _build(store, app_closure, layout, tmp_path / "cache")
    blobs = layout / "blobs" / "sha256"
    inodes = {p.name: p.stat().st_ino for p in blobs.iterdir()}
    copies.clear()
    # a fresh cache: every layer is built again (and offered), each found good in the layout
    _build(store, app_closure, layout, tmp_path / "cache2")
    assert copies == []
    assert {p.name: p.stat().st_ino for p in blobs.iterdir()} == inodes
    assert verify_image(f"oci:{layout}") == []


def test_a_killed_builds_staging_directory_is_swept(
    store: Store, app_closure: Path, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    layout.mkdir()
    stale = layout / f"{STAGING_PREFIX}999999999-abc_12"  # no such process, no flock held
    stale.mkdir()
    (stale / ("0" * 64)).write_bytes(b"half a blob")
    old = time.time() - 60
    os.utime(stale, (old, old))
    _build(store, app_closure, layout, tmp_path / "cache")  # (a directory that is no layout yet)
    assert not stale.exists()
    assert sorted(p.name for p in layout.iterdir()) == ["blobs", "index.json", "oci-layout"]
    assert verify_image(f"oci:{layout}") == []


def _top_timing(monkeypatch: pytest.MonkeyPatch, *, wait: float) -> list[str]:
    """The order in which the store layers ("app", "tool", "other") are built and the
    customisation layer ("top") starts; the APP layer's build (the smallest store layer,
    started last) first waits up to ``wait`` seconds for the customisation layer to start."""
    top_started = threading.Event()
    ended: list[str] = []
    real_store, real_top = build_module.build_store_layer, build_module.build_customisation_layer

    def store(paths: tuple[str, ...], **kwargs: object) -> object:
        if APP in paths and wait:
            top_started.wait(wait)
        built = real_store(paths, **kwargs)  # type: ignore[arg-type]
        ended.append("app" if APP in paths else "tool" if TOOL in paths else "other")
        return built

    def top(*args: object, **kwargs: object) -> object:
        ended.append("top")  # (when it starts)
        top_started.set()
        return real_top(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(build_module, "build_store_layer", store)
    monkeypatch.setattr(build_module, "build_customisation_layer", top)
    return ended


def test_the_customisation_layer_is_built_beside_the_last_store_layers(
    store: Store, app_closure: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ended = _top_timing(monkeypatch, wait=5)
    _build(store, app_closure, tmp_path / "layout", tmp_path / "cache", jobs=2)
    assert sorted(ended) == ["app", "other", "other", "other", "top"]
    assert ended.index("top") < ended.index("app")  # it did not wait for the last store layer
    assert verify_image(f"oci:{tmp_path / 'layout'}") == []


def test_a_single_new_layer_is_built_before_the_customisation_layer(
    store: Store, app_closure: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    _build(store, app_closure, tmp_path / "first", cache)
    ended = _top_timing(monkeypatch, wait=0)
    both = store.closure_file(tmp_path / "both.json", [APP, TOOL])  # one layer more: TOOL's
    _build(store, both, tmp_path / "second", cache, jobs=2)
    # alone, the new layer gets every CPU: the customisation layer follows it
    assert ended == ["tool", "top"]
    assert verify_image(f"oci:{tmp_path / 'second'}") == []


def test_a_rebuild_of_what_the_layout_holds_stages_nothing(
    store: Store, app_closure: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout, cache = tmp_path / "layout", tmp_path / "cache"
    _build(store, app_closure, layout, cache)
    before = _tree(layout)
    opened: list[Path] = []
    real = layoutstaging.LayoutStaging._open_dir

    def watched(self: layoutstaging.LayoutStaging) -> Path:
        opened.append(self.root)
        return real(self)

    monkeypatch.setattr(layoutstaging.LayoutStaging, "_open_dir", watched)
    # the store layers are cache hits (never offered), the customisation layer is built again
    # and offered, but its stamp says the layout holds it: no staging directory, no thread
    _build(store, app_closure, layout, cache)
    assert opened == []
    assert _tree(layout) == before
