"""Benchmark zstd:chunked updates: the bytes podman fetches to pull a Nix-style update.

Usage::

    python bench/make_debian_store.py /tmp/cp-bench/store      # once: ~830 MiB, 144 items
    python bench/chunked_bench.py --store /tmp/cp-bench/store [--change-item NAME] [--json]

The update (:func:`make_update`): one library (by default the item with 8 items above it that
is largest, as ``libperl`` in the default store) is *replaced*: every file of it gets new bytes
(one byte in every 4 KiB changed, as a rebuilt library differs almost everywhere), so its
store path changes, and so do the paths of every item that refers to it, directly or not; in
their files the old hashes are rewritten to the new ones, as Nix does. Debian's files name no
store path, so in the store *before* the update every file of 64 KiB or more of the items
above the library names their moved references twice (near the start and in the middle, as an
ELF file's RPATH and strings do): the update changes those big files in a few bytes each. The
bench store is read-only: both stores are hard-linked copies (``cp -al``) whose changed items
are real copies.

Rows, each image pushed to a fresh ``docker-registry`` and pulled by podman (overlay driver,
``enable_partial_images``, a storage of its own) through a counting TCP proxy that counts the
bytes the registry sends (``push_bench.CountingProxy``):

- ``closurepack zstd:chunked``: v1 then v2 built with ``--compression zstd:chunked`` and pushed;
  *fetched* is what pulling v2 after v1 costs;
- ``containers/storage writer``: v1 and v2 built ``--compression none`` into OCI layouts and
  converted by ``skopeo copy --dest-compress-format zstd:chunked --dest-compress-level 3``
  into a second registry, pulled the same way by a second podman storage;
- ``plain zstd`` / ``plain gzip``: the bytes of the layers of v2 that v1 lacks (what a pull of
  ordinary layers costs);
- ``file floor``: the changed files (content no file of v1 has) each compressed alone with
  zstd -3: what any file-level scheme has to fetch.

Build time: v1 built cold (``--no-cache``) to ``oci:`` with plain zstd and with zstd:chunked.
Goals (issue 9): fetched <= 1.1x the containers/storage writer's; fetched <= 1.15x the file
floor + 64 KiB per changed layer; the zstd:chunked build <= 1.3x the plain zstd build.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import zstandard
from build_bench import load_closure
from make_debian_store import nar_hash_and_size
from push_bench import (
    CountingProxy,
    Registry,
    get_manifest,
    run,
    start_registry,
    stop_registry,
)

__all__ = [
    "Goal",
    "Update",
    "check_goals",
    "file_floor",
    "main",
    "make_update",
    "pick_library",
    "referrers",
    "render",
]

DEFAULT_STORE = Path(os.environ.get("CLOSUREPACK_BENCH_STORE", "/tmp/cp-bench/store"))
ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
TOC_ALLOWANCE = 64 << 10
MIB = 2**20
_STORAGE_CONF = """\
[storage]
driver = "overlay"
graphroot = "{root}/root"
runroot = "{root}/run"

