"""The one-way flow of STYLE.md, checked: imports only point backwards, click only in the CLI
package, and every module's ``__all__`` is sorted and complete."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import closurepack

SRC = Path(closurepack.__file__).parent

# Rank of each module along graph -> plan -> layers -> image -> transports. A module may import
# modules of its own rank or lower, never higher.
RANKS: dict[str, int] = {
    "errors": 0,
    "_lazy": 0,
    "jsontext": 1,
    "digest": 1,
    "mediatypes": 1,
    "options": 1,
    "_fs": 1,
    "pagecache": 1,
    "readall": 1,
    "_workdirs": 1,
    "blobstamp": 1,
    "graph": 2,
    "sources": 3,
    "storenames": 2,
    "plan": 3,
    "strategies": 4,
    "planner": 4,
    "plantable": 4,
    "plancache": 4,
    "fleetregions": 4,
    "fleetfloor": 4,
    "fleet": 4,
    "fleetshare": 4,
    "fleetadopt": 4,
    "fleetrepair": 4,
    "fleetunion": 4,
    "chunkedtoc": 4,
    "chunked": 5,
    "chunkedcheck": 5,
    "chunkedmeta": 5,
    "chunkedsplit": 5,
    "gzipblocks": 4,
    "compression": 5,
    "decompression": 5,
    "tarheader": 5,
    "tarentries": 5,
    "tarstream": 5,
    "layer": 5,
    "remotelayer": 5,
    "layerbuild": 5,
    "layerpool": 5,
    "layerlist": 5,
    "cache": 5,
    "cachedir": 1,
    "codestamps": 1,
    "cachegc": 5,
    "cacheentry": 5,
    "cachelocks": 5,
    "accounts": 5,
    "customisation": 5,
    "storedb": 5,
    "perms": 5,
    "fakeroot": 5,
    "_fakeroot_helper": 5,
    "build": 6,
    "image": 7,
    "artifacts": 7,
    "sbom": 7,
    "sbomoptions": 1,
    "platforms": 7,
    "imageindex": 7,
    "imageconfig": 7,
    "readback": 8,
    "basefiles": 8,
    "validate": 8,
    "transports": 8,
    "referrers": 8,
    "diff": 9,
    "htmlview": 9,
    "registry": 8,
    "previous": 9,
    "workflow": 9,
    "buildjob": 9,
    "buildplan": 9,
    "buildoptions": 9,
    "layerjob": 9,
    "jobsetup": 9,
    "delivery": 9,
    "sbomjob": 9,
    "multiarch": 9,
    "copying": 9,
    "pushrecord": 9,
    "cacheadmin": 9,
    "cli": 10,
    "__init__": 10,
    "__main__": 10,
}


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("")
        found.append((".".join(rel.parts), path))
    return found


def _rank(module: str) -> int:
    top = module.split(".", maxsplit=1)[0]
    assert top in RANKS, f"module {module} has no rank in tests/test_architecture.py"
    return RANKS[top]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_every_module_has_a_rank() -> None:
    for module, _ in _modules():
        _rank(module)


def test_imports_point_backwards() -> None:
    problems = []
    for module, path in _modules():
        if module == "__init__":
            continue
        for name in _imports(path):
            if not name.startswith("closurepack."):
                continue
            target = name.removeprefix("closurepack.")
            if _rank(target) > _rank(module):
                problems.append(f"{module} imports {target}")
    assert problems == []


def test_only_the_cli_imports_click() -> None:
    users = [m for m, p in _modules() if any(n.split(".")[0] == "click" for n in _imports(p))]
    assert users
    assert [m for m in users if m.split(".")[0] != "cli"] == []


def test_library_never_prints() -> None:
    offenders = []
    for module, path in _modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "print"
            ):
                offenders.append(f"{module}:{node.lineno}")
    assert offenders == []


def _isort_key(name: str) -> tuple[int, str]:
    """ruff's RUF022 order: CONSTANTS, then Classes, then functions, each alphabetical."""
    if name.isupper() or (name.upper() == name and "_" in name):
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


def test_all_is_sorted_and_complete() -> None:
    problems = []
    for info in pkgutil.walk_packages(closurepack.__path__, "closurepack."):
        module = importlib.import_module(info.name)
        exported = getattr(module, "__all__", None)
        if exported is None:
            problems.append(f"{info.name} has no __all__")
            continue
        if list(exported) != sorted(exported, key=_isort_key):
            problems.append(f"{info.name}.__all__ is not sorted")
        public = {
            name
            for name, value in vars(module).items()
            if not name.startswith("_")
            and getattr(value, "__module__", None) == info.name
            and (callable(value) or isinstance(value, type))
        }
        missing = public - set(exported)
        if missing:
            problems.append(f"{info.name}.__all__ lacks {sorted(missing)}")
    assert problems == []
