"""The customisation layer on top of the store layers: /tmp, symlinks, extra trees, /etc/passwd."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from closurepack.errors import OptionError
from closurepack.layer import BuiltLayer
from closurepack.layerbuild import build_tree_layer
from closurepack.tarstream import TreeEntry, scan_host_tree

__all__ = ["Customisation", "build_customisation_layer", "customisation_entries"]

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
    def named_user(self) -> tuple[str, str] | None:
        """(user name, group name) when ``user`` names a user, else None."""
        if not self.user:
            return None
        name, _, group = self.user.partition(":")
        if name.isdigit():
            return None
        return name, (group if group and not group.isdigit() else name)

    @property
    def is_empty(self) -> bool:
        return not (self.symlinks or self.extra_dirs or self.tmp or self.named_user)

    @property
    def needs_layer_beyond_tmp(self) -> bool:
        """True when anything but ``/tmp`` is asked for."""
        return bool(self.symlinks or self.extra_dirs or self.named_user)


def _passwd_entries(user: str, group: str) -> list[TreeEntry]:
    passwd = [
        "root:x:0:0:root:/root:/bin/sh",
        f"{user}:x:{DEFAULT_UID}:{DEFAULT_UID}:{user}:/tmp:/bin/sh",
        "nobody:x:65534:65534:nobody:/nonexistent:/bin/false",
    ]
    groups = ["root:x:0:", f"{group}:x:{DEFAULT_UID}:", "nogroup:x:65534:"]
    if user == "root":
        passwd.pop(1)
    if group == "root":
        groups.pop(1)
    return [
        TreeEntry("etc", "dir", 0o755),
        TreeEntry("etc/passwd", "file", 0o644, data=("\n".join(passwd) + "\n").encode()),
        TreeEntry("etc/group", "file", 0o644, data=("\n".join(groups) + "\n").encode()),
    ]


def customisation_entries(customisation: Customisation) -> list[TreeEntry]:
    """The tree entries of the layer: extra trees first, then generated files and links.

    A generated ``/etc/passwd`` is left out when an extra tree brings one; any other name given
    twice is an OptionError naming it.
    """
    entries: list[TreeEntry] = []
    for directory in customisation.extra_dirs:
        entries.extend(scan_host_tree(directory))
    names = {entry.name.strip("/") for entry in entries}
    if customisation.tmp and "tmp" not in names:
        entries.append(TreeEntry("tmp", "dir", 0o1777))
    named = customisation.named_user
    if named and "etc/passwd" not in names:
        entries.extend(_passwd_entries(*named))
    for link, target in customisation.symlinks:
        if not link.startswith("/"):
            raise OptionError(f"--symlink {link}={target}: the link must be an absolute path")
        if link.strip("/") in names:
            raise OptionError(f"--symlink {link}: an --extra tree already has {link}")
        entries.append(TreeEntry(link, "symlink", target=target))
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
