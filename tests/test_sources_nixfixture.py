"""The real Nix fixture builds, has the promised shape, and its app prints what it should."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from nixfixture import NixClosure

pytestmark = pytest.mark.integration


def test_fixture_closure_shape(nix_closure: NixClosure) -> None:
    names = sorted(p.rsplit("/", 1)[-1].split("-", 1)[1] for p in nix_closure.paths)
    assert names == ["app", "busybox", "data", "note.txt"]
    assert nix_closure.app in nix_closure.paths
    assert os.path.isfile(nix_closure.item("note.txt"))
    busybox = nix_closure.item("busybox")
    for applet in ("sh", "echo", "cat", "ls"):
        assert os.readlink(f"{busybox}/bin/{applet}") == "busybox"
    data = nix_closure.item("data")
    assert os.path.isdir(f"{data}/tree/empty dir")
    assert os.listdir(f"{data}/tree/empty dir") == []
    assert os.stat(f"{data}/bin/greet").st_mode & stat.S_IXUSR
    assert os.readlink(f"{data}/relative link") == "héllo wörld.txt"
    assert os.path.samefile(f"{data}/tree/hard-a", f"{data}/tree/hard-b")
    longest = max((len(os.path.join(d, f)) for d, _, fs in os.walk(data) for f in fs))
    assert longest - len(data) > 255
    assert max(len(n.encode()) for n in os.listdir(data)) > 100


def test_fixture_app_prints_expected_output(nix_closure: NixClosure) -> None:
    out = subprocess.run(
        [nix_closure.entrypoint], capture_output=True, check=True, env={}, text=True
    ).stdout
    assert out == nix_closure.expected_output
