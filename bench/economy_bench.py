"""Layer economy: what an update or a fleet of images costs in bytes, strategy by strategy.

Usage::

    python bench/economy_bench.py [--data DIR] [--strategy NAME ...] [--max-layers N ...]
                                  [--draws N] [--seed N] [--verbose]

``DIR`` (default ``/work/shared/data/closures``) holds pairs ``APP.base.json`` ->
``APP.updated.json`` (``nix path-info --json``). Every plan is made through
:func:`closurepack.planner.plan_closures` exactly as ``closurepack plan --closure ...
--max-layers N [--previous OLD]`` makes it: one of the ``N`` layers is kept for the
customisation layer, so the strategy gets ``N - 1`` (the customisation layer itself is the same
in both images and not counted). A layer is identified by its set of store items (layers are
reproducible: the same items give the same bytes); a layer's bytes are its items' NAR sizes.

Figures (1.0 is the floor for every one; lower is better). Every overhead is pooled: the bytes
shipped summed over all the updates it covers (every app, every draw) over the bytes changed,
summed likewise, so large updates weigh by their bytes (the issue's anchors are measured so;
``--verbose`` also prints each app's own figure and their plain mean).

``update``
    Each real pair: plan the base closure, plan the updated one; bytes of the new image's
    layers whose item set no layer of the old image has, over the bytes of the items that
    changed (paths of the new closure that the old one lacks).
``+prev``
    The same with the new closure planned with the old plan as ``--previous``.
``chain`` / ``chain+prev``
    The same under classic Docker's ChainID rule: a layer is reused only when it and every
    layer below it are the same as in the old image, so everything from the first difference
    up is shipped.
``random``
    For each app, ``--draws`` times: one item of the base closure, drawn uniformly, changes,
    and with it (Nix-style) every item above it, its referrers, transitively: they all get new
    store paths (new hash, computed from the old hash, the draw and the new hashes of the
    references, as Nix derives paths; names and sizes stay). ``update`` of that pair (no
    ``--previous``). The seed is printed; give it back with ``--seed`` to repeat a run.
``fleet``
    The base closures planned together (one plan, one image each, as ``closurepack plan
    --closure A --closure B ...``): bytes of the distinct layers over all images, over the
    bytes of the distinct items.
``fleet1``
    The same with each base closure planned on its own, as a single-image tool must (the
    issue's fleet anchors are this figure).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from closurepack.errors import PlanError
from closurepack.graph import Closure, StoreItem
from closurepack.options import parse_size
from closurepack.plan import ImagePlan, LayerPlan
from closurepack.planner import plan_closures
from closurepack.sources import load_closure_file
from closurepack.strategies import STRATEGIES

DEFAULT_DATA = Path("/work/shared/data/closures")
#: Every strategy that plans any closure (per-item fails above its budget, single is a yardstick
#: given with --strategy single).
DEFAULT_STRATEGIES = tuple(s for s in sorted(STRATEGIES) if s not in ("per-item", "single"))
DEFAULT_BUDGETS = (100, 30)
FIGURES = ("update", "+prev", "chain", "chain+prev", "random", "fleet", "fleet1")

LayerId = frozenset[str]


@dataclass(frozen=True)
class Pair:
    """One app before and after its update."""

    name: str
    base: Closure
    updated: Closure


def load_pairs(data: Path) -> list[Pair]:
    """Every ``APP.base.json`` in ``data`` with its ``APP.updated.json``, by app name."""
    pairs = []
    for base in sorted(data.glob("*.base.json")):
        name = base.name.removesuffix(".base.json")
        updated = base.with_name(f"{name}.updated.json")
        if not updated.exists():
            raise SystemExit(f"{updated}: missing (the pair of {base})")
        pairs.append(Pair(name, load_closure_file(base), load_closure_file(updated)))
    if not pairs:
        raise SystemExit(f"{data}: no APP.base.json files")
    return pairs


# -- the definitions ------------------------------------------------------------------------------


def layer_ids(image: ImagePlan) -> list[LayerId]:
    """The layers of an image, bottom first, each as its set of items."""
    return [frozenset(layer.paths) for layer in image.layers]


def layer_bytes(layer: Iterable[str], sizes: Mapping[str, int]) -> int:
    return sum(sizes[p] for p in layer)


def changed_bytes(old: Closure, new: Closure) -> int:
    """Bytes of the items of ``new`` that ``old`` lacks (new store paths)."""
    return sum(item.nar_size for path, item in new.items.items() if path not in old.items)


def shipped_bytes(old: ImagePlan, new: ImagePlan, sizes: Mapping[str, int]) -> int:
    """Bytes of the layers of ``new`` that no layer of ``old`` equals (same item set)."""
    have = set(layer_ids(old))
    return sum(layer_bytes(layer, sizes) for layer in layer_ids(new) if layer not in have)


def chain_shipped_bytes(old: ImagePlan, new: ImagePlan, sizes: Mapping[str, int]) -> int:
    """Bytes shipped under Docker's ChainID rule: every layer of ``new`` from the first one that
    differs from ``old``'s layer at the same height (or that ``old`` has no layer for) up."""
    old_ids, new_ids = layer_ids(old), layer_ids(new)
    same = 0
    while same < min(len(old_ids), len(new_ids)) and old_ids[same] == new_ids[same]:
        same += 1
    return sum(layer_bytes(layer, sizes) for layer in new_ids[same:])


