"""Benchmark closurepack's image build against the physical limit and the C tools, in one run.

Usage::

    python bench/make_debian_store.py /tmp/cp-bench/store      # once: ~830 MiB, 144 items
    python bench/build_bench.py --store /tmp/cp-bench/store [--repeat 3] [--page-cache warm]

Every row reads the same store files. Each command runs under ``bash -o pipefail``; *wall* is
timed around it, *CPU* is user+system of the whole process tree (``os.wait4``: bash and every
descendant it waited for), *peak MiB* the larger of the largest single process and the summed
resident memory of the run's session (sampled every 50 ms). Outputs go to files in a work
directory (deleted unless ``--keep``); a streamed output goes through a pipe that this script
empties with ``splice`` into /dev/null, timing the first byte.

Reference rows (the limits): ``tar|openssl sha256`` (read and hash once with OpenSSL's SHA-NI
code, the limit of an uncompressed stream; ``tar|tee file|openssl sha256`` also writes the tar
to a new file, as a stream that fills a cache must), and, on one tar file of the same items, the
parts an image builder cannot avoid, each alone: ``sha256 tar``, ``zstd -3 -T1``,
``sha256 zst``, ``igzip -3 -T1``, ``sha256 gz``; their CPU seconds summed and divided by the
cores are the *CPU limit* of a zstd (gzip) build. ``C pipeline zstd/gzip``:
``tar | tee >(openssl dgst) | zstd -3 -T2 | openssl dgst`` (the whole job done by C tools). Size
yardsticks ``tar|gzip -6`` and ``tar|pigz -6`` run in the first round only. closurepack rows:
cold zstd and gzip builds, a cold and a warm uncompressed stream (``-o -``), a warm rebuild
after an app-only change (the store's ``*-bench-app-1.0`` item on top of the closure, which
make_debian_store.py writes; else the smallest item nothing refers to), and a cold zstd build on
one core (``taskset -c 0``). Every closurepack figure is a ratio to its limit, round by round
(the limit measured in the same round). See bench/README.md.
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
from make_debian_store import APP_NAME, APP_VERSION, nar_hash_and_size

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
#: rows that are parts of a CPU limit: (limit name, rows whose CPU seconds add up to it)
LIMIT_PARTS = {
    "zstd": ("sha256 tar", "zstd -3 -T1", "sha256 zst"),
    "gzip": ("sha256 tar", "igzip -3 -T1", "sha256 gz"),
}
ROW_ORDER = (
    "tar|openssl sha256",
    "tar|tee file|openssl sha256",
    "sha256 tar",
    "zstd -3 -T1",
    "sha256 zst",
    "igzip -3 -T1",
    "sha256 gz",
    "tar|gzip -6",
    "tar|pigz -6",
    "tar|zstd -3",
    "C pipeline zstd",
    "C pipeline gzip",
    "nixpkgs stream_layered_image",
    "closurepack zstd",
    "closurepack gzip",
    "closurepack stream",
    "closurepack stream warm",
    "cat cached blobs",
    "closurepack warm zstd",
    "closurepack zstd 1 core",
)
#: closurepack row -> (what it is compared with: a limit name or a row, how it is named)
BASELINES = {
    "closurepack zstd": ("zstd", "2-core CPU limit zstd"),
    "closurepack gzip": ("gzip", "2-core CPU limit gzip"),
    "closurepack stream": ("tar|openssl sha256", "tar|openssl sha256"),
    "closurepack stream warm": ("cat cached blobs", "cat cached blobs"),
    "closurepack warm zstd": ("closurepack zstd", "cold zstd build"),
    "closurepack zstd 1 core": ("zstd@1", "1-core CPU limit zstd"),
    "C pipeline zstd": ("zstd", "2-core CPU limit zstd"),
    "C pipeline gzip": ("gzip", "2-core CPU limit gzip"),
}
TAR_FLAGS = "--sort=name --owner=0 --group=0 --numeric-owner --mtime=@1 --format=posix"


@dataclass
class RunResult:
    """One run of a row: what a command cost and produced (``ok`` False means skipped)."""

    tool: str
    command: str = ""
    ok: bool = False
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_mib: float = 0.0
    output_bytes: int = 0
    layers: int = 0
    note: str = ""
    #: 1-minute load average just before the run
    load: float = 0.0
    #: seconds from the start to the first byte on the pipe (streamed rows only)
    first_byte_s: float | None = None
    #: every round's run of this row (filled in for the reported one)
    walls: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    #: CPU seconds over the CPU limit's (its parts' sum), per round: the work done, which a
    #: busy machine inflates alike for both, while wall times also wait for the others
    cpu_ratios: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
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


def _sample_peak(proc: subprocess.Popen[bytes], out: list[int], done: threading.Event) -> None:
    while not done.is_set():
        out[0] = max(out[0], session_rss(proc.pid))
        done.wait(0.05)


def _drain(fd: int, start: float, out: dict[str, float]) -> None:
    """Empty the pipe ``fd`` into /dev/null (``splice``: no copy through this process), noting
    when the first byte came and how many came."""
    null = os.open(os.devnull, os.O_WRONLY)
    total = 0
    try:
        while True:
            try:
                n = os.splice(fd, null, 1 << 20)
            except OSError:  # no splice here: read and drop
                n = len(os.read(fd, 1 << 20))
            if not n:
                break
            if not total:
                out["first"] = time.perf_counter() - start
            total += n
    finally:
        os.close(null)
        out["bytes"] = total


def measure(
    tool: str,
    shell_command: str,
    *,
    workdir: Path,
    output: Path | None = None,
    size_of: Callable[[], int] | None = None,
    before: Callable[[], object] | None = None,
    stream: bool = False,
) -> RunResult:
    """Run ``shell_command`` under bash -o pipefail; fill a RunResult.

    ``output`` (a file or directory) is sized afterwards unless ``size_of`` says otherwise;
    with ``stream`` the command's stdout is a pipe drained here (bytes counted, first byte
    timed). ``before`` runs first, untimed (dropping the page cache, making an empty cache).
    """
    if before is not None:
        before()
    errfile = workdir / f"stderr-{_slug(tool)}.txt"
    peak = [0]
    drained: dict[str, float] = {}
    load = os.getloadavg()[0]
    done = threading.Event()
    with open(errfile, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            ["bash", "-o", "pipefail", "-c", shell_command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stream else err,
            stderr=err,
            start_new_session=True,
        )
        sampler = threading.Thread(target=_sample_peak, args=(proc, peak, done), daemon=True)
        sampler.start()
        drainer = None
        if stream:
            assert proc.stdout is not None
            drainer = threading.Thread(
                target=_drain, args=(proc.stdout.fileno(), start, drained), daemon=True
            )
            drainer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        if drainer is not None:
            drainer.join()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        if proc.stdout is not None:
            proc.stdout.close()
        done.set()
        sampler.join()
    rc = proc.returncode
    result = RunResult(tool=tool, command=shell_command, load=load)
    if rc != 0:
        tail = errfile.read_text(errors="replace").strip().splitlines()[-3:]
        result.note = f"failed (exit {rc}): {' | '.join(tail)[:300]}"
        return result
    result.ok = True
    result.wall_s = wall
    result.cpu_s = usage.ru_utime + usage.ru_stime
    result.peak_mib = max(peak[0], usage.ru_maxrss * 1024) / MIB
    if stream:
        result.output_bytes = int(drained.get("bytes", 0))
        result.first_byte_s = drained.get("first")
    elif size_of is not None:
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
    """Read every store file once so that all runs start page-cache warm. (Through ``cat``:
    GNU tar writing to /dev/null itself skips reading the files' data.)"""
    subprocess.run(
        f"tar -C {shlex.quote(str(root))} -cf - -T {shlex.quote(str(items_file))}"
        " | cat > /dev/null",
        shell=True,
        check=True,
    )


# ---------------------------------------------------------------------------------------------
# inputs


def store_closure_file(root: Path, prog: str) -> Path | None:
    """The closure.json of the store ``root`` made by make_debian_store.py; None (after a
    line on stderr naming ``prog`` and how to make it) when it is missing."""
    closure_file = root / "closure.json"
    if not closure_file.is_file():
        print(
            f"{prog}: {closure_file} missing; run bench/make_debian_store.py {root} first",
            file=sys.stderr,
        )
        return None
    return closure_file


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


APP_SUFFIX = f"-{APP_NAME}-{APP_VERSION}"  # make_debian_store.py's application item on top


def is_app(obj: dict[str, object]) -> bool:
    """Whether ``obj`` is the bench store's application item (the closure's root)."""
    return str(obj["path"]).endswith(APP_SUFFIX)


def make_changed_store(
    root: Path,
    closure: list[dict[str, object]],
    dest: Path,
    pick: str | None,
    *,
    prefer_app: bool = False,
) -> tuple[Path, Path, str, str]:
    """Copy the store to ``dest``, change one item's content and store path.

    Returns (new store root, new closure file, old path, new path). The item is the one whose
    name contains ``pick``; else, with ``prefer_app``, the store's application item (the
    closure's root, as in Nix when only the application changes) if it has one; else the
    smallest item nothing but the application refers to (renaming it changes no other item's
    content; the application's references are rewritten to the new path).
    """
    apps = [o for o in closure if is_app(o)]
    referenced = {
        str(r)
        for o in closure
        if not is_app(o)
        for r in o["references"]  # type: ignore[attr-defined]
    }
    tops = [o for o in closure if o["path"] not in referenced and not is_app(o)]
    if pick:
        tops = [o for o in closure if pick in str(o["path"])]
        if not tops:
            raise SystemExit(f"build_bench: no item matches --change-item {pick!r}")
    elif prefer_app and apps:
        tops = apps
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
        elif old_path in obj["references"]:  # type: ignore[operator]
            refs = [new_path if r == old_path else r for r in obj["references"]]  # type: ignore[attr-defined]
            new_closure.append({**obj, "references": refs})
        else:
            new_closure.append(obj)
    closure_file = dest / "closure.json"
    closure_file.write_text(json.dumps(new_closure, indent=2) + "\n")
    return dest, closure_file, old_path, new_path


# ---------------------------------------------------------------------------------------------
# report


def baseline(
    name: str, history: dict[str, list[RunResult]], round_: int, cores: int
) -> float | None:
    """Round ``round_``'s figure a row is compared with: a CPU limit (``zstd``, ``gzip``:
    the CPU seconds of its parts over ``cores``; ``zstd@1``: on one core), or a row's wall."""
    limit, _, at = name.partition("@")
    if limit in LIMIT_PARTS:
        parts = [history.get(part, []) for part in LIMIT_PARTS[limit]]
        if not all(len(runs) > round_ and runs[round_].ok for runs in parts):
            return None
        return sum(runs[round_].cpu_s for runs in parts) / (int(at) if at else cores)
    runs = history.get(name, [])
    if len(runs) > round_ and runs[round_].ok:
        return runs[round_].wall_s
    return None


def limits(history: dict[str, list[RunResult]], cores: int) -> dict[str, list[float]]:
    """Every round's CPU limits, by name (for the table)."""
    out: dict[str, list[float]] = {}
    for name in (*LIMIT_PARTS, "zstd@1"):
        rounds = max((len(history.get(p, [])) for p in LIMIT_PARTS[name.split("@")[0]]), default=0)
        values = [baseline(name, history, i, cores) for i in range(rounds)]
        if values and all(v is not None for v in values):
            out[name] = [v for v in values if v is not None]
    return out


def fill_ratios(
    rows: dict[str, RunResult], history: dict[str, list[RunResult]], cores: int
) -> None:
    """Each reported row's ratio to its baseline, round by round (same round, same load)."""
    for name, row in rows.items():
        if name not in BASELINES or not row.ok:
            continue
        base = BASELINES[name][0]
        ratios, cpu_ratios = [], []
        for i, run in enumerate(history.get(name, [])):
            b = baseline(base, history, i, cores)
            if run.ok and b:
                ratios.append(run.wall_s / b)
            work = baseline(f"{base.split('@')[0]}@1", history, i, cores)
            if run.ok and work and base.split("@")[0] in LIMIT_PARTS:
                cpu_ratios.append(run.cpu_s / work)
        row.ratios = ratios
        row.cpu_ratios = cpu_ratios


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def check_targets(rows: dict[str, RunResult]) -> list[Target]:
    """The goals of bench/README.md, judged on the medians of the per-round ratios."""
    targets: list[Target] = []

    def verdict(passed: bool) -> str:
        return "PASS" if passed else "FAIL"

    def ratio_goal(name: str, label: str, most: float) -> None:
        row = rows.get(name)
        if row is None or not row.ok or not row.ratios:
            targets.append(Target(label, "SKIP", "a needed row did not run"))
            return
        r = _median(row.ratios)
        rounds = "/".join(f"{x:.2f}" for x in row.ratios)
        targets.append(
            Target(
                label,
                verdict(r <= most),
                f"{row.wall_s:.2f} s = {r:.3f}x {BASELINES[name][1]} (rounds {rounds};"
                f" load {'/'.join(f'{x:.1f}' for x in row.loads)})",
            )
        )

    ratio_goal("closurepack zstd", "cold zstd <= 1.25x its 2-core CPU limit", 1.25)
    ratio_goal("closurepack gzip", "cold gzip <= 1.25x its 2-core CPU limit", 1.25)
    ratio_goal("closurepack stream", "stream (-o -, none) <= 1.3x tar|openssl sha256", 1.3)
    ratio_goal("closurepack warm zstd", "warm rebuild <= 0.03x cold zstd", 0.03)
    stream = rows.get("closurepack stream")
    if stream and stream.ok and stream.first_byte_s is not None:
        share = stream.first_byte_s / stream.wall_s
        targets.append(
            Target(
                "stream: first byte before 1/10 of the total",
                verdict(share < 0.1),
                f"{stream.first_byte_s:.2f} s of {stream.wall_s:.2f} s ({share:.3f})",
            )
        )
    else:
        targets.append(Target("stream: first byte before 1/10 of the total", "SKIP", "no row"))
    gzip6 = rows.get("tar|gzip -6")
    for name, smax in (("closurepack zstd", 0.95), ("closurepack gzip", 1.12)):
        row = rows.get(name)
        if row and row.ok and gzip6 and gzip6.ok:
            s = row.output_bytes / gzip6.output_bytes
            targets.append(
                Target(
                    f"{name}: layers <= {smax}x gzip -6 size",
                    verdict(s <= smax),
                    f"{row.output_mib:.1f} MiB = {s:.3f}x gzip -6 {gzip6.output_mib:.1f} MiB",
                )
            )
    cp_rows = [r for n, r in rows.items() if n.startswith("closurepack") and r.ok]
    if cp_rows:
        peak = max(r.peak_mib for r in cp_rows)
        targets.append(
            Target("closurepack peak memory < 300 MiB", verdict(peak < 300), f"{peak:.0f} MiB")
        )
    else:
        targets.append(Target("closurepack peak memory < 300 MiB", "SKIP", "no closurepack row"))
    return targets


def render_table(rows: dict[str, RunResult], lims: dict[str, list[float]] | None = None) -> str:
    """The human table: one line per row (median wall, its CPU, load), then each closurepack
    row's ratio to its baseline per round, and the CPU limits of every round."""
    head = (
        f"{'tool':<26} {'wall s':>7} {'CPU s':>7} {'load':>5} {'peak MiB':>8} {'out MiB':>8}"
        f" {'layers':>6} {'1st byte':>8}  ratio to baseline (median; per round)"
    )
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        if not r.ok:
            lines.append(f"{name:<26} skipped: {r.note}")
            continue
        layers = str(r.layers) if r.layers else "-"
        first = f"{r.first_byte_s:.2f}" if r.first_byte_s is not None else "-"
        ratio = ""
        if r.ratios:
            ratio = (
                f"{_median(r.ratios):.3f}x {BASELINES[name][1]}"
                f" ({'/'.join(f'{x:.2f}' for x in r.ratios)})"
            )
        if r.cpu_ratios:
            ratio += f"; CPU {_median(r.cpu_ratios):.2f}x the limit's CPU seconds"
        lines.append(
            f"{name:<26} {r.wall_s:7.2f} {r.cpu_s:7.2f} {r.load:5.1f} {r.peak_mib:8.1f}"
            f" {r.output_mib:8.1f} {layers:>6} {first:>8}  {ratio}"
        )
    for name, values in (lims or {}).items():
        cores = name.partition("@")[2] or "all"
        lines.append(
            f"CPU limit {name.split('@')[0]} ({cores} cores): median {_median(values):.2f} s"
            f" (rounds {'/'.join(f'{v:.2f}' for v in values)})"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# main


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
    """The run to report: the median (or the fastest, ``min``) of the good runs."""
    good = [r for r in results if r.ok]
    if not good:
        return results[-1]
    walls = [r.wall_s for r in good]
    wanted = min(walls) if stat == "min" else statistics.median_low(walls)
    chosen = next(r for r in good if r.wall_s == wanted)
    chosen.walls = walls
    chosen.loads = [r.load for r in good]
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
        ("openssl", ["openssl", "version"]),
        ("zstd", ["zstd", "--version"]),
        ("igzip", ["igzip", "--version"]),
        ("gzip", ["gzip", "--version"]),
        ("pigz", ["pigz", "--version"]),
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


@dataclass
class _Spec:
    """A row to run every round (``once``: the first round only)."""

    name: str
    run: Callable[[int], RunResult]
    once: bool = False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE, help="from make_debian_store")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", action="store_true", help="JSON on stdout; table on stderr")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of every row")
    parser.add_argument(
        "--stat",
        choices=["min", "median"],
        default="median",
        help="which run of --repeat to report: the median or the fastest (least disturbed)",
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
        default="warm",
        help="warm every run (default: CPU-bound), or drop before each (auto: if allowed)",
    )
    parser.add_argument("--only", default="", help="comma-separated row name prefixes to run")
    args = parser.parse_args(argv)

    root = args.store.resolve()
    closure_file = store_closure_file(root, "build_bench")
    if closure_file is None:
        return 2
    closure = load_closure(closure_file)
    items = [str(o["path"]) for o in closure]
    work = Path(tempfile.mkdtemp(prefix="cp-bench-", dir=args.work_dir))
    out = work / "out"
    out.mkdir()
    items_file = work / "items.txt"
    items_file.write_text("".join(p.lstrip("/") + "\n" for p in items))
    nar_total = sum(int(str(o.get("narSize", 0))) for o in closure)
    cores = len(os.sched_getaffinity(0))
    # closurepack runs as installed, its bytecode cached (pip compiles it at install): a
    # PYTHONDONTWRITEBYTECODE in this environment would have it recompiled on every run
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

    load_before = os.getloadavg()[0]
    versions = _tool_versions()  # now: the commit measured, whatever is committed meanwhile
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
        else "all runs page-cache warm (tar | cat > /dev/null first), fair to every tool"
    )
    before = drop_page_cache if drop else None
    rows: dict[str, RunResult] = {}
    selected = [s for s in args.only.split(",") if s]

    def want(name: str) -> bool:
        return not selected or any(name.startswith(s) for s in selected)

    specs: list[_Spec] = []
    history: dict[str, list[RunResult]] = {}
    q = shlex.quote
    # Other work on the machine may hard-link store files (which moves their ctime on): GNU
    # tar then says "file changed as we read it" and exits 1, though every byte it read is
    # right (a store is immutable). Only that status is let through.
    tar = (
        f"{{ tar {TAR_FLAGS} --warning=no-file-changed -C {q(str(root))} -cf -"
        f" -T {q(str(items_file))} || [ $? -eq 1 ]; }}"
    )
    print(
        f"build_bench: {len(items)} items, {nar_total / MIB:.1f} MiB; {cores} cores; {cache_note}",
        file=sys.stderr,
    )

    def shell(
        name: str,
        cmd: str,
        *,
        output: Path | None = None,
        tools: Sequence[str] = (),
        once: bool = False,
        stream: bool = False,
    ) -> None:
        if not want(name):
            return
        missing = [t for t in tools if shutil.which(t) is None]
        if missing:
            rows[name] = RunResult(tool=name, note=f"{', '.join(missing)} not installed")
            return

        def go(_: int) -> RunResult:
            return measure(name, cmd, workdir=work, output=output, before=before, stream=stream)

        specs.append(_Spec(name, go, once))

    shell("tar|openssl sha256", f"{tar} | openssl dgst -sha256", tools=["openssl"])
    # what a stream that also fills a cache cannot avoid: the same, the tar kept in a new file
    kept = work / "kept.tar"
    shell(
        "tar|tee file|openssl sha256",
        f"rm -f {q(str(kept))}; {tar} | tee {q(str(kept))} | openssl dgst -sha256;"
        f" rm -f {q(str(kept))}",
        tools=["openssl", "tee"],
    )
    # the parts of the CPU limits, each alone on one tar file of the same items
    whole = work / "all.tar"
    if any(want(p) for parts in LIMIT_PARTS.values() for p in parts) or want("zstd@"):
        subprocess.run(f"{tar} > {q(str(whole))}", shell=True, check=True)
    zst, gz = work / "all.tar.zst", work / "all.tar.gz"
    sha = "openssl dgst -sha256"
    shell("sha256 tar", f"{sha} < {q(str(whole))}", tools=["openssl"])
    shell("zstd -3 -T1", f"zstd -3 -T1 -q -c < {q(str(whole))} > {q(str(zst))}", tools=["zstd"])
    shell("sha256 zst", f"{sha} < {q(str(zst))}", tools=["openssl"])
    shell("igzip -3 -T1", f"igzip -3 -T1 -c < {q(str(whole))} > {q(str(gz))}", tools=["igzip"])
    shell("sha256 gz", f"{sha} < {q(str(gz))}", tools=["openssl"])
    for name, compressor, suffix in (
        ("tar|gzip -6", "gzip -6 -n", "tar.gz"),
        ("tar|pigz -6", f"pigz -6 -n -p {args.jobs}", "tar.gz"),
    ):
        target = out / f"{_slug(name)}.{suffix}"
        cmd = f"{tar} | {compressor} > {q(str(target))}"
        shell(name, cmd, output=target, tools=[compressor.split()[0]], once=True)
    target = out / "tar-zstd.tar.zst"
    shell("tar|zstd -3", f"{tar} | zstd -3 -q -T{cores} > {q(str(target))}", output=target)
    for name, compressor in (
        ("C pipeline zstd", f"zstd -3 -q -T{cores}"),
        ("C pipeline gzip", f"igzip -3 -T{cores} -c"),
    ):
        digests = work / f"{_slug(name)}.sha256"
        cmd = (
            f"{tar} | tee >({sha} > {q(str(digests))}.tar) | {compressor} | {sha}"
            f" > {q(str(digests))}; wait"
        )
        shell(name, cmd, tools=["openssl", compressor.split()[0]])

    cp = _closurepack_exe(args.closurepack)
    layers, plan_note = (
        closurepack_plan(closure_file, work, cp)
        if cp
        else ([[p] for p in items], "closurepack not installed; one layer per item")
    )
    print(f"  plan: {plan_note}", file=sys.stderr)
    if cp is not None:  # (untimed: writes the bytecode caches)
        subprocess.run([*cp, "--version"], capture_output=True, check=False)

    nix_name = "nixpkgs stream_layered_image"
    script = args.nixpkgs_stream_script
    if want("nixpkgs") and script and Path(script).is_file():
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

        specs.append(_Spec(nix_name, nixpkgs))

    if cp is None:
        for n in ROW_ORDER:
            if n.startswith("closurepack") and want(n):
                rows[n] = RunResult(tool=n, note="closurepack command not found")
    else:
        _closurepack_specs(
            specs, history, rows, args=args, work=work, out=out, cp=cp, want=want, before=before
        )

    # Rounds, not runs in a row: a burst of load from elsewhere then hits every tool alike.
    for i in range(max(1, args.repeat)):
        for spec in specs:
            if spec.once and i:
                continue
            r = spec.run(i)
            history.setdefault(spec.name, []).append(r)
            status = (
                f"{r.wall_s:.2f} s wall, {r.cpu_s:.2f} s CPU, {r.output_mib:.1f} MiB,"
                f" load {r.load:.1f}"
                if r.ok
                else r.note
            )
            print(f"  round {i + 1} {spec.name}: {status}", file=sys.stderr)
    for spec in specs:
        rows[spec.name] = _pick(history[spec.name], args.stat)
    rows = {n: rows[n] for n in ROW_ORDER if n in rows}
    fill_ratios(rows, history, cores)
    lims = limits(history, cores)

    targets = check_targets(rows)
    table = render_table(rows, lims)
    verdicts = "\n".join(f"{t.verdict:4}  {t.name}: {t.detail}" for t in targets)
    env = {
        "items": len(items),
        "nar_mib": round(nar_total / MIB, 1),
        "cores": cores,
        "jobs": args.jobs,
        "kernel": platform.release(),
        "loadavg_1min_before_after": f"{load_before:.2f}/{os.getloadavg()[0]:.2f}",
        "page_cache": cache_note,
        "repeat": args.repeat,
        "stat": args.stat,
        "plan": plan_note,
        **versions,
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
                    "limits": lims,
                    "rows": [{**asdict(r), "output_mib": r.output_mib} for r in rows.values()],
                    "rounds": {n: [asdict(r) for r in runs] for n, runs in history.items()},
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


def _closurepack_specs(
    specs: list[_Spec],
    history: dict[str, list[RunResult]],
    rows: dict[str, RunResult],
    *,
    args: argparse.Namespace,
    work: Path,
    out: Path,
    cp: list[str],
    want: Callable[[str], bool],
    before: Callable[[], object] | None,
) -> None:
    """The closurepack rows: cold builds, the stream (cold, warm), the warm rebuild, one core."""
    q = shlex.quote
    root = args.store.resolve()
    closure_file = root / "closure.json"
    base = " ".join(q(a) for a in cp)

    def command(closure: Path, store: Path, dest: str, codec: str, cache: Path) -> str:
        return (
            f"{base} build --closure {q(str(closure))} --store-root {q(str(store))}"
            f" -o {dest} --compression {codec} --jobs {args.jobs}"
            f" --cache-dir {q(str(cache))} --quiet"
        )

    def fresh(path: Path) -> Path:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
        return path

    def describe(r: RunResult, dest: Path) -> None:
        try:
            sizes = oci_layer_sizes(dest)
            r.output_bytes, r.layers = sum(sizes), len(sizes)
            r.note = (
                f"output = layer blobs; whole layout {_size(dest) / MIB:.1f} MiB;"
                f" {_verify(cp, dest)}"
            )
        except (OSError, ValueError, KeyError, IndexError) as exc:
            r.note = f"could not read the OCI layout ({exc}); size = whole dir"

    def cold(n: str, codec: str, prefix: str = "") -> Callable[[int], RunResult]:
        def go(i: int) -> RunResult:
            dest = out / f"{_slug(n)}-{i}"
            shutil.rmtree(dest, ignore_errors=True)
            cache = fresh(work / f"cache-{_slug(n)}-{i}")
            cmd = prefix + command(closure_file, root, f"oci:{q(str(dest))}", codec, cache)
            r = measure(n, cmd, workdir=work, output=dest, before=before)
            r.artifacts = {"output": str(dest), "cache": str(cache)}
            if r.ok:
                describe(r, dest)
            if n != "closurepack zstd":  # (the warm rebuild starts from that one's)
                shutil.rmtree(cache, ignore_errors=True)
                shutil.rmtree(dest, ignore_errors=True)
            return r

        return go

    for n, codec in (("closurepack zstd", "zstd"), ("closurepack gzip", "gzip")):
        if want(n):
            specs.append(_Spec(n, cold(n, codec)))

    stream_cache = work / "cache-stream"
    if want("closurepack stream"):

        def stream(i: int) -> RunResult:
            cache = fresh(stream_cache)
            cmd = command(closure_file, root, "-", "none", cache)
            return measure("closurepack stream", cmd, workdir=work, before=before, stream=True)

        def stream_warm(i: int) -> RunResult:
            cmd = command(closure_file, root, "-", "none", stream_cache)
            return measure("closurepack stream warm", cmd, workdir=work, before=before, stream=True)

        def cat_blobs(i: int) -> RunResult:
            blobs = stream_cache / "blobs" / "sha256"
            cmd = f"cat {q(str(blobs))}/*"
            return measure("cat cached blobs", cmd, workdir=work, before=before, stream=True)

        specs.append(_Spec("closurepack stream", stream))
        specs.append(_Spec("closurepack stream warm", stream_warm))
        specs.append(_Spec("cat cached blobs", cat_blobs))

    warm_name = "closurepack warm zstd"
    if want(warm_name) and want("closurepack zstd"):
        closure = load_closure(closure_file)
        root2, closure2, old, new = make_changed_store(
            root, closure, work / "store-changed", args.change_item, prefer_app=True
        )
        changed_size = next(
            int(str(o["narSize"])) for o in load_closure(closure2) if o["path"] == new
        )

        def warm(i: int) -> RunResult:
            zrow = history.get("closurepack zstd", [RunResult(tool="")])[-1]
            if not zrow.ok:
                return RunResult(tool=warm_name, note="needs a successful cold zstd build")
            cold_dest, cold_cache = Path(zrow.artifacts["output"]), zrow.artifacts["cache"]
            cold_digests = set(oci_layer_digests(cold_dest))
            cache = work / f"cache-warm-{i}"
            shutil.rmtree(cache, ignore_errors=True)
            shutil.copytree(cold_cache, cache, symlinks=True)
            # into the cold build's layout, as a user rebuilding it after an app change does
            dest = cold_dest
            cmd = command(closure2, root2, f"oci:{q(str(dest))}", "zstd", cache)
            r = measure(warm_name, cmd, workdir=work, output=dest, before=before)
            if r.ok:
                try:
                    sizes = oci_layer_sizes(dest)
                    r.output_bytes, r.layers = sum(sizes), len(sizes)
                    fresh_layers = set(oci_layer_digests(dest)) - cold_digests
                    r.note = (
                        f"changed {old.rsplit('/', 1)[1][33:]} ({changed_size / 1024:.1f} KiB)"
                        f" -> {new.rsplit('/', 1)[1][:8]}...; {len(fresh_layers)} layer(s) new;"
                        f" {_verify(cp, dest)}"
                    )
                except (OSError, ValueError, KeyError, IndexError) as exc:
                    r.note = f"could not read the OCI layout ({exc})"
            for path in (cache, Path(cold_cache), dest):
                shutil.rmtree(path, ignore_errors=True)
            return r

        specs.append(_Spec(warm_name, warm))
    elif want(warm_name):
        rows[warm_name] = RunResult(tool=warm_name, note="needs the cold zstd row")
    one = "closurepack zstd 1 core"
    if want(one):
        if shutil.which("taskset") is None:
            rows[one] = RunResult(tool=one, note="taskset not installed")
        else:
            specs.append(_Spec(one, cold(one, "zstd", prefix="taskset -c 0 ")))


if __name__ == "__main__":
    sys.exit(main())
