"""--fakeroot-script: a shell script run under Debian's fakeroot on a copy of the customisation
tree, whose result (owners included) is the customisation layer; failures are one line and
leave nothing behind; the same script gives the same bytes."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from clistore import Store, read_oci, run
from closurepack import _fakeroot_helper
from runtimes import require_tool

pytestmark = pytest.mark.integration

SCRIPT = """\
test -f etc/passwd
test ! -e nix
pwd > "$OLDPWD/cwd"
mkdir -p srv/data
echo hello > srv/data/greeting
chown -R 1234:5678 srv
chmod 0750 srv/data
ln -s /srv/data/greeting srv/link
chown -h 42:43 srv/link
stat -c '%u:%g %a' home/app > srv/home-owner
"""


@pytest.fixture(autouse=True)
def _fakeroot() -> None:
    require_tool("fakeroot")


def _argv(store: Store, closure: Path, script: Path, dest: str, *extra: object) -> list[str]:
    argv = ["build", "--quiet", "--no-cache", "--closure", closure, "--store-root", store.root]
    return [str(a) for a in [*argv, "--user", "app", "--fakeroot-script", script, *extra,
                             "-o", dest]]  # fmt: skip


def _script(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "script.sh"
    path.write_text(text)
    return path


def _top(dest: Path) -> tuple[dict[str, tarfile.TarInfo], dict[str, bytes]]:
    image = read_oci(dest)
    data = image.blob(image.layer_digests[-1])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        files = {}
        for member in members.values():
            handle = tar.extractfile(member) if member.isfile() else None
            if handle is not None:
                files[member.name] = handle.read()
    return members, files


def test_the_scripts_tree_and_owners_become_the_customisation_layer(
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OLDPWD", str(tmp_path))  # where the script says its cwd was
    dest = tmp_path / "out"
    script = _script(tmp_path, SCRIPT)
    argv = _argv(store, app_closure, script, f"oci:{dest}", "--perms", "/srv/link=0700:7:7")
    code, _, err = run(argv, capsys)
    assert code == 0, err
    members, files = _top(dest)

    def owner(name: str) -> tuple[int, int, int]:
        return members[name].mode, members[name].uid, members[name].gid

    assert owner("srv") == (0o755, 1234, 5678)
    assert owner("srv/data") == (0o750, 1234, 5678)
    assert owner("srv/data/greeting") == (0o644, 1234, 5678)
    assert files["srv/data/greeting"] == b"hello\n"
    assert members["srv/link"].issym()
    assert members["srv/link"].linkname == "/srv/data/greeting"
    assert owner("srv/link") == (0o777, 7, 7)  # --perms comes after the script
    # the script saw the tree with its owners: the user's home, the user's
    assert files["srv/home-owner"] == b"1000:1000 755\n"
    assert owner("home/app") == (0o755, 1000, 1000)
    assert owner("tmp") == (0o1777, 0, 0)
    assert owner("etc/passwd") == (0o644, 0, 0)
    assert all(m.mtime == 1 for m in members.values())
    # it ran in the scratch root, which is gone
    cwd = Path((tmp_path / "cwd").read_text().strip())
    assert cwd.name == "root"
    assert not cwd.exists()


def test_same_script_same_bytes(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = _script(tmp_path, "mkdir -p var/lib/app && touch var/lib/app/db && chown 5 var\n")
    digests = []
    for name in ("a", "b"):
        code, out, err = run(_argv(store, app_closure, script, f"oci:{tmp_path / name}"), capsys)
        assert code == 0, err
        digests.append(out.strip())
    assert digests[0] == digests[1]
    members, _ = _top(tmp_path / "a")
    assert (members["var"].uid, members["var/lib/app/db"].uid) == (5, 0)


@pytest.mark.parametrize(
    ("text", "status", "says"),
    [
        ("echo starting\necho 'chown: no such user' >&2\nexit 3\n", 3,
         "exited with status 3 (its last output: chown: no such user)"),
        ("false\necho never\n", 3, "exited with status 1"),
        ("mkfifo pipe\n", 2, "/pipe is a fifo: a layer holds files, directories and symlinks"),
        ("mkdir -p nix/store/x\n", 2, "/nix/store/x would cover the store /nix/store"),
        ("kill -9 $$\n", 3, "exited with status 137"),  # fakeroot reports 128 + 9
    ],
)  # fmt: skip
def test_a_failing_script_is_one_line_and_writes_nothing(
    text: str,
    status: int,
    says: str,
    *,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    script = _script(tmp_path, text)
    dest = tmp_path / "out"
    code, out, err = run(_argv(store, app_closure, script, f"oci:{dest}"), capsys)
    assert code == status
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"closurepack: error: --fakeroot-script {script}")
    assert says in lines[0]
    assert not dest.exists()
    leftovers = [n for n in os.listdir(os.environ.get("TMPDIR", "/tmp")) if "fakeroot-" in n]
    assert not [n for n in leftovers if n.startswith(f"closurepack-fakeroot-{os.getpid()}-")]


def test_missing_script_or_fakeroot_is_one_line(
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dest = tmp_path / "out"
    missing = tmp_path / "nope.sh"
    code, _, err = run(_argv(store, app_closure, missing, f"oci:{dest}"), capsys)
    assert (code, err.splitlines()) == (
        2,
        [f"closurepack: error: --fakeroot-script {missing}: no such file"],
    )
    script = _script(tmp_path, "true\n")
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    code, _, err = run(_argv(store, app_closure, script, f"oci:{dest}"), capsys)
    assert code == 3
    assert err.splitlines() == [
        f"closurepack: error: --fakeroot-script {script}: fakeroot is not installed"
        " (Debian's package fakeroot)"
    ]
    assert not dest.exists()


def test_assemble_runs_the_script_too(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from clistore import GLIBC

    code, out, err = run(
        ["build-layer", GLIBC, "--store-root", str(store.root), "-o", str(tmp_path / "l")], capsys
    )
    assert code == 0, err
    script = _script(tmp_path, "mkdir data && chown 9:9 data\n")
    dest = tmp_path / "out"
    argv = [out.strip(), "--fakeroot-script", str(script), "-o", f"oci:{dest}"]
    code, _, err = run(["assemble", *argv], capsys)
    assert code == 0, err
    members, _ = _top(dest)
    assert (members["data"].uid, members["data"].gid) == (9, 9)


def test_helper_lists_and_owns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_text("x")
    (root / "l").symlink_to("d/f")
    os.mkfifo(root / "p")
    me = (os.getuid(), os.getgid())
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([["d", *me, 0o700], ["d/f", *me, 0o600], ["l", *me, None]]))
    assert _fakeroot_helper.main(["own", str(root), str(plan)]) == 0
    assert _fakeroot_helper.main(["list", str(root)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [
        ["d", "dir", 0o700, *me, ""],
        ["d/f", "file", 0o600, *me, ""],
        ["l", "symlink", 0o777, *me, "d/f"],
        ["p", "a fifo", 0o666 & ~_umask(), *me, ""],
    ]
    assert _fakeroot_helper.main(["what"]) == 2


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