def overhead(shipped: int, changed: int) -> float:
    """``shipped / changed``; nothing changed and nothing shipped is the floor, 1.0."""
    if changed == 0:
        return 1.0 if shipped == 0 else float("inf")
    return shipped / changed


@dataclass(frozen=True)
class Tally:
    """Bytes shipped and bytes changed, summed over updates; the overhead is their ratio."""

    shipped: int = 0
    changed: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.shipped + other.shipped, self.changed + other.changed)

    @property
    def overhead(self) -> float:
        return overhead(self.shipped, self.changed)


def sizes_of(closure: Closure) -> dict[str, int]:
    return {path: item.nar_size for path, item in closure.items.items()}


def plan_image(
    closure: Closure,
    strategy: str,
    max_layers: int,
    previous: LayerPlan | None = None,
    *,
    min_size: int | None = None,
) -> tuple[LayerPlan, ImagePlan]:
    """``closurepack plan --closure C --strategy S --max-layers N [--previous P]
    --min-layer-size M``."""
    plan = plan_closures(
        [closure],
        strategy=strategy,
        max_layers=max_layers,
        previous=[previous] if previous is not None else [],
        min_layer_size=min_size,
    )
    return plan, plan.images[0]


def update_tallies(
    old: Closure, new: Closure, strategy: str, max_layers: int, *, min_size: int | None = None
) -> dict[str, Tally]:
    """Plan ``old``, then ``new`` alone and with ``old``'s plan as ``--previous``: the bytes
    shipped (plain and under the ChainID rule) and changed, for ``update``, ``+prev``, ``chain``
    and ``chain+prev``."""
    old_plan, old_image = plan_image(old, strategy, max_layers, min_size=min_size)
    _, alone = plan_image(new, strategy, max_layers, min_size=min_size)
    _, again = plan_image(new, strategy, max_layers, previous=old_plan, min_size=min_size)
    sizes = sizes_of(new)
    changed = changed_bytes(old, new)
    return {
        "update": Tally(shipped_bytes(old_image, alone, sizes), changed),
        "+prev": Tally(shipped_bytes(old_image, again, sizes), changed),
        "chain": Tally(chain_shipped_bytes(old_image, alone, sizes), changed),
        "chain+prev": Tally(chain_shipped_bytes(old_image, again, sizes), changed),
    }


def distinct_layer_tally(images: Iterable[ImagePlan], sizes: Mapping[str, int]) -> Tally:
    """Bytes of the distinct layers of ``images`` against the bytes of the distinct items."""
    distinct = {layer for image in images for layer in layer_ids(image)}
    return Tally(sum(layer_bytes(layer, sizes) for layer in distinct), sum(sizes.values()))


def fleet_tally(
    closures: Sequence[Closure], strategy: str, max_layers: int, *, min_size: int | None = None
) -> Tally:
    """``closures`` planned together (one ``closurepack plan`` with every ``--closure``)."""
    plan = plan_closures(
        closures, strategy=strategy, max_layers=max_layers, min_layer_size=min_size
    )
    sizes = {p: s for closure in closures for p, s in sizes_of(closure).items()}
    return distinct_layer_tally(plan.images, sizes)


