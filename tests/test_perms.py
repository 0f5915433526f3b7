"""--perms REGEX=MODE[:UID:GID] and --uid/--gid: the tar headers of store and customisation
layers (read with tarfile and GNU tar), the cache keys of the layers they touch and only those,
and one-line errors for bad values."""

from __future__ import annotations

import io
import os
import re
import subprocess
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from clistore import APP, GLIBC, LIBFOO, ZLIB, OciImage, Store, read_oci, run
from closurepack import build
from closurepack.errors import OptionError
from closurepack.perms import PermRule, Perms, parse_perm, parse_store_owner
from closurepack.tarentries import TreeEntry
from closurepack.tarstream import write_store_tar, write_tree_tar


def _build(argv: list[object], capsys: pytest.CaptureFixture[str], status: int = 0) -> str:
    code, _, err = run(["build", "--quiet", *map(str, argv)], capsys)
    assert code == status, err
    return err


def _image(
    store: Store, closure: Path, dest: Path, *extra: object, capsys: pytest.CaptureFixture[str]
) -> OciImage:
    argv = ["--closure", closure, "--store-root", store.root, *extra, "-o", f"oci:{dest}"]
    _build(argv, capsys)
    return read_oci(dest)


def _by_item(image: OciImage) -> dict[str, dict[str, tarfile.TarInfo]]:
    """Store layer members keyed by the one item each layer holds."""
    layers = {}
    for number in range(len(image.layer_digests)):
        members = image.layer_members(number)
        items = {n for n in members if n.count("/") == 2}
        if len(items) == 1:
            layers["/" + items.pop()] = members
    return layers


# -- parsing ---------------------------------------------------------------------------------


def test_parse_perm_takes_the_last_equals_sign_and_octal_modes() -> None:
    rule = parse_perm("/a=b/.*=4755:1000:100")
    assert (rule.regex.pattern, rule.mode, rule.owner) == ("/a=b/.*", 0o4755, (1000, 100))
    assert parse_perm("/x=644").mode == 0o644
    assert parse_perm("/x=0o700").owner is None
    assert parse_perm("/x=0o700").mode == 0o700


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("no-equals", "expected REGEX=MODE[:UID:GID]"),
        ("=0755", "expected REGEX=MODE[:UID:GID]"),
        ("/x=0758", "mode '0758' is not an octal mode"),
        ("/x=17777", "mode '17777' is not an octal mode"),
        ("/x=rwx", "mode 'rwx' is not an octal mode"),
        ("/x=0755:1000", "expected REGEX=MODE[:UID:GID]"),
        ("/x=0755:a:1", "uid 'a' is not a number"),
        ("/x=0755:1:2097152", "gid 2097152 is larger than 2097151"),
        ("/x[=0755", "bad regular expression"),
    ],
)
def test_bad_perms_are_one_line_naming_the_value(
    value: str, says: str, *, store: Store, app_closure: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    with pytest.raises(OptionError, match=re.escape(says)):
        parse_perm(value)
    dest = tmp_path / "out"
    argv = ["--closure", app_closure, "--store-root", store.root, "--perms", value]
    err = _build([*argv, "-o", f"oci:{dest}"], capsys, status=2)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"closurepack: error: --perms {value}: ")
    assert says in lines[0]
    assert not dest.exists()


