"""Benchmark the layering strategies on a large closure: load time, plan time, peak memory.

Usage::

    python bench/plan_bench.py [CLOSURE_FILE] [--strategy NAME ...] [--max-layers N]

The default closure is /work/shared/data/closures/debian-all.json.zst (63,436 Debian packages as
``nix path-info --json``). Each strategy runs in a fresh process so its peak memory
(``ru_maxrss``, which includes loading the closure) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

DEFAULT = Path("/work/shared/data/closures/debian-all.json.zst")
STRATEGIES = ["auto", "popularity", "size", "dominator", "single"]


def run_one(path: Path, strategy: str, max_layers: int) -> dict[str, object]:
    """Load, plan, and report figures for one strategy (runs inside the child process)."""
    from closurepack.planner import plan_closures
    from closurepack.sources import load_closure_file

    started = time.perf_counter()
    closure = load_closure_file(path)
    loaded = time.perf_counter()
    cpu = time.process_time()
    plan = plan_closures([closure], strategy=strategy, max_layers=max_layers)
    planned = time.perf_counter()
    cpu = time.process_time() - cpu
    layers = plan.images[0].layers
    return {
        "strategy": strategy,
        "items": len(closure),
        "layers": len(layers),
        "largest_layer_items": max(len(layer.paths) for layer in layers),
        "load_s": round(loaded - started, 3),
        "plan_s": round(planned - loaded, 3),
        "plan_cpu_s": round(cpu, 3),
        "peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("closure", nargs="?", type=Path, default=DEFAULT)
    parser.add_argument("--strategy", action="append", dest="strategies")
    parser.add_argument("--max-layers", type=int, default=100)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    strategies = args.strategies or STRATEGIES
    if args.child:
        print(json.dumps(run_one(args.closure, strategies[0], args.max_layers)))
        return 0
    if not args.closure.exists():
        print(f"{args.closure}: not found", file=sys.stderr)
        return 1
    header = (
        f"{'strategy':<12}{'items':>7}{'layers':>8}{'load s':>8}{'plan s':>8}{'plan cpu s':>12}"
        f"{'peak MiB':>10}"
    )
    print(header)
    for strategy in strategies:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                str(args.closure),
                "--child",
                "--strategy",
                strategy,
                "--max-layers",
                str(args.max_layers),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        r = json.loads(out)
        print(
            f"{r['strategy']:<12}{r['items']:>7}{r['layers']:>8}{r['load_s']:>8}"
            f"{r['plan_s']:>8}{r['plan_cpu_s']:>12}{r['peak_mib']:>10}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
