"""Store item names: the name and version after the hash, and which items are one item
changed between two closures.

An added and a removed item are one item changed when their names after the hash are the same,
or when their names without the version are (Nix's ``parseDrvName`` rule: the name ends at the
first ``-`` not followed by a letter) and only one item of each side has that name, or, for
several outputs of one package, that name and output suffix (``-bin``, ``-dev``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

__all__ = ["match_renamed", "split_name"]


def split_name(path: str) -> tuple[str, str]:
    """``/nix/store/<hash>-openssl-3.0.13-bin`` -> ``("openssl", "3.0.13-bin")``: the name
    after the hash split where Nix's ``parseDrvName`` splits it (at the first ``-`` followed by
    something other than a letter); no such ``-``: the whole name and an empty version."""
    base = path.rsplit("/", 1)[-1]
    name = base.split("-", 1)[1] if "-" in base else base
    for i, char in enumerate(name):
        if char == "-" and i + 1 < len(name) and not name[i + 1].isalpha():
            return name[:i], name[i + 1 :]
    return name, ""


def _output_suffix(version: str) -> str:
    """``3.0.13-bin`` -> ``bin``: a trailing output name (letters only) after the version."""
    last = version.rsplit("-", 1)
    return last[1] if len(last) == 2 and last[1].isalpha() else ""


def match_renamed(removed: Sequence[str], added: Sequence[str]) -> list[tuple[str, str]]:
    """Pair removed and added items (old path, new path) that are one item changed (module
    docstring), in the order of the old paths' names."""
    pairs: list[tuple[str, str]] = []
    left_old, left_new = list(removed), list(added)
    for key in (_full_name, _plain_name, _name_and_output):
        olds, news = _groups(left_old, key), _groups(left_new, key)
        for name in sorted(olds.keys() & news.keys()):
            if len(olds[name]) == 1 and len(news[name]) == 1:
                pairs.append((olds[name][0], news[name][0]))
        taken = {p for pair in pairs for p in pair}
        left_old = [p for p in left_old if p not in taken]
        left_new = [p for p in left_new if p not in taken]
    return sorted(pairs, key=lambda pair: (split_name(pair[0])[0], pair[0]))


def _full_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return base.split("-", 1)[1] if "-" in base else base


def _plain_name(path: str) -> str:
    return split_name(path)[0]


def _name_and_output(path: str) -> str:
    name, version = split_name(path)
    return f"{name}\0{_output_suffix(version)}"


def _groups(paths: Iterable[str], key: Callable[[str], str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        groups[key(path)].append(path)
    return groups