def test_bad_uid_or_gid_is_one_line(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert parse_store_owner(None, None) is None
    assert parse_store_owner("5", None) == (5, 0)
    argv = ["--closure", app_closure, "--store-root", store.root, "-o", f"oci:{tmp_path / 'o'}"]
    err = _build([*argv, "--uid", "x1"], capsys, status=2)
    assert err.splitlines() == ["closurepack: error: --uid x1: uid 'x1' is not a number"]
    err = _build([*argv, "--gid", "99999999"], capsys, status=2)
    assert err.splitlines() == [
        "closurepack: error: --gid 99999999: gid 99999999 is larger than 2097151"
    ]


# -- what the layers hold ----------------------------------------------------------------------


def test_perms_set_modes_and_owners_in_store_and_customisation_layers(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = _image(
        store, app_closure, tmp_path / "out",
        "--no-cache", "--user", "app",
        "--perms", f"{APP}/lib(/.*)?=0750:1000:1000",
        "--perms", f"{APP}/lib/deep/data.txt=0600",  # a later rule: mode only, owner kept
        "--perms", f"{APP}/lib/link=0600:7:8",  # a symlink: its owner only
        "--perms", "/tmp=1770:0:1000",
        "--perms", "/home/app=0700",
        capsys=capsys,
    )  # fmt: skip
    app = _by_item(image)[APP]
    lib = APP.lstrip("/") + "/lib"

    def header(members: dict[str, tarfile.TarInfo], name: str) -> tuple[int, int, int]:
        member = members[name]
        return member.mode, member.uid, member.gid

    assert header(app, lib) == (0o750, 1000, 1000)
    assert header(app, f"{lib}/deep") == (0o750, 1000, 1000)
    assert header(app, f"{lib}/deep/data.txt") == (0o600, 1000, 1000)
    assert header(app, f"{lib}/link") == (0o777, 7, 8)
    assert app[f"{lib}/link"].issym()
    # a full match: the item itself, its bin and the store's parents are untouched
    assert header(app, APP.lstrip("/")) == (0o755, 0, 0)
    assert header(app, APP.lstrip("/") + "/bin/app") == (0o755, 0, 0)
    assert header(app, "nix/store") == (0o755, 0, 0)
    top = image.layer_members(len(image.layer_digests) - 1)
    assert header(top, "tmp") == (0o1770, 0, 1000)
    assert header(top, "home/app") == (0o700, 1000, 1000)
    assert header(top, "etc/passwd") == (0o644, 0, 0)


def test_uid_and_gid_own_the_whole_store_and_rules_apply_on_top(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = _image(
        store, app_closure, tmp_path / "out",
        "--no-cache", "--uid", "1000", "--gid", "100",
        "--perms", f"{GLIBC}/bin/glibc=0500:0:0",
        capsys=capsys,
    )  # fmt: skip
    for number in range(len(image.layer_digests) - 1):
        for member in image.layer_members(number).values():
            if member.name == GLIBC.lstrip("/") + "/bin/glibc":
                assert (member.mode, member.uid, member.gid) == (0o500, 0, 0)
            else:
                assert (member.uid, member.gid) == (1000, 100), member.name
    top = image.layer_members(len(image.layer_digests) - 1)
    assert (top["tmp"].uid, top["tmp"].gid) == (0, 0)  # outside the store: its own owner


def test_gnu_tar_lists_the_overrides(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = _image(
        store, app_closure, tmp_path / "out",
        "--no-cache", "--compression", "none",
        "--perms", f"{ZLIB}/lib/deep/data.txt=4711:123:456",
        capsys=capsys,
    )  # fmt: skip
    number = next(
        i for i in range(len(image.layer_digests)) if ZLIB.lstrip("/") in image.layer_members(i)
    )
    blob = tmp_path / "layer.tar"
    blob.write_bytes(image.blob(image.layer_digests[number]))
    listing = subprocess.run(
        ["tar", "--numeric-owner", "-tvf", blob], capture_output=True, text=True, check=True
    ).stdout
    line = next(line for line in listing.splitlines() if line.endswith("/lib/deep/data.txt"))
    assert line.split()[:2] == ["-rws--x--x", "123/456"]
    others = [line for line in listing.splitlines() if "data.txt" not in line]
    assert all(line.split()[1] == "0/0" for line in others), others


def test_a_hard_link_pair_split_by_perms_becomes_two_files(tmp_path: Path) -> None:
    item = tmp_path / "nix" / "store" / ("a" * 32 + "-pair")
    item.mkdir(parents=True)
    (item / "one").write_text("same inode\n")
    os.link(item / "one", item / "two")
    path = "/nix/store/" + item.name

    def members(perms: Perms | None) -> dict[str, tarfile.TarInfo]:
        out = io.BytesIO()
        write_store_tar(out, [path], store_root=tmp_path, perms=perms)
        out.seek(0)
        with tarfile.open(fileobj=out) as tar:
            return {m.name: m for m in tar.getmembers()}

    plain = members(None)
    assert plain[f"{path[1:]}/two"].islnk()
    split = members(Perms((parse_perm(f"{path}/two=0600:5:5"),)))
    assert split[f"{path[1:]}/two"].isreg()
    assert (split[f"{path[1:]}/two"].mode, split[f"{path[1:]}/two"].uid) == (0o600, 5)
    assert split[f"{path[1:]}/one"].mode == 0o644
    both = members(Perms((parse_perm(f"{path}/(one|two)=0600:5:5"),)))
    assert both[f"{path[1:]}/two"].islnk()  # still one inode, one mode, one owner


def test_tree_tar_applies_perms_to_generated_parents(tmp_path: Path) -> None:
    out = io.BytesIO()
    entries = [TreeEntry("srv/data/file", "file", data=b"x")]
    write_tree_tar(out, entries, perms=Perms((parse_perm("/srv(/data)?=0711:3:4"),)))
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        found = {m.name: (m.mode, m.uid, m.gid) for m in tar.getmembers()}
    assert found == {
        "srv": (0o711, 3, 4),
        "srv/data": (0o711, 3, 4),
        "srv/data/file": (0o644, 0, 0),
    }


def test_rules_apply_in_order() -> None:
    perms = Perms((parse_perm("/a/.*=0700:1:1"), parse_perm("/a/b=0644")))
    assert perms.apply("/a/b", "file", 0o755, (0, 0)) == (0o644, (1, 1))
    assert perms.apply("/a/c", "file", 0o755, (0, 0)) == (0o700, (1, 1))
    assert perms.apply("/a", "dir", 0o755, (0, 0)) == (0o755, (0, 0))
    assert isinstance(perms.rules[0], PermRule)


# -- cache keys ------------------------------------------------------------------------------


def test_only_layers_a_rule_touches_change(
    store: Store, app_closure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    plain = _image(store, app_closure, tmp_path / "a", "--cache-dir", cache, capsys=capsys)
    ruled = _image(
        store, app_closure, tmp_path / "b", "--cache-dir", cache,
        "--perms", f"{LIBFOO}/lib/deep/data.txt=0600:1:1",
        "--perms", "/no/such/path=0600",
        capsys=capsys,
    )  # fmt: skip
    after = _by_item(ruled)
    assert set(_by_item(plain)) == set(after) == {APP, LIBFOO, GLIBC, ZLIB}
    old = dict(zip(_items(plain), plain.layer_digests, strict=False))
    new = dict(zip(_items(ruled), ruled.layer_digests, strict=False))
    assert old[LIBFOO] != new[LIBFOO]  # not the cached layer of the first build
    assert after[LIBFOO][LIBFOO.lstrip("/") + "/lib/deep/data.txt"].mode == 0o600
    for other in (APP, GLIBC, ZLIB):
        assert old[other] == new[other], other
    # the rule's layer is cached under its own key: built again, the same bytes come back
    again = _image(
        store, app_closure, tmp_path / "c", "--cache-dir", cache,
        "--perms", f"{LIBFOO}/lib/deep/data.txt=0600:1:1",
        capsys=capsys,
    )  # fmt: skip
    assert dict(zip(_items(again), again.layer_digests, strict=False))[LIBFOO] == new[LIBFOO]
    # and a build without rules still gets the plain layer from the cache
    plain_again = _image(store, app_closure, tmp_path / "d", "--cache-dir", cache, capsys=capsys)
    assert plain_again.layer_digests == plain.layer_digests


def test_each_layers_key_and_perms_part_are_worked_out_once_per_build(
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A build works out each store layer's cache key, and the part of it --perms decides,
    once: the key it looks the layer up by is the one a --cache-to publication names
    (counted by wrapping the key functions where build.py looks them up)."""
    keys: Counter[tuple[str, ...]] = Counter()
    parts: Counter[tuple[str, ...]] = Counter()
    real_key, real_part = build.layer_key, Perms.key_part

    def counting_key(paths: Any, **kwargs: Any) -> str:
        keys[tuple(sorted(paths))] += 1
        return real_key(paths, **kwargs)

    def counting_part(self: Perms, paths: Any, *, store_root: Path | None) -> dict[str, object]:
        parts[tuple(sorted(paths))] += 1
        return real_part(self, paths, store_root=store_root)

    monkeypatch.setattr(build, "layer_key", counting_key)
    monkeypatch.setattr(Perms, "key_part", counting_part)
    image = _image(
        store, app_closure, tmp_path / "a", "--cache-dir", tmp_path / "cache",
        "--perms", f"{LIBFOO}/lib/deep/data.txt=0600:1:1", capsys=capsys,
    )  # fmt: skip
    layers = {(item,) for item in _items(image)}
    assert set(keys) == set(parts) == layers == {(APP,), (LIBFOO,), (GLIBC,), (ZLIB,)}
    assert set(keys.values()) == set(parts.values()) == {1}


def _items(image: OciImage) -> list[str]:
    """The one store item of each store layer, bottom first."""
    found = []
    for number in range(len(image.layer_digests)):
        items = [n for n in image.layer_members(number) if n.count("/") == 2]
        if len(items) == 1:
            found.append("/" + items[0])
    return found


def test_key_part_names_only_touching_rules(store: Store) -> None:
    perms = Perms(
        (parse_perm(f"{APP}/bin/app=0700"), parse_perm("/nowhere=0700"), parse_perm("/nix=0711"))
    )
    assert perms.key_part([APP], store_root=store.root) == {
        "perms": [f"{APP}/bin/app=0700", "/nix=0711"]
    }
    assert perms.key_part([GLIBC], store_root=store.root) == {"perms": ["/nix=0711"]}
    assert Perms((parse_perm("/nowhere=0700"),)).key_part([GLIBC], store_root=store.root) == {}
    owned = Perms(store_owner=(1, 2))
    assert owned.key_part([GLIBC], store_root=store.root) == {"store_owner": [1, 2]}


# -- a non-root user's home ---------------------------------------------------------------------


def test_a_from_image_user_gets_the_home_the_image_lacks(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    accounts = tmp_path / "accounts"
    (accounts / "etc").mkdir(parents=True)
    (accounts / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nsvc:x:1000:1000:svc:/srv/svc:/bin/sh\n"
        "web:x:1001:1001:web:/var/www:/bin/sh\n"
    )
    (accounts / "etc" / "group").write_text("root:x:0:\nsvc:x:1000:\nweb:x:1001:\n")
    (accounts / "var" / "www").mkdir(parents=True)
    (accounts / "root").mkdir(mode=0o700)
    closure = store.closure_file(tmp_path / "zlib.json", [ZLIB])
    base = tmp_path / "base.tar"
    argv = ["--closure", closure, "--store-root", store.root, "--no-cache"]
    _build([*argv, "--extra", accounts, "-o", f"docker-archive:{base}"], capsys)

    def top(user: str) -> dict[str, tarfile.TarInfo]:
        dest = tmp_path / f"image-{user}"
        _build([*argv, "--from", f"docker-archive:{base}", "--user", user,
                "-o", f"oci:{dest}"], capsys)  # fmt: skip
        image = read_oci(dest)
        return image.layer_members(len(image.layer_digests) - 1)

    svc = top("svc")
    assert (svc["srv/svc"].uid, svc["srv/svc"].gid, svc["srv/svc"].mode) == (1000, 1000, 0o755)
    assert "etc/passwd" not in svc
    assert not any(name.startswith(("var", "root")) for name in top("web"))  # the base has them
    assert not any(name.startswith(("var", "root", "srv")) for name in top("root"))


def test_every_option_of_every_command_is_in_the_readme() -> None:
    import click

    from closurepack.cli import cli

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = []
    for name, command in cli.all_commands().items():
        group = command.commands if isinstance(command, click.Group) else {name: command}
        for sub, leaf in group.items():
            for param in leaf.params:
                for opt in getattr(param, "opts", []):
                    # -o/--output is spelled -o in the usage lines
                    if opt.startswith("--") and opt != "--output" and opt not in readme:
                        missing.append(f"{name} {sub} {opt}")
    assert missing == []


def test_build_layer_takes_perms_uid_and_gid(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["build-layer", GLIBC, "--store-root", store.root, "--compression", "none",
            "--uid", "3", "--gid", "4", "--perms", f"{GLIBC}/bin=0700:5:6",
            "-o", tmp_path / "l"]  # fmt: skip
    code, out, err = run([str(a) for a in argv], capsys)
    assert code == 0, err
    blob = next(p for p in (tmp_path / "l").iterdir() if p.name != "layer.json")
    with tarfile.open(blob) as tar:
        found = {m.name: (m.mode, m.uid, m.gid) for m in tar.getmembers()}
    assert out.strip() == str(tmp_path / "l" / "layer.json")
    assert found["nix"] == (0o755, 3, 4)
    assert found[GLIBC.lstrip("/") + "/bin"] == (0o700, 5, 6)
    assert found[GLIBC.lstrip("/") + "/bin/glibc"] == (0o755, 3, 4)
