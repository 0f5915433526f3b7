"""A package's exported names imported from their submodules on first use (PEP 562's module
``__getattr__``): a command that needs one submodule does not load the others."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: each name of ``homes`` from the submodule it
    maps to, imported when the name is first asked for and then kept as the package's own
    attribute (later lookups do not come here)."""
    namespace = sys.modules[package].__dict__

    def exported(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{home}"), name)
        namespace[name] = value
        return value

    return exported
