"""``-`` is standard input for ``--closure -`` and ``--plan -``, standard output for
``plan -o -``: through a real ``closurepack`` process, on a small real store in tmp_path."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from clistore import APP, GLIBC, LIBFOO, ZLIB, Store, read_oci, run


def _cli(
    args: list[object], *, stdin: bytes = b"", cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "closurepack.cli", *map(str, args)],
        input=stdin,
        capture_output=True,
        check=False,
        timeout=120,
        cwd=cwd,
    )


def _ok(args: list[object], **kwargs: object) -> bytes:
    result = _cli(args, **kwargs)  # type: ignore[arg-type]
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def test_closure_from_stdin_and_plan_to_stdout(
    store: Store, app_closure: Path, tmp_path: Path
) -> None:
    expected = json.loads(_ok(["plan", "--closure", app_closure, "--json"]))
    # -o - is standard output (not a file named "-"), --closure - is standard input
    out = _ok(["plan", "--closure", "-", "-o", "-"], stdin=app_closure.read_bytes(), cwd=tmp_path)
    plan = json.loads(out)
    assert not (tmp_path / "-").exists()
    assert plan["images"][0]["layers"] == expected["images"][0]["layers"]
    assert plan["images"][0]["roots"] == [APP]
    assert plan["images"][0]["name"] == "stdin"
    # with a closure file as well: both planned together, stdin in its place in the order
    both = json.loads(
        _ok(
            ["plan", "--closure", app_closure, "--closure", "-", "--json"],
            stdin=app_closure.read_bytes(),
        )
    )
    assert [image["name"] for image in both["images"]] == ["app", "stdin"]


def test_plan_from_stdin_for_build_and_build_layer(
    store: Store, app_closure: Path, tmp_path: Path
) -> None:
    plan = _ok(["plan", "--closure", app_closure, "--strategy", "single", "-o", "-"])
    dest = tmp_path / "image"
    _ok(
        ["build", "--plan", "-", "--store-root", store.root, "--no-cache", "-o", f"oci:{dest}"],
        stdin=plan,
        cwd=tmp_path,
    )
    image = read_oci(dest)
    names = set(image.layer_members(0))
    assert {p.lstrip("/") for p in (APP, GLIBC, LIBFOO, ZLIB)} <= names
    out = tmp_path / "layer"
    descriptor = _ok(
        ["build-layer", "--plan", "-", "--layer", "0", "--store-root", store.root, "-o", out],
        stdin=plan,
        cwd=tmp_path,
    )
    assert Path(descriptor.decode().strip()) == out / "layer.json"
    layer = json.loads((out / "layer.json").read_text())
    assert layer["digest"] == image.layer_digests[0]


def test_bad_stdin_is_one_line_naming_stdin(tmp_path: Path, app_closure: Path) -> None:
    for args in (["plan", "--closure", "-"], ["build", "--plan", "-", "-o", f"oci:{tmp_path}/x"]):
        result = _cli(args, stdin=b"{nope")
        assert result.returncode == 2
        assert result.stdout == b""
        err = result.stderr.decode()
        assert err.count("\n") == 1, err
        assert err.startswith("closurepack: error: <stdin>"), err
    result = _cli(["plan", "--closure", "-", "--closure", "-"], stdin=app_closure.read_bytes())
    assert result.returncode == 2
    assert b"standard input can be read only once" in result.stderr
    assert not (tmp_path / "x").exists()


def test_in_process_stdin_and_stdout(
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same through ``cli.main`` (so coverage sees it), standard input replaced."""

    def stdin(data: bytes) -> None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))

    monkeypatch.chdir(tmp_path)
    stdin(app_closure.read_bytes())
    status, out, err = run(["plan", "--closure", "-", "-o", "-", "--strategy", "single"], capsys)
    assert status == 0, err
    plan = json.loads(out)
    assert plan["images"][0]["roots"] == [APP]
    assert not (tmp_path / "-").exists()
    stdin(out.encode())
    layer = tmp_path / "layer"
    argv = ["build-layer", "--plan", "-", "--layer", "9", "--store-root", store.root, "-o", layer]
    status, _, err = run(argv, capsys)
    assert status == 2
    assert "--layer must be between 0 and 0 for <stdin>" in err
    stdin(b"")
    status, _, err = run(["build", "--plan", "-", "-o", f"oci:{tmp_path / 'x'}"], capsys)
    assert status == 2
    assert err.startswith("closurepack: error: <stdin>: not valid JSON")