[storage.options]
pull_options = {{enable_partial_images = "true", use_hard_links = "false", ostree_repos = ""}}
"""


# ---------------------------------------------------------------------------------------------
# the update


def referrers(closure: Sequence[dict[str, object]], path: str) -> set[str]:
    """Every item that refers to ``path``, directly or not."""
    parents: dict[str, set[str]] = {}
    for obj in closure:
        for ref in obj["references"]:  # type: ignore[attr-defined]
            if ref != obj["path"]:
                parents.setdefault(str(ref), set()).add(str(obj["path"]))
    found: set[str] = set()
    todo = [path]
    while todo:
        for parent in parents.get(todo.pop(), ()):
            if parent not in found:
                found.add(parent)
                todo.append(parent)
    return found


def pick_library(closure: Sequence[dict[str, object]], pick: str | None, above: int = 8) -> str:
    """The item named by ``pick`` (a substring), else the one with ``above`` items above it
    (or the nearest count), largest first, then by path."""
    if pick:
        matches = sorted(str(o["path"]) for o in closure if pick in str(o["path"]))
        if not matches:
            raise SystemExit(f"chunked_bench: no item matches --change-item {pick!r}")
        return matches[0]
    return min(
        (str(o["path"]) for o in closure),
        key=lambda p: (
            abs(len(referrers(closure, p)) - above),
            -int(str(next(o["narSize"] for o in closure if o["path"] == p))),
            p,
        ),
    )


def _new_hash(old: str) -> str:
    digest = hashlib.sha256(f"chunked-bench:{old}".encode()).digest()
    return "".join(ALPHABET[b % 32] for b in digest[:32])


def _replaced(data: bytes) -> bytes:
    """A "new build" of a file: one byte in every 4 KiB changed."""
    out = bytearray(data)
    for i in range(0, len(out), 4096):
        out[i] ^= 0x5A
    return bytes(out)


@dataclass
class Update:
    """A store made by :func:`make_update`: its root and closure file, the library, and the
    items it renamed (old path -> new path; empty for the store before the update)."""

    root: Path
    closure_file: Path
    library: str
    renamed: dict[str, str] = field(default_factory=dict)


_EMBED_FROM = 64 << 10  # files at least this big name their references (as RPATHs do)


def _embed(data: bytes, paths: Sequence[str]) -> bytes:
    """``data`` with each of ``paths`` written over it near the start and in the middle, as an
    ELF file's RPATH and strings name the store paths a binary uses."""
    out = bytearray(data)
    for number, path in enumerate(paths):
        for at in (4096 + 64 * number, len(out) // 2 + 64 * number):
            out[at : at + len(path)] = path.encode()
    return bytes(out)


def _copy_item(
    source: Path,
    target: Path,
    transform: Callable[[bytes], bytes],
    link: Callable[[bytes], bytes] = lambda target: target,
) -> None:
    """A real copy of an item with every regular file's bytes passed through ``transform`` and
    every symlink's target through ``link``."""
    for directory, dirs, files in os.walk(source):
        rel = Path(directory).relative_to(source)
        (target / rel).mkdir(parents=True, exist_ok=True)
        for name in sorted(files) + [d for d in dirs if (Path(directory) / d).is_symlink()]:
            src, dst = Path(directory) / name, target / rel / name
            if src.is_symlink():
                dst.symlink_to(os.fsdecode(link(os.fsencode(os.readlink(src)))))
                continue
            dst.write_bytes(transform(src.read_bytes()))
            shutil.copymode(src, dst)
        shutil.copymode(directory, target / rel)


def _link_items(root: Path, dest: Path, paths: Iterable[str]) -> None:
    for path in paths:
        subprocess.run(
            ["cp", "-al", str(root / path.lstrip("/")), str(dest / path.lstrip("/"))], check=True
        )


def _write_closure(
    dest: Path, closure: Sequence[dict[str, object]], renamed: dict[str, str], changed: set[str]
) -> Path:
    out = []
    for obj in closure:
        path = str(obj["path"])
        refs = [renamed.get(str(r), str(r)) for r in obj["references"]]  # type: ignore[attr-defined]
        entry = {**obj, "path": renamed.get(path, path), "references": refs}
        if path in changed:
            nar_hash, nar_size = nar_hash_and_size(dest / renamed.get(path, path).lstrip("/"))
            entry |= {"narHash": nar_hash, "narSize": nar_size}
        out.append(entry)
    closure_file = dest / "closure.json"
    closure_file.write_text(json.dumps(out, indent=1) + "\n")
    return closure_file


def make_update(
    root: Path, closure: Sequence[dict[str, object]], work: Path, library: str
) -> tuple[Update, Update]:
    """The stores before and after ``library`` is replaced (see the module doc).

    Before: the store as it is, except that in every item above the library each file of
    64 KiB or more names that item's moved references (as binaries name their libraries).
    After: the library's files get new bytes, and it and every item above it new paths, the
    old hashes rewritten to the new ones in their files (so those big files change in a few
    bytes each, as with Nix)."""
    moved = {library, *referrers(closure, library)}
    refs = {str(o["path"]): [str(r) for r in o["references"]] for o in closure}  # type: ignore[attr-defined]
    renamed = {
        p: p.rsplit("/", 1)[0] + "/" + _new_hash(p) + "-" + p.rsplit("/", 1)[1].split("-", 1)[1]
        for p in sorted(moved)
    }
    before_root, after_root = work / "store1", work / "store2"
    for dest in (before_root, after_root):
        shutil.rmtree(dest, ignore_errors=True)
        (dest / "nix" / "store").mkdir(parents=True)
    above = moved - {library}
    _link_items(root, before_root, [p for p in refs if p not in above])
    _link_items(root, after_root, [p for p in refs if p not in moved])
    for path in sorted(above):
        names = sorted(r for r in refs[path] if r in moved and r != path)

        def embed(data: bytes, names: list[str] = names) -> bytes:
            return _embed(data, names) if len(data) >= _EMBED_FROM + 64 * len(names) else data

        _copy_item(root / path.lstrip("/"), before_root / path.lstrip("/"), embed)
    pairs = [(old.encode(), new.encode()) for old, new in renamed.items()]

    def rewrite(data: bytes) -> bytes:
        for old, new in pairs:
            data = data.replace(old, new)
        return data

    for path in sorted(moved):
        source = before_root / path.lstrip("/")
        target = after_root / renamed[path].lstrip("/")
        if path == library:
            _copy_item(source, target, lambda data: rewrite(_replaced(data)), rewrite)
        else:
            _copy_item(source, target, rewrite, rewrite)
    before = Update(before_root, _write_closure(before_root, closure, {}, above), library)
    after_closure = _write_closure(after_root, closure, renamed, moved)
    return before, Update(after_root, after_closure, library, renamed)


def _file_digests(root: Path, paths: Iterable[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for item in paths:
        for directory, _, files in os.walk(root / item.lstrip("/")):
            for name in files:
                path = Path(directory) / name
                if not path.is_symlink():
                    found.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), path)
    return found


def file_floor(
    old_root: Path, old: Iterable[str], new_root: Path, new: Iterable[str]
) -> tuple[int, int]:
    """(count, bytes) of the files of the new store whose content no old file has, each
    compressed alone with zstd -3 (empty files cost nothing)."""
    before = _file_digests(old_root, old)
    after = _file_digests(new_root, new)
    cctx = zstandard.ZstdCompressor(level=3, write_checksum=True)
    changed = [p for d, p in after.items() if d not in before and p.stat().st_size]
    return len(changed), sum(len(cctx.compress(p.read_bytes())) for p in changed)


# ---------------------------------------------------------------------------------------------
# pulling


def _podman(storage: Path, *args: str) -> list[str]:
    return [
        "podman",
        "--tmpdir",
        str(storage / "tmp"),
        "--runtime=runc",
        "--cgroup-manager=cgroupfs",
        "--events-backend=file",
        *args,
    ]


def _pull(storage: Path, ref: str) -> tuple[bool, str]:
    env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(storage / "storage.conf")}
    argv = _podman(storage, "--log-level=debug", "pull", "--tls-verify=false", ref)
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    return proc.returncode == 0, proc.stderr


