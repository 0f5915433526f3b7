"""Platforms (``OS/ARCH[/VARIANT]``, as OCI image indexes describe them): parsing, the host's,
and choosing one entry of an index.

An index entry is chosen by its ``platform`` object: the same ``os`` and ``architecture``, and
the same ``variant`` when one is asked for (an entry of the right architecture without a
variant is taken when no entry has it exactly). Entries for ``unknown/unknown`` (attestations
BuildKit adds) are never chosen and never listed. With no platform asked for, the host's is
meant; an index without it is an error that lists the platforms it has, never a silent pick.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from closurepack.errors import OptionError, SourceError
from closurepack.image import ImageConfig, host_architecture

__all__ = ["Platform", "choose_entry", "entry_platform", "host_platform", "parse_platform"]


@dataclass(frozen=True, order=True)
class Platform:
    """``os``, ``architecture`` (OCI names: amd64, arm64, arm) and ``variant`` (v7, or "")."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    @property
    def arch(self) -> str:
        """``architecture[/variant]``, as ``--arch`` and :class:`ImageConfig` spell it."""
        return f"{self.architecture}/{self.variant}" if self.variant else self.architecture

    def as_json(self) -> dict[str, str]:
        """The ``platform`` object of an index descriptor."""
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out


def parse_platform(text: str, *, option: str = "--platform") -> Platform:
    """``linux/arm64``, ``linux/arm/v7`` (machine names such as ``linux/aarch64`` mapped) as a
    :class:`Platform`; an OptionError naming ``option`` and ``text`` when it is not one."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise OptionError(f"{option} {text!r}: expected OS/ARCH[/VARIANT], e.g. linux/arm64")
    os_name, arch = parts[0], "/".join(parts[1:])
    try:
        config = ImageConfig(architecture=arch, os=os_name)
    except OptionError as exc:
        raise OptionError(f"{option} {text!r}: {str(exc).partition(': ')[2]}") from exc
    return Platform(config.os, config.arch, config.variant)


def host_platform() -> Platform:
    """This machine's platform: ``linux`` and its architecture (e.g. ``linux/amd64``)."""
    arch, variant = host_architecture()
    return Platform("linux", arch, variant)


def entry_platform(entry: Mapping[str, Any]) -> Platform | None:
    """The platform an index descriptor declares; None without one (or ``unknown/unknown``)."""
    platform = entry.get("platform")
    if not isinstance(platform, dict):
        return None
    os_name, arch = platform.get("os"), platform.get("architecture")
    if not isinstance(os_name, str) or not isinstance(arch, str) or not os_name or not arch:
        return None
    if os_name == "unknown" and arch == "unknown":
        return None
    variant = platform.get("variant")
    return Platform(os_name, arch, variant if isinstance(variant, str) else "")


def choose_entry(
    entries: Sequence[Mapping[str, Any]], wanted: Platform | None, *, where: str
) -> Mapping[str, Any]:
    """The entry of ``entries`` (an index's ``manifests``) for ``wanted`` (default: the
    host's platform); a SourceError naming ``where`` and listing the platforms there are
    when none is for it."""
    target = wanted or host_platform()
    found = [(p, e) for e in entries if (p := entry_platform(e)) is not None]
    same = [(p, e) for p, e in found if (p.os, p.architecture) == (target.os, target.architecture)]
    for platform, entry in same:
        if platform.variant == target.variant:
            return entry
    loose = [e for p, e in same if not p.variant or not target.variant]
    if loose:
        return loose[0]
    listed = ", ".join(str(p) for p, _ in found) or "none"
    how = "choose one with --platform" if wanted is None else "choose another with --platform"
    what = "this host's platform, " if wanted is None else ""
    raise SourceError(
        f"{where}: the index has no image for {what}{target} (platforms: {listed}); {how}"
    )
