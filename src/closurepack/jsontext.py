"""JSON read from images, registries and caches: parsed, or one ImageError line naming what
was read (bad JSON, nesting too deep for the parser, or not the object expected)."""

from __future__ import annotations

import json
from typing import Any

from closurepack.errors import ImageError

__all__ = ["parse_json", "parse_json_object"]


def parse_json(data: bytes | str, what: str) -> Any:
    """``data`` parsed, or an ImageError naming ``what``."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ImageError(f"{what}: not valid JSON: {exc}") from exc


def parse_json_object(data: bytes | str, what: str) -> dict[str, Any]:
    """``data`` parsed as a JSON object, or an ImageError naming ``what``."""
    obj = parse_json(data, what)
    if not isinstance(obj, dict):
        raise ImageError(f"{what}: not a JSON object")
    return obj
