"""Benchmark closurepack's image build against tar+compressor pipelines and nixpkgs, in one run.

Usage::

    python bench/make_debian_store.py /tmp/cp-bench/store      # once: ~830 MiB, 144 items
    python bench/build_bench.py --store /tmp/cp-bench/store [--jobs N] [--keep] [--json]

Every row reads the same store files. Each command runs under ``/usr/bin/time`` (wall, user+sys
CPU of the whole process tree, largest single-process RSS) while a sampler adds up the resident
memory of every process in the run's session (a pipeline or a multi-process build), so "peak
MiB" is the larger of the two. Outputs go to files in a work directory (deleted unless
``--keep``). Before each run the page cache is dropped when this machine allows it; otherwise
every run is page-cache warm after one warm-up read, which is equally fair to every tool.

Rows: ``floor`` (tar | sha256sum: read and hash once), ``tar|gzip -6``, ``tar|pigz``,
``tar|zstd -3`` (the compressors everybody has), ``nixpkgs stream_layered_image`` (the
nixpkgs streaming image script, given the same layer plan; needs ``--nixpkgs-stream-script``),
and closurepack cold builds (zstd, gzip) plus a warm rebuild after one item changed. Rows whose
tool is missing or fails are skipped with a note, never faked. See bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_debian_store import nar_hash_and_size

__all__ = [
    "RunResult",
    "Target",
    "check_targets",
    "main",
    "measure",
    "oci_layer_sizes",
    "render_table",
    "session_rss",
]

DEFAULT_STORE = Path(os.environ.get("CLOSUREPACK_BENCH_STORE", "/tmp/cp-bench/store"))
STREAM_SCRIPT_ENV = "CLOSUREPACK_BENCH_NIXPKGS_STREAM_SCRIPT"
MIB = 2**20
_PAGE = os.sysconf("SC_PAGE_SIZE")
ROW_ORDER = (
    "floor",
    "tar|gzip -6",
    "tar|pigz -6",
    "tar|zstd -3",
    "nixpkgs stream_layered_image",
    "closurepack zstd",
    "closurepack gzip",
    "closurepack warm zstd",
)
TAR_FLAGS = "--sort=name --owner=0 --group=0 --numeric-owner --mtime=@1 --format=posix"


@dataclass
class RunResult:
    """One row of the table: what a command cost and produced (``ok`` False means skipped)."""

    tool: str
    command: str = ""
    ok: bool = False
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_mib: float = 0.0
    output_bytes: int = 0
    layers: int = 0
    note: str = ""
    walls: list[float] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)

    @property
    def output_mib(self) -> float:
        return self.output_bytes / MIB


@dataclass(frozen=True)
class Target:
    """A goal with its verdict: PASS, FAIL, or SKIP when a row it needs did not run."""

    name: str
    verdict: str
    detail: str


# ---------------------------------------------------------------------------------------------
# measuring


def session_rss(sid: int) -> int:
    """Bytes resident in all processes of session ``sid`` (a pipeline and its helpers)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            # Fields after the ")" that ends the command name: state ppid pgrp session ...
            fields = stat[stat.rindex(b")") + 2 :].split()
            if int(fields[3]) != sid:
                continue
            with open(f"/proc/{entry}/statm", "rb") as f:
                total += int(f.read().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            continue
    return total


def _sample_peak(proc: subprocess.Popen[bytes], out: list[int]) -> None:
    while proc.poll() is None:
        out[0] = max(out[0], session_rss(proc.pid))
        time.sleep(0.05)


def measure(
    tool: str,
    shell_command: str,
    *,
    workdir: Path,
    output: Path | None = None,
    size_of: Callable[[], int] | None = None,
    before: Callable[[], object] | None = None,
) -> RunResult:
    """Run ``shell_command`` under bash -o pipefail and /usr/bin/time; fill a RunResult.

    ``output`` (a file or directory) is sized afterwards unless ``size_of`` says otherwise.
    ``before`` runs first, untimed (dropping the page cache, making an empty cache dir).
    """
    if before is not None:
        before()
    timefile = workdir / "time.txt"
    errfile = workdir / f"stderr-{_slug(tool)}.txt"
    argv = [
        "/usr/bin/time",
        "-f",
        "%e %U %S %M",
        "-o",
        str(timefile),
        "bash",
        "-o",
        "pipefail",
        "-c",
        shell_command,
    ]
    peak = [0]
    start = time.perf_counter()
    with open(errfile, "wb") as err:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True
        )
        sampler = threading.Thread(target=_sample_peak, args=(proc, peak), daemon=True)
        sampler.start()
        rc = proc.wait()
        wall = time.perf_counter() - start
        sampler.join()
    result = RunResult(tool=tool, command=shell_command)
    if rc != 0:
        tail = errfile.read_text(errors="replace").strip().splitlines()[-3:]
        result.note = f"failed (exit {rc}): {' | '.join(tail)[:300]}"
        return result
    fields = timefile.read_text().split()
    user, system, max_rss_kib = float(fields[-3]), float(fields[-2]), int(fields[-1])
    result.ok = True
    result.wall_s = wall
    result.walls = [wall]
    result.cpu_s = user + system
    result.peak_mib = max(peak[0], max_rss_kib * 1024) / MIB
    if size_of is not None:
        result.output_bytes = size_of()
    elif output is not None:
        result.output_bytes = _size(output)
    return result


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def oci_layer_sizes(layout: Path) -> list[int]:
    """Compressed sizes of the layers of the first image in an OCI layout directory."""
    index = json.loads((layout / "index.json").read_text())
    descriptor = index["manifests"][0]
    blob = layout / "blobs" / Path(*descriptor["digest"].split(":", 1))
    manifest = json.loads(blob.read_text())
    if "manifests" in manifest:  # an image index: take its first manifest
        descriptor = manifest["manifests"][0]
        blob = layout / "blobs" / Path(*descriptor["digest"].split(":", 1))
        manifest = json.loads(blob.read_text())
    return [int(layer["size"]) for layer in manifest["layers"]]


