"""Build the small real Nix closure of tests/fixtures/nix/closure.nix for integration tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "EXPECTED_OUTPUT",
    "NIX_FIXTURE_DIR",
    "NixClosure",
    "NixUnavailableError",
    "build_closure",
]

NIX_FIXTURE_DIR = Path(__file__).parent / "fixtures" / "nix"

#: What ``<app>/bin/app`` prints when every layer was unpacked correctly: it reads files with
#: spaces, non-ASCII, long and deep names, a relative symlink, a hard link pair, lists a
#: directory (with an empty subdirectory), runs an executable script of the data item and cats
#: the single-file item. It prints no store path, so it is the same for any build.
EXPECTED_OUTPUT = """\
app: start
hello from a file with spaces and accents
konnichiwa from 日本
hello from a file with spaces and accents
long name ok
deep path ok
hard link content
hard link content
empty dir
hard-a
hard-b
greet: hello world
note: a single-file store item
app: done
"""


class NixUnavailableError(Exception):
    """Nix (or the static busybox the fixture copies) is not installed here."""


@dataclass(frozen=True)
class NixClosure:
    """The built fixture: the app's store path, the full closure and what the app prints.

    ``paths`` is the closure as ``nix-store -qR`` lists it (sorted); ``app`` is the root item.
    """

    app: str
    paths: tuple[str, ...]
    expected_output: str

    @property
    def entrypoint(self) -> str:
        """The command to run in an image: ``<app>/bin/app``."""
        return f"{self.app}/bin/app"

    def copy_under(self, root: Path) -> Path:
        """Copy every item to ``root/nix/store`` (a store root for ``--store-root``); returns
        that store directory."""
        store = root / "nix" / "store"
        store.mkdir(parents=True)
        for path in self.paths:
            target = store / path.rsplit("/", 1)[1]
            if os.path.isdir(path):
                shutil.copytree(path, target, symlinks=True)
            else:
                shutil.copy2(path, target)
        return store

    def item(self, name: str) -> str:
        """The closure path whose name (after the hash) is ``name``: busybox, data, note.txt."""
        found = [p for p in self.paths if p.rsplit("/", 1)[-1].split("-", 1)[-1] == name]
        if len(found) != 1:
            raise KeyError(name)
        return found[0]


def _run(args: list[str]) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def build_closure(nix_file: Path = NIX_FIXTURE_DIR / "closure.nix") -> NixClosure:
    """Build ``nix_file`` with real Nix (cached after the first time) and describe the result.

    Raises NixUnavailableError when nix-build or /bin/busybox is missing, RuntimeError when the
    build itself fails.
    """
    if shutil.which("nix-build") is None or shutil.which("nix-store") is None:
        raise NixUnavailableError("nix-build is not installed")
    if not os.path.isfile("/bin/busybox"):
        raise NixUnavailableError("/bin/busybox (Debian busybox-static) is not installed")
    out = _run(
        [
            "nix-build",
            "--option",
            "build-users-group",
            "",
            "--option",
            "substituters",
            "",
            "--no-out-link",
            "--quiet",
            str(nix_file),
        ]
    )
    app = out.strip().splitlines()[-1]
    paths = tuple(sorted(_run(["nix-store", "--query", "--requisites", app]).split()))
    return NixClosure(app=app, paths=paths, expected_output=EXPECTED_OUTPUT)
