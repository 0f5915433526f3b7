"""`closurepack plan`, bad input of every kind, --help and --version: through ``cli.main`` and a
real subprocess, on a small real store made in tmp_path (no Nix needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clistore import APP, GLIBC, GRAPH, LIBFOO, TOOL, ZLIB, Store, item, make_store, run, run_child

COMMANDS = [
    "plan",
    "build",
    "build-layer",
    "assemble",
    "copy",
    "verify",
    "inspect",
    "diff",
    "cache",
]
STRATEGIES = ["auto", "popularity", "size", "dominator", "single", "per-item"]


def _plan_json(argv: list[object], capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    status, out, err = run(["plan", *argv, "--json"], capsys)
    assert status == 0, err
    plan = json.loads(out)
    assert isinstance(plan, dict)
    return plan


def _layers(plan: dict[str, object], image: int = 0) -> list[list[str]]:
    images = plan["images"]
    assert isinstance(images, list)
    return [layer["paths"] for layer in images[image]["layers"]]


# plan -------------------------------------------------------------------------------------------


def test_plan_table_shows_layer_numbers_counts_sizes_and_largest_names(
    app_closure: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(["plan", "--closure", app_closure, "--strategy", "single"], capsys)
    assert status == 0
    assert err == ""
    lines = out.splitlines()
    assert "strategy single" in lines[0]
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["layer", "items"])
    assert "image 0 app" in lines[header - 1]
    assert "4 items" in lines[header - 1]
    row = lines[header + 1].split()
    # one layer, four items, 18000 bytes = 17.6 KiB, the three largest by NAR size, then "..."
    assert row[:4] == ["1", "4", "17.6", "KiB"]
    assert " ".join(row[4:]) == "glibc-2.39, libfoo-1.0, zlib-1.3, ..."
    assert len(lines) == header + 2


def test_plan_table_one_row_per_layer(
    app_closure: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(["plan", "--closure", app_closure, "--strategy", "per-item"], capsys)
    assert status == 0
    rows = [line.split() for line in out.splitlines() if line[:5].strip().isdigit()]
    assert [r[0] for r in rows] == ["1", "2", "3", "4"]
    assert {r[1] for r in rows} == {"1"}
    by_name = {r[-1]: r[2:4] for r in rows}
    assert by_name["glibc-2.39"] == ["8.8", "KiB"]
    assert by_name["app-1.0"] == ["1000", "B"]


def test_plan_json_contract(app_closure: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = _plan_json(["--closure", app_closure, "--max-layers", "10"], capsys)
    assert plan["format"] == "closurepack-plan"
    assert plan["version"] == 1
    assert plan["store_dir"] == "/nix/store"
    assert plan["strategy"] == "stable"
    assert plan["max_layers"] == 10
    images = plan["images"]
    assert isinstance(images, list)
    assert len(images) == 1
    assert images[0]["name"] == "app"
    assert images[0]["roots"] == [APP]
    paths = [p for layer in _layers(plan) for p in layer]
    assert sorted(paths) == sorted([GLIBC, ZLIB, LIBFOO, APP])
    assert len(paths) == len(set(paths))
    for layer in images[0]["layers"]:
        assert layer["size"] == sum(GRAPH[p][1] for p in layer["paths"])
        assert layer["paths"] == sorted(layer["paths"])


def test_plan_output_file_holds_the_json(
    app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = _plan_json(["--closure", app_closure], capsys)
    out_file = tmp_path / "plan.json"
    status, out, err = run(["plan", "--closure", app_closure, "-o", out_file], capsys)
    assert (status, out, err) == (0, "", "")
    assert json.loads(out_file.read_text()) == expected
    # with --json as well, the JSON still goes only to the file
    out_file.unlink()
    status, out, _ = run(["plan", "--closure", app_closure, "--json", "-o", out_file], capsys)
    assert (status, out) == (0, "")
    assert json.loads(out_file.read_text()) == expected
    assert sorted(os.listdir(tmp_path)) == ["app.json", "plan.json", "root"]


def test_plan_output_file_that_cannot_be_written(
    app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing_dir = tmp_path / "no" / "plan.json"
    _expect_error(
        ["plan", "--closure", app_closure, "-o", missing_dir],
        capsys,
        str(missing_dir),
        "cannot write",
        status=5,
    )
    _expect_error(
        ["plan", "--closure", app_closure, "-o", tmp_path], capsys, str(tmp_path), "directory"
    )
    assert sorted(os.listdir(tmp_path)) == ["app.json", "root"]


def test_several_closures_one_image_each_in_order_sharing_layers(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = store.closure_file(tmp_path / "app.json", [APP])
    tool = store.closure_file(tmp_path / "tool.json.zst.json", [TOOL])
    plan = _plan_json(["--closure", app, "--closure", tool, "--strategy", "per-item"], capsys)
    images = plan["images"]
    assert isinstance(images, list)
    assert [image["roots"] for image in images] == [[APP], [TOOL]]
    assert [image["name"] for image in images] == ["app", "tool"]
    app_layers, tool_layers = _layers(plan, 0), _layers(plan, 1)
    assert sorted(p for layer in app_layers for p in layer) == store.closure_of([APP])
    assert sorted(p for layer in tool_layers for p in layer) == store.closure_of([TOOL])
    shared = [layer for layer in app_layers if layer in tool_layers]
    assert [GLIBC] in shared
    assert [ZLIB] in shared
    # the reverse order gives the images in the reverse order
    swapped = _plan_json(["--closure", tool, "--closure", app, "--strategy", "per-item"], capsys)
    assert [image["roots"] for image in swapped["images"]] == [[TOOL], [APP]]  # type: ignore[index,union-attr]


def test_same_file_twice_gets_distinct_names(
    app_closure: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = _plan_json(["--closure", app_closure, "--closure", app_closure], capsys)
    assert [image["name"] for image in plan["images"]] == ["app", "app-2"]  # type: ignore[union-attr]
    assert _layers(plan, 0) == _layers(plan, 1)


def test_store_paths_are_scanned_under_the_store_root(
    store: Store, app_closure: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from_file = _plan_json(["--closure", app_closure, "--strategy", "per-item"], capsys)
    scanned = _plan_json(["--store-root", store.root, APP, "--strategy", "per-item"], capsys)
    assert sorted(map(tuple, _layers(scanned))) == sorted(map(tuple, _layers(from_file)))
    assert scanned["images"][0]["name"] == "app-1.0"  # type: ignore[index]


def test_previous_plan_layers_are_reused(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old.json"
    store.closure_file(tmp_path / "lib.json", [LIBFOO])
    status, _, err = run(
        ["plan", "--closure", tmp_path / "lib.json", "--strategy", "single", "-o", old], capsys
    )
    assert status == 0, err
    both = store.closure_file(tmp_path / "both.json", [APP, TOOL])
    plan = _plan_json(["--closure", both, "--strategy", "per-item", "--previous", old], capsys)
    layers = plan["images"][0]["layers"]  # type: ignore[index]
    assert layers[0] == {
        "paths": sorted([GLIBC, ZLIB, LIBFOO]),
        "size": 17000,
        "origin": "previous",
    }
    assert sorted(layer["paths"][0] for layer in layers[1:]) == sorted([APP, TOOL])
    # without --previous the same strategy makes a layer per item
    assert len(_layers(_plan_json(["--closure", both, "--strategy", "per-item"], capsys))) == 5


def test_previous_image_layers_are_reused(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lib = store.closure_file(tmp_path / "lib.json", [LIBFOO])
    archive = tmp_path / "lib.tar"
    layout = tmp_path / "layout"
    for dest in (f"docker-archive:{archive}", f"oci:{layout}:v1"):
        argv = ["build", "--closure", lib, "--store-root", store.root, "--strategy", "single"]
        status, _, err = run([*argv, "--no-cache", "-o", dest], capsys)
        assert status == 0, err
    both = store.closure_file(tmp_path / "both.json", [APP, TOOL])
    for previous in (f"docker-archive:{archive}", str(archive), f"oci:{layout}:v1", str(layout)):
        plan = _plan_json(
            ["--closure", both, "--strategy", "per-item", "--previous", previous], capsys
        )
        layers = plan["images"][0]["layers"]  # type: ignore[index]
        assert layers[0]["paths"] == sorted([GLIBC, ZLIB, LIBFOO]), previous
        assert layers[0]["origin"] == "previous"
        assert len(layers) == 3


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_plans_every_item_once(
    strategy: str, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    both = store.closure_file(tmp_path / "both.json", [APP, TOOL])
    if strategy == "per-item":  # one layer per item, or a clear error
        _expect_error(
            ["plan", "--closure", both, "--strategy", strategy, "--max-layers", "5"],
            capsys,
            str(both),
            "'per-item' needs 5 layers",
        )
    for max_layers in (6, 100) if strategy == "per-item" else (2, 3, 100):
        plan = _plan_json(
            ["--closure", both, "--strategy", strategy, "--max-layers", max_layers], capsys
        )
        assert plan["strategy"] == strategy
        layers = _layers(plan)
        paths = [p for layer in layers for p in layer]
        assert sorted(paths) == sorted(GRAPH)
        assert len(paths) == len(set(paths))
        assert 1 <= len(layers) <= max(1, max_layers - 1)
    if strategy == "single":
        assert len(layers) == 1
    if strategy == "per-item":
        assert len(layers) == 5


def test_json_pipeline_inline_and_from_file(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    both = store.closure_file(tmp_path / "both.json", [APP, TOOL])
    pipeline = json.dumps([["subcomponent_out", [APP]], ["over", "rest", ["popularity_contest"]]])
    inline = _plan_json(["--closure", both, "--strategy", pipeline], capsys)
    (tmp_path / "pipe.json").write_text(pipeline)
    from_file = _plan_json(["--closure", both, "--strategy", f"@{tmp_path / 'pipe.json'}"], capsys)
    assert _layers(inline) == _layers(from_file)
    layers = _layers(inline)
    # subcomponent_out: APP and everything it refers to; the rest (TOOL) in one layer
    assert layers == [sorted([GLIBC, ZLIB, LIBFOO, APP]), [TOOL]]
    assert sorted(p for layer in layers for p in layer) == sorted(GRAPH)


@pytest.mark.parametrize(("max_layers", "layers"), [("1", 1), ("2", 1), ("127", 4)])
def test_max_layers_bounds_that_work(
    max_layers: str, layers: int, app_closure: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = _plan_json(["--closure", app_closure, "--max-layers", max_layers], capsys)
    assert plan["max_layers"] == int(max_layers)
    assert len(_layers(plan)) == layers


# bad input --------------------------------------------------------------------------------------


def _expect_error(
    argv: list[object],
    capsys: pytest.CaptureFixture[str],
    *must_say: str,
    status: int = 2,
) -> str:
    """Run, expect ``status``, nothing on stdout and one line on stderr saying ``must_say``."""
    code, out, err = run(argv, capsys)
    assert code == status, err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("closurepack: error: ")
    for text in must_say:
        assert text in lines[0], (text, lines[0])
    assert "Traceback" not in err
    return lines[0]


def _write(path: Path, entries: object) -> Path:
    path.write_text(json.dumps(entries))
    return path


def _entry(path: str, refs: list[str] | None = None, size: object = 100) -> dict[str, object]:
    return {"path": path, "narSize": size, "references": refs or []}


BAD_CLOSURES: dict[str, tuple[object, tuple[str, ...]]] = {
    "unparsable": ("[{not json", ("invalid JSON",)),
    "not-a-closure": ("hello\n", ("not a closure file",)),
    "missing-ref": (
        [_entry(APP, [GLIBC])],
        (APP, GLIBC, "not in the closure"),
    ),
    "cycle": (
        [_entry(APP, [GLIBC]), _entry(GLIBC, [APP])],
        ("cycle", APP, GLIBC),
    ),
    "outside-store": (
        [_entry(APP), _entry("/opt/" + "1" * 32 + "-x")],
        ("/opt/", "not a direct child of the store /nix/store"),
    ),
    "dotdot": ([_entry("/nix/store/../etc/passwd")], ("'..'", "/nix/store/../etc/passwd")),
    "relative": ([_entry("nix/store/" + "1" * 32 + "-x")], ("not absolute",)),
    "duplicate": ([_entry(APP), _entry(APP)], ("duplicate", APP)),
    "negative-size": ([_entry(APP, size=-5)], (APP, "narSize", "-5")),
    "string-size": ([_entry(APP, size="big")], (APP, "narSize")),
    "empty": ("", ("empty",)),
    "refs-not-list": ([{"path": APP, "references": "x"}], (APP, "references")),
}


@pytest.mark.parametrize("case", sorted(BAD_CLOSURES))
def test_bad_closure_file_is_one_line_naming_file_and_item(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content, must_say = BAD_CLOSURES[case]
    bad = tmp_path / f"{case}.json"
    if isinstance(content, str):
        bad.write_text(content)
    else:
        _write(bad, content)
    out_file = tmp_path / "plan.json"
    _expect_error(["plan", "--closure", bad, "-o", out_file], capsys, str(bad), *must_say)
    assert not out_file.exists()
    dest = tmp_path / "image.tar"
    argv = ["build", "--closure", bad, "--no-cache", "-o", f"docker-archive:{dest}"]
    _expect_error(argv, capsys, str(bad), *must_say)
    assert sorted(os.listdir(tmp_path)) == [bad.name]


def test_missing_closure_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.json"
    _expect_error(["plan", "--closure", missing], capsys, str(missing), "cannot read")


def test_no_input_at_all(capsys: pytest.CaptureFixture[str]) -> None:
    _expect_error(["plan"], capsys, "--closure")


@pytest.mark.parametrize(
    ("strategy", "must_say"),
    [
        ("fastest", ("unknown strategy 'fastest'", "auto")),
        ('[["no_such_step"]]', ("--strategy", "no_such_step", "unknown step")),
        ('[["limit_layers", "x"]]', ("--strategy", "limit_layers")),
        ("[[", ("--strategy",)),
        ("@/nonexistent/pipe.json", ("/nonexistent/pipe.json",)),
    ],
)
def test_bad_strategy(
    strategy: str,
    must_say: tuple[str, ...],
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out_file = tmp_path / "plan.json"
    _expect_error(
        ["plan", "--closure", app_closure, "--strategy", strategy, "-o", out_file],
        capsys,
        *must_say,
    )
    assert not out_file.exists()


@pytest.mark.parametrize("value", ["0", "128", "-3", "1000"])
def test_max_layers_out_of_bounds(
    value: str, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _expect_error(
        ["plan", "--closure", app_closure, "--max-layers", value],
        capsys,
        "--max-layers",
        "between 1 and 127",
        value,
    )
    dest = tmp_path / "x.tar"
    _expect_error(
        ["build", "--closure", app_closure, "--max-layers", value, "-o", f"docker-archive:{dest}"],
        capsys,
        "--max-layers",
        value,
    )
    assert not dest.exists()


def test_max_layers_not_a_number(app_closure: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _expect_error(
        ["plan", "--closure", app_closure, "--max-layers", "many"], capsys, "--max-layers", "many"
    )
    assert "closurepack plan --help" in line


def test_unknown_option_and_command(capsys: pytest.CaptureFixture[str]) -> None:
    _expect_error(["plan", "--frobnicate"], capsys, "--frobnicate")
    _expect_error(["frobnicate"], capsys, "frobnicate")


@pytest.mark.parametrize(
    ("previous", "must_say"),
    [
        ("nowhere", ("--previous nowhere", "no such plan file or image")),
        ("oci:{tmp}/nolayout", ("nolayout",)),
        ("{tmp}/junk.bin", ("junk.bin", "neither a plan (JSON) nor an image")),
        ("{tmp}/badplan.json", ("badplan.json", "not valid JSON")),
        ("{tmp}/notplan.json", ("notplan.json", "not a layer plan")),
    ],
)
def test_bad_previous(
    previous: str,
    must_say: tuple[str, ...],
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "junk.bin").write_bytes(b"\x00\x01binary junk")
    (tmp_path / "badplan.json").write_text("{oops")
    (tmp_path / "notplan.json").write_text('{"layers": []}')
    code, out, err = run(
        ["plan", "--closure", app_closure, "--previous", previous.format(tmp=tmp_path)], capsys
    )
    assert code == 2  # bad input, never the destination status 5
    assert out == ""
    assert len(err.splitlines()) == 1
    assert "destination" not in err
    for text in must_say:
        assert text in err


@pytest.mark.parametrize(
    "source",
    ["oci:{tmp}/nolayout", "docker-archive:{tmp}/missing.tar", "oci-archive:{tmp}/x", "ftp:x"],
)
def test_missing_from_image_is_bad_input_not_a_destination_problem(
    source: str, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "out"
    line = _expect_error(
        ["build", "--closure", app_closure, "--from", source.format(tmp=tmp_path),
         "-o", f"oci:{dest}"],
        capsys,
    )  # fmt: skip
    assert "destination" not in line
    assert "image" in line
    assert not dest.exists()


def test_plain_closurepack_prints_its_usage(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run([], capsys)
    assert status == 2
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == "Usage: closurepack [OPTIONS] COMMAND [ARGS]..."
    assert len(lines) > 5
    for command in COMMANDS:
        assert any(line.split()[:1] == [command] for line in lines), command


def test_previous_image_not_built_by_closurepack(
    app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from closurepack.image import ImageConfig, assemble_image
    from closurepack.transports import write_image
    from handmade import make_layer

    layer = make_layer(tmp_path / "blobs", {"etc": None, "etc/motd": b"hello\n"})
    archive = tmp_path / "foreign.tar"
    write_image(assemble_image([layer], config=ImageConfig()), f"docker-archive:{archive}")
    _expect_error(
        ["plan", "--closure", app_closure, "--previous", f"docker-archive:{archive}"],
        capsys,
        str(archive),
        "records no store layers",
    )


# help, version, subprocess ----------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_help_of_every_command(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run([*command, "--help"], capsys)
    assert status == 0
    assert err == ""
    assert out.startswith("Usage: ")
    if command:
        assert f"closurepack {command[0]}" in out.splitlines()[0]
    else:
        for name in COMMANDS:
            assert name in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from closurepack import __version__

    status, out, _ = run(["--version"], capsys)
    assert status == 0
    assert out.strip() == f"closurepack, version {__version__}"


def _subprocess(*argv: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_child(argv, cwd=cwd, timeout=60)


def test_subprocess_errors_never_show_a_traceback(store: Store, tmp_path: Path) -> None:
    cyclic = _write(tmp_path / "cycle.json", [_entry(APP, [GLIBC]), _entry(GLIBC, [APP])])
    missing_item = tmp_path / "missing.json"
    store.closure_file(missing_item, [APP])
    empty_root = tmp_path / "empty-root"
    empty_root.mkdir()
    cases = [
        (("plan", "--closure", cyclic), 2),
        (("plan", "--closure", tmp_path / "absent.json"), 2),
        (("plan", "--max-layers", "x"), 2),
        (("build", "--closure", missing_item, "--store-root", empty_root, "-o", "foo:bar"), 2),
        (
            (
                "build",
                "--closure",
                missing_item,
                "--store-root",
                empty_root,
                "--no-cache",
                "-o",
                f"oci:{tmp_path / 'out'}",
            ),
            3,
        ),
        # a source that is not there or not of its kind is bad input, not a destination's 5
        (("verify", f"oci:{tmp_path / 'nothing'}"), 2),
        (("inspect", f"docker-archive:{tmp_path / 'cycle.json'}"), 2),
    ]
    for argv, status in cases:
        result = _subprocess(*argv, cwd=tmp_path)
        assert result.returncode == status, (argv, result.stderr)
        assert result.stdout == ""
        assert "Traceback" not in result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith("closurepack: error: ")
    assert not (tmp_path / "out").exists()


def test_subprocess_help_and_version(tmp_path: Path) -> None:
    result = _subprocess("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("closurepack, version ")
    result = _subprocess("build", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "--max-layers" in result.stdout


def test_other_store_items_are_named_in_plan_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a Guix-style store and item names without a version
    guix = {item("9", "bash").replace("/nix/", "/gnu/"): ((), 10)}
    store = make_store(tmp_path / "root", guix)
    closure = store.closure_file(tmp_path / "guix.json", list(guix))
    status, out, err = run(["plan", "--closure", closure], capsys)
    assert status == 0, err
    assert "bash" in out
    plan = _plan_json(["--closure", closure], capsys)
    assert plan["store_dir"] == "/gnu/store"


def test_fifo_in_a_scanned_store_item(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = store.files(ZLIB) / "lib" / "pipe"
    os.mkfifo(fifo)
    _expect_error(
        ["plan", "--store-root", store.root, APP], capsys, str(fifo), "is a fifo", status=3
    )


def _sigint_default() -> None:
    """In the child before exec: SIGINT's default disposition, whatever pytest inherited (under
    nohup, or started in the background by a non-interactive shell, SIGINT is ignored, and an
    ignored signal stays ignored across exec: Python then never raises KeyboardInterrupt), and
    SIGINT unblocked: a blocked signal stays blocked across exec too, and stays pending for ever
    (CI's runner starts the suite with SIGINT in its signal mask)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_interrupt_is_one_line_and_status_130(tmp_path: Path) -> None:
    """Ctrl-C while the closure is being read (here: a fifo that never ends)."""
    import errno
    import signal
    import time

    fifo = tmp_path / "closure.json"
    os.mkfifo(fifo)
    dest = tmp_path / "image.tar"
    with subprocess.Popen(
        [sys.executable, "-m", "closurepack.cli", "build", "--closure", str(fifo), "--no-cache",
         "-o", f"docker-archive:{dest}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_default,  # noqa: PLW1509 (single-threaded here; no lock is taken)
    ) as proc:  # fmt: skip
        # Wait until it has the fifo open for reading (a non-blocking writer can open it only
        # then), so the signal comes while it reads, not while Python starts; our end stays
        # open, so its read blocks until the signal.
        deadline = time.monotonic() + 60
        while True:
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as exc:
                if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                    proc.kill()
                    raise
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.05)
        try:
            proc.send_signal(signal.SIGINT)
            try:
                out, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
        finally:
            os.close(writer)
    assert proc.returncode == 130, err
    assert out == ""
    # click ends the terminal's "^C" line first, so the message starts on a line of its own
    assert err.strip("\n").splitlines() == ["closurepack: interrupted"]
    assert sorted(os.listdir(tmp_path)) == ["closure.json"]


def test_every_option_has_help_text() -> None:
    import click

    from closurepack.cli import cli

    commands = cli.all_commands()
    for name, command in cli.all_commands().items():
        if isinstance(command, click.Group):
            commands.update({f"{name} {sub}": c for sub, c in command.commands.items()})
    missing = [
        f"{name} {param.opts[0]}"
        for name, command in commands.items()
        for param in command.params
        if isinstance(param, click.Option) and not param.help
    ]
    assert missing == []
    assert sorted(cli.all_commands()) == sorted(COMMANDS)


def test_the_installed_console_script(app_closure: Path, tmp_path: Path) -> None:
    import shutil

    script = shutil.which("closurepack")
    if script is None:
        pytest.skip("the closurepack script is not on PATH")
    result = subprocess.run(
        [script, "plan", "--closure", str(app_closure), "--strategy", "single", "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["images"][0]["name"] == "app"
    result = subprocess.run(
        [script, "plan", "--closure", str(tmp_path / "missing.json")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "missing.json" in result.stderr


def test_messages_stay_on_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A name holding a newline (here a reference to a missing item) still gives one line."""
    odd = "/nix/store/" + "2" * 32 + "-b\nsecond line"
    closure = _write(tmp_path / "odd.json", [_entry(APP, [odd])])
    _expect_error(["plan", "--closure", closure], capsys, str(closure), "second line")


@pytest.mark.parametrize("command", ["verify", "inspect"])
def test_absurdly_nested_image_json_is_one_line_of_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    layout = tmp_path / "deep"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text('{"manifests":' + "[" * 100_000)
    status, _, err = run([command, f"oci:{layout}"], capsys)
    assert status == 2
    assert err.count("\n") == 1
    assert "nested too deeply" in err


def test_a_command_imports_only_its_own_module() -> None:
    # the lazy group: `build` loads closurepack.cli.build, not the other commands' modules
    script = (
        "import contextlib, io, json, sys\n"
        "from closurepack.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['build', '--help']) == 0\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('closurepack.cli.'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    loaded = json.loads(out)
    assert "closurepack.cli.build" in loaded
    for other in ("images", "layers", "plan", "cache"):
        assert f"closurepack.cli.{other}" not in loaded
