"""``WWW-Authenticate`` challenges (RFC 7235 section 4.1): scheme, then parameters or token68.

``1#challenge`` with ``challenge = auth-scheme [ 1*SP ( token68 / #auth-param ) ]`` and
``auth-param = token BWS "=" BWS ( token / quoted-string )``. One header may hold several
challenges separated by commas, and a response may carry several headers; both are read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Challenge", "parse_challenges"]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*(?=[ \t]*(?:,|$))")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESCAPE = re.compile(r"\\(.)")
_SPACE = re.compile(r"[ \t]*")
_SEPARATORS = re.compile(r"[ \t,]*")


@dataclass(frozen=True)
class Challenge:
    """One challenge: a lower-case scheme and its parameters (lower-case names)."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)
    token68: str | None = None


def parse_challenges(headers: Iterable[str]) -> list[Challenge]:
    """Every challenge in the ``WWW-Authenticate`` header values ``headers``, in order.

    Raises ``ValueError`` (with the position) for a header that breaks the grammar.
    """
    found: list[Challenge] = []
    for header in headers:
        found.extend(_parse_one(header))
    return found


def _parse_one(text: str) -> list[Challenge]:
    challenges: list[Challenge] = []
    pos = 0
    params: dict[str, str] = {}
    while True:
        pos = _skip(_SEPARATORS, text, pos)
        if pos >= len(text):
            return challenges
        name = _TOKEN.match(text, pos)
        if name is None:
            raise ValueError(f"unexpected {text[pos]!r} at position {pos}")
        after = _skip(_SPACE, text, name.end())
        if challenges and after < len(text) and text[after] == "=":
            # An auth-param of the current challenge.
            pos = _skip(_SPACE, text, after + 1)
            value, pos = _param_value(text, pos)
            # params is the dict of the challenge appended last (filled in place).
            params.setdefault(name.group().lower(), value)
            continue
        # A new challenge: its scheme, then maybe a token68.
        params = {}
        pos = after
        token68 = None
        if pos > name.end():
            blob = _TOKEN68.match(text, pos)
            if blob is not None and not _looks_like_param(text, pos):
                token68 = blob.group()
                pos = blob.end()
        challenges.append(Challenge(name.group().lower(), params, token68))


def _skip(pattern: re.Pattern[str], text: str, pos: int) -> int:
    """The position after what ``pattern`` (which may match nothing) matches at ``pos``."""
    found = pattern.match(text, pos)
    return found.end() if found is not None else pos


def _looks_like_param(text: str, pos: int) -> bool:
    name = _TOKEN.match(text, pos)
    if name is None:
        return False
    after = _skip(_SPACE, text, name.end())
    if after >= len(text) or text[after] != "=":
        return False
    value_at = _skip(_SPACE, text, after + 1)
    # "abc==" is a token68; "realm=x" and 'realm="x"' are parameters.
    return value_at < len(text) and text[value_at] not in "=,"


def _param_value(text: str, pos: int) -> tuple[str, int]:
    quoted = _QUOTED.match(text, pos)
    if quoted is not None:
        return _ESCAPE.sub(r"\1", quoted.group(1)), quoted.end()
    token = _TOKEN.match(text, pos)
    if token is None:
        where = repr(text[pos]) if pos < len(text) else "the end"
        raise ValueError(f"a parameter value is missing before {where} at position {pos}")
    return token.group(), token.end()
