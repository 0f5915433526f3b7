"""Multi-platform builds: ``--platform OS/ARCH[/VARIANT]=CLOSURE_OR_STORE_PATH`` (repeated)
parsed and checked, each platform's closure loaded, and the images made into one index.

The closures are planned together (as several closures always are), so a store item that is
the same on every platform (arch-independent data, a shared font) lands in a layer that is
byte for byte the same in each image: one blob in the layout, one upload to the registry.
``--platform`` names every image's closure, so store paths, ``--closure``, ``--plan``,
``--image`` and ``--arch`` are refused beside it; so is a destination that holds one image
only (docker-archive, ``-``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from closurepack.errors import ClosureError, OptionError
from closurepack.graph import Closure, StoreItem
from closurepack.platforms import Platform, parse_platform
from closurepack.sources.query import store_item_path
from closurepack.transports import check_index_destination
from closurepack.workflow import STDIN, load_closures

__all__ = [
    "PlatformClosure",
    "check_platform_build",
    "load_platform_closures",
    "parse_platform_closure",
    "warn_foreign_base",
    "without_bases",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlatformClosure:
    """One ``--platform`` value: the platform and what names its closure (a store path, or
    a graph file; ``-`` standard input)."""

    platform: Platform
    spec: str
    text: str


def parse_platform_closure(text: str) -> PlatformClosure:
    """``linux/arm64=/nix/store/...-hello`` or ``linux/arm/v7=closure-arm.json``."""
    name, sep, spec = text.partition("=")
    if not sep or not spec:
        raise OptionError(
            f"--platform {text!r}: expected OS/ARCH[/VARIANT]=CLOSURE_OR_STORE_PATH,"
            " e.g. linux/arm64=./result-arm64"
        )
    try:
        platform = parse_platform(name)
    except OptionError as exc:
        reason = str(exc).partition(": ")[2]
        raise OptionError(f"--platform {text!r}: {reason}") from exc
    return PlatformClosure(platform, spec, text)


def check_platform_build(
    platforms: Sequence[PlatformClosure],
    *,
    dest: str,
    store_paths: Sequence[str],
    closure_files: Sequence[Path],
    plan_file: Path | None,
    image_selector: str | None,
    arch: str | None,
) -> None:
    """An OptionError for what cannot go with ``--platform``, before anything is read."""
    if store_paths or closure_files or plan_file is not None:
        raise OptionError(
            "--platform names each platform's closure: not with store paths, --closure or --plan"
        )
    if image_selector is not None:
        raise OptionError("--image chooses an image of a plan: not with --platform")
    if arch is not None:
        raise OptionError("--arch: not with --platform (each --platform names its architecture)")
    seen: dict[Platform, str] = {}
    for entry in platforms:
        if entry.platform in seen:
            raise OptionError(
                f"--platform {entry.text!r}: {entry.platform} is given already"
                f" ({seen[entry.platform]!r})"
            )
        seen[entry.platform] = entry.text
    if [e.spec for e in platforms].count(str(STDIN)) > 1:
        raise OptionError("--platform: standard input ('-') can be read only once")
    check_index_destination(dest)


def load_platform_closures(
    platforms: Sequence[PlatformClosure], *, store_root: Path | None
) -> list[Closure]:
    """Each platform's closure, in order: a store path's (queried or scanned as for
    positional store paths), else a graph file's (as ``--closure`` reads it)."""
    closures = []
    for entry in platforms:
        try:
            store_item_path(entry.spec, store_root=store_root)
        except ClosureError as exc:
            path = Path(entry.spec)
            if path != STDIN and not path.is_file():
                raise ClosureError(
                    f"--platform {entry.text!r}: {entry.spec} is neither a store path nor a"
                    " graph file"
                ) from exc
            found = load_closures(store_paths=(), closure_files=[path], store_root=store_root)
        else:
            found = load_closures(store_paths=[entry.spec], closure_files=(), store_root=store_root)
        closures.extend(found)
    return closures


def without_bases(closures: Sequence[Closure], provided: Sequence[set[str]]) -> list[Closure]:
    """Each closure less the items its platform's ``--from`` image holds (``provided``, in
    the same order). Bases that differ between platforms would leave an item shared by two
    closures with other references in each, which cannot be planned together: so references
    to an item any base holds are dropped everywhere (references order layers; they add no
    file), and every item stays in the closures whose base lacks it."""
    every = set().union(*provided)
    out = []
    for whole, own in zip(closures, provided, strict=True):
        closure = whole.without(own)
        others = every - own
        items = {
            path: StoreItem(
                path,
                item.nar_size,
                tuple(r for r in item.references if r not in others),
                item.nar_hash,
            )
            for path, item in closure.items.items()
        }
        out.append(Closure(closure.store_dir, items, closure.roots, closure.source))
    return out


def warn_foreign_base(platform: Platform, config: Mapping[str, Any], from_image: str) -> None:
    """One warning when the ``--from`` image a platform's image is built on is of another
    platform (a single image, not an index, under every platform)."""
    variant = config.get("variant")
    found = Platform(
        str(config.get("os") or "linux"),
        str(config.get("architecture") or "?"),
        variant if isinstance(variant, str) else "",
    )
    if (found.os, found.architecture) != (platform.os, platform.architecture):
        _log.warning(
            "--from %s is a %s image: the %s image is built on it as it is",
            from_image,
            found,
            platform,
        )
