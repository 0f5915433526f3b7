"""The registry transport: references, options, and (in submodules) push and pull over HTTP.

Only the light parts are imported here, so that parsing a ``docker://`` reference does not load
the HTTP stack; ``registry.push`` and ``registry.pull`` bring it in. The names of
:mod:`.reference` but these two are loaded when first asked for (module ``__getattr__``), so
that a build to any other destination does not define :class:`RegistryRef` (issue 11)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from closurepack._lazy import lazy_exports
from closurepack.registry.options import RegistryOptions, is_loopback

if TYPE_CHECKING:
    from closurepack.registry.reference import RegistryRef, parse_reference, push_tags

__all__ = [
    "PREFIX",
    "RegistryOptions",
    "RegistryRef",
    "is_loopback",
    "is_registry_reference",
    "parse_reference",
    "push_tags",
]

#: The transport prefix of registry references.
PREFIX = "docker://"


def is_registry_reference(text: str) -> bool:
    """Whether ``text`` names a registry image (starts with ``docker://``)."""
    return text.startswith(PREFIX)


__getattr__ = lazy_exports(
    __name__,
    {"RegistryRef": "reference", "parse_reference": "reference", "push_tags": "reference"},
)
