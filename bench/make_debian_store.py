"""Make a real-content fake Nix store from this machine's installed Debian packages.

Usage::

    python bench/make_debian_store.py OUTDIR [--packages git perl nodejs ...]

For every package in the Depends/Pre-Depends closure of the named packages (first installed
alternative; a virtual package resolves to the first installed provider by name) this writes a
store item ``OUTDIR/nix/store/<hash>-<package>-<version>`` holding a real copy (not hard links) of
the package's files as ``dpkg -L`` lists them, with their modes, and the item's references in
``nix-support/references``. ``OUTDIR/closure.json`` describes the closure in the array form of
``nix path-info --json`` (path, narHash, narSize, references), so closurepack and the peers can
all read the same store. Dependency cycles are cut deterministically (the edge that closes a
cycle in a depth-first walk in name order is dropped), and every file gets mtime 1 as in a real
Nix store, so two runs on the same machine give byte-identical stores.

The hash of an item is sha256 over its name, version and its references' hashes, folded to
160 bits and written in Nix's base-32 alphabet, like a real store path hash.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "APP_NAME",
    "APP_VERSION",
    "DEFAULT_PACKAGES",
    "DebPackage",
    "StoreEntry",
    "closure_of",
    "dependency_edges",
    "main",
    "make_store",
    "nar_hash_and_size",
    "nix_base32",
    "parse_status",
    "plan_items",
    "store_hash",
]

APP_NAME = "bench-app"
APP_VERSION = "1.0"
DEFAULT_PACKAGES = ("git", "perl", "nodejs", "postgresql-15", "gcc-12", "cmake")
NIX_BASE32_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
STORE_DIR = "/nix/store"
# Characters Nix allows in a store path name; anything else (":" of epochs, "~") becomes "_".
_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9+\-._?=]")
_DEP_NAME = re.compile(r"^\s*([^\s(:\[<]+)(?::\S+)?")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DebPackage:
    """One installed package from the dpkg status file."""

    name: str
    arch: str
    version: str
    depends: tuple[tuple[str, ...], ...]
    provides: tuple[str, ...]

    @property
    def query_name(self) -> str:
        """The name dpkg needs to find this package's file list (arch-qualified if needed)."""
        return self.name if self.arch in ("all", _native_arch()) else f"{self.name}:{self.arch}"


@dataclass(frozen=True)
class StoreEntry:
    """One planned store item: its package, store path and the store paths it references."""

    package: DebPackage
    path: str
    references: tuple[str, ...]


def nix_base32(data: bytes) -> str:
    """Render ``data`` in Nix's base-32 (least significant 5 bits of the last byte first)."""
    length = (len(data) * 8 - 1) // 5 + 1 if data else 0
    chars = []
    for n in range(length - 1, -1, -1):
        bit = n * 5
        i, j = divmod(bit, 8)
        c = data[i] >> j
        if i + 1 < len(data):
            c |= data[i + 1] << (8 - j)
        chars.append(NIX_BASE32_ALPHABET[c & 0x1F])
    return "".join(chars)


def store_hash(name: str, version: str, reference_hashes: Iterable[str]) -> str:
    """The 32-character hash part for an item: sha256 folded to 20 bytes, in nix-base32."""
    h = hashlib.sha256()
    h.update(f"closurepack-bench\0{name}\0{version}\0".encode())
    for ref in sorted(reference_hashes):
        h.update(ref.encode() + b"\0")
    digest = h.digest()
    folded = bytearray(20)
    for i, byte in enumerate(digest):
        folded[i % 20] ^= byte
    return nix_base32(bytes(folded))


def _native_arch() -> str:
    return _NATIVE_ARCH[0]


_NATIVE_ARCH = [""]


def _split_paragraphs(text: str) -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
            fields, key = {}, ""
        elif line[0] in " \t":
            if key:
                fields[key] += "\n" + line.strip()
        else:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    if fields:
        yield fields


def _parse_relation(value: str) -> tuple[tuple[str, ...], ...]:
    groups = []
    for group in value.split(","):
        names = []
        for alternative in group.split("|"):
            m = _DEP_NAME.match(alternative)
            if m:
                names.append(m.group(1))
        if names:
            groups.append(tuple(names))
    return tuple(groups)