def oci_layer_digests(layout: Path) -> list[str]:
    index = json.loads((layout / "index.json").read_text())
    blob = layout / "blobs" / Path(*index["manifests"][0]["digest"].split(":", 1))
    manifest = json.loads(blob.read_text())
    return [str(layer["digest"]) for layer in manifest["layers"]]


# ---------------------------------------------------------------------------------------------
# page cache


def drop_page_cache() -> bool:
    """Drop the page cache (root only); True if the kernel accepted it."""
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def warm_up(root: Path, items_file: Path) -> None:
    """Read every store file once so that all runs start page-cache warm."""
    subprocess.run(
        f"tar -C {shlex.quote(str(root))} -cf - -T {shlex.quote(str(items_file))} > /dev/null",
        shell=True,
        check=True,
    )


# ---------------------------------------------------------------------------------------------
# inputs


def load_closure(path: Path) -> list[dict[str, object]]:
    obj = json.loads(path.read_text())
    if isinstance(obj, dict):  # newer nix path-info --json: an object keyed by path
        obj = [{"path": k, **v} for k, v in obj.items()]
    return sorted(obj, key=lambda o: str(o["path"]))


def closurepack_plan(closure: Path, work: Path, exe: list[str]) -> tuple[list[list[str]], str]:
    """Layers from ``closurepack plan --json``, or one layer per item with a note why."""
    items = [str(o["path"]) for o in load_closure(closure)]
    try:
        proc = subprocess.run(
            [*exe, "plan", "--closure", str(closure), "--json"],
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=work,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [[p] for p in items], f"closurepack plan unavailable ({exc}); one layer per item"
    if proc.returncode == 0:
        try:
            plan = json.loads(proc.stdout)
            layers = [list(layer["paths"]) for layer in plan["images"][0]["layers"]]
            if layers:
                return (
                    layers,
                    f"closurepack plan ({plan.get('strategy', '?')}, {len(layers)} layers)",
                )
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            why = f"unreadable plan: {exc}"
        else:
            why = "empty plan"
    else:
        lines = (proc.stderr or "").strip().splitlines()
        why = f"exit {proc.returncode}: {lines[-1] if lines else ''}"
    return [[p] for p in items], f"closurepack plan failed ({why[:200]}); one layer per item"


def _empty_layer_dir(directory: Path) -> Path:
    """A customisation layer for the nixpkgs script: an empty tar and its sha256."""
    directory.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT):
        pass
    data = buf.getvalue()
    (directory / "layer.tar").write_bytes(data)
    (directory / "checksum").write_text(hashlib.sha256(data).hexdigest())
    return directory


