"""The customisation layer on top of the store layers: /tmp, symlinks, extra trees, /etc/passwd,
and the store database of --nix-db / --guix-db."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from closurepack.accounts import account_entries, split_user
from closurepack.compression import codec_identity
from closurepack.digest import Digest, HashingWriter
from closurepack.errors import OptionError
from closurepack.graph import STORE_DIRS
from closurepack.layer import BuiltLayer
from closurepack.layerbuild import build_tree_layer
from closurepack.perms import Perms
from closurepack.tarentries import TreeEntry, scan_host_tree
from closurepack.tarstream import write_tree_tar

__all__ = [
    "Customisation",
    "ExtraTree",
    "build_customisation_layer",
    "check_store",
    "customisation_diff_id",
    "customisation_entries",
    "customisation_layer_key",
    "drop_if_repeated",
]

_log = logging.getLogger(__name__)

#: The store directories no --extra or --symlink entry may cover when the store in use is not
#: known yet (checked again with the plan's own store directory before the layer is built).


class ExtraTree(NamedTuple):
    """``--extra DIR[:UID:GID]``: a host tree copied into the image root, every entry owned
    by ``uid``:``gid`` (default root), modes kept."""

    path: Path
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True, kw_only=True)
class Customisation:
    """What goes in the customisation layer.

    ``symlinks`` are (link, target) pairs (``/bin`` -> ``/nix/store/...-busybox/bin``);
    ``extra_dirs`` are host trees (:class:`ExtraTree`, or a plain path for one owned by root)
    copied into the image root in order; ``tmp`` adds ``/tmp`` (mode 1777); ``user`` adds what
    :func:`~closurepack.accounts.account_entries` gives for it, from ``base_passwd`` and
    ``base_group`` (the ``--from`` image's files; ``from_base`` says there is one) or the
    standard files. ``store_db`` holds the entries of a store database
    (:func:`~closurepack.storedb.store_db_entries`), made once the image's closure is known.
    No entry may cover ``store_dir`` (None: /nix/store and /gnu/store), a parent of it or
    anything in it. ``perms`` sets modes and owners when the layer is written;
    ``fakeroot_script`` is run on a copy of the tree (:mod:`closurepack.fakeroot`), whose
    result, once it has run, is ``prepared``: then the layer's entries.
    """

    symlinks: tuple[tuple[str, str], ...] = ()
    extra_dirs: tuple[ExtraTree | Path, ...] = ()
    tmp: bool = True
    user: str | None = None
    store_dir: str | None = None
    from_base: bool = False
    base_passwd: bytes | None = None
    base_group: bytes | None = None
    store_db: tuple[TreeEntry, ...] = ()
    #: The ``--from`` image lacks the home its /etc/passwd gives ``user``: it is made.
    make_base_home: bool = False
    perms: Perms | None = None
    fakeroot_script: Path | None = None
    prepared: tuple[TreeEntry, ...] | None = None

    def __post_init__(self) -> None:
        trees = tuple(
            t if isinstance(t, ExtraTree) else ExtraTree(Path(t)) for t in self.extra_dirs
        )
        object.__setattr__(self, "extra_dirs", trees)

    @property
    def trees(self) -> tuple[ExtraTree, ...]:
        return tuple(t for t in self.extra_dirs if isinstance(t, ExtraTree))

    @property
    def named_user(self) -> bool:
        """True when ``user`` names a user or a group (not numbers only)."""
        name, group, _, _ = split_user(self.user)
        return name is not None or group is not None

    def accounts(self) -> list[TreeEntry]:
        """The /etc/passwd, /etc/group and home directory entries ``user`` needs."""
        if not self.from_base:
            return account_entries(self.user)
        return account_entries(
            self.user,
            base_passwd=self.base_passwd,
            base_group=self.base_group,
            make_base_home=self.make_base_home,
        )

    @property
    def is_empty(self) -> bool:
        if self.prepared is not None:
            return not self.prepared
        return not (self.tmp or self.needs_layer_beyond_tmp)

    @property
    def needs_layer_beyond_tmp(self) -> bool:
        """True when anything but ``/tmp`` is asked for."""
        return bool(
            self.symlinks
            or self.extra_dirs
            or self.store_db
            or self.fakeroot_script
            or self.accounts()
        )

    @property
    def layer_perms(self) -> Perms | None:
        """``perms`` for this layer's store (``--uid``/``--gid`` own /nix or /gnu here too)."""
        if self.perms is None or self.perms.is_empty:
            return None
        return dataclasses.replace(self.perms, store_dir=self.store_dir or "/nix/store")


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


def check_store(names: Sequence[str], stores: tuple[str, ...], what: str) -> None:
    """An OptionError when an image path of ``names`` is a store directory, a parent of one
    (/nix) or in one (a store item, or something posing as one); it names the deepest."""
    for store in stores:
        inner = store.strip("/")
        over = [
            name
            for name in names
            if name == inner or inner.startswith(name + "/") or name.startswith(inner + "/")
        ]
        if over:
            name = max(over, key=len)
            raise OptionError(f"{what}: /{name} would cover the store {store} or its items")


def customisation_entries(customisation: Customisation) -> list[TreeEntry]:
    """The tree entries of the layer: extra trees first, then generated files and links.

    An OptionError names an extra tree that would replace a generated ``/etc/passwd`` or
    ``/etc/group``, any entry over the store, and any other name given twice.
    """
    if customisation.prepared is not None:
        return list(customisation.prepared)
    stores = (customisation.store_dir,) if customisation.store_dir else STORE_DIRS
    entries: list[TreeEntry] = []
    brought: dict[str, Path] = {}
    for tree in customisation.trees:
        found = scan_host_tree(tree.path, owner=(tree.uid, tree.gid))
        names = [entry.name.strip("/") for entry in found]
        check_store(names, stores, f"--extra {tree.path}")
        for name in names:
            brought.setdefault(name, tree.path)
        entries.extend(found)
    links = [(_check_link(link, target), link, target) for link, target in customisation.symlinks]
    for name, link, target in links:
        check_store([name], stores, f"--symlink {link}={target}")
        if name in brought:
            raise OptionError(f"--symlink {link}: an --extra tree already has /{name}")
    # a --symlink /tmp=... or an --extra tree's tmp takes the place of the default /tmp
    if customisation.tmp and "tmp" not in brought and all(name != "tmp" for name, _, _ in links):
        entries.append(TreeEntry("tmp", "dir", 0o1777))
    for entry in customisation.accounts():
        name = entry.name.strip("/")
        if entry.kind == "file" and name in brought:
            raise OptionError(
                f"--extra {brought[name]}: its /{name} would replace the one --user"
                f" {customisation.user} needs; give a numeric --user or leave it out of the tree"
            )
        entries.append(entry)
    entries.extend(TreeEntry(name, "symlink", target=target) for name, _, target in links)
    entries.extend(customisation.store_db)
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
    write_tree_tar(
        sink, customisation_entries(customisation), mtime=mtime, perms=customisation.layer_perms
    )
    return sink.digest


def customisation_layer_key(
    customisation: Customisation, *, compression: str, level: int | None, mtime: int
) -> str:
    """A cache key of the customisation layer (for shared layer caches): a sha256 hex over its
    diff_id (the tar hashed, nothing written) and the codec, which together decide its blob."""
    obj = {
        "kind": "closurepack-customisation-layer",
        "diff_id": str(customisation_diff_id(customisation, mtime=mtime)),
        "codec": codec_identity(compression, level),
    }
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def drop_if_repeated(
    customisation: Customisation, *, top_diff_id: Digest | None, mtime: int
) -> Customisation:
    """No customisation layer when it would be the base image's top layer (``top_diff_id``)
    again, byte for byte (``--from`` an image closurepack built, with the same /tmp): applied
    on top of it, it adds nothing. Only store layers, which touch nothing outside the store
    (see :func:`customisation_entries`), come between the two."""
    if top_diff_id is None or customisation.is_empty:
        return customisation
    if customisation_diff_id(customisation, mtime=mtime) != top_diff_id:
        return customisation
    _log.info("the customisation layer would repeat the --from image's top layer: left out")
    return Customisation(tmp=False)


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
        perms=customisation.layer_perms,
    )
