"""zstd:chunked end to end: closurepack pushes to a real docker-registry, podman (overlay driver,
partial pulls on) pulls only what it lacks and runs the image; then a Nix-style update (a
mid-level item changed, every item above it renamed, the old hash rewritten to the new one
inside their files) is pulled through a counting proxy: the bytes fetched are a fraction of
the changed layers, and every file of the pulled image is the source's."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import stat
import sys
from pathlib import Path

import httpx
import pytest

from clistore import run
from registry_fixtures import Registry
from runtimes import PartialPodman

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import push_bench as pb

pytestmark = pytest.mark.integration

_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
_BUSYBOX = Path("/bin/busybox")


def _path(seed: str, name: str) -> str:
    rnd = random.Random(seed)
    return "/nix/store/" + "".join(rnd.choice(_ALPHABET) for _ in range(32)) + "-" + name


class _Store:
    """Five items: busybox, base (3 MB library), mid (changes), top (2 MB library that names
    mid three times, and a file holding mid's path), app (a script running everything)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.refs: dict[str, list[str]] = {}

    def host(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def add(self, path: str, refs: list[str], files: dict[str, bytes | str]) -> None:
        """Files: bytes -> file (``bin/`` ones executable), str -> symlink target."""
        self.refs[path] = refs
        for name, content in files.items():
            target = self.host(path) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str):
                target.symlink_to(content)
            else:
                target.write_bytes(content)
                target.chmod(0o755 if name.startswith("bin/") else 0o644)

    def closure_file(self, path: Path) -> Path:
        graph = [
            {"path": p, "narSize": 1000, "references": sorted(r)} for p, r in self.refs.items()
        ]
        path.write_text(json.dumps(graph))
        return path

    def item(self, name: str) -> str:
        return next(p for p in self.refs if p.endswith("-" + name))


def _first_store(root: Path) -> _Store:
    store = _Store(root)
    rnd = random.Random(11)
    busybox = _path("busybox", "busybox")
    base = _path("base", "base-1.0")
    mid = _path("mid-1", "mid-1.0")
    top = _path("top-1", "top-1.0")
    app = _path("app-1", "app-1.0")
    store.add(busybox, [], {"bin/busybox": _BUSYBOX.read_bytes(), "bin/sh": "busybox"})
    store.add(base, [], {"lib/libbase.so": rnd.randbytes(3_000_000), "README": b"base\n"})
    store.add(mid, [base], {"share/mid.txt": b"mid version 1\n"})
    library = bytearray(rnd.randbytes(2_000_000))
    for offset in (1000, 900_000, 1_700_000):
        library[offset : offset + len(mid)] = mid.encode()
    static = b"".join(b"static line %d\n" % i for i in range(20_000))
    top_files: dict[str, bytes | str] = {
        "lib/libtop.so": bytes(library),
        "share/ref": mid.encode() + b"\n",
        "share/static.txt": static,
        "lib/libtop.so.1": "libtop.so",
    }
    store.add(top, [mid, base], top_files)
    bb = f"{busybox}/bin/busybox"
    script = (
        f"#!{busybox}/bin/sh\n{bb} cat {mid}/share/mid.txt\n"
        f"{bb} sha256sum {top}/lib/libtop.so {base}/lib/libbase.so\n"
    )
    store.add(app, [busybox, top, mid], {"bin/app": script.encode()})
    return store


def _updated_store(old: _Store, root: Path) -> _Store:
    """What Nix gives after mid's content changes: mid, and every item that refers to it
    (directly or not), get new hashes; the old hashes are rewritten inside their files."""
    renamed: dict[str, str] = {}
    for path in old.refs:  # insertion order: references before referrers
        if path.endswith("-mid-1.0") or any(r in renamed for r in old.refs[path]):
            renamed[path] = _path(path + "-2", path.split("-", 1)[1])
    store = _Store(root)
    for path, refs in old.refs.items():
        new_path = renamed.get(path, path)
        files: dict[str, bytes | str] = {}
        top = old.host(path)
        for host in sorted(top.rglob("*")):
            name = str(host.relative_to(top))
            if host.is_symlink():
                files[name] = os.readlink(host)
            elif host.is_file():
                data = host.read_bytes()
                for before, after in renamed.items():
                    data = data.replace(before.encode(), after.encode())
                files[name] = data
        if path.endswith("-mid-1.0"):
            files["share/mid.txt"] = b"mid version 2\n"
        store.add(new_path, [renamed.get(r, r) for r in refs], files)
    return store


def _push(store: _Store, tmp: Path, ref: str, capsys: pytest.CaptureFixture[str]) -> None:
    app = store.item("app-1.0")
    argv = ["build", "--store-root", store.root, "--closure", store.closure_file(tmp / "g.json")]
    argv += ["--strategy", "per-item", "--compression", "zstd:chunked", "--no-cache", "--quiet"]
    argv += ["--entrypoint", json.dumps([f"{app}/bin/app"]), "-o", f"docker://{ref}"]
    status, _, err = run(argv, capsys)
    assert status == 0, err


def _layers(registry: Registry, repo: str, tag: str) -> dict[str, int]:
    accept = "application/vnd.oci.image.manifest.v1+json"
    url = f"http://{registry.host}/v2/{repo}/manifests/{tag}"
    manifest = httpx.get(url, headers={"Accept": accept}).json()
    for layer in manifest["layers"]:
        assert "io.github.containers.zstd-chunked.manifest-checksum" in layer["annotations"]
    return {layer["digest"]: layer["size"] for layer in manifest["layers"]}


def _tree(top: Path) -> dict[str, tuple[str, str]]:
    """name -> (kind and permission bits, content digest or link target) below ``top``."""
    out = {}
    for path in sorted(top.rglob("*")):
        st = path.lstat()
        name = str(path.relative_to(top))
        if stat.S_ISLNK(st.st_mode):
            out[name] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[name] = (f"dir {st.st_mode & 0o777:o}", "")
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[name] = (f"file {st.st_mode & 0o777:o}", digest)
    return out


def _missing(log: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in re.findall(r"Missing (\d+) bytes out of (\d+)", log)]


def test_podman_pulls_only_the_changed_chunks_of_an_update(
    registry: Registry,
    partial_podman: PartialPodman,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if not _BUSYBOX.exists():
        pytest.skip("busybox-static is not installed")
    first = _first_store(tmp_path / "s1")
    second = _updated_store(first, tmp_path / "s2")
    assert len(set(second.refs) - set(first.refs)) == 3  # mid, top, app renamed
    _push(first, tmp_path, f"{registry.host}/chunky:1", capsys)
    _push(second, tmp_path, f"{registry.host}/chunky:2", capsys)
    old_layers = _layers(registry, "chunky", "1")
    new_layers = _layers(registry, "chunky", "2")
    changed = {d: s for d, s in new_layers.items() if d not in old_layers}
    assert len(changed) == 3

    port = int(registry.host.rsplit(":", 1)[1])
    with pb.CountingProxy(("127.0.0.1", port)) as proxy:
        via = f"127.0.0.1:{proxy.port}/chunky"
        log = partial_podman.pull(f"{via}:1")
        assert log.count("Retrieved partial blob") == len(old_layers), log[-3000:]
        first_bytes = proxy.received_bytes
        out = partial_podman.run(f"{via}:1")
        assert out.startswith("mid version 1\n")
        assert (
            hashlib.sha256(
                first.host(first.item("base-1.0")).joinpath("lib/libbase.so").read_bytes()
            ).hexdigest()
            in out
        )

        proxy.reset()
        log = partial_podman.pull(f"{via}:2")
        fetched = proxy.received_bytes
        assert log.count("Retrieved partial blob") == len(changed), log[-3000:]
        out = partial_podman.run(f"{via}:2")
    assert out.startswith("mid version 2\n")
    # top's 2 MB library: only the chunks holding the rewritten hash were fetched
    missing = _missing(log)
    big = max(missing, key=lambda m: m[1])
    assert big[1] > 2_000_000
    assert big[0] < big[1] * 0.2, missing
    # the whole update: a fraction of the changed layers (what plain zstd would fetch)
    assert 0 < fetched < sum(changed.values()) * 0.25, (fetched, changed)
    assert first_bytes > sum(old_layers.values()) * 0.9  # the first pull fetched everything

    with partial_podman.mounted(f"{via}:2") as merged:
        for item in second.refs:
            assert _tree(merged / item.lstrip("/")) == _tree(second.host(item)), item
        assert sorted(os.listdir(merged / "nix" / "store")) == sorted(
            p.rsplit("/", 1)[1] for p in second.refs
        )
    shutil.rmtree(tmp_path / "s1")
