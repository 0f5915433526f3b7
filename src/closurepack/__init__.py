"""closurepack: turn a Nix or Guix store closure into reproducible multi-layer container images."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
