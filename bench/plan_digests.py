"""Digests of the plans of the bench's closures, to show that a speed change left them alone.

Usage::

    PYTHONPATH=src python bench/plan_digests.py [--only small|big] [--strategy NAME ...] > new.json
    PYTHONPATH=src python bench/plan_digests.py --fleets [--strategy NAME ...] > new.json
    PYTHONPATH=/path/to/main/src python bench/plan_digests.py ... > old.json
    python bench/plan_digests.py --compare old.json new.json

Plans, with :func:`closurepack.planner.plan_closures` as ``closurepack plan`` does: every
``*.json`` closure of /work/shared/data/closures (or the directory given with ``--dir``) at
5, 20 and 100 layers, the first three ``*.base.json`` with their ``*.updated.json`` as one
fleet at 30 layers, and the 63k-item ``debian-all.json.zst`` at 100; prints the sha256 (16 hex
digits) of each plan's JSON, keyed by closure, strategy and layer count. ``--compare`` names
every key whose digest differs or is missing, and exits 1 if any does.

``--fleets`` instead plans only the large fleets, the ones the fleet planner spends its time
on: every ``*.base.json`` of the directory together (the 8 tuned bases), and the bases of
``bench/economy_bench.py``'s held-out apps (``generated_pairs(8, 1)``), each at 100 and 30
layers, with ``auto``, ``stable`` and ``stable-canonical`` unless ``--strategy`` says otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from closurepack.graph import Closure

DEFAULT_DIR = Path("/work/shared/data/closures")
STRATEGIES = ["auto", "popularity", "size", "dominator", "stable", "single"]
FLEET_STRATEGIES = ["auto", "stable", "stable-canonical"]
BIG = "debian-all.json.zst"


def digests(directory: Path, strategies: list[str], only: str | None) -> dict[str, str]:
    """``"closure strategy layers" -> digest`` of every plan (module docstring)."""
    from closurepack.planner import plan_closures
    from closurepack.sources import load_closure_file

    def digest(closures: list[Closure], strategy: str, layers: int) -> str:
        plan = plan_closures(closures, strategy=strategy, max_layers=layers)
        return hashlib.sha256(plan.to_json().encode()).hexdigest()[:16]

    found: dict[str, str] = {}
    files = [] if only == "big" else sorted(directory.glob("*.json"))
    if only != "small" and (directory / BIG).exists():
        files.append(directory / BIG)
    for path in files:
        closure = load_closure_file(path)
        for strategy in strategies:
            for layers in [100] if path.name == BIG else [5, 20, 100]:
                found[f"{path.name} {strategy} {layers}"] = digest([closure], strategy, layers)
    if only != "big":
        for base in sorted(directory.glob("*.base.json"))[:3]:
            updated = base.with_name(base.name.replace(".base.", ".updated."))
            pair = [load_closure_file(base), load_closure_file(updated)]
            for strategy in strategies:
                found[f"fleet {base.name} {strategy} 30"] = digest(pair, strategy, 30)
    return found


def fleet_digests(directory: Path, strategies: list[str]) -> dict[str, str]:
    """``"fleet NAME strategy layers" -> digest`` of the large fleets (module docstring)."""
    from closurepack.planner import plan_closures
    from closurepack.sources import load_closure_file

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from economy_bench import generated_pairs

    fleets = {
        "tuned-bases": [load_closure_file(p) for p in sorted(directory.glob("*.base.json"))],
        "held-out-1": [pair.base for pair in generated_pairs(8, 1)],
    }
    found: dict[str, str] = {}
    for name, closures in fleets.items():
        for strategy in strategies:
            for layers in [100, 30]:
                plan = plan_closures(closures, strategy=strategy, max_layers=layers)
                digest = hashlib.sha256(plan.to_json().encode()).hexdigest()[:16]
                found[f"fleet {name} {strategy} {layers}"] = digest
    return found


def compare(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """The keys of either whose digests differ (or that only one has)."""
    return sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--only", choices=["small", "big"])
    parser.add_argument("--strategy", action="append", dest="strategies")
    parser.add_argument("--fleets", action="store_true", help="only the large fleets")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"))
    args = parser.parse_args(argv)
    if args.compare:
        old, new = (json.loads(path.read_text()) for path in args.compare)
        differ = compare(old, new)
        print(f"{len(new)} plans; {len(differ)} differ" + "".join(f"\n  {k}" for k in differ))
        return 1 if differ else 0
    if args.fleets:
        found = fleet_digests(args.dir, args.strategies or FLEET_STRATEGIES)
    else:
        found = digests(args.dir, args.strategies or STRATEGIES, args.only)
    json.dump(found, sys.stdout, indent=0, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
