"""JSON read from images, registries and caches: parsed, or one ImageError line naming what
was read (bad JSON, or not the object expected).

JSON nested too deeply for the parser is an ImageError too where the caller asks for it
(``deep_error``: what a registry or cache sent); else the RecursionError goes on to the CLI,
which reports it in one line as bad input (an image file the user named)."""

from __future__ import annotations

import json
from typing import Any

from closurepack.errors import ImageError

__all__ = ["parse_json", "parse_json_object"]


def parse_json(data: bytes | str, what: str, *, deep_error: bool = False) -> Any:
    """``data`` parsed, or an ImageError naming ``what`` (for nesting too deep to parse too,
    with ``deep_error``)."""
    try:
        return json.loads(data)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        raise ImageError(f"{what}: not valid JSON: {exc}") from exc
    except RecursionError as exc:
        if not deep_error:
            raise
        raise ImageError(f"{what}: not valid JSON: nested too deeply") from exc


def parse_json_object(data: bytes | str, what: str) -> dict[str, Any]:
    """``data`` parsed as a JSON object, or an ImageError naming ``what`` (nesting too deep
    to parse included)."""
    obj = parse_json(data, what, deep_error=True)
    if not isinstance(obj, dict):
        raise ImageError(f"{what}: not a JSON object")
    return obj