def nixpkgs_config(layers: list[list[str]], custom: Path) -> dict[str, object]:
    return {
        "architecture": "amd64",
        "config": {},
        "created": "1970-01-01T00:00:01+00:00",
        "mtime": "1970-01-01T00:00:01+00:00",
        "uid": 0,
        "gid": 0,
        "uname": "root",
        "gname": "root",
        "store_dir": "/nix/store",
        "from_image": None,
        "repo_tag": "bench:latest",
        "store_layers": layers,
        "customisation_layer": str(custom),
    }


def make_changed_store(
    root: Path, closure: list[dict[str, object]], dest: Path, pick: str | None
) -> tuple[Path, Path, str, str]:
    """Copy the store to ``dest``, change one unreferenced item's content and store path.

    Returns (new store root, new closure file, old path, new path). The item is the one whose
    name contains ``pick``, else the smallest item nothing refers to (renaming it changes no
    other item, as in Nix when only the application changes).
    """
    referenced = {str(r) for o in closure for r in o["references"]}  # type: ignore[attr-defined]
    tops = [o for o in closure if o["path"] not in referenced]
    if pick:
        tops = [o for o in closure if pick in str(o["path"])]
        if not tops:
            raise SystemExit(f"build_bench: no item matches --change-item {pick!r}")
    victim = min(tops, key=lambda o: (int(str(o["narSize"])), str(o["path"])))
    old_path = str(victim["path"])
    old_name = old_path.rsplit("/", 1)[1]
    digest = hashlib.sha256(f"changed:{old_name}".encode()).hexdigest()
    alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
    new_hash = "".join(alphabet[int(digest[i : i + 2], 16) % 32] for i in range(0, 64, 2))
    new_name = f"{new_hash}-{old_name.split('-', 1)[1]}"
    new_path = old_path.rsplit("/", 1)[0] + "/" + new_name
    if dest.exists():
        shutil.rmtree(dest)
    # A real copy (cp -a copies data; it never hard-links) so the page cache sees new files.
    subprocess.run(["cp", "-a", str(root), str(dest)], check=True)
    store = dest / "nix" / "store"
    os.rename(store / old_name, store / new_name)
    marker = store / new_name / "share" / "closurepack-bench"
    marker.mkdir(parents=True, exist_ok=True)
    (marker / "changed").write_text("this item was changed by build_bench.py\n")
    new_closure = []
    for obj in closure:
        if obj["path"] == old_path:
            nar_hash, nar_size = nar_hash_and_size(store / new_name)
            new_closure.append({**obj, "path": new_path, "narHash": nar_hash, "narSize": nar_size})
        else:
            new_closure.append(obj)
    closure_file = dest / "closure.json"
    closure_file.write_text(json.dumps(new_closure, indent=2) + "\n")
    return dest, closure_file, old_path, new_path


# ---------------------------------------------------------------------------------------------
# report