def _new_storage(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "storage.conf").write_text(_STORAGE_CONF.format(root=path))
    return path


def _reset(storage: Path) -> None:
    env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(storage / "storage.conf")}
    subprocess.run(
        _podman(storage, "system", "reset", "--force"), capture_output=True, env=env, check=False
    )


def _layers(host: str, repo: str, tag: str) -> dict[str, int]:
    _, manifest = get_manifest(host, repo, tag)
    layers = manifest["layers"]
    assert isinstance(layers, list)
    return {str(d["digest"]): int(d["size"]) for d in layers}


def _layout_layers(layout: Path) -> dict[str, int]:
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"].split(":", 1)[1]
    manifest = json.loads((layout / "blobs" / "sha256" / digest).read_bytes())
    return {d["digest"]: int(d["size"]) for d in manifest["layers"]}


@dataclass
class Pulled:
    fetched: int = 0
    first: int = 0
    partial: int = 0
    changed_layers: int = 0
    ok: bool = False
    note: str = ""


def _pull_update(registry: Registry, repo: str, storage: Path) -> Pulled:
    """Pull ``repo:1`` then ``repo:2`` through a counting proxy; what ``:2`` cost."""
    out = Pulled()
    old, new = _layers(registry.host, repo, "1"), _layers(registry.host, repo, "2")
    out.changed_layers = len(set(new) - set(old))
    with CountingProxy(("127.0.0.1", registry.port)) as proxy:
        ok, log = _pull(storage, f"127.0.0.1:{proxy.port}/{repo}:1")
        out.first = proxy.received_bytes
        if not ok:
            out.note = "pull v1 failed: " + log.strip().splitlines()[-1][:200]
            return out
        proxy.reset()
        ok, log = _pull(storage, f"127.0.0.1:{proxy.port}/{repo}:2")
        out.fetched = proxy.received_bytes
    out.partial = log.count("Retrieved partial blob")
    out.ok = ok
    if not ok:
        out.note = "pull v2 failed: " + log.strip().splitlines()[-1][:200]
    return out


