"""Destination strings as skopeo users write them, and the image names and tags inside them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from closurepack.errors import OptionError

__all__ = [
    "DEFAULT_REPO_TAG",
    "KINDS",
    "Destination",
    "docker_repo_tags",
    "image_repo_name",
    "oci_ref_names",
    "parse_destination",
    "parse_repo_tag",
]

#: Kinds of destination, by transport prefix; ``stdout`` is spelt ``-``.
KINDS = ("docker-archive", "oci", "oci-archive", "stdout")
#: The name docker-archive images get when neither the destination nor ``--tag`` gives one,
#: and the image has no name of its own (see :func:`image_repo_name`).
DEFAULT_REPO_TAG = "closurepack:latest"

# Docker reference grammar (distribution/reference), without digests.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?)"  # noqa: E501
# Patterns, not compiled regexes (as in closurepack.registry.reference): re compiles (and
# caches) them when a name is first checked, not on import (~0.5 ms), which every build pays.
_NAME = rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_ALNUM = r"[a-z0-9]+"


class Destination(NamedTuple):
    """Where an image goes (or comes from).

    ``reference`` is what followed the path: ``name:tag`` for docker-archive, the tag
    (``org.opencontainers.image.ref.name``) for oci and oci-archive, ``None`` when absent.
    """

    kind: str
    path: Path | None
    reference: str | None = None

    def __str__(self) -> str:
        if self.kind == "stdout":
            return "-"
        ref = f":{self.reference}" if self.reference else ""
        return f"{self.kind}:{self.path}{ref}"


def parse_repo_tag(text: str) -> tuple[str, str]:
    """``name[:tag]`` -> (name, tag), tag defaulting to ``latest``; OptionError if invalid."""
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        name, tag = text[:colon], text[colon + 1 :]
    else:
        name, tag = text, "latest"
    if not re.fullmatch(_NAME, name) or len(name) > 255:
        raise OptionError(f"image name {text!r}: expected lower-case NAME[:TAG]")
    if not re.fullmatch(_TAG, tag):
        raise OptionError(f"image tag {tag!r} in {text!r}: expected [A-Za-z0-9_.-], max 128")
    return name, tag


def parse_destination(text: str) -> Destination:
    """Parse ``docker-archive:PATH[:name:tag]``, ``oci:DIR[:TAG]``, ``oci-archive:PATH[:TAG]``
    or ``-`` (a docker-archive on standard output)."""
    if text == "-":
        return Destination(kind="stdout", path=None)
    kind, sep, rest = text.partition(":")
    if not sep or kind not in KINDS or kind == "stdout":
        raise OptionError(
            f"destination {text!r}: expected docker-archive:PATH, oci:DIR, oci-archive:PATH,"
            " docker://HOST/REPO[:TAG] or -"
        )
    path, _, reference = rest.partition(":")
    if not path:
        raise OptionError(f"destination {text!r}: missing path after {kind}:")
    if kind == "docker-archive":
        if reference:
            name, tag = parse_repo_tag(reference)
            reference = f"{name}:{tag}"
    elif reference and not re.fullmatch(_TAG, reference):
        raise OptionError(f"destination {text!r}: invalid tag {reference!r}")
    return Destination(kind=kind, path=Path(path), reference=reference or None)


def image_repo_name(name: str | None) -> str | None:
    """An image's name (a plan's or a closure's: ``hello-2.12``, ``App.v2``) made a valid
    repository name: lower case, and any run of other characters one ``-``; None if nothing is
    left."""
    if not name:
        return None
    out = ""
    for part in re.findall(r"[a-z0-9]+|[._-]+|[^a-z0-9._-]+", name.lower()):
        if re.fullmatch(_ALNUM, part):
            out += part
        elif out:  # a separator the grammar allows between components, else one "-"
            out += part if part in (".", "_", "__") or set(part) == {"-"} else "-"
    out = out.rstrip("._-")[:128].rstrip("._-")
    return out or None


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def docker_repo_tags(
    dest: Destination, tags: Sequence[str] = (), *, name: str | None = None
) -> list[str]:
    """The ``name:tag`` references a docker-archive records (its ``RepoTags``): the
    destination's, then every ``--tag`` (``NAME`` alone meaning ``NAME:latest``), each once;
    when there is none, the image's ``name`` (see :func:`image_repo_name`) with ``:latest``,
    else :data:`DEFAULT_REPO_TAG`."""
    found = []
    if dest.reference and dest.kind in ("docker-archive", "stdout"):
        found.append(dest.reference)
    for tag in tags:
        repo, tag_part = parse_repo_tag(tag)
        found.append(f"{repo}:{tag_part}")
    if found:
        return _unique(found)
    repo_name = image_repo_name(name)
    return [f"{repo_name}:latest" if repo_name else DEFAULT_REPO_TAG]


def oci_ref_names(dest: Destination, tags: Sequence[str] = ()) -> list[str]:
    """The ``org.opencontainers.image.ref.name`` of each index entry an OCI layout or archive
    gets: the destination's tag, then the tag part of every ``--tag NAME:TAG``, each once;
    ``latest`` when there is none."""
    found = [dest.reference] if dest.reference else []
    found.extend(parse_repo_tag(tag)[1] for tag in tags)
    return _unique(found) or ["latest"]