def parse_status(text: str) -> dict[str, DebPackage]:
    """Installed packages of a dpkg status file, by name (native arch preferred over others)."""
    found: dict[str, DebPackage] = {}
    for fields in _split_paragraphs(text):
        if fields.get("Status", "").split()[-1:] != ["installed"]:
            continue
        depends = _parse_relation(fields.get("Pre-Depends", "")) + _parse_relation(
            fields.get("Depends", "")
        )
        provides = tuple(g[0] for g in _parse_relation(fields.get("Provides", "")))
        pkg = DebPackage(
            name=fields["Package"],
            arch=fields.get("Architecture", "all"),
            version=fields.get("Version", "0"),
            depends=depends,
            provides=provides,
        )
        old = found.get(pkg.name)
        if old is None or (old.arch not in ("all", _native_arch()) and pkg.arch != old.arch):
            found[pkg.name] = pkg
    return found


def _providers(packages: Mapping[str, DebPackage]) -> dict[str, list[str]]:
    providers: dict[str, list[str]] = {}
    for pkg in packages.values():
        for virtual in pkg.provides:
            providers.setdefault(virtual, []).append(pkg.name)
    for names in providers.values():
        names.sort()
    return providers


def dependency_edges(packages: Mapping[str, DebPackage]) -> dict[str, tuple[str, ...]]:
    """For each installed package, the installed packages its Depends/Pre-Depends pick."""
    providers = _providers(packages)
    edges: dict[str, tuple[str, ...]] = {}
    for pkg in packages.values():
        chosen: set[str] = set()
        for group in pkg.depends:
            for alternative in group:
                if alternative in packages:
                    target = alternative
                elif providers.get(alternative):
                    target = providers[alternative][0]
                else:
                    continue
                if target != pkg.name:
                    chosen.add(target)
                break
        edges[pkg.name] = tuple(sorted(chosen))
    return edges


def closure_of(
    roots: Sequence[str], edges: Mapping[str, Sequence[str]]
) -> tuple[list[str], dict[str, tuple[str, ...]]]:
    """Depth-first walk from ``roots`` in name order: (postorder, acyclic edges).

    An edge to a package still on the walk's stack would close a cycle and is dropped, so the
    result is a DAG and the postorder lists every package after all of its references.
    """
    order: list[str] = []
    kept: dict[str, tuple[str, ...]] = {}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    for root in sorted(set(roots)):
        if root in state:
            continue
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(edges[root]))]
        state[root] = 1
        kept[root] = ()
        while stack:
            name, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                state[name] = 2
                order.append(name)
            elif state.get(child) == 1:
                continue  # back edge: dropping it cuts the cycle
            else:
                kept[name] = (*kept[name], child)
                if child not in state:
                    state[child] = 1
                    kept[child] = ()
                    stack.append((child, iter(edges[child])))
    return order, kept


def plan_items(roots: Sequence[str], packages: Mapping[str, DebPackage]) -> list[StoreEntry]:
    """The store items for the closure of ``roots``, references before referrers."""
    missing = [r for r in roots if r not in packages]
    if missing:
        raise SystemExit(f"make_debian_store: not installed: {', '.join(missing)} (try --install)")
    order, kept = closure_of(roots, dependency_edges(packages))
    paths: dict[str, str] = {}
    entries = []
    for name in order:
        pkg = packages[name]
        refs = tuple(sorted(paths[r] for r in kept[name]))
        digest = store_hash(pkg.name, pkg.version, (p.rsplit("/", 1)[1][:32] for p in refs))
        label = _BAD_NAME_CHARS.sub("_", f"{pkg.name}-{pkg.version}")
        paths[name] = f"{STORE_DIR}/{digest}-{label}"
        entries.append(StoreEntry(package=pkg, path=paths[name], references=refs))
    return entries


def _dpkg_files(pkg: DebPackage) -> list[str]:
    out = subprocess.run(
        ["dpkg", "-L", pkg.query_name], check=True, capture_output=True, text=True
    ).stdout
    return sorted({line for line in out.splitlines() if line.startswith("/") and line != "/."})