# ---------------------------------------------------------------------------------------------
# goals and report


@dataclass(frozen=True)
class Goal:
    name: str
    verdict: str
    detail: str


def check_goals(
    *,
    fetched: int,
    storage_writer: int,
    floor: int,
    changed_layers: int,
    chunked_s: float,
    zstd_s: float,
) -> list[Goal]:
    """The three goals of the module doc, PASS or FAIL with the figures."""

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    bound = 1.15 * floor + TOC_ALLOWANCE * changed_layers
    return [
        Goal(
            "fetched <= 1.1x containers/storage's writer",
            verdict(fetched <= 1.1 * storage_writer),
            f"{fetched / storage_writer:.3f}x" if storage_writer else "no figure",
        ),
        Goal(
            "fetched <= 1.15x file floor + 64 KiB per changed layer",
            verdict(fetched <= bound),
            f"{fetched} <= {bound:.0f}: {fetched / bound:.3f} of the bound",
        ),
        Goal(
            "zstd:chunked build <= 1.3x plain zstd build",
            verdict(chunked_s <= 1.3 * zstd_s),
            f"{chunked_s / zstd_s:.3f}x" if zstd_s else "no figure",
        ),
    ]


def render(report: dict[str, object]) -> str:
    rows = report["rows"]
    assert isinstance(rows, list)
    lines = ["| what | bytes | MB | vs file floor |", "| --- | ---: | ---: | ---: |"]
    floor = int(str(report["file_floor_bytes"])) or 1
    for name, value in rows:
        lines.append(f"| {name} | {value} | {value / 1e6:.2f} | {value / floor:.2f}x |")
    goals = report["goals"]
    assert isinstance(goals, list)
    lines += ["", "| goal | verdict | figures |", "| --- | --- | --- |"]
    lines += [f"| {g['name']} | {g['verdict']} | {g['detail']} |" for g in goals]
    return "\n".join(lines)


