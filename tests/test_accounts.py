"""/etc/passwd and /etc/group for --user (accounts.py), and reading them from a base image's
layers as a runtime sees them, whiteouts included (basefiles.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from closurepack.accounts import account_entries, base_home, split_user
from closurepack.basefiles import read_base_files
from closurepack.errors import ImageError, OptionError
from handmade import make_layer


def _files(user: str, **base: bytes | None) -> dict[str, object]:
    return {e.name: (e.data.decode() if e.kind == "file" else (e.uid, e.gid, e.mode))
            for e in account_entries(user, **base)}  # fmt: skip


def test_split_user() -> None:
    assert split_user("1000:users") == (None, "users", 1000, None)
    assert split_user("app") == ("app", None, None, None)
    assert split_user("app:0") == ("app", None, None, 0)
    assert split_user("0:0") == (None, None, 0, 0)
    assert split_user(None) == (None, None, None, None)
    with pytest.raises(OptionError, match="larger"):
        split_user("99999999")


def test_numbers_only_need_nothing() -> None:
    assert account_entries("1000") == []
    assert account_entries("1000:1000") == []


def test_standard_users_are_used_as_they_are() -> None:
    files = _files("nobody")
    lines = str(files["etc/passwd"]).splitlines()
    assert [line for line in lines if line.startswith("nobody:")] == [
        "nobody:x:65534:65534:nobody:/nonexistent:/bin/false"
    ]
    assert "nonexistent" not in files
    assert not any(name.startswith("home") for name in files)
    assert _files("root")["root"] == (0, 0, 0o700)
    # 1000:users: uid 1000 and the standard users group (100), no user named 1000
    files = _files("1000:users")
    assert str(files["etc/passwd"]).splitlines() == [
        "root:x:0:0:root:/root:/bin/sh",
        "nobody:x:65534:65534:nobody:/nonexistent:/bin/false",
    ]
    assert "etc/group" in files  # written, with the standard users group (gid 100)
    assert "users:x:100:" in str(files["etc/group"]).splitlines()


def test_a_base_user_without_its_home_gets_it() -> None:
    passwd = (
        b"root:x:0:0::/root:/bin/sh\nsvc:x:1000:1001::/srv/svc:/bin/sh\nno:x:9:9::/nonexistent:/x\n"
    )
    assert base_home("svc", passwd) == "/srv/svc"
    assert base_home("svc:users", passwd) == "/srv/svc"
    assert base_home("no", passwd) is None
    assert base_home("other", passwd) is None
    assert base_home("svc", None) is None
    assert base_home("1000", passwd) is None
    assert _files("svc", base_passwd=passwd, base_group=b"svc:x:1001:\n") == {}
    made = account_entries("svc", base_passwd=passwd, base_group=b"", make_base_home=True)
    assert [(e.name, e.kind, e.uid, e.gid, e.mode) for e in made] == [
        ("srv/svc", "dir", 1000, 1001, 0o755)
    ]
    made = account_entries("no", base_passwd=passwd, base_group=b"", make_base_home=True)
    assert made == []


def test_base_files_are_extended_with_free_ids() -> None:
    passwd = b"root:x:0:0::/root:/bin/sh\n# comment\nsvc:x:1000:1000::/srv:/bin/sh\n"
    group = b"root:x:0:\nsvc:x:1000:\napp:x:1001:\n"
    files = _files("app", base_passwd=passwd, base_group=group)
    # the existing group app (1001) is the new user's; uid 1001 is free in passwd
    text = str(files["etc/passwd"])
    assert text.splitlines()[-1] == "app:x:1001:1001:app:/home/app:/bin/sh"
    assert text.startswith(passwd.decode())
    assert "etc/group" not in files
    assert files["home/app"] == (1001, 1001, 0o755)
    assert _files("svc", base_passwd=passwd, base_group=group) == {}
    files = _files("svc:staff", base_passwd=passwd, base_group=group)
    assert files == {"etc": (0, 0, 0o755), "etc/group": group.decode() + "staff:x:1002:\n"}


def test_read_base_files_top_layer_wins_and_whiteouts_remove(tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    lower = make_layer(blobs, {"etc": None, "etc/passwd": b"lower\n", "etc/group": b"g\n"})
    upper = make_layer(blobs, {"./etc": None, "./etc/passwd": b"upper\n"}, compression="zstd")
    gone = make_layer(blobs, {"etc": None, "etc/.wh.group": b""})
    opaque = make_layer(blobs, {"etc": None, "etc/.wh..wh..opq": b"", "etc/passwd": b"new\n"})
    names = ["etc/passwd", "/etc/group"]
    assert read_base_files([lower, upper], names, where="x") == {
        "etc/passwd": b"upper\n",
        "etc/group": b"g\n",
    }
    assert read_base_files([lower, upper, gone], names, where="x") == {
        "etc/passwd": b"upper\n",
        "etc/group": None,
    }
    # an opaque directory hides what is below it, but not its own layer's files
    assert read_base_files([lower, opaque], names, where="x") == {
        "etc/passwd": b"new\n",
        "etc/group": None,
    }
    assert read_base_files([], names, where="x") == {"etc/passwd": None, "etc/group": None}


def test_read_base_files_of_a_damaged_layer(tmp_path: Path) -> None:
    layer = make_layer(tmp_path, {"etc": None, "etc/passwd": b"x\n"})
    layer.blob_path.write_bytes(b"\x1f\x8b not gzip at all")
    with pytest.raises(ImageError, match=str(layer.digest)):
        read_base_files([layer], ["etc/passwd"], where="base")
