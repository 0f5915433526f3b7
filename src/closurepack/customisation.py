"""The customisation layer on top of the store layers: /tmp, symlinks, extra trees, /etc/passwd."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from closurepack.digest import Digest, HashingWriter
from closurepack.errors import OptionError
from closurepack.layer import BuiltLayer
from closurepack.layerbuild import build_tree_layer
from closurepack.tarstream import TreeEntry, scan_host_tree, write_tree_tar

__all__ = [
    "Customisation",
    "build_customisation_layer",
    "customisation_diff_id",
    "customisation_entries",
]

#: uid/gid given to a user named by ``--user NAME`` (no number given), as most base images do.
DEFAULT_UID = 1000


@dataclass(frozen=True, kw_only=True)
class Customisation:
    """What goes in the customisation layer.

    ``symlinks`` are (link, target) pairs (``/bin`` -> ``/nix/store/...-busybox/bin``);
    ``extra_dirs`` are host trees copied into the image root in order; ``tmp`` adds ``/tmp``
    (mode 1777); ``user`` adds a minimal ``/etc/passwd`` and ``/etc/group`` when it names a user
    rather than a numeric uid (and no extra tree brings its own).
    """

    symlinks: tuple[tuple[str, str], ...] = ()
    extra_dirs: tuple[Path, ...] = ()
    tmp: bool = True
    user: str | None = None

    @property
    def named_user(self) -> tuple[str | None, str | None] | None:
        """(user name, group name) when ``user`` names a user or a group rather than numbers
        only (each None when given as a number), else None. A named user without a group gets
        the group of the same name."""
        if not self.user:
            return None
        name, _, group = self.user.partition(":")
        user_name = None if name.isdigit() else name
        group_name = None if group.isdigit() else (group or user_name)
        if user_name is None and group_name is None:
            return None
        return user_name, group_name

    @property
    def is_empty(self) -> bool:
        return not (self.symlinks or self.extra_dirs or self.tmp or self.named_user)

    @property
    def needs_layer_beyond_tmp(self) -> bool:
        """True when anything but ``/tmp`` is asked for."""
        return bool(self.symlinks or self.extra_dirs or self.named_user)


def _passwd_entries(user: str | None, group: str | None, user_spec: str) -> list[TreeEntry]:
    """Minimal /etc/passwd and /etc/group so that ``--user NAME[:GROUP]`` resolves: a named user
    gets uid :data:`DEFAULT_UID`, a named group gid :data:`DEFAULT_UID`; numbers given in
    ``user_spec`` are used as they are."""
    _, _, group_part = user_spec.partition(":")
    gid = int(group_part) if group_part.isdigit() else DEFAULT_UID
    passwd = ["root:x:0:0:root:/root:/bin/sh"]
    if user is not None and user != "root":
        passwd.append(f"{user}:x:{DEFAULT_UID}:{gid}:{user}:/tmp:/bin/sh")
    passwd.append("nobody:x:65534:65534:nobody:/nonexistent:/bin/false")
    groups = ["root:x:0:"]
    if group is not None and group != "root":
        groups.append(f"{group}:x:{DEFAULT_UID}:")
    groups.append("nogroup:x:65534:")
    return [
        TreeEntry("etc", "dir", 0o755),
        TreeEntry("etc/passwd", "file", 0o644, data=("\n".join(passwd) + "\n").encode()),
        TreeEntry("etc/group", "file", 0o644, data=("\n".join(groups) + "\n").encode()),
    ]


def _check_link(link: str, target: str) -> str:
    """The link's name in the image (no leading slash); an OptionError naming --symlink when
    it is not an absolute path of plain parts, or the target is empty."""
    if not link.startswith("/"):
        raise OptionError(f"--symlink {link}={target}: the link must be an absolute path")
    parts = [part for part in link.split("/") if part]
    if not parts or any(part in (".", "..") for part in parts):
        raise OptionError(f"--symlink {link}={target}: the link must not be / or hold . or ..")
    if not target or "\0" in target or "\0" in link:
        raise OptionError(f"--symlink {link}={target}: empty target or NUL byte")
    return "/".join(parts)


def customisation_entries(customisation: Customisation) -> list[TreeEntry]:
    """The tree entries of the layer: extra trees first, then generated files and links.

    A generated ``/etc/passwd`` is left out when an extra tree brings one; any other name given
    twice is an OptionError naming it.
    """
    entries: list[TreeEntry] = []
    for directory in customisation.extra_dirs:
        entries.extend(scan_host_tree(directory))
    names = {entry.name.strip("/") for entry in entries}
    links = [(_check_link(link, target), link, target) for link, target in customisation.symlinks]
    for name, link, _target in links:
        if name in names:
            raise OptionError(f"--symlink {link}: an --extra tree already has /{name}")
    # a --symlink /tmp=... or an --extra tree's tmp takes the place of the default /tmp
    if customisation.tmp and "tmp" not in names and all(name != "tmp" for name, _, _ in links):
        entries.append(TreeEntry("tmp", "dir", 0o1777))
    named = customisation.named_user
    if named and customisation.user and "etc/passwd" not in names:
        entries.extend(_passwd_entries(*named, customisation.user))
    entries.extend(TreeEntry(name, "symlink", target=target) for name, _, target in links)
    _check_unique(entries)
    return entries


def _check_unique(entries: Sequence[TreeEntry]) -> None:
    seen: dict[str, str] = {}
    for entry in entries:
        name = entry.name.strip("/")
        kind = seen.get(name)
        if kind is not None and not (kind == "dir" and entry.kind == "dir"):
            raise OptionError(f"/{name} is given twice in the customisation layer")
        seen[name] = entry.kind


def customisation_diff_id(customisation: Customisation, *, mtime: int) -> Digest:
    """The diff_id the customisation layer would have (its tar hashed, nothing written), to
    tell whether it adds anything to a base image whose top layer may be the very same."""
    sink = HashingWriter()
    write_tree_tar(sink, customisation_entries(customisation), mtime=mtime)
    return sink.digest


def build_customisation_layer(
    customisation: Customisation,
    *,
    compression: str,
    level: int | None,
    mtime: int,
    dest_dir: Path,
) -> BuiltLayer:
    """Build the customisation layer into ``dest_dir`` (never cached: --extra trees change)."""
    return build_tree_layer(
        customisation_entries(customisation),
        compression=compression,
        level=level,
        mtime=mtime,
        dest_dir=dest_dir,
        comment="customisation",
    )