def _copy_package(pkg: DebPackage, dest: Path) -> None:
    files = _dpkg_files(pkg)
    parents = {str(Path(f).parent) for f in files}
    dest.mkdir(mode=0o755)
    dirs: list[tuple[Path, int]] = []
    for src in files:
        target = dest / src.lstrip("/")
        try:
            st = os.lstat(src)
        except OSError:
            continue  # listed but gone (removed conffile, diverted path...)
        target.parent.mkdir(parents=True, exist_ok=True)
        if src in parents:  # a directory, or a symlink to one that the list walks through
            target.mkdir(exist_ok=True)
            dirs.append((target, stat.S_IMODE(os.stat(src).st_mode)))
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), target)
        elif stat.S_ISDIR(st.st_mode):
            target.mkdir(exist_ok=True)
            dirs.append((target, stat.S_IMODE(st.st_mode)))
        elif stat.S_ISREG(st.st_mode):
            # A real copy (never a hard link or reflink): the bench must read distinct pages.
            with open(src, "rb") as fin, open(target, "wb") as fout:
                while chunk := fin.read(_CHUNK):
                    fout.write(chunk)
            os.chmod(target, stat.S_IMODE(st.st_mode))
    support = dest / "nix-support"
    support.mkdir(exist_ok=True)
    for target, mode in dirs:
        os.chmod(target, mode | 0o700)


def _write_references(dest: Path, references: Sequence[str]) -> None:
    support = dest / "nix-support"
    (support / "references").write_text("".join(f"{r}\n" for r in references))


def _normalise_times(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (1, 1), follow_symlinks=False)
    os.utime(root, (1, 1), follow_symlinks=False)


def _nar_str(h: hashlib._Hash | None, s: bytes) -> int:
    pad = (8 - len(s) % 8) % 8
    if h is not None:
        h.update(len(s).to_bytes(8, "little"))
        h.update(s)
        h.update(b"\0" * pad)
    return 8 + len(s) + pad


def _nar_node(h: hashlib._Hash, path: str) -> int:
    st = os.lstat(path)
    n = _nar_str(h, b"(") + _nar_str(h, b"type")
    if stat.S_ISLNK(st.st_mode):
        n += _nar_str(h, b"symlink") + _nar_str(h, b"target")
        n += _nar_str(h, os.fsencode(os.readlink(path)))
    elif stat.S_ISDIR(st.st_mode):
        n += _nar_str(h, b"directory")
        for name in sorted(os.fsencode(e) for e in os.listdir(path)):
            n += _nar_str(h, b"entry") + _nar_str(h, b"(") + _nar_str(h, b"name")
            n += _nar_str(h, name) + _nar_str(h, b"node")
            n += _nar_node(h, os.path.join(path, os.fsdecode(name)))
            n += _nar_str(h, b")")
    elif stat.S_ISREG(st.st_mode):
        n += _nar_str(h, b"regular")
        if st.st_mode & 0o100:
            n += _nar_str(h, b"executable") + _nar_str(h, b"")
        n += _nar_str(h, b"contents")
        size = st.st_size
        h.update(size.to_bytes(8, "little"))
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        pad = (8 - size % 8) % 8
        h.update(b"\0" * pad)
        n += 8 + size + pad
    else:
        raise SystemExit(f"make_debian_store: {path}: not a file, directory or symlink")
    return n + _nar_str(h, b")")


def nar_hash_and_size(path: str | os.PathLike[str]) -> tuple[str, int]:
    """The NAR serialisation's sha256 (``sha256:<nix-base32>``) and byte size of ``path``."""
    h = hashlib.sha256()
    size = _nar_str(h, b"nix-archive-1") + _nar_node(h, os.fspath(path))
    return "sha256:" + nix_base32(h.digest()), size


