"""A non-root image from a real Nix closure, with --user, --perms, --fakeroot-script and
--nix-db, run by podman and Docker Engine: the user reads the store and the store database,
writes its home and /tmp, and sees the modes and owners that --perms and the fakeroot script
gave; with --uid/--gid the store is the user's to write."""

from __future__ import annotations

from pathlib import Path

import pytest

from clistore import run_child
from nixfixture import NixClosure
from runtimes import DockerEngine, PodmanRunner, require_tool

pytestmark = pytest.mark.integration

FAKEROOT_SCRIPT = """\
mkdir -p srv/data
echo made by the script > srv/data/file
chown -R 1000:1000 srv
chmod 0700 srv/data
echo secret > srv/secret
chmod 0600 srv/secret
"""


def _probe(nix: NixClosure) -> str:
    """What the container runs as the image's user, each check on a line of its own."""
    data = nix.item("data")
    return f"""
B={nix.item("busybox")}/bin/busybox
echo "id $($B id -u):$($B id -g) home $HOME"
echo "store $($B ls /nix/store | $B wc -l)"
{nix.entrypoint} > /tmp/app.out && echo "app $($B wc -l < /tmp/app.out)"
echo mine > /home/app/note && echo "home $($B cat /home/app/note)"
echo "tmp $($B stat -c '%a %u %g' /tmp)"
echo "homedir $($B stat -c '%a %u %g' /home/app)"
echo "nix $($B stat -c '%a %u %g' /nix) $($B stat -c '%a %u %g' /nix/store)"
echo "perm $($B stat -c '%a %u %g' '{data}/tree/hard-a')"
echo "plain $($B stat -c '%a %u %g' '{data}/tree/hard-b')"
echo "srv $($B stat -c '%a %u %g' /srv/data) $($B cat /srv/data/file)"
echo "secret $($B stat -c '%a %u %g' /srv/secret)"
DB=/nix/var/nix/db/db.sqlite
echo "db $($B stat -c '%a %u %g' $DB) $($B head -c 15 $DB)"
$B cat /srv/secret 2>/dev/null && echo "secret readable" || echo "secret unreadable"
$B mkdir /nix/store/probe 2>/dev/null && echo "store writable" || echo "store read-only"
"""


def _expected(nix: NixClosure, *, owner: str) -> list[str]:
    lines = nix.expected_output.count("\n")
    return [
        "id 1000:1000 home /home/app",
        f"store {len(nix.paths)}",
        f"app {lines}",
        "home mine",
        "tmp 1777 0 0",
        "homedir 700 1000 1000",
        f"nix 755 {owner} 755 {owner}",
        "perm 440 0 1000",
        f"plain 444 {owner}",
        "srv 700 1000 1000 made by the script",
        "secret 600 0 0",
        f"db 644 {owner} SQLite format 3",
        "secret unreadable",
        "store writable" if owner != "0 0" else "store read-only",
    ]


def _build(nix: NixClosure, dest: Path, tmp: Path, *extra: str) -> None:
    script = tmp / "fakeroot.sh"
    script.write_text(FAKEROOT_SCRIPT)
    argv = [
        "build", nix.app, "--quiet", "--no-cache",
        "--user", "app",
        "--cmd", nix.entrypoint,
        "--perms", f"{nix.item('data')}/tree/hard-a=0440:0:1000",
        "--perms", "/home/app=0700",
        "--fakeroot-script", str(script),
        "--nix-db",
        "--tag", f"perms/{dest.stem}:1",
        *extra,
        "-o", f"docker-archive:{dest}",
    ]  # fmt: skip
    result = run_child(argv)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def images(nix_closure: NixClosure, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A root-owned store (gzip layers, which Docker reads) and one owned by the user."""
    require_tool("fakeroot")
    tmp = tmp_path_factory.mktemp("perms")
    built = {"root": tmp / "root-store.tar", "user": tmp / "user-store.tar"}
    _build(nix_closure, built["root"], tmp)
    _build(nix_closure, built["user"], tmp, "--uid", "1000", "--gid", "1000")
    return built


def _run(runtime: PodmanRunner | DockerEngine, image: Path, nix: NixClosure) -> list[str]:
    ref = runtime.load(image)
    busybox = f"{nix.item('busybox')}/bin/busybox"
    return runtime.run(ref, busybox, "sh", "-c", _probe(nix)).splitlines()


@pytest.mark.parametrize(("kind", "owner"), [("root", "0 0"), ("user", "1000 1000")])
def test_podman_runs_it_as_the_user(
    images: dict[str, Path],
    nix_closure: NixClosure,
    podman_runner: PodmanRunner,
    kind: str,
    owner: str,
) -> None:
    assert _run(podman_runner, images[kind], nix_closure) == _expected(nix_closure, owner=owner)


def test_docker_runs_it_as_the_user(
    images: dict[str, Path], nix_closure: NixClosure, docker_engine: DockerEngine
) -> None:
    got = _run(docker_engine, images["root"], nix_closure)
    assert got == _expected(nix_closure, owner="0 0")
