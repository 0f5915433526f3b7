"""Parsing of command-line option values (K=V pairs, commands, times) into typed values, and
the warning for an image that --entrypoint and --cmd leave without a command."""

from __future__ import annotations

import datetime
import json
import logging
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path

from closurepack.errors import OptionError

__all__ = [
    "parse_command",
    "parse_created",
    "parse_extra",
    "parse_key_values",
    "parse_size",
    "warn_no_command",
]

_log = logging.getLogger(__name__)


def parse_key_values(values: Sequence[str], *, option: str) -> tuple[tuple[str, str], ...]:
    """``["A=1", "B=x=y"]`` -> ``(("A", "1"), ("B", "x=y"))``; the key must be non-empty."""
    pairs: list[tuple[str, str]] = []
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise OptionError(f"{option} {value!r}: expected KEY=VALUE")
        pairs.append((key, rest))
    return tuple(pairs)


def warn_no_command(dest: str) -> None:
    """The warning for an image with neither Entrypoint nor Cmd (given for a recorded re-push
    as for the build)."""
    _log.warning(
        "%s: the image has no Entrypoint and no Cmd: it runs only when given a command"
        " (--entrypoint or --cmd set one)",
        dest,
    )


def parse_command(value: str | None, *, option: str) -> tuple[str, ...] | None:
    """A JSON array of strings (``["/bin/app", "-v"]``) or a shell-quoted string."""
    if value is None:
        return None
    text = value.strip()
    if text.startswith("{"):  # JSON, but not an array: not a command either
        raise OptionError(f"{option} {value!r}: expected a JSON array of strings")
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise OptionError(f"{option} {value!r}: invalid JSON array: {exc}") from exc
        if not isinstance(parsed, list) or not all(isinstance(a, str) for a in parsed):
            raise OptionError(f"{option} {value!r}: expected a JSON array of strings")
        return tuple(parsed)
    import shlex  # noqa: PLC0415 - a command given as shell words only; not on a re-push

    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise OptionError(f"{option} {value!r}: {exc}") from exc


def parse_created(value: str, *, option: str = "--created") -> int:
    """Seconds since the epoch from an integer, an RFC 3339 / ISO 8601 date, or ``now``."""
    text = value.strip()
    if text == "now":
        return int(time.time())
    if _INTEGER.fullmatch(text):
        seconds = int(text)
    else:
        try:
            moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except (ValueError, OverflowError):
            raise OptionError(
                f"{option} {value!r}: expected seconds since the epoch, an RFC 3339 date or 'now'"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
        seconds = int(moment.timestamp())
    if seconds < 0:
        raise OptionError(f"{option} {value!r}: before 1970")
    if seconds > _MAX_CREATED:
        raise OptionError(f"{option} {value!r}: after the year 9999")
    return seconds


_INTEGER = re.compile(r"-?[0-9]+")
#: 9999-12-31T23:59:59Z, the last moment an RFC 3339 date can name.
_MAX_CREATED = 253402300799


_EXTRA_OWNER = re.compile(r"(.+):([0-9]+):([0-9]+)")
#: The largest uid/gid a tar header holds (8-byte octal field).
_MAX_ID = 8**7 - 1


def parse_extra(value: str) -> tuple[Path, int, int]:
    """``--extra DIR[:UID:GID]`` -> (directory, uid, gid), owner 0:0 when none is given; the
    directory must exist (a directory whose own name ends in ``:N:N`` is taken whole)."""
    match = _EXTRA_OWNER.fullmatch(value)
    if match and not Path(value).is_dir():
        path, uid, gid = Path(match.group(1)), int(match.group(2)), int(match.group(3))
    else:
        path, uid, gid = Path(value), 0, 0
    if uid > _MAX_ID or gid > _MAX_ID:
        raise OptionError(f"--extra {value}: uid and gid must be at most {_MAX_ID}")
    if not path.is_dir():
        what = "not a directory" if path.exists() else "no such directory"
        raise OptionError(f"--extra {value}: {what}: {path}")
    return path, uid, gid


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: str | int | None, *, option: str = "--cache-max-size") -> int | None:
    """Bytes from ``500M``, ``20G``, ``1.5T`` or a plain number (binary units, an optional
    ``B``/``iB``); ``None`` or ``none`` means no limit."""
    if value is None or isinstance(value, int):
        return value
    text = value.strip().upper().removesuffix("IB").removesuffix("B")
    if text in ("NONE", "UNLIMITED"):
        return None
    unit = text[-1:] if text[-1:] in _SIZE_UNITS else ""
    number = text[: len(text) - len(unit)]
    try:
        amount = float(number)
    except ValueError:
        raise OptionError(f"{option} {value!r}: expected a size such as 500M or 20G") from None
    if not math.isfinite(amount):
        raise OptionError(f"{option} {value!r}: expected a finite size such as 500M or 20G")
    if amount < 0:
        raise OptionError(f"{option} {value!r}: negative size")
    return int(amount * _SIZE_UNITS[unit])