def fleet_alone_tally(
    closures: Sequence[Closure], strategy: str, max_layers: int, *, min_size: int | None = None
) -> Tally:
    """Each of ``closures`` planned on its own (as the single-image tools can only do)."""
    images = [plan_image(c, strategy, max_layers, min_size=min_size)[1] for c in closures]
    sizes = {p: s for closure in closures for p, s in sizes_of(closure).items()}
    return distinct_layer_tally(images, sizes)


# -- random updates, Nix-style --------------------------------------------------------------------

_NIX_BASE32 = "0123456789abcdfghijklmnpqrsvwxyz"


def nix_base32(data: bytes) -> str:
    """Nix's base-32 rendering (its alphabet; the last byte's high bits first)."""
    value = int.from_bytes(data, "little")
    length = (len(data) * 8 + 4) // 5
    return "".join(_NIX_BASE32[(value >> (5 * k)) & 31] for k in range(length - 1, -1, -1))


def store_hash(text: str) -> str:
    """A 32-character store hash: sha256 of ``text`` folded to 160 bits (as Nix compresses)."""
    digest = hashlib.sha256(text.encode()).digest()
    folded = bytearray(20)
    for k, byte in enumerate(digest):
        folded[k % 20] ^= byte
    return nix_base32(bytes(folded))


def above(closure: Closure, path: str) -> set[str]:
    """``path`` and every item that refers to it, transitively (what a change of it renames)."""
    seen = {path}
    stack = [path]
    while stack:
        for referrer in closure.referrers(stack.pop()):
            if referrer not in seen:
                seen.add(referrer)
                stack.append(referrer)
    return seen


def change_item(closure: Closure, path: str, *, tag: str) -> Closure:
    """``closure`` after ``path`` changed: it and every item above it get new store paths.

    The new hash of an item is derived from its old hash, ``tag`` (which update this is) and the
    new hashes of its references, so a referrer's path changes because its references did, as
    with Nix; sizes, names and the graph's shape stay.
    """
    renamed = above(closure, path)
    new_path: dict[str, str] = {}
    for old in closure.topological_order():  # references first: their new paths are known
        if old not in renamed:
            new_path[old] = old
            continue
        item = closure.items[old]
        refs = ",".join(sorted(new_path[r].rsplit("/", 1)[1] for r in item.references))
        digest = store_hash(f"{item.hash_part}:{tag}:{refs}")
        new_path[old] = f"{closure.store_dir}/{digest}-{item.package_name}"
    items = [
        StoreItem(new_path[p], item.nar_size, tuple(sorted(new_path[r] for r in item.references)))
        for p, item in closure.items.items()
    ]
    return Closure.from_items(items, source=f"{closure.source} ({tag})")


def random_tally(
    closure: Closure,
    strategy: str,
    max_layers: int,
    rng: random.Random,
    draws: int,
    *,
    min_size: int | None = None,
) -> Tally:
    """``update`` (no ``--previous``) summed over ``draws`` random one-item changes."""
    _, old_image = plan_image(closure, strategy, max_layers, min_size=min_size)
    paths = sorted(closure.items)
    total = Tally()
    for draw in range(draws):
        path = rng.choice(paths)
        new = change_item(closure, path, tag=f"draw {draw} {rng.getrandbits(64):016x}")
        _, new_image = plan_image(new, strategy, max_layers, min_size=min_size)
        sizes = sizes_of(new)
        total += Tally(shipped_bytes(old_image, new_image, sizes), changed_bytes(closure, new))
    return total


# -- held-out pairs: generated graphs ------------------------------------------------------------