def _commit() -> str:
    here = str(Path(__file__).resolve().parent)
    return subprocess.run(
        ["git", "-C", here, "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()


def _build(
    exe: list[str], store: Path, closure: Path, compression: str, dest: str, *extra: str
) -> list[str]:
    return [
        *exe,
        "build",
        "--closure",
        str(closure),
        "--store-root",
        str(store),
        "--quiet",
        "--compression",
        compression,
        "-o",
        dest,
        *extra,
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE)
    parser.add_argument("--change-item", default=None, help="substring of the library to replace")
    parser.add_argument("--closurepack", default=None, help="command to run (default: on PATH)")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    args = parser.parse_args(argv)
    root = args.store.resolve()
    closure = load_closure(root / "closure.json")
    exe = args.closurepack.split() if args.closurepack else [shutil.which("closurepack") or ""]
    for tool in ("podman", "skopeo", "/usr/bin/docker-registry", exe[0]):
        if not tool or shutil.which(tool) is None:
            print(f"chunked_bench: {tool or 'closurepack'} is not installed", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="cp-chunked-bench-", dir=args.work_dir))
    load_before = os.getloadavg()
    storages: list[Path] = []
    registries: list[Registry] = []
    try:
        library = pick_library(closure, args.change_item)
        before, update = make_update(root, closure, work, library)
        v = {1: (before.root, before.closure_file), 2: (update.root, update.closure_file)}
        print(
            f"chunked_bench: replacing {library}; {len(update.renamed)} items move", file=sys.stderr
        )
        ours, theirs = start_registry(work / "reg-ours"), start_registry(work / "reg-storage")
        registries += [ours, theirs]
        cache = work / "cache"
        times: dict[str, float] = {}
        for name, compression in (("zstd", "zstd"), ("zstd:chunked", "zstd:chunked")):
            dest = f"oci:{work / ('cold-' + name.replace(':', '-'))}:1"
            row = run(
                f"build {name}",
                _build(exe, *v[1], compression, dest, "--no-cache"),
                work=work,
                registry=None,
            )
            if not row.ok:
                raise SystemExit(f"chunked_bench: build {name} failed: {row.note}")
            times[name] = row.wall_s
            print(
                f"  build {name}: {row.wall_s:.1f} s (load {row.load_before:.2f})", file=sys.stderr
            )
        plain: dict[str, int] = {}
        for compression in ("zstd", "gzip", "none"):
            layout = work / f"layout-{compression}"
            for n in (1, 2):
                row = run(
                    f"{compression} v{n}",
                    _build(exe, *v[n], compression, f"oci:{layout}-{n}", "--cache-dir", str(cache)),
                    work=work,
                    registry=None,
                )
                if not row.ok:
                    raise SystemExit(f"chunked_bench: {compression} v{n} failed: {row.note}")
            old, new = _layout_layers(Path(f"{layout}-1")), _layout_layers(Path(f"{layout}-2"))
            plain[compression] = sum(s for d, s in new.items() if d not in old)
        for n in (1, 2):
            row = run(
                f"push v{n}",
                _build(
                    exe,
                    *v[n],
                    "zstd:chunked",
                    f"docker://{ours.host}/app:{n}",
                    "--cache-dir",
                    str(cache),
                ),
                work=work,
                registry=ours,
            )
            if not row.ok:
                raise SystemExit(f"chunked_bench: push v{n} failed: {row.note}")
        skopeo_s = 0.0
        for n in (1, 2):
            argv = [
                "skopeo",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                "--dest-compress",
                "--dest-compress-format",
                "zstd:chunked",
                "--dest-compress-level",
                "3",
                f"oci:{work / 'layout-none'}-{n}",
                f"docker://{theirs.host}/app:{n}",
            ]
            row = run(f"skopeo v{n}", argv, work=work, registry=theirs)
            if not row.ok:
                raise SystemExit(f"chunked_bench: skopeo v{n} failed: {row.note}")
            skopeo_s += row.wall_s
        storages = [_new_storage(work / "podman-ours"), _new_storage(work / "podman-storage")]
        mine = _pull_update(ours, "app", storages[0])
        cs = _pull_update(theirs, "app", storages[1])
        count, floor = file_floor(
            before.root,
            [str(o["path"]) for o in closure],
            update.root,
            [update.renamed.get(str(o["path"]), str(o["path"])) for o in closure],
        )
        goals = check_goals(
            fetched=mine.fetched,
            storage_writer=cs.fetched,
            floor=floor,
            changed_layers=mine.changed_layers,
            chunked_s=times["zstd:chunked"],
            zstd_s=times["zstd"],
        )
        report: dict[str, object] = {
            "commit": _commit(),
            "library": library,
            "moved_items": len(update.renamed),
            "changed_files": count,
            "file_floor_bytes": floor,
            "changed_layers": mine.changed_layers,
            "rows": [
                ["closurepack zstd:chunked: update pull fetched", mine.fetched],
                ["containers/storage writer (skopeo): update pull fetched", cs.fetched],
                ["file floor: changed files each zstd -3 alone", floor],
                ["plain zstd: changed layers", plain["zstd"]],
                ["plain gzip: changed layers", plain["gzip"]],
            ],
            "partial_blobs": {"ours": mine.partial, "storage_writer": cs.partial},
            "notes": [n for n in (mine.note, cs.note) if n],
            "build_s": {**times, "skopeo copy v1+v2": round(skopeo_s, 1)},
            "goals": [g.__dict__ for g in goals],
            "load_before": load_before,
            "load_after": os.getloadavg(),
        }
        print(render(report), file=sys.stderr)
        print(
            json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=1, default=str),
            file=sys.stderr,
        )
        if args.json:
            print(json.dumps(report, indent=1))
        return 0 if all(g.verdict == "PASS" for g in goals) and mine.ok and cs.ok else 1
    finally:
        for storage in storages:
            _reset(storage)
        for registry in registries:
            stop_registry(registry)
        time.sleep(0.5)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
