"""Plans kept under the cache (closurepack.plancache): an unchanged closure with the same
options gets the plan it had without planning; any other input, and any file that is not
sound, plans again; a build with a kept plan writes the same image. And a rebuild into the
same ``oci:`` layout writes (and syncs) nothing when the layout holds the image already."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from clistore import Store, read_oci
from closurepack import _fs
from closurepack.buildjob import build_image
from closurepack.buildoptions import BuildInput, LayerOptions
from closurepack.graph import Closure, StoreItem
from closurepack.jobsetup import ImageOptions
from closurepack.plan import LayerPlan
from closurepack.plancache import PLANS_DIR, keep_plan, kept_plan, plan_key
from closurepack.planner import plan_closures
from closurepack.transports import layoutblobs

STORE = "/nix/store"


def _closure(size: int = 100) -> Closure:
    a, b, c = (f"{STORE}/{n:032d}-{name}" for n, name in ((1, "app"), (2, "lib"), (3, "libc")))
    items = [StoreItem(a, size, (b, c)), StoreItem(b, 2000, (c,)), StoreItem(c, 5000)]
    return Closure.from_items(items, source="test")


def _key(closure: Closure, **options: object) -> str:
    given: dict[str, object] = {"strategy": None, "budget": 10, "min_layer_size": None}
    given.update(options)
    return plan_key(
        [closure],
        strategy=given["strategy"],  # type: ignore[arg-type]
        budget=given["budget"],  # type: ignore[arg-type]
        min_layer_size=given["min_layer_size"],  # type: ignore[arg-type]
        names=["app"],
    )


def cached_plan(cache: Path, key: str, closures: list[Closure], calls: list[int]) -> LayerPlan:
    """As a build does: the kept plan, else one made (counted in ``calls``) and kept."""
    kept = kept_plan(cache, key, closures)
    if kept is not None:
        return kept
    calls.append(1)
    plan = plan_closures(closures, max_layers=10, names=["app"])
    keep_plan(cache, key, plan)
    return plan


def test_an_unchanged_closure_is_not_planned_again(tmp_path: Path) -> None:
    closure, calls = _closure(), []
    key = _key(closure)
    first = cached_plan(tmp_path, key, [closure], calls)
    again = cached_plan(tmp_path, key, [_closure()], calls)
    assert calls == [1]
    assert again == first
    assert again.to_json() == first.to_json()


def test_every_input_of_planning_is_in_the_key() -> None:
    closure = _closure()
    keys = {
        _key(closure),
        _key(_closure(size=101)),
        _key(closure, strategy="stable"),
        _key(closure, budget=11),
        _key(closure, min_layer_size="1K"),
        plan_key([closure], strategy=None, budget=10, min_layer_size=None, names=["other"]),
    }
    assert len(keys) == 6


def _record(tmp_path: Path, key: str) -> Path:
    return tmp_path / PLANS_DIR / f"{key}.json"


def _reseal(path: Path, edit: Callable[[dict[str, object]], None]) -> None:
    """Change the kept plan and record its new sha256 (a sound file, a wrong plan)."""
    record = json.loads(path.read_bytes())
    plan = json.loads(record["plan"])
    edit(plan)
    record["plan"] = json.dumps(plan)
    record["sha256"] = hashlib.sha256(record["plan"].encode()).hexdigest()
    path.write_text(json.dumps(record))


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(b"{not json"),
        lambda p: p.write_bytes(p.read_bytes()[:-20]),
        lambda p: p.write_text(p.read_text().replace("libc", "libd")),  # sha256 no longer matches
        lambda p: _reseal(p, lambda plan: plan["images"][0]["layers"].pop()),  # an item missing
        lambda p: _reseal(p, lambda plan: plan.update(version=99)),  # not a plan we read
        lambda p: p.write_text(json.dumps({**json.loads(p.read_bytes()), "key": "0" * 64})),
    ],
)
def test_a_kept_plan_that_is_not_sound_is_made_again_and_replaced(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    closure, calls = _closure(), []
    key = _key(closure)
    first = cached_plan(tmp_path, key, [closure], calls)
    damage(_record(tmp_path, key))
    assert cached_plan(tmp_path, key, [closure], calls) == first
    assert calls == [1, 1]
    assert cached_plan(tmp_path, key, [closure], calls) == first
    assert calls == [1, 1]  # the made plan was kept over the damaged one


def test_a_cache_directory_that_cannot_be_written_only_plans(tmp_path: Path) -> None:
    closure, calls = _closure(), []
    missing = tmp_path / "no" / "such" / "cache"
    cached_plan(missing, _key(closure), [closure], calls)
    cached_plan(missing, _key(closure), [closure], calls)
    assert calls == [1, 1]
    assert not (tmp_path / "no").exists()  # (not made: that is the layer cache's to do)


def _build(store: Store, closure: Path, layout: Path, cache: Path) -> str:
    return build_image(
        BuildInput(closure_files=[closure], store_root=store.root),
        layer_options=LayerOptions(compression="zstd", cache_dir=cache),
        image=ImageOptions(cmd=("/bin/app",)),
        dest=f"oci:{layout}",
    )


def test_a_build_with_a_kept_plan_writes_the_same_image(
    store: Store, app_closure: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = _build(store, app_closure, tmp_path / "one", cache)
    assert len(list((cache / PLANS_DIR).iterdir())) == 1

    def no_planning(*args: object, **kwargs: object) -> LayerPlan:
        raise AssertionError("planned again")

    monkeypatch.setattr("closurepack.buildplan.make_plan", no_planning)
    assert _build(store, app_closure, tmp_path / "two", cache) == first
    assert read_oci(tmp_path / "two").layer_digests == read_oci(tmp_path / "one").layer_digests


def test_a_rebuild_of_what_the_layout_holds_writes_and_syncs_nothing(
    store: Store, app_closure: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout, cache = tmp_path / "layout", tmp_path / "cache"
    first = _build(store, app_closure, layout, cache)
    index = layout / "index.json"
    before = os.stat(index)
    synced: list[str] = []
    real_sync = _fs.fsync_dir
    for module in (_fs, layoutblobs):
        monkeypatch.setattr(module, "fsync_dir", lambda d: synced.append(str(d)) or real_sync(d))
    monkeypatch.setattr(_fs.os, "fsync", lambda fd: synced.append(f"fd {fd}"))
    assert _build(store, app_closure, layout, cache) == first
    assert synced == []
    now = os.stat(index)
    assert (now.st_ino, now.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    # another tag is an index.json of its own, written and synced as ever
    build_image(
        BuildInput(closure_files=[app_closure], store_root=store.root),
        layer_options=LayerOptions(compression="zstd", cache_dir=cache),
        image=ImageOptions(cmd=("/bin/app",)),
        dest=f"oci:{layout}:other",
    )
    assert synced
    assert os.stat(index).st_ino != before.st_ino