def check_targets(rows: dict[str, RunResult]) -> list[Target]:
    """The goals of bench/README.md, judged on the measured rows."""
    floor, gzip6 = rows.get("floor"), rows.get("tar|gzip -6")
    zstd, gz, warm = (
        rows.get("closurepack zstd"),
        rows.get("closurepack gzip"),
        rows.get("closurepack warm zstd"),
    )
    targets: list[Target] = []

    def verdict(passed: bool) -> str:
        return "PASS" if passed else "FAIL"

    for name, row, tmax, smax in (
        ("cold zstd", zstd, 1.5, 0.95),
        ("cold gzip", gz, 2.0, 1.12),
    ):
        if row and row.ok and floor and floor.ok and gzip6 and gzip6.ok:
            t, s = row.wall_s / floor.wall_s, row.output_bytes / gzip6.output_bytes
            targets.append(
                Target(
                    f"{name}: wall <= {tmax}x floor",
                    verdict(t <= tmax),
                    f"{row.wall_s:.2f} s = {t:.2f}x floor {floor.wall_s:.2f} s",
                )
            )
            targets.append(
                Target(
                    f"{name}: layers <= {smax}x gzip -6 size",
                    verdict(s <= smax),
                    f"{row.output_mib:.1f} MiB = {s:.3f}x gzip -6 {gzip6.output_mib:.1f} MiB",
                )
            )
        else:
            targets.append(Target(f"{name}: time and size", "SKIP", "a needed row did not run"))
    if warm and warm.ok and zstd and zstd.ok:
        r = warm.wall_s / zstd.wall_s
        targets.append(
            Target(
                "warm rebuild <= 1/10 of cold zstd",
                verdict(r <= 0.1),
                f"{warm.wall_s:.2f} s = {r:.3f}x cold {zstd.wall_s:.2f} s; {warm.note}",
            )
        )
    else:
        targets.append(Target("warm rebuild <= 1/10 of cold zstd", "SKIP", "row missing"))
    cp_rows = [r for n, r in rows.items() if n.startswith("closurepack") and r.ok]
    if cp_rows:
        peak = max(r.peak_mib for r in cp_rows)
        targets.append(
            Target("closurepack peak memory < 300 MiB", verdict(peak < 300), f"{peak:.0f} MiB")
        )
    else:
        targets.append(Target("closurepack peak memory < 300 MiB", "SKIP", "no closurepack row"))
    return targets


