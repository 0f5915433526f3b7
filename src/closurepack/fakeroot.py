"""``--fakeroot-script FILE`` (dockerTools' ``fakeRootCommands``): a shell script run under
Debian's ``fakeroot`` in a scratch copy of the customisation tree, whose result, with the owners
fakeroot recorded, becomes the customisation layer.

Three fakeroot runs share one save file (``-s``/``-i``): a helper gives the copied tree the owners
and modes of its entries, the script runs (``/bin/sh -e FILE``, its working directory the
scratch root), and the helper lists the tree as fakeroot reports it. Nothing from the store is
copied or run; the result's file contents are read into memory (at most :data:`LIMIT` bytes) and
the scratch tree is removed before any layer is built.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from closurepack._fs import locked_temp_dir
from closurepack.customisation import (
    Customisation,
    check_store,
    customisation_entries,
)
from closurepack.errors import OptionError, StoreError, ToolError
from closurepack.graph import STORE_DIRS
from closurepack.tarentries import TreeEntry

__all__ = ["LIMIT", "run_fakeroot_script"]

#: The most bytes of file contents a script's tree may hold (they are kept in memory).
LIMIT = 256 << 20
_HELPER = Path(__file__).with_name("_fakeroot_helper.py")
_PREFIX = "closurepack-fakeroot-"


def _materialise(entries: Sequence[TreeEntry], root: Path) -> list[list[object]]:
    """Write ``entries`` under ``root`` (owned by whoever runs this); return the owners and
    modes the helper is to give them under fakeroot: ``[name, uid, gid, mode or None]``, the
    missing parent directories root's with mode 0o755."""
    root.mkdir()
    owners: dict[str, list[object]] = {}
    for entry in entries:
        name = entry.name.strip("/")
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent not in owners:
                (root / parent).mkdir(exist_ok=True)
                owners[parent] = [parent, 0, 0, 0o755]
        path = root / name
        if entry.kind == "dir":
            path.mkdir(exist_ok=True)
            mode: int | None = 0o755 if entry.mode is None else entry.mode
        elif entry.kind == "symlink":
            path.symlink_to(entry.target)
            mode = None
        else:
            if entry.source is not None:
                shutil.copyfile(entry.source, path, follow_symlinks=False)
            else:
                path.write_bytes(entry.data)
            mode = 0o644 if entry.mode is None else entry.mode
        if name not in owners or entry.kind != "dir":  # a directory given twice keeps its first
            owners[name] = [name, entry.uid, entry.gid, mode]
    return list(owners.values())


def _last_line(log: Path) -> str:
    try:
        with log.open("rb") as handle:
            handle.seek(max(0, log.stat().st_size - 4096))
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    lines = [line.strip() for line in lines if line.strip()]
    return f" (its last output: {lines[-1]})" if lines else ""


def _fakeroot(
    argv: Sequence[str | Path], *, cwd: Path, log: Path, what: str, capture: bool = False
) -> bytes:
    """Run ``fakeroot ARGV`` in ``cwd``, its output to ``log`` (standard output returned instead
    when ``capture``); a ToolError naming ``what`` when it fails."""
    with log.open("ab") as out:
        proc = subprocess.run(
            [str(a) for a in argv],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else out,
            stderr=out,
            check=False,
        )
    if proc.returncode < 0:
        raise ToolError(f"{what}: killed by signal {-proc.returncode}{_last_line(log)}")
    if proc.returncode != 0:
        raise ToolError(f"{what}: exited with status {proc.returncode}{_last_line(log)}")
    return proc.stdout or b""


def _read(path: Path, size_left: int, where: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise StoreError(f"{where}: cannot read: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(size_left + 1)
    if len(data) > size_left:
        raise OptionError(
            f"{where}: the script's files pass {LIMIT >> 20} MiB; bring large trees with --extra"
        )
    return data


def _entries(listing: list[list[object]], root: Path, script: Path) -> list[TreeEntry]:
    """The layer's entries from the helper's listing, file contents read from ``root``."""
    entries: list[TreeEntry] = []
    left = LIMIT
    for raw_name, kind, raw_mode, raw_uid, raw_gid, target in listing:
        name = str(raw_name)
        mode, uid, gid = int(str(raw_mode)), int(str(raw_uid)), int(str(raw_gid))
        where = f"--fakeroot-script {script}: /{name}"
        if kind == "dir":
            entries.append(TreeEntry(name, "dir", mode, uid=uid, gid=gid))
        elif kind == "symlink":
            entries.append(TreeEntry(name, "symlink", target=str(target), uid=uid, gid=gid))
        elif kind == "file":
            data = _read(root / name, left, where)
            left -= len(data)
            entries.append(TreeEntry(name, "file", mode, data=data, uid=uid, gid=gid))
        else:
            raise OptionError(f"{where} is {kind}: a layer holds files, directories and symlinks")
    return entries


def run_fakeroot_script(customisation: Customisation) -> Customisation:
    """``customisation`` with its ``fakeroot_script`` run: ``prepared`` holds the entries of
    the tree it left (unchanged when there is no script, or it has already run). A ToolError
    gives the script's exit status; an OptionError names an entry it made over the store."""
    script = customisation.fakeroot_script
    if script is None or customisation.prepared is not None:
        return customisation
    what = f"--fakeroot-script {script}"
    if not script.is_file():
        raise OptionError(f"{what}: no such file")
    fakeroot = shutil.which("fakeroot")
    if fakeroot is None:
        raise ToolError(f"{what}: fakeroot is not installed (Debian's package fakeroot)")
    entries = customisation_entries(customisation)
    helper: list[str | Path] = [sys.executable, "-I", _HELPER]
    with locked_temp_dir(Path(tempfile.gettempdir()), _PREFIX) as work:
        root, save, log = work / "root", work / "owners", work / "log"
        plan = work / "plan.json"
        plan.write_text(json.dumps(_materialise(entries, root)))
        _fakeroot(
            [fakeroot, "-s", save, "--", *helper, "own", root, plan],
            cwd=work,
            log=log,
            what=f"{what}: copying the customisation tree",
        )
        _fakeroot(
            [fakeroot, "-i", save, "-s", save, "--", "/bin/sh", "-e", script.resolve()],
            cwd=root,
            log=log,
            what=what,
        )
        listed = _fakeroot(
            [fakeroot, "-i", save, "--", *helper, "list", root],
            cwd=work,
            log=log,
            what=f"{what}: listing its result",
            capture=True,
        )
        prepared = _entries(json.loads(listed), root, script)
    stores = (customisation.store_dir,) if customisation.store_dir else STORE_DIRS
    # A directory above the store (/nix, holding a --nix-db's /nix/var) is there as a parent
    # only: it is left to the tar writer, which makes parents as every store layer has them.
    prepared = [entry for entry in prepared if not _above_store(entry, stores)]
    check_store([entry.name for entry in prepared], stores, what)
    return dataclasses.replace(customisation, prepared=tuple(prepared))


def _above_store(entry: TreeEntry, stores: tuple[str, ...]) -> bool:
    """Whether ``entry`` is a directory that is a parent of one of ``stores``."""
    name = entry.name.strip("/")
    return entry.kind == "dir" and any(s.strip("/").startswith(name + "/") for s in stores)
