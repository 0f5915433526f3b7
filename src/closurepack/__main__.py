"""``python -m closurepack``: the ``closurepack`` command."""

from __future__ import annotations

from closurepack.cli import run

__all__: list[str] = []

if __name__ == "__main__":  # pragma: no cover
    run()
