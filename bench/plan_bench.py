"""Benchmark the layering strategies on a large closure: load time, plan time, peak memory.

Usage::

    python bench/plan_bench.py [CLOSURE_FILE] [--strategy NAME ...] [--max-layers N]
                               [--scale N ...] [--repeat R]

The default closure is /work/shared/data/closures/debian-all.json.zst (63,436 Debian packages as
``nix path-info --json``). Each strategy runs in a fresh process so its peak memory
(``ru_maxrss``, which includes loading the closure) is its own. Planning is
:func:`closurepack.planner.plan_closures` with its defaults, as ``closurepack plan`` plans (so
the default ``--min-layer-size`` merge and its refills are included). With ``--repeat R`` the
whole closure is planned R times, each on a fresh ``Closure`` of the loaded items (nothing
memoised carries over), and the fastest run's wall and CPU seconds are printed: this machine's
single runs swing by +-0.3 s. Every fresh closure is made as a load makes it
(``Closure.from_items``: validated, its topological order found) before its run is timed, so
each run plans from what ``closurepack plan`` plans from (before c. 4 Dec 2026 the repeats
were bare ``Closure(...)`` objects and found the order inside the timed plan, 0.16-0.23 CPU s
at 63k under load 4-5, which the first run, on the loaded closure, did not).

``--scale N`` (repeatable, e.g. ``--scale 1000 --scale 4000 --scale 16000``) also plans
sub-closures of about N items cut from the closure: the first N items of its topological
order, which is closed under references (every reference comes earlier), so each cut is a
real closure of some of the graph's items; the whole closure is always the last size. For each
strategy it prints the planning CPU seconds per size (the best of ``--repeat`` runs, each on a
freshly loaded cut, so nothing memoised carries over) and the growth exponent ``k`` of
``time ~ n^k`` between successive sizes and over all of them (least squares on the logs):
about 1 is linear, about 1.1 is ``n log n`` at these sizes, 2 is quadratic.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from closurepack.graph import Closure

DEFAULT = Path("/work/shared/data/closures/debian-all.json.zst")
STRATEGIES = ["auto", "popularity", "size", "dominator", "stable", "single"]


def run_one(
    path: Path, strategy: str, max_layers: int, scale: list[int], repeat: int
) -> dict[str, object]:
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
    wall = planned - loaded
    for _ in range(repeat - 1):
        # again on a fresh Closure (nothing derived from the last run kept); the best is kept
        fresh = as_loaded(closure)
        start, start_cpu = time.perf_counter(), time.process_time()
        plan_closures([fresh], strategy=strategy, max_layers=max_layers)
        cpu = min(cpu, time.process_time() - start_cpu)
        wall = min(wall, time.perf_counter() - start)
    layers = plan.images[0].layers
    sizes: list[dict[str, float]] = []
    if scale:
        order = closure.topological_order()
        for count in sorted({n for n in scale if 0 < n < len(closure)}):
            best = math.inf
            for _ in range(repeat):
                # A fresh Closure each time: nothing derived from the last run is kept.
                cut = as_loaded(closure.restrict(order[:count]))
                start = time.process_time()
                plan_closures([cut], strategy=strategy, max_layers=max_layers)
                best = min(best, time.process_time() - start)
            sizes.append({"items": count, "cpu_s": best})
        sizes.append({"items": len(closure), "cpu_s": cpu})
    return {
        "strategy": strategy,
        "items": len(closure),
        "layers": len(layers),
        "largest_layer_items": max(len(layer.paths) for layer in layers),
        "load_s": round(loaded - started, 3),
        "plan_s": round(wall, 3),
        "plan_cpu_s": round(cpu, 3),
        "peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "scale": sizes,
    }


def as_loaded(closure: Closure) -> Closure:
    """A fresh copy of ``closure`` as loading it makes one (validated, with its topological
    order), with nothing memoised."""
    from closurepack.graph import Closure

    return Closure.from_items(
        closure.items.values(),
        source=closure.source,
        roots=closure.roots,
        store_dir=closure.store_dir,
    )


def growth(points: list[dict[str, float]]) -> tuple[list[float], float]:
    """The exponents ``k`` of ``time ~ n^k`` between successive points, and the least-squares
    slope over all of them (log-log); times under 1 ms count as 1 ms (timer noise)."""
    xs = [math.log(p["items"]) for p in points]
    ys = [math.log(max(p["cpu_s"], 1e-3)) for p in points]
    steps = [(ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i]) for i in range(len(xs) - 1)]
    if len(xs) < 2:
        return steps, math.nan
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    return steps, slope


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("closure", nargs="?", type=Path, default=DEFAULT)
    parser.add_argument("--strategy", action="append", dest="strategies")
    parser.add_argument("--max-layers", type=int, default=100)
    parser.add_argument("--scale", action="append", type=int, default=[], metavar="N")
    parser.add_argument("--repeat", type=int, default=1, metavar="R")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    strategies = args.strategies or STRATEGIES
    repeat = max(args.repeat, 1)
    if args.child:
        result = run_one(args.closure, strategies[0], args.max_layers, args.scale, repeat)
        print(json.dumps(result))
        return 0
    if not args.closure.exists():
        print(f"{args.closure}: not found", file=sys.stderr)
        return 1
    header = (
        f"{'strategy':<12}{'items':>7}{'layers':>8}{'load s':>8}{'plan s':>8}{'plan cpu s':>12}"
        f"{'peak MiB':>10}"
    )
    print(header)
    scaled = []
    for strategy in strategies:
        command = [sys.executable, __file__, str(args.closure), "--child", "--strategy", strategy]
        command += ["--max-layers", str(args.max_layers), "--repeat", str(repeat)]
        command += [f"--scale={n}" for n in args.scale]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        r = json.loads(out)
        print(
            f"{r['strategy']:<12}{r['items']:>7}{r['layers']:>8}{r['load_s']:>8}"
            f"{r['plan_s']:>8}{r['plan_cpu_s']:>12}{r['peak_mib']:>10}",
            flush=True,
        )
        scaled.append(r)
    if args.scale:
        print()
        print("planning CPU s by closure size; k: time ~ n^k between sizes, and overall")
        for r in scaled:
            points = r["scale"]
            steps, slope = growth(points)
            cells = "  ".join(f"{p['items']}: {p['cpu_s']:.3f}" for p in points)
            ks = " ".join(f"{k:.2f}" for k in steps)
            print(f"{r['strategy']:<12}{cells}   k {ks}   overall k {slope:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
