"""The CLI on a real Nix closure (tests/fixtures/nix): live queries, `nix path-info` files and
scanning agree, and the image built from a store path holds exactly the closure."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from clistore import read_oci, run
from nixfixture import NixClosure

pytestmark = pytest.mark.integration


def _layers(argv: list[object], capsys: pytest.CaptureFixture[str]) -> list[tuple[str, ...]]:
    status, out, err = run(["plan", *argv, "--json"], capsys)
    assert status == 0, err
    return sorted(tuple(layer["paths"]) for layer in json.loads(out)["images"][0]["layers"])


def test_live_query_closure_file_and_scan_agree(
    nix_closure: NixClosure, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if shutil.which("nix") is None:
        pytest.skip("nix is not installed")
    info = subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command", "path-info", "--json",
         "--recursive", nix_closure.app],
        capture_output=True,
        check=True,
        timeout=120,
    )  # fmt: skip
    closure = tmp_path / "app.json"
    closure.write_bytes(info.stdout)
    expected = sorted((p,) for p in nix_closure.paths)
    live = _layers([nix_closure.app, "--strategy", "per-item"], capsys)
    from_file = _layers(["--closure", closure, "--strategy", "per-item"], capsys)
    scanned = _layers([nix_closure.app, "--store-root", "/", "--strategy", "per-item"], capsys)
    assert live == from_file == scanned == expected


def test_build_from_a_store_path_holds_the_closure(
    nix_closure: NixClosure, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "layout"
    status, out, err = run(
        ["build", nix_closure.app, "--entrypoint", nix_closure.entrypoint, "--no-cache",
         "--symlink", f"/bin={nix_closure.item('busybox')}/bin", "-o", f"oci:{dest}"],
        capsys,
    )  # fmt: skip
    assert status == 0, err
    image = read_oci(dest)
    assert out.strip() == image.index["manifests"][0]["digest"]
    recorded = json.loads(image.config["config"]["Labels"]["dev.closurepack.layers"])
    assert sorted(p for paths in recorded.values() for p in paths) == sorted(nix_closure.paths)
    assert image.config["config"]["Entrypoint"] == [nix_closure.entrypoint]
    top = image.layer_members(len(image.layer_digests) - 1)
    assert top["bin"].linkname == f"{nix_closure.item('busybox')}/bin"
    assert run(["verify", f"oci:{dest}"], capsys)[0] == 0