def _write_app(store: Path, references: Sequence[str]) -> str:
    """Write the small application item on top of the closure; return its store path.

    A few KiB (a launcher script and a data file) referring to ``references``, as a user's own
    application sits above its dependencies; the item a warm rebuild after an app change
    changes. Its hash follows from its references, like every other item's.
    """
    digest = store_hash(APP_NAME, APP_VERSION, (r.rsplit("/", 1)[1][:32] for r in references))
    path = f"{STORE_DIR}/{digest}-{APP_NAME}-{APP_VERSION}"
    dest = store / path.rsplit("/", 1)[1]
    tmp = dest.with_name(dest.name + ".tmp")
    for stale in (dest, tmp):
        shutil.rmtree(stale, ignore_errors=True)
    (tmp / "bin").mkdir(parents=True)
    (tmp / "share" / APP_NAME).mkdir(parents=True)
    launcher = tmp / "bin" / APP_NAME
    uses = "".join(f"# uses {r}\n" for r in references)
    launcher.write_text(f"#!/bin/sh\n{uses}exec cat {path}/share/{APP_NAME}/data.txt\n")
    launcher.chmod(0o755)
    lines = (f"{i:05d} closurepack bench application data line\n" for i in range(100))
    (tmp / "share" / APP_NAME / "data.txt").write_text("".join(lines))
    (tmp / "nix-support").mkdir()
    _write_references(tmp, references)
    _normalise_times(tmp)
    tmp.rename(dest)
    return path


def make_store(
    outdir: Path,
    *,
    packages: Sequence[str],
    status_file: Path,
    log: bool = True,
    install: bool = False,
    app: bool = True,
) -> list[dict[str, object]]:
    """Write the store and closure.json under ``outdir``; return the closure.json entries.

    With ``app`` a small application item (``HASH-bench-app-1.0``) referring to the closure's
    top items is added as its root.
    """
    _NATIVE_ARCH[0] = subprocess.run(
        ["dpkg", "--print-architecture"], check=True, capture_output=True, text=True
    ).stdout.strip()
    installed = parse_status(status_file.read_text(encoding="utf-8", errors="replace"))
    missing = [p for p in packages if p not in installed]
    if missing and install:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", *missing], check=True, env=env)
        installed = parse_status(status_file.read_text(encoding="utf-8", errors="replace"))
    entries = plan_items(packages, installed)
    store = outdir / STORE_DIR.lstrip("/")
    store.mkdir(parents=True, exist_ok=True)
    wanted = {e.path.rsplit("/", 1)[1] for e in entries}
    referenced = {r for e in entries for r in e.references}
    tops = sorted(e.path for e in entries if e.path not in referenced)
    app_path = _write_app(store, tops) if app else None
    if app_path is not None:
        wanted.add(app_path.rsplit("/", 1)[1])
    for stale in sorted(set(os.listdir(store)) - wanted):
        shutil.rmtree(store / stale, ignore_errors=True)
    closure: list[dict[str, object]] = []
    for entry in entries:
        dest = store / entry.path.rsplit("/", 1)[1]
        if not (dest / "nix-support" / "references").exists():
            shutil.rmtree(dest, ignore_errors=True)
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            _copy_package(entry.package, tmp)
            _write_references(tmp, entry.references)
            _normalise_times(tmp)
            tmp.rename(dest)
        nar_hash, nar_size = nar_hash_and_size(dest)
        closure.append(
            {
                "path": entry.path,
                "narHash": nar_hash,
                "narSize": nar_size,
                "references": list(entry.references),
            }
        )
        if log:
            print(f"{nar_size / 2**20:9.1f} MiB  {entry.path}", file=sys.stderr)
    if app_path is not None:
        nar_hash, nar_size = nar_hash_and_size(store / app_path.rsplit("/", 1)[1])
        closure.append(
            {"path": app_path, "narHash": nar_hash, "narSize": nar_size, "references": tops}
        )
    for directory in (store, store.parent):
        os.utime(directory, (1, 1))
    closure.sort(key=lambda obj: str(obj["path"]))
    (outdir / "closure.json").write_text(json.dumps(closure, indent=2) + "\n")
    return closure


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--packages", nargs="+", default=list(DEFAULT_PACKAGES))
    parser.add_argument("--status-file", type=Path, default=Path("/var/lib/dpkg/status"))
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--no-app", action="store_true", help="leave out the small application item on top"
    )
    parser.add_argument(
        "--install", action="store_true", help="apt-get install the named packages if missing"
    )
    args = parser.parse_args(argv)
    closure = make_store(
        args.outdir,
        packages=args.packages,
        status_file=args.status_file,
        log=not args.quiet,
        install=args.install,
        app=not args.no_app,
    )
    total = sum(int(str(obj["narSize"])) for obj in closure)
    print(
        f"{len(closure)} items, {total / 2**20:.1f} MiB (NAR) in {args.outdir / 'nix/store'};"
        f" closure in {args.outdir / 'closure.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