def render_table(rows: dict[str, RunResult]) -> str:
    """The human table: one line per row, ratios to the floor (time) and gzip -6 (size)."""
    floor, gzip6 = rows.get("floor"), rows.get("tar|gzip -6")
    head = (
        f"{'tool':<32} {'wall s':>8} {'CPU s':>8} {'peak MiB':>9} {'out MiB':>9}"
        f" {'layers':>6} {'t/floor':>8} {'size/gz6':>8}"
    )
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        if not r.ok:
            lines.append(f"{name:<32} skipped: {r.note}")
            continue
        tf = f"{r.wall_s / floor.wall_s:.2f}" if floor and floor.ok else "-"
        sg = (
            f"{r.output_bytes / gzip6.output_bytes:.3f}"
            if gzip6 and gzip6.ok and r.output_bytes and name != "floor"
            else "-"
        )
        layers = str(r.layers) if r.layers else "-"
        lines.append(
            f"{name:<32} {r.wall_s:8.2f} {r.cpu_s:8.2f} {r.peak_mib:9.1f} {r.output_mib:9.1f}"
            f" {layers:>6} {tf:>8} {sg:>8}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# main


def _runner(
    name: str,
    cmd: str,
    *,
    work: Path,
    output: Path,
    before: Callable[[], object] | None,
) -> Callable[[int], RunResult]:
    def go(_: int) -> RunResult:
        return measure(name, cmd, workdir=work, output=output, before=before)

    return go


def _verify(exe: list[str], layout: Path) -> str:
    """Untimed check that an output is a valid image: ``closurepack verify oci:DIR``."""
    try:
        proc = subprocess.run(
            [*exe, "verify", f"oci:{layout}"],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"verify could not run ({exc})"
    if proc.returncode == 0:
        return "verify OK"
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return f"verify FAILED (exit {proc.returncode}): {lines[-1] if lines else ''}"


def _pick(results: list[RunResult], stat: str) -> RunResult:
    """The run to report: the fastest (``min``) or the median of the good runs."""
    good = [r for r in results if r.ok]
    if not good:
        return results[-1]
    walls = [r.wall_s for r in good]
    wanted = min(walls) if stat == "min" else statistics.median_low(walls)
    chosen = next(r for r in good if r.wall_s == wanted)
    chosen.walls = walls
    return chosen


def _closurepack_exe(given: str | None) -> list[str] | None:
    if given:
        return shlex.split(given)
    exe = shutil.which("closurepack")
    return [exe] if exe else None


def _tool_versions() -> dict[str, str]:
    versions = {}
    for tool, args in (
        ("tar", ["tar", "--version"]),
        ("gzip", ["gzip", "--version"]),
        ("pigz", ["pigz", "--version"]),
        ("zstd", ["zstd", "--version"]),
    ):
        try:
            proc = subprocess.run(args, capture_output=True, text=True, check=False)
            versions[tool] = (proc.stdout or proc.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            versions[tool] = "missing"
    try:
        versions["closurepack commit"] = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        versions["closurepack commit"] = "?"
    return versions


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE, help="from make_debian_store")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", action="store_true", help="JSON on stdout; table on stderr")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every row")
    parser.add_argument(
        "--stat",
        choices=["min", "median"],
        default="min",
        help="which run of --repeat to report: the fastest (least disturbed) or the median",
    )
    parser.add_argument(
        "--nixpkgs-stream-script",
        type=Path,
        default=os.environ.get(STREAM_SCRIPT_ENV),
        help=f"nixpkgs' stream_layered_image.py (or ${STREAM_SCRIPT_ENV})",
    )
    parser.add_argument("--closurepack", default=None, help="command to run (default: on PATH)")
    parser.add_argument("--change-item", default=None, help="substring of the item to change")
    parser.add_argument(
        "--page-cache",
        choices=["auto", "drop", "warm"],
        default="auto",
        help="drop before each run (auto: if allowed), or warm every run",
    )
    parser.add_argument("--only", default="", help="comma-separated row name prefixes to run")
    args = parser.parse_args(argv)

    root = args.store.resolve()
    closure_file = root / "closure.json"
    if not closure_file.is_file():
        print(
            f"build_bench: {closure_file} missing; run bench/make_debian_store.py {root} first",
            file=sys.stderr,
        )
        return 2
    closure = load_closure(closure_file)
    items = [str(o["path"]) for o in closure]
    work = Path(tempfile.mkdtemp(prefix="cp-bench-", dir=args.work_dir))
    out = work / "out"
    out.mkdir()
    items_file = work / "items.txt"
    items_file.write_text("".join(p.lstrip("/") + "\n" for p in items))
    nar_total = sum(int(str(o.get("narSize", 0))) for o in closure)

    load_before = os.getloadavg()[0]
    drop = False
    if args.page_cache in ("auto", "drop"):
        drop = drop_page_cache()
        if args.page_cache == "drop" and not drop:
            print("build_bench: cannot drop the page cache (need root)", file=sys.stderr)
            return 2
    if not drop:
        warm_up(root, items_file)
    cache_note = (
        "page cache dropped before every run (cold reads from disk)"
        if drop
        else "all runs page-cache warm (one warm-up read first), fair to every tool"
    )
    before = drop_page_cache if drop else None
    rows: dict[str, RunResult] = {}
    selected = [s for s in args.only.split(",") if s]

    def want(name: str) -> bool:
        return not selected or any(name.startswith(s) for s in selected)

    specs: list[tuple[str, Callable[[int], RunResult]]] = []
    history: dict[str, list[RunResult]] = {}
    q = shlex.quote
    tar = f"tar {TAR_FLAGS} -C {q(str(root))} -cf - -T {q(str(items_file))}"
    print(
        f"build_bench: {len(items)} items, {nar_total / MIB:.1f} MiB; {cache_note}",
        file=sys.stderr,
    )

    if want("floor"):
        totals = work / "floor-size.txt"

        def floor(_: int) -> RunResult:
            return measure(
                "floor",
                f"{tar} --totals 2> {q(str(totals))} | sha256sum",
                workdir=work,
                size_of=lambda: int(totals.read_text().split(":")[1].split()[0]),
                before=before,
            )

        specs.append(("floor", floor))
    for name, compressor, suffix in (
        ("tar|gzip -6", "gzip -6 -n", "tar.gz"),
        ("tar|pigz -6", f"pigz -6 -n -p {args.jobs}", "tar.gz"),
        ("tar|zstd -3", f"zstd -3 -q -T{args.jobs}", "tar.zst"),
    ):
        if not want(name):
            continue
        exe = compressor.split()[0]
        target = out / f"{_slug(name)}.{suffix}"
        if shutil.which(exe) is None:
            rows[name] = RunResult(tool=name, note=f"{exe} not installed")
            continue
        cmd = f"{tar} | {compressor} > {q(str(target))}"
        specs.append((name, _runner(name, cmd, work=work, output=target, before=before)))

    cp = _closurepack_exe(args.closurepack)
    layers, plan_note = (
        closurepack_plan(closure_file, work, cp)
        if cp
        else ([[p] for p in items], "closurepack not installed; one layer per item")
    )
    print(f"  plan for nixpkgs: {plan_note}", file=sys.stderr)

    nix_name = "nixpkgs stream_layered_image"
    script = args.nixpkgs_stream_script
    if want("nixpkgs"):
        if not script or not Path(script).is_file():
            rows[nix_name] = RunResult(
                tool=nix_name,
                note=f"no script (give --nixpkgs-stream-script or ${STREAM_SCRIPT_ENV})",
            )
        else:
            conf = work / "nixpkgs-conf.json"
            conf.write_text(json.dumps(nixpkgs_config(layers, _empty_layer_dir(work / "custom"))))
            nix_target = out / "nixpkgs.tar"
            # The script reads /nix/store/... itself: bind the bench store there in a private
            # mount namespace (nothing outside this one command sees it).
            inner = (
                f"mount --bind {q(str(root / 'nix' / 'store'))} /nix/store"
                f" && exec {q(sys.executable)} {q(str(Path(script).resolve()))} {q(str(conf))}"
            )
            mkdir = "" if Path("/nix/store").is_dir() else "mkdir -p /nix/store && "
            nix_cmd = f"{mkdir}unshare -m bash -c {q(inner)} > {q(str(nix_target))}"

            def nixpkgs(_: int) -> RunResult:
                r = measure(nix_name, nix_cmd, workdir=work, output=nix_target, before=before)
                r.layers = len(layers) + 1
                r.note = f"{plan_note}; uncompressed docker-archive"
                return r

            specs.append((nix_name, nixpkgs))

    warm_name = "closurepack warm zstd"
    if cp is None:
        for n in ("closurepack zstd", "closurepack gzip", warm_name):
            rows[n] = RunResult(tool=n, note="closurepack command not found")
    else:
        base = " ".join(q(a) for a in cp)

        def cold(n: str, codec: str) -> Callable[[int], RunResult]:
            def go(i: int) -> RunResult:
                dest = out / f"cp-{codec}-{i}"
                cache = work / f"cache-{codec}-{i}"
                shutil.rmtree(cache, ignore_errors=True)
                cache.mkdir()
                cmd = (
                    f"{base} build --closure {q(str(closure_file))} --store-root {q(str(root))}"
                    f" -o oci:{q(str(dest))} --compression {codec} --jobs {args.jobs}"
                    f" --cache-dir {q(str(cache))} --quiet"
                )
                r = measure(n, cmd, workdir=work, output=dest, before=before)
                r.artifacts = {"output": str(dest), "cache": str(cache)}
                if r.ok:
                    try:
                        sizes = oci_layer_sizes(dest)
                        r.output_bytes, r.layers = sum(sizes), len(sizes)
                        r.note = (
                            f"output = layer blobs; whole layout {_size(dest) / MIB:.1f} MiB;"
                            f" {_verify(cp, dest)}"
                        )
                    except (OSError, ValueError, KeyError, IndexError) as exc:
                        r.note = f"could not read the OCI layout ({exc}); size = whole dir"
                return r

            return go

        for n, codec in (("closurepack zstd", "zstd"), ("closurepack gzip", "gzip")):
            if want(n):
                specs.append((n, cold(n, codec)))
        if want(warm_name) and want("closurepack zstd"):
            root2, closure2, old, new = make_changed_store(
                root, closure, work / "store-changed", args.change_item
            )

            def warm(i: int) -> RunResult:
                zrow = history.get("closurepack zstd", [RunResult(tool="")])[-1]
                if not zrow.ok:
                    return RunResult(tool=warm_name, note="needs a successful cold zstd build")
                cold_dest, cold_cache = Path(zrow.artifacts["output"]), zrow.artifacts["cache"]
                cache = work / f"cache-warm-{i}"
                shutil.rmtree(cache, ignore_errors=True)
                shutil.copytree(cold_cache, cache, symlinks=True)
                dest = out / f"cp-warm-{i}"
                cmd = (
                    f"{base} build --closure {q(str(closure2))} --store-root {q(str(root2))}"
                    f" -o oci:{q(str(dest))} --compression zstd --jobs {args.jobs}"
                    f" --cache-dir {q(str(cache))} --quiet"
                )
                r = measure(warm_name, cmd, workdir=work, output=dest, before=before)
                if r.ok:
                    try:
                        sizes = oci_layer_sizes(dest)
                        r.output_bytes, r.layers = sum(sizes), len(sizes)
                        fresh = set(oci_layer_digests(dest)) - set(oci_layer_digests(cold_dest))
                        r.note = (
                            f"changed {old.rsplit('/', 1)[1][33:]} ->"
                            f" {new.rsplit('/', 1)[1][:8]}...; {len(fresh)} layer(s) new;"
                            f" {_verify(cp, dest)}"
                        )
                    except (OSError, ValueError, KeyError, IndexError) as exc:
                        r.note = f"could not read the OCI layout ({exc})"
                shutil.rmtree(cache, ignore_errors=True)
                return r

            specs.append((warm_name, warm))
        elif want(warm_name):
            rows[warm_name] = RunResult(tool=warm_name, note="needs the cold zstd row")

    # Rounds, not runs in a row: a burst of load from elsewhere then hits every tool alike.
    for i in range(max(1, args.repeat)):
        for name, make in specs:
            r = make(i)
            history.setdefault(name, []).append(r)
            status = f"{r.wall_s:.2f} s, {r.output_mib:.1f} MiB" if r.ok else r.note
            print(f"  round {i + 1} {name}: {status}", file=sys.stderr)
    for name, _ in specs:
        rows[name] = _pick(history[name], args.stat)
    rows = {n: rows[n] for n in ROW_ORDER if n in rows}

    targets = check_targets(rows)
    table = render_table(rows)
    verdicts = "\n".join(f"{t.verdict:4}  {t.name}: {t.detail}" for t in targets)
    env = {
        "items": len(items),
        "nar_mib": round(nar_total / MIB, 1),
        "cpus": os.cpu_count(),
        "jobs": args.jobs,
        "kernel": platform.release(),
        "loadavg_1min_before_after": f"{load_before:.2f}/{os.getloadavg()[0]:.2f}",
        "page_cache": cache_note,
        "repeat": args.repeat,
        "stat": args.stat,
        "plan_for_nixpkgs": plan_note,
        **_tool_versions(),
    }
    report_out = sys.stderr if args.json else sys.stdout
    print("", file=report_out)
    print("; ".join(f"{k}: {v}" for k, v in env.items()), file=report_out)
    print(table, file=report_out)
    print("", file=report_out)
    print(verdicts, file=report_out)
    notes = [f"{n}: {r.note}" for n, r in rows.items() if r.ok and r.note]
    if notes:
        print("\nnotes:\n  " + "\n  ".join(notes), file=report_out)
    if args.json:
        print(
            json.dumps(
                {
                    "environment": env,
                    "rows": [{**asdict(r), "output_mib": r.output_mib} for r in rows.values()],
                    "targets": [asdict(t) for t in targets],
                },
                indent=2,
            )
        )
    if args.keep:
        print(f"\nwork directory kept: {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