def generated_pairs(count: int, seed: int) -> list[Pair]:
    """``count`` made-up apps over one made-up distribution, shaped like the Debian closures
    (nothing was tuned on these).

    The distribution: 600 items, sizes log-normal around 350 KB (sigma 1.7, as the real pairs'
    log sizes spread; at most 300 MB), each referring to 1 + Poisson(1.5) earlier items, each
    chosen by preferential attachment (the popular get more referrers, as libc does) or, 30% of
    the time, among the 40 items made just before it (a project's libraries build on each
    other, which makes the graph deep). Each app is a root of its own (10 KB to 5 MB)
    referring to 1 to 8 items drawn from the top fifth: 19 to 180 items, 20 to 230 MB; its
    closure is what that root reaches. The update changes 3 to 13 items that some app holds
    (Debian's point updates changed 3 to 13 in the real pairs), each renaming everything above
    it, in every app alike, as one archive update does."""
    rng = random.Random(f"held-out {seed}")
    paths: list[str] = []
    weights: list[int] = []
    items: list[StoreItem] = []
    for k in range(600):
        size = min(int(rng.lognormvariate(math.log(350_000), 1.7)), 300 << 20)
        refs: set[str] = set()
        for _ in range(1 + _poisson(rng, 1.5) if paths else 0):
            if rng.random() < 0.7:
                refs.add(rng.choices(paths, weights)[0])
            else:  # a neighbour: libraries of one project build on each other
                refs.add(paths[max(0, len(paths) - rng.randint(1, 40))])
        for r in refs:
            weights[paths.index(r)] += 1
        paths.append(f"/nix/store/{store_hash(f'{seed}:{k}')}-part{k}")
        weights.append(1)
        items.append(StoreItem(paths[-1], size, tuple(sorted(refs))))
    roots = []
    for app in range(count):
        entries = rng.sample(paths[-len(paths) // 5 :], rng.randint(1, 8))
        roots.append(f"/nix/store/{store_hash(f'{seed}:app{app}')}-gen{app:02d}")
        items.append(StoreItem(roots[-1], rng.randint(10_000, 5 << 20), tuple(sorted(entries))))
    distro = Closure.from_items(items, source="generated")
    used = sorted(distro.requisites(roots) - set(roots))
    updated = distro
    for update, path in enumerate(rng.sample(used, rng.randint(3, 13))):
        name = distro.items[path].package_name
        current = next(p for p, item in updated.items.items() if item.package_name == name)
        updated = change_item(updated, current, tag=f"held-out {seed} update {update}")
    by_name = {item.package_name: p for p, item in updated.items.items()}
    pairs = []
    for root in roots:
        name = distro.items[root].package_name
        base = distro.restrict(distro.requisites([root]), source=name)
        new_root = by_name[name]
        after = updated.restrict(updated.requisites([new_root]), source=f"{name} (updated)")
        pairs.append(Pair(name, base, after))
    return pairs


def _poisson(rng: random.Random, mean: float) -> int:
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


# -- the run --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """Every figure of one strategy at one budget, with the per-app tallies behind them."""

    strategy: str
    max_layers: int
    totals: dict[str, Tally]
    per_app: dict[str, dict[str, Tally]]
    seconds: float
    min_size: int | None = None
    #: Mean store layers per base image, and the share of them under :data:`TINY` bytes.
    layers: float = 0.0
    tiny: float = 0.0


#: A layer under this many bytes counts as tiny (Nix issue 13155 counted layers under 100 KB).
TINY = 100 * 1000


def layer_counts(
    closures: Sequence[Closure], strategy: str, max_layers: int, *, min_size: int | None = None
) -> tuple[float, float]:
    """Mean store layers per image of ``closures`` planned alone, and the share under TINY."""
    images = [plan_image(c, strategy, max_layers, min_size=min_size)[1] for c in closures]
    layers = [layer.size for image in images for layer in image.layers]
    return len(layers) / len(images), sum(size < TINY for size in layers) / len(layers)


def measure(
    pairs: Sequence[Pair],
    strategy: str,
    max_layers: int,
    *,
    seed: int,
    draws: int,
    min_size: int | None = None,
) -> Row:
    """All figures for one strategy and budget. The random draws of an app depend only on
    ``seed`` and the app, so every strategy sees the same changes."""
    started = time.perf_counter()
    per_app: dict[str, dict[str, Tally]] = {}
    for pair in pairs:
        tallies = update_tallies(pair.base, pair.updated, strategy, max_layers, min_size=min_size)
        if draws:
            rng = random.Random(f"{seed}:{pair.name}")
            tallies["random"] = random_tally(
                pair.base, strategy, max_layers, rng, draws, min_size=min_size
            )
        per_app[pair.name] = tallies
    totals: dict[str, Tally] = {}
    for tallies in per_app.values():
        for figure, tally in tallies.items():
            totals[figure] = totals.get(figure, Tally()) + tally
    bases = [p.base for p in pairs]
    totals["fleet"] = fleet_tally(bases, strategy, max_layers, min_size=min_size)
    totals["fleet1"] = fleet_alone_tally(bases, strategy, max_layers, min_size=min_size)
    layers, tiny = layer_counts(bases, strategy, max_layers, min_size=min_size)
    seconds = time.perf_counter() - started
    return Row(strategy, max_layers, totals, per_app, seconds, min_size, layers, tiny)


def commit() -> str:
    """``git rev-parse --short HEAD`` of this checkout, ``+dirty`` when it has changes."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=here,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def format_table(rows: Sequence[Row]) -> list[str]:
    head = f"{'strategy':<12}{'layers':>7}{'min':>6}" + "".join(f"{f:>11}" for f in FIGURES)
    lines = [head + f"{'n':>7}{'tiny':>6}    sec"]
    for row in rows:
        cells = "".join(
            f"{row.totals[f].overhead:>11.3f}" if f in row.totals else f"{'-':>11}" for f in FIGURES
        )
        lines.append(
            f"{row.strategy:<12}{row.max_layers:>7}{human(row.min_size):>6}{cells}"
            f"{row.layers:>7.1f}{row.tiny:>6.0%}{row.seconds:>7.1f}"
        )
    return lines


def human(size: int | None) -> str:
    """``0``, ``64K``, ``1M``: a --min-layer-size as it is written (``dflt``: the default)."""
    if size is None:
        return "dflt"
    for unit, scale in (("M", 1 << 20), ("K", 1 << 10)):
        if size and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


def format_per_app(rows: Sequence[Row]) -> list[str]:
    lines = []
    for row in rows:
        figures = [f for f in FIGURES if f in next(iter(row.per_app.values()))]
        lines.append("")
        lines.append(f"{row.strategy} at --max-layers {row.max_layers}")
        lines.append(f"  {'app':<16}" + "".join(f"{f:>11}" for f in figures))
        for app, tallies in row.per_app.items():
            lines.append(f"  {app:<16}" + "".join(f"{tallies[f].overhead:>11.3f}" for f in figures))
        means = [statistics.fmean(t[f].overhead for t in row.per_app.values()) for f in figures]
        lines.append(f"  {'mean of apps':<16}" + "".join(f"{m:>11.3f}" for m in means))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--strategy", action="append", dest="strategies")
    parser.add_argument("--max-layers", type=int, action="append", dest="budgets")
    parser.add_argument("--draws", type=int, default=100, help="random updates per app")
    parser.add_argument("--seed", type=int, help="seed of the random updates (default: fresh)")
    parser.add_argument("--verbose", action="store_true", help="per-app figures too")
    parser.add_argument(
        "--held-out", type=int, default=8, help="generated apps measured apart (0: none)"
    )
    parser.add_argument("--held-out-seed", type=int, default=1, help="seed of the generated apps")
    parser.add_argument(
        "--min-layer-size",
        action="append",
        dest="min_sizes",
        help="plan with this --min-layer-size (repeat for several; 'default': closurepack's)",
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    pairs = load_pairs(args.data)
    strategies = args.strategies or list(DEFAULT_STRATEGIES)
    budgets = args.budgets or list(DEFAULT_BUDGETS)
    print(f"closurepack layer economy at commit {commit()}, load before {load()}")
    print(
        f"data {args.data}: {len(pairs)} pairs ({', '.join(p.name for p in pairs)}); random"
        f" updates: {args.draws} draws per app, seed {seed}"
    )
    min_sizes: list[int | None] = [
        None if m == "default" else parse_size(m, option="--min-layer-size") or 0
        for m in args.min_sizes or ["default"]
    ]
    sets = [("tuned on (the real pairs the strategies were tuned on)", pairs)]
    if args.held_out:
        generated = generated_pairs(args.held_out, args.held_out_seed)
        sizes = sorted(len(p.base) for p in generated)
        print(
            f"held out: {len(generated)} generated apps (seed {args.held_out_seed}), {sizes[0]}"
            f" to {sizes[-1]} items; nothing was tuned on them"
        )
        sets.append(("held out (generated, never tuned on)", generated))
    for title, chosen in sets:
        rows, failed = [], []
        for budget in budgets:
            for strategy in strategies:
                for min_size in min_sizes:
                    try:
                        rows.append(
                            measure(
                                chosen,
                                strategy,
                                budget,
                                seed=seed,
                                draws=args.draws,
                                min_size=min_size,
                            )
                        )
                    except PlanError as exc:  # per-item, beyond its budget
                        failed.append(f"{strategy} at {budget} layers: {exc}")
        print(f"\n{title}:")
        for line in failed:
            print(f"  not measured: {line}")
        for line in format_table(rows):
            print(line)
        if args.verbose:
            for line in format_per_app(rows):
                print(line)
    print(f"\nload after {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
