"""``/etc/passwd`` and ``/etc/group`` for ``--user``: the entries it names, found in the base
image's files or in the standard ones closurepack writes, and added when missing."""

from __future__ import annotations

from typing import NamedTuple

from closurepack.errors import OptionError
from closurepack.perms import MAX_ID
from closurepack.tarentries import TreeEntry

__all__ = [
    "FIRST_UID",
    "STANDARD_GROUP",
    "STANDARD_PASSWD",
    "account_entries",
    "base_home",
    "split_user",
]

#: The first uid/gid given to a user or group ``--user`` names and no file has (as adduser).
FIRST_UID = 1000
#: What closurepack writes when there is no base image to take the files from.
STANDARD_PASSWD = (
    "root:x:0:0:root:/root:/bin/sh",
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false",
)
STANDARD_GROUP = ("root:x:0:", "users:x:100:", "nogroup:x:65534:")
#: Homes that are meant not to exist.
_NO_HOME = ("", "/", "/nonexistent")


def split_user(user: str | None) -> tuple[str | None, str | None, int | None, int | None]:
    """``--user`` as (user name, group name, uid, gid): each part is a name or a number
    (``1000:users`` is uid 1000 and the group named users), unset parts None."""
    if not user:
        return None, None, None, None
    name, _, group = user.partition(":")
    uid = int(name) if name.isascii() and name.isdigit() else None
    gid = int(group) if group.isascii() and group.isdigit() else None
    for number in (uid, gid):
        if number is not None and number > MAX_ID:
            raise OptionError(f"--user {user}: {number} is larger than {MAX_ID}")
    return (name if uid is None else None), (group if gid is None and group else None), uid, gid


class _Table(NamedTuple):
    """One of the files as lines, and the name -> fields of its well-formed entries."""

    lines: list[str]
    entries: dict[str, list[str]]

    @classmethod
    def parse(cls, text: str, fields: int) -> _Table:
        lines = [line for line in text.splitlines() if line.strip()]
        entries: dict[str, list[str]] = {}
        for line in lines:
            parts = line.split(":")
            if len(parts) >= fields and parts[0] and not line.startswith("#"):
                entries.setdefault(parts[0], parts)
        return cls(lines, entries)

    def ids(self) -> set[int]:
        return {int(p[2]) for p in self.entries.values() if p[2].isascii() and p[2].isdigit()}

    def free_id(self, preferred: int | None = None) -> int:
        used = self.ids()
        if preferred is not None and preferred not in used:
            return preferred
        number = FIRST_UID
        while number in used:
            number += 1
        return number

    def text(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode(errors="surrogateescape")


def _text(data: bytes | None, standard: tuple[str, ...]) -> str:
    return "\n".join(standard) if data is None else data.decode(errors="surrogateescape")


def _number(parts: list[str], index: int, default: int) -> int:
    value = parts[index] if len(parts) > index else ""
    return int(value) if value.isascii() and value.isdigit() else default


def base_home(user: str | None, base_passwd: bytes | None) -> str | None:
    """The home directory ``base_passwd`` gives the user ``--user`` names, when it has the
    user and the home is one meant to exist (not ``/nonexistent``)."""
    name = split_user(user)[0]
    if name is None or base_passwd is None:
        return None
    entry = _Table.parse(_text(base_passwd, STANDARD_PASSWD), 7).entries.get(name)
    if entry is None or entry[5] in _NO_HOME or not entry[5].startswith("/"):
        return None
    return entry[5]


def account_entries(
    user: str | None,
    *,
    base_passwd: bytes | None = None,
    base_group: bytes | None = None,
    make_base_home: bool = False,
) -> list[TreeEntry]:
    """The entries ``--user`` needs: none for numbers only. A named user or group is looked up
    in ``base_passwd``/``base_group`` (the ``--from`` image's files) or, without them, in
    :data:`STANDARD_PASSWD`/:data:`STANDARD_GROUP`; one not there is appended with the first
    free id from :data:`FIRST_UID`, and a new user gets the home ``/home/NAME``, owned by it.
    A user ``base_passwd`` has gets its home (see :func:`base_home`) when ``make_base_home``
    (the base image lacks it). A file is written only when it is new or gains a line."""
    name, group_name, _uid, gid = split_user(user)
    if name is None and group_name is None:
        return []
    passwd = _Table.parse(_text(base_passwd, STANDARD_PASSWD), 7)
    groups = _Table.parse(_text(base_group, STANDARD_GROUP), 3)
    passwd_changed = base_passwd is None
    group_changed = base_group is None
    home: tuple[str, int, int] | None = None
    new_user = name is not None and name not in passwd.entries
    new_uid = passwd.free_id() if new_user else None
    if group_name is None and new_user and gid is None:
        group_name = name  # a new user alone gets a group of its own name
    if group_name is not None:
        entry = groups.entries.get(group_name)
        if entry is None:
            gid = groups.free_id(new_uid)  # the new user's number when it is free
            groups.lines.append(f"{group_name}:x:{gid}:")
            group_changed = True
        else:
            gid = _number(entry, 2, 0)
    if name is not None and new_uid is not None:
        directory = f"/home/{name}"
        primary = new_uid if gid is None else gid
        passwd.lines.append(f"{name}:x:{new_uid}:{primary}:{name}:{directory}:/bin/sh")
        passwd_changed = True
        home = (directory, new_uid, primary)
    elif name is not None and (base_passwd is None or make_base_home):
        # a standard entry (root, nobody), or the base image's user whose home it lacks: the
        # home as the entry names it, unless none is meant
        existing = passwd.entries[name]
        if existing[5] not in _NO_HOME and existing[5].startswith("/"):
            home = (existing[5], _number(existing, 2, 0), _number(existing, 3, 0))
    entries: list[TreeEntry] = []
    if passwd_changed or group_changed:
        entries.append(TreeEntry("etc", "dir", 0o755))
    if passwd_changed:
        entries.append(TreeEntry("etc/passwd", "file", 0o644, data=passwd.text()))
    if group_changed:
        entries.append(TreeEntry("etc/group", "file", 0o644, data=groups.text()))
    if home is not None:
        directory, owner, owner_group = home
        mode = 0o700 if directory == "/root" else 0o755
        entries.append(TreeEntry(directory.lstrip("/"), "dir", mode, uid=owner, gid=owner_group))
    return entries
