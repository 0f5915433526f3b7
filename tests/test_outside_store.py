"""No file from outside the store ever goes in an image: plans, closure files, build-layer store
paths and the tar writer itself refuse it; symlinks in items are stored as links, never followed.
Real files in tmp_path, the real CLI (``cli.main``), images read back with tarfile."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clistore import APP, GLIBC, Store, read_oci, run
from closurepack.build import BuildOptions, build_layers
from closurepack.errors import ClosureError, StoreError
from closurepack.plan import ImagePlan, PlannedLayer
from closurepack.tarstream import _check_entry_name, _names_inside, write_store_tar

PASSWD = Path("/etc/passwd")


def _plan_file(path: Path, paths: list[str], **top: object) -> Path:
    path.write_text(json.dumps({**top, "images": [{"layers": [{"paths": paths}]}]}))
    return path


def _refused(argv: list[object], capsys: pytest.CaptureFixture[str], *must_say: str) -> str:
    status, out, err = run(argv, capsys)
    assert status == 2, err
    assert out == ""
    assert len(err.splitlines()) == 1, err
    for text in must_say:
        assert text in err, (text, err)
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("top", "paths", "must_say"),
    [
        # before: the store directory was taken from the paths, and the image held /etc/passwd
        ({}, ["/etc/passwd"], ("no 'store_dir'",)),
        ({"store_dir": "/nix/store"}, ["/etc/passwd"], ("/etc/passwd", "not an item")),
        ({"store_dir": "/nix/store"}, ["/nix/store/../../etc/passwd"], ("'..'",)),
        ({"store_dir": "/nix/store"}, ["etc/passwd"], ("not absolute",)),
        ({"store_dir": "/nix/store"}, [f"{GLIBC}/lib/deep"], (f"{GLIBC}/lib/deep", "not an item")),
        # a consistent plan whose store directory is not a store: only under a --store-root
        ({"store_dir": "/etc"}, ["/etc/passwd"], ("/etc is not a store directory", "--store-root")),
    ],
)
def test_a_plan_naming_host_files_is_refused(
    top: dict[str, object],
    paths: list[str],
    must_say: tuple[str, ...],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plan = _plan_file(tmp_path / "evil.json", paths, **top)
    dest = tmp_path / "image"
    _refused(
        ["build", "--plan", plan, "--no-cache", "-o", f"oci:{dest}"], capsys, str(plan), *must_say
    )
    assert not dest.exists()
    out = tmp_path / "layer"
    _refused(
        ["build-layer", "--plan", plan, "--layer", "0", "-o", out], capsys, str(plan), *must_say
    )
    assert not out.exists()


def test_a_closure_file_naming_host_files_is_refused_by_build(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    closure = tmp_path / "evil.json"
    closure.write_text(json.dumps([{"path": "/etc/passwd", "narSize": 1, "references": []}]))
    dest = tmp_path / "image"
    _refused(
        ["build", "--closure", closure, "--no-cache", "-o", f"oci:{dest}"],
        capsys,
        str(closure),
        "/etc is not a store directory",
    )
    assert not dest.exists()


def test_build_layer_store_paths_outside_the_store_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "layer"
    for path in ("/etc/passwd", "/etc", "/nix/store/../etc/passwd"):
        _refused(["build-layer", path, "-o", out], capsys, path)
    assert not out.exists()


def test_with_a_store_root_the_files_come_from_under_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plan for a store in /etc is the user's own business under --store-root: the layer holds
    the store root's file, never the host's /etc/passwd."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("not the host's\n")
    plan = _plan_file(tmp_path / "plan.json", ["/etc/passwd"], store_dir="/etc")
    dest = tmp_path / "image"
    argv = ["build", "--plan", plan, "--store-root", root, "--no-cache", "--no-tmp"]
    status, _, err = run([*argv, "--compression", "none", "-o", f"oci:{dest}"], capsys)
    assert status == 0, err
    image = read_oci(dest)
    assert image.layer_file(0, "etc/passwd") == b"not the host's\n"


def test_the_tar_writer_reads_no_host_file_outside_the_stores(tmp_path: Path) -> None:
    with pytest.raises(ClosureError, match=r"/etc is not a store directory"):
        write_store_tar(io.BytesIO(), ["/etc/passwd"])
    with pytest.raises(ClosureError, match=r"'\.\.'"):
        write_store_tar(io.BytesIO(), ["/nix/store/../../etc/passwd"], store_root=tmp_path)


def test_build_layers_checks_every_path_before_the_cache(tmp_path: Path) -> None:
    image = ImagePlan((PlannedLayer(("/etc/passwd",)),))
    with pytest.raises(ClosureError, match="/etc/passwd is not an item of the store /nix/store"):
        build_layers(image, options=BuildOptions(jobs=1), work_dir=tmp_path)
    with pytest.raises(ClosureError, match="/etc is not a store directory"):
        build_layers(image, options=BuildOptions(store_dir="/etc", jobs=1), work_dir=tmp_path)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "name", [b"", b"/etc/passwd", b"../etc", b"nix/store/../../etc", b"nix//store", b"./x", b"a\0"]
)
def test_no_tar_entry_names_a_path_outside_the_root(name: bytes) -> None:
    with pytest.raises(StoreError, match="must stay inside the image root"):
        _check_entry_name(name)


def test_entry_names_inside_the_root_pass() -> None:
    for name in (b"nix", b"nix/store/x-y", b"etc/..hidden", b"a/b.../c", b"a/.b", b".x/y"):
        _check_entry_name(name)


@settings(deadline=None)  # a busy machine is no failure
@given(st.lists(st.sampled_from([b"a", b".", b"/", b"\0", b".."]), max_size=8).map(b"".join))
def test_the_quick_name_check_agrees_with_the_definition(name: bytes) -> None:
    # the definition: relative, no empty, "." or ".." part, no NUL
    parts = name.split(b"/")
    bad = not name or b"\0" in name or any(part in (b"", b".", b"..") for part in parts)
    if bad:
        with pytest.raises(StoreError, match="must stay inside the image root"):
            _check_entry_name(name)
    else:
        _check_entry_name(name)


@settings(deadline=None)
@given(
    st.lists(
        st.lists(st.sampled_from([b"a", b".", b"/", b"\0", b".."]), max_size=6).map(b"".join),
        max_size=5,
    )
)
def test_the_check_of_all_names_at_once_agrees_with_the_one_by_one(names: list[bytes]) -> None:
    def passes(name: bytes) -> bool:
        try:
            _check_entry_name(name)
        except StoreError:
            return False
        return True

    assert _names_inside(names) == all(passes(name) for name in names)


def test_symlinks_out_of_the_store_are_stored_as_links(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    top = store.files(APP)
    (top / "passwd").symlink_to("/etc/passwd")
    (top / "up").symlink_to("../../..")
    (top / "etc-dir").symlink_to("/etc")
    closure = store.closure_file(tmp_path / "app.json", [APP])
    dest = tmp_path / "image"
    argv = ["build", "--closure", closure, "--store-root", store.root, "--strategy", "single"]
    status, _, err = run([*argv, "--no-cache", "--no-tmp", "-o", f"oci:{dest}"], capsys)
    assert status == 0, err
    image = read_oci(dest)
    members = image.layer_members(0)
    base = APP.lstrip("/")
    for name, target in (("passwd", "/etc/passwd"), ("up", "../../.."), ("etc-dir", "/etc")):
        member = members[f"{base}/{name}"]
        assert member.issym(), name
        assert member.linkname == target
        assert member.size == 0
    # nothing of the targets came along: no entry outside the item's directories
    assert all(n in ("nix", "nix/store") or n.startswith("nix/store/") for n in members)
    assert not any(n.startswith(f"{base}/etc-dir/") for n in members)
    blob = image.blob(image.layer_digests[0])
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
        data = b"".join(
            handle.read()
            for member in tar.getmembers()
            if member.isfile() and (handle := tar.extractfile(member)) is not None
        )
    assert PASSWD.read_bytes() not in data
