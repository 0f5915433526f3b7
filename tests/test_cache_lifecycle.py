"""The layer cache over the life of real processes: builds killed with SIGKILL (their locks die
with them, their temp directories are swept by later runs and never counted), the size limit
after warm builds, and `closurepack cache du / prune / clear` next to running builds."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clistore import TOOL, Store, read_oci, run, run_child
from closurepack.cache import LayerCache

CHILD_TIMEOUT = 120


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    env["TMPDIR"] = str(tmp)
    return env


def _cli(*argv: object, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_child(argv, env=env, cwd=cwd, timeout=CHILD_TIMEOUT)


# A real `closurepack build` whose layer build stops half way (some tar bytes written) and
# announces it: the test then kills it with SIGKILL while it holds the key's lock.
_STALLED_BUILD = """\
import pathlib, sys, time
import closurepack.layerbuild as layerbuild

def stalled(out, items, **kwargs):
    out.write(b"half a layer" * 100_000)
    pathlib.Path(sys.argv[1]).write_text("building")
    time.sleep(600)

layerbuild.write_store_tar = stalled
from closurepack.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _wait_for(path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + CHILD_TIMEOUT
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the child never started its layer"
        time.sleep(0.05)


def _lock_is_held(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=CHILD_TIMEOUT)
    assert proc.returncode == -signal.SIGKILL


def test_build_killed_mid_layer_blocks_nothing_and_its_temps_are_swept(
    store: Store, app_closure: Path, tmp_path: Path
) -> None:
    cache, scratch, marker = tmp_path / "cache", tmp_path / "scratch", tmp_path / "started"
    scratch.mkdir()
    env = _env(scratch)
    argv = ["build", "--closure", app_closure, "--store-root", store.root, "--strategy",
            "single", "--jobs", "1", "--cache-dir", cache]  # fmt: skip
    stalled = [sys.executable, "-c", _STALLED_BUILD, marker, *map(str, argv)]
    with subprocess.Popen(
        [*stalled, "-o", f"oci:{tmp_path / 'killed'}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            _wait_for(marker, proc)
            (lock,) = (cache / "locks").glob("*.lock")
            assert _lock_is_held(lock)  # mid-build: the key is locked ...
        finally:
            _kill(proc)  # ... when the process dies
    # what the killed build left: its work directory (a half-written blob) and its scratch
    (work,) = (cache / "tmp").iterdir()
    assert list(work.iterdir()), "the killed build had started writing its blob"
    (left,) = scratch.iterdir()
    assert left.name.startswith("closurepack-")
    assert not list((cache / "keys").iterdir())

    # The next build of the same key does not wait for the dead process's lock ...
    started = time.monotonic()
    result = _cli(*argv, "-o", f"oci:{tmp_path / 'image'}", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < CHILD_TIMEOUT
    assert not _lock_is_held(lock)
    # ... sweeps what the dead one left (not counted meanwhile), and leaves a good entry
    assert list((cache / "tmp").iterdir()) == []
    assert list(scratch.iterdir()) == []
    (entry,) = (cache / "keys").glob("*.json")
    with LayerCache(cache, verify="full") as check:
        hit = check.get(entry.stem)
        assert hit is not None
        assert hit.digest.hex in read_oci(tmp_path / "image").layer_digests[0]
    verify = _cli("verify", f"oci:{tmp_path / 'image'}", env=env, cwd=tmp_path)
    assert verify.returncode == 0, verify.stderr


# Holds a work directory (as a layer build does) until its stdin closes; prints its path.
_HOLDER = """\
import sys
from pathlib import Path
from closurepack._fs import locked_temp_dir
with locked_temp_dir(Path(sys.argv[1]), sys.argv[2]) as work:
    (work / "partial.blob").write_bytes(b"x" * 3_000_000)
    print(work, flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _hold(parent: Path, prefix: str, procs: list[subprocess.Popen[str]]) -> Path:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(parent), prefix],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    procs.append(proc)
    assert proc.stdout is not None
    return Path(proc.stdout.readline().strip())


def test_only_temps_of_dead_processes_older_than_the_build_are_swept_and_none_counted(
    store: Store, app_closure: Path, tmp_path: Path, holders: list[subprocess.Popen[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    cache = tmp_path / "cache"
    code, _, err = run(["build", "--closure", app_closure, "--store-root", store.root,
                        "--cache-dir", cache, "-o", f"oci:{tmp_path / 'a'}"], capsys)  # fmt: skip
    assert code == 0, err
    code, before, _ = run(["cache", "du", "--json", "--cache-dir", cache], capsys)
    assert code == 0
    live = _hold(cache / "tmp", "work-", holders)
    dead = _hold(cache / "tmp", "work-", holders)
    holders[1].kill()
    holders[1].wait()
    # a temp file beside the blobs (as an interrupted copy of an older version leaves)
    stray = cache / "blobs" / "sha256" / f".{'0' * 64}.abc.tmp"
    stray.write_bytes(b"y" * 2_000_000)
    # none of it is cache content
    code, during, _ = run(["cache", "du", "--json", "--cache-dir", cache], capsys)
    assert json.loads(during) == json.loads(before)
    assert LayerCache(cache).total_bytes() == json.loads(before)["bytes"]

    cache_obj = LayerCache(cache, max_bytes=10**9)
    newer = cache / "tmp" / f"work-{holders[1].pid}-fresh"  # dead pid, but newer than the build
    newer.mkdir()
    time.sleep(0.01)
    assert cache_obj.trim() == []
    assert live.exists()  # its owner lives and holds its lock
    assert not dead.exists()  # its owner was killed: lock free, older than the build
    assert newer.exists()  # changed after the running build started: never touched
    holders[0].communicate("")  # the live one finishes and removes its own
    assert not live.exists()


def _build_argv(store: Store, closure: Path, cache: Path, dest: Path) -> list[object]:
    return ["build", "--closure", closure, "--store-root", store.root, "--strategy",
            "per-item", "--no-tmp", "--cache-dir", cache, "-o", f"oci:{dest}"]  # fmt: skip


def _du(cache: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, int]:
    code, out, err = run(["cache", "du", "--json", "--cache-dir", cache], capsys)
    assert code == 0, err
    assert len(out.splitlines()) == 1
    doc = json.loads(out)
    assert isinstance(doc, dict)
    return doc


def _raw_usage(cache: Path) -> dict[str, int]:
    """Entries and blob bytes, counted by hand."""
    blobs = [p.stat().st_size for p in (cache / "blobs" / "sha256").iterdir()]
    return {"entries": len(list((cache / "keys").glob("*.json"))), "bytes": sum(blobs)}


def test_fully_warm_build_still_keeps_the_limit(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    tool_closure = store.closure_file(tmp_path / "tool.json", [TOOL])
    assert run(_build_argv(store, app_closure, cache, tmp_path / "app"), capsys)[0] == 0
    assert run(_build_argv(store, tool_closure, cache, tmp_path / "tool"), capsys)[0] == 0
    tool = read_oci(tmp_path / "tool")
    tool_bytes = sum(layer["size"] for layer in tool.manifest["layers"])
    assert _raw_usage(cache)["entries"] == 4 + 1  # glibc, zlib, libfoo, app; tool
    # Every layer of the tool image is cached: a warm build with a smaller limit evicts the
    # app's own layers (libfoo, app), and keeps the ones it uses.
    argv = _build_argv(store, tool_closure, cache, tmp_path / "tool2")
    code, _, err = run([*argv, "--cache-max-size", str(tool_bytes)], capsys)
    assert code == 0, err
    usage = _raw_usage(cache)
    assert usage["entries"] == 3
    assert usage["bytes"] == tool_bytes
    keys = {path.stem for path in (cache / "keys").glob("*.json")}
    with LayerCache(cache) as check:
        hits = [check.get(key) for key in keys]
    assert sorted(str(hit.digest) for hit in hits if hit) == sorted(tool.layer_digests)


def test_cache_du_prune_and_clear(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    assert run(_build_argv(store, app_closure, cache, tmp_path / "app"), capsys)[0] == 0
    layers = read_oci(tmp_path / "app").manifest["layers"]
    total = sum(layer["size"] for layer in layers)
    usage = _du(cache, capsys)
    assert usage == {"cache_dir": str(cache), "entries": 4, "bytes": total,
                     "limit_bytes": 20 * 1024**3}  # fmt: skip
    code, out, _ = run(["cache", "du", "--cache-dir", cache], capsys)
    assert code == 0
    assert out == f"{cache}: 4 entries, {total / 2**20:.1f} MiB, limit 20480.0 MiB\n"

    # prune: the default limit (20G) removes nothing; a size removes the oldest first
    code, out, _ = run(["cache", "prune", "--cache-dir", cache], capsys)
    assert (code, out.count("\n")) == (0, 1)
    assert out.startswith(f"{cache}: removed 0 entries, 4 entries")
    entries = sorted((cache / "keys").glob("*.json"))
    for age, entry in enumerate(entries):
        stamp = time.time() - 1000 + age
        os.utime(entry, (stamp, stamp))
    newest_entry = entries[-1]
    keep = json.loads(newest_entry.read_text())["size"]
    code, out, _ = run(["cache", "prune", "--cache-dir", cache, "--max-size", str(keep),
                        "--json"], capsys)  # fmt: skip
    assert code == 0
    doc = json.loads(out)
    assert (doc["removed"], doc["entries"], doc["bytes"], doc["in_use"]) == (3, 1, keep, 0)
    assert [p.name for p in (cache / "keys").glob("*.json")] == [newest_entry.name]

    # clear: everything, but an entry that a running build (another process) uses stays
    assert run(_build_argv(store, app_closure, cache, tmp_path / "app2"), capsys)[0] == 0
    key = newest_entry.stem
    user = subprocess.Popen(
        [sys.executable, "-c", _USER, str(cache), key],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert user.stdout is not None
        assert user.stdout.readline().strip() == "hit"
        code, out, _ = run(["cache", "clear", "--cache-dir", cache], capsys)
        assert code == 0
        assert out.startswith(f"{cache}: removed 3 entries, 1 entries, ")
        assert out.endswith(", 1 in use by running builds kept\n")
        assert [p.name for p in (cache / "keys").glob("*.json")] == [newest_entry.name]
        assert LayerCache(cache).get(key) is not None  # its blob is there too
    finally:
        user.communicate("")
    code, out, _ = run(["cache", "clear", "--cache-dir", cache, "--json"], capsys)
    assert json.loads(out)["removed"] == 1
    assert _du(cache, capsys)["entries"] == 0
    assert list((cache / "blobs" / "sha256").iterdir()) == []


# A build in another process that has a cache hit and keeps using it until stdin closes.
_USER = """\
import sys
from pathlib import Path
from closurepack.cache import LayerCache
with LayerCache(Path(sys.argv[1])) as cache:
    print("hit" if cache.get(sys.argv[2]) else "miss", flush=True)
    sys.stdin.read()
"""


def test_cache_commands_on_a_missing_cache_and_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "none"
    for command in ("du", "prune", "clear"):
        code, out, err = run(["cache", command, "--cache-dir", missing], capsys)
        assert (code, err) == (0, "")
        assert out.startswith(f"{missing}: ")
        assert " 0 entries, 0.0 MiB" in out
    assert not missing.exists()  # reading a cache that is not there makes none
    not_a_cache = tmp_path / "home"
    not_a_cache.mkdir()
    (not_a_cache / "notes.txt").write_text("mine")
    for argv, status, message in [
        (["clear", "--cache-dir", not_a_cache], 3, f"{not_a_cache}: not a closurepack layer cache"),
        (["prune", "--cache-dir", tmp_path, "--max-size", "lots"], 2, "--max-size 'lots'"),
    ]:
        code, out, err = run(["cache", *argv], capsys)
        assert code == status
        assert out == ""
        assert err.count("\n") == 1
        assert err.startswith("closurepack: error: ")
        assert message in err
    assert sorted(p.name for p in not_a_cache.iterdir()) == ["notes.txt"]


# -- no usable default cache (a Nix build: HOME=/homeless-shelter, no XDG_CACHE_HOME) ------------


@pytest.mark.parametrize("case", ["missing-home", "home-under-a-file", "xdg-under-a-file"])
def test_unusable_default_cache_is_one_warning_and_nothing_written_elsewhere(
    store: Store, app_closure: Path, tmp_path: Path, case: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    build_dir = tmp_path / "build"
    (build_dir / "tmp").mkdir(parents=True)
    env = _env(build_dir / "tmp")
    env.pop("XDG_CACHE_HOME", None)
    # As root nothing is unwritable by permissions: a home that does not exist must not be
    # made (Nix's /homeless-shelter), and one below a file cannot be.
    env["HOME"] = str(tmp_path / "homeless-shelter" if case == "missing-home" else blocker / "h")
    if case == "xdg-under-a-file":
        env["XDG_CACHE_HOME"] = str(blocker / "cache")
    # --quiet: no progress lines; --cmd: no warning about an image without a command
    argv = ["build", "--closure", app_closure, "--store-root", store.root, "-q", "--cmd", "/app"]
    result = _cli(*argv, "-o", f"docker-archive:{build_dir / 'out.tar'}", env=env, cwd=build_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sha256:")
    (line,) = result.stderr.splitlines()
    assert line.startswith("closurepack: warning: ")
    assert "cannot use the layer cache" in line
    assert line.endswith("; building without a cache (--cache-dir DIR or --no-cache)")
    assert not (tmp_path / "homeless-shelter").exists()
    assert blocker.read_text() == "not a directory"
    assert sorted(p.name for p in build_dir.iterdir()) == ["out.tar", "tmp"]
    assert list((build_dir / "tmp").iterdir()) == []
    verify = _cli("verify", f"docker-archive:{build_dir / 'out.tar'}", env=env, cwd=build_dir)
    assert verify.returncode == 0, verify.stderr


def test_an_unusable_cache_dir_given_is_still_an_error(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    argv = ["build", "--closure", app_closure, "--store-root", store.root]
    code, out, err = run(
        [*argv, "--cache-dir", blocker / "cache", "-o", f"oci:{tmp_path / 'o'}"], capsys
    )
    assert (code, out) == (3, "")
    assert err.count("\n") == 1
    assert err.startswith(f"closurepack: error: {blocker / 'cache'}")
    assert not (tmp_path / "o").exists()


_NIX_BUILD = """\
let
  system = builtins.currentSystem;
  item = derivation {{
    name = "closurepack-nocache-item"; inherit system; builder = "/bin/sh";
    args = [ "-c" "/bin/mkdir -p $out/bin && echo hello > $out/bin/data" ];
  }};
in
derivation {{
  name = "closurepack-nocache-image"; inherit system; builder = "/bin/sh";
  exportReferencesGraph = [ "graph" item ];
  args = [ "-c" ''
    /bin/mkdir $out
    {closurepack} build --closure graph --created 1 -q --cmd /bin/data \\
      -o docker-archive:$out/image.tar \\
      2> $out/stderr || {{ /bin/cat $out/stderr >&2; exit 1; }}
    /bin/ls -A . > $out/build-dir
    /bin/ls -A "$TMPDIR" > $out/tmp-dir
    echo "$HOME" > $out/home
  '' ];
}}
"""


@pytest.mark.integration
def test_inside_a_real_nix_build_the_cache_falls_back_with_one_warning(tmp_path: Path) -> None:
    import shlex
    import shutil
    import sysconfig

    for tool in ("nix-build", "nix-store"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    script = Path(sysconfig.get_path("scripts")) / "closurepack"
    if not script.is_file():
        pytest.skip("the closurepack script is not installed")
    # a fresh path every run, so Nix builds the image now instead of reusing an earlier one
    wrapper = tmp_path / "closurepack"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(str(script))} "$@"\n')
    wrapper.chmod(0o755)
    expression = tmp_path / "image.nix"
    expression.write_text(_NIX_BUILD.format(closurepack=shlex.quote(str(wrapper))))
    shelter = Path("/homeless-shelter")
    if shelter.exists():
        pytest.fail(f"{shelter} exists: Nix refuses to build until it is removed")
    nix_options = ["--option", "build-users-group", "", "--option", "substituters", ""]
    try:
        result = subprocess.run(
            ["nix-build", "--no-out-link", *nix_options, str(expression)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        made_a_home = shelter.exists()
    finally:
        # A closurepack that makes a cache there (outside the build) would break every later
        # Nix build on this machine: take it away again, then fail.
        if shelter.exists():
            shutil.rmtree(shelter)
    assert not made_a_home
    assert result.returncode == 0, result.stderr[-3000:]
    out = Path(result.stdout.strip())
    assert (out / "home").read_text().strip() == "/homeless-shelter"
    (line,) = (out / "stderr").read_text().splitlines()
    assert line.startswith("closurepack: warning: /homeless-shelter/.cache/closurepack: ")
    assert "building without a cache" in line
    # nothing written outside the build directory and $out: no cache, no scratch left behind
    assert (out / "build-dir").read_text().split() == ["graph"]
    assert (out / "tmp-dir").read_text().split() == ["graph"]  # Nix's TMPDIR is the build dir
    verify = _cli("verify", f"docker-archive:{out / 'image.tar'}", env=_env(tmp_path), cwd=tmp_path)
    assert verify.returncode == 0, verify.stderr
