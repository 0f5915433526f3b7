"""Per-path ownership and modes: ``--perms 'REGEX=MODE[:UID:GID]'`` (nix2container's ``perms``)
and ``--uid``/``--gid`` for the whole store (its ``nixUid``/``nixGid``).

A rule's regular expression must match the whole absolute path of an entry in the image
(``re.fullmatch``: ``/nix/store/...-app/etc/app.conf``, ``/home/app``, ``/tmp``; directories
without a trailing slash). Every matching rule is applied in the order given, so a later rule
wins where two set the same thing. Symlinks keep mode 0o777 (Linux ignores it); their owner is
set like any entry's.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from closurepack.errors import OptionError, StoreError

__all__ = ["MAX_ID", "PermRule", "Perms", "parse_perm", "parse_store_owner"]

#: The largest uid or gid a tar header's 8-byte octal field holds.
MAX_ID = 8**7 - 1
_MODE = re.compile(r"0?o?([0-7]{1,4})")
_NUMBER = re.compile(r"[0-9]+")


class PermRule(NamedTuple):
    """One ``--perms`` value: entries whose absolute image path ``regex`` matches whole get
    ``mode`` (permission bits, up to 0o7777) and, when given, ``owner`` (uid, gid)."""

    text: str
    regex: re.Pattern[str]
    mode: int
    owner: tuple[int, int] | None = None

    def matches(self, path: str) -> bool:
        return self.regex.fullmatch(path) is not None


def _id(value: str, what: str, option: str) -> int:
    if not _NUMBER.fullmatch(value):
        raise OptionError(f"{option}: {what} {value!r} is not a number")
    number = int(value)
    if number > MAX_ID:
        raise OptionError(f"{option}: {what} {number} is larger than {MAX_ID}")
    return number


def parse_perm(value: str) -> PermRule:
    """``REGEX=MODE[:UID:GID]`` (MODE octal, such as 0755 or 4755); the regular expression is
    everything before the last ``=``. An OptionError names the value and what is wrong."""
    option = f"--perms {value}"
    pattern, sep, rest = value.rpartition("=")
    if not sep or not pattern:
        raise OptionError(f"{option}: expected REGEX=MODE[:UID:GID]")
    mode_text, *ids = rest.split(":")
    match = _MODE.fullmatch(mode_text)
    if match is None:
        raise OptionError(f"{option}: mode {mode_text!r} is not an octal mode 0000-7777")
    owner: tuple[int, int] | None = None
    if ids:
        if len(ids) != 2:
            raise OptionError(f"{option}: expected REGEX=MODE[:UID:GID]")
        owner = (_id(ids[0], "uid", option), _id(ids[1], "gid", option))
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise OptionError(f"{option}: bad regular expression: {exc}") from None
    return PermRule(value, regex, int(match.group(1), 8), owner)


def parse_store_owner(uid: str | int | None, gid: str | int | None) -> tuple[int, int] | None:
    """``--uid``/``--gid`` as the store's owner (the one not given is 0); None for neither."""
    if uid is None and gid is None:
        return None
    return (
        0 if uid is None else _id(str(uid), "uid", f"--uid {uid}"),
        0 if gid is None else _id(str(gid), "gid", f"--gid {gid}"),
    )


@dataclass(frozen=True)
class Perms:
    """The ``--perms`` rules and the store owner (``--uid``/``--gid``) of one build.

    ``store_owner`` owns the store's top directory (``/nix``, ``/gnu``) and everything below it,
    in the store layers and in the customisation layer (``/nix/var``) alike; ``store_dir`` says
    which store that is. ``rules`` then apply on top, in order.
    """

    rules: tuple[PermRule, ...] = ()
    store_owner: tuple[int, int] | None = None
    store_dir: str = "/nix/store"

    @property
    def is_empty(self) -> bool:
        return not self.rules and self.store_owner is None

    def _in_store_tree(self, path: str) -> bool:
        top = "/" + self.store_dir.strip("/").split("/", 1)[0]
        return path == top or path.startswith(top + "/")

    def apply(
        self, path: str, kind: str, mode: int, owner: tuple[int, int]
    ) -> tuple[int, tuple[int, int]]:
        """The (mode, owner) of the entry at absolute image path ``path`` (``kind``: dir, file
        or symlink) after the store owner and every matching rule."""
        if self.store_owner is not None and self._in_store_tree(path):
            owner = self.store_owner
        for rule in self.rules:
            if rule.matches(path):
                if kind != "symlink":
                    mode = rule.mode
                if rule.owner is not None:
                    owner = rule.owner
        return mode, owner

    def key_part(self, paths: Sequence[str], *, store_root: Path | None) -> dict[str, object]:
        """What of these perms decides the bytes of the store layer of ``paths``, for its cache
        key: the store owner, and the rules matching any of its entries (found by listing the
        items' names; contents are not read). Empty when nothing touches the layer, so a layer
        no rule touches keeps the key it has without ``--perms``."""
        part: dict[str, object] = {}
        if self.store_owner is not None:
            part["store_owner"] = list(self.store_owner)
        if self.rules:
            touching = _touching(self.rules, tuple(sorted(set(paths))), store_root)
            if touching:
                part["perms"] = list(touching)
        return part


@functools.lru_cache(maxsize=1024)
def _touching(
    rules: tuple[PermRule, ...], paths: tuple[str, ...], store_root: Path | None
) -> tuple[str, ...]:
    """The texts of ``rules`` (in order) matching an entry of the layer of ``paths``."""
    names = list(_layer_names(paths, store_root))
    return tuple(rule.text for rule in rules if any(rule.matches(name) for name in names))


def _parents(path: str) -> Iterator[str]:
    parts = path.strip("/").split("/")
    for i in range(1, len(parts)):
        yield "/" + "/".join(parts[:i])


def _layer_names(paths: Iterable[str], store_root: Path | None) -> Iterator[str]:
    """Every absolute image path a store layer of ``paths`` holds: the store's parent
    directories, the items and everything below them (symlinks are not followed)."""
    parents: set[str] = set()
    root = os.fsdecode(store_root).rstrip("/") if store_root is not None else ""
    for path in paths:
        parents.update(_parents(path))
        stack = [path]
        while stack:
            name = stack.pop()
            yield name
            host = root + name
            if os.path.isdir(host) and not os.path.islink(host):
                try:
                    children = os.listdir(host)
                except OSError as exc:
                    raise StoreError(f"{host}: cannot list: {exc.strerror}") from exc
                stack.extend(f"{name}/{child}" for child in children)
    yield from sorted(parents)
