"""``python -m closurepack``: the ``closurepack`` command."""

from __future__ import annotations

import sys

from closurepack.cli import main

__all__: list[str] = []

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
