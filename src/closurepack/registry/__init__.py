"""The registry transport: references, options, and (in submodules) push and pull over HTTP.

Only the light parts are imported here, so that parsing a ``docker://`` reference does not load
the HTTP stack; ``registry.push`` and ``registry.pull`` bring it in.
"""

from __future__ import annotations

from closurepack.registry.options import RegistryOptions, is_loopback
from closurepack.registry.reference import (
    PREFIX,
    RegistryRef,
    is_registry_reference,
    parse_reference,
    push_tags,
)

__all__ = [
    "PREFIX",
    "RegistryOptions",
    "RegistryRef",
    "is_loopback",
    "is_registry_reference",
    "parse_reference",
    "push_tags",
]
