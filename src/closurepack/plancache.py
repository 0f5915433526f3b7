"""Plans kept under the layer cache: an unchanged closure planned with the same options is not
planned again (issue 11: a rebuild of what was built before).

The key is a sha256 over every input of planning: each closure's store directory, roots and
items (path, NAR size, references, NAR hash, deriver, self-reference), the strategy spec, the
layer budget, ``--min-layer-size``, the image names, and the planning code (the size and mtime
of every module file of this package: another closurepack plans anew). The plan is kept as
``plans/<key>.json`` under the cache directory, with the key and the sha256 of the plan's
JSON. A file that cannot be read or parsed, names another key or whose plan does not hash
to what it records is not used (the plan is made, and kept over it); nor is a plan that does
not hold exactly each closure's items. Keeping one is best effort, never fsynced: a file
lost or torn in a crash is only a plan made again.

Not cached: plans with ``--previous`` (images and plans read from elsewhere) or a pipeline
from ``@FILE`` (its file may change under the same spelling). A closure that changed in one
item is planned again in full: every strategy weighs an item against the whole graph (sizes,
popularity, dominators), so no part of an earlier plan is known to be what planning now
would make, and the plan must not depend on what the cache holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from closurepack._fs import atomic_write
from closurepack.codestamps import package_stamps
from closurepack.errors import ClosurepackError
from closurepack.graph import Closure
from closurepack.plan import LayerPlan

__all__ = [
    "PLANS_DIR",
    "keep_plan",
    "kept_plan",
    "plan_key",
]

#: The plans' directory under the cache directory.
PLANS_DIR = "plans"
_FORMAT = "closurepack-plan-cache-1"


def plan_key(
    closures: Sequence[Closure],
    *,
    strategy: str | None,
    budget: int,
    min_layer_size: str | int | None,
    names: Sequence[str | None] | None,
) -> str:
    """The sha256 (hex) over every input of planning ``closures`` with these options."""
    digest = hashlib.sha256()
    head = [_FORMAT, _planning_code(), strategy, budget, min_layer_size, names, len(closures)]
    digest.update(json.dumps(head).encode())
    for closure in closures:
        items = [
            [i.path, i.nar_size, i.references, i.nar_hash, i.deriver, i.self_reference]
            for i in closure.items.values()
        ]
        digest.update(b"\n" + json.dumps([closure.store_dir, closure.roots, items]).encode())
    return digest.hexdigest()


def kept_plan(cache_dir: Path, key: str, closures: Sequence[Closure]) -> LayerPlan | None:
    """The plan kept under ``cache_dir`` for ``key`` when it is sound, else None (nothing is
    made: a cache directory that does not exist stays so)."""
    return _read(cache_dir / PLANS_DIR / f"{key}.json", key, closures)


def keep_plan(cache_dir: Path, key: str, plan: LayerPlan) -> None:
    """Keep ``plan`` for ``key`` under ``cache_dir`` (a layer cache the build opened), over
    whatever was kept there for it."""
    path = cache_dir / PLANS_DIR / f"{key}.json"
    text = plan.to_json()
    record = {"key": key, "sha256": hashlib.sha256(text.encode()).hexdigest(), "plan": text}
    with contextlib.suppress(OSError, ClosurepackError):
        path.parent.mkdir(exist_ok=True)
        with atomic_write(path, fsync=False) as out:
            out.write(json.dumps(record).encode())


def _read(path: Path, key: str, closures: Sequence[Closure]) -> LayerPlan | None:
    try:
        record = json.loads(path.read_bytes())
        text = record["plan"]
        if record["key"] != key or hashlib.sha256(text.encode()).hexdigest() != record["sha256"]:
            return None
        plan = LayerPlan.from_json(text, source=str(path))
    except (OSError, ValueError, TypeError, KeyError, AttributeError, ClosurepackError):
        return None
    if len(plan.images) != len(closures):
        return None
    for image, closure in zip(plan.images, closures, strict=True):
        paths = image.paths
        if len(paths) != len(closure.items) or not closure.items.keys() >= set(paths):
            return None
    return plan


def _planning_code() -> str:
    """Size and mtime (ns) of every file of this package, as one sha256."""
    return hashlib.sha256("\n".join(package_stamps()).encode()).hexdigest()
