"""Registry references as skopeo spells them: ``docker://HOST[:PORT]/REPO[:TAG|@DIGEST]``.

The host is required: a first component is a host when it holds a ``.`` or a ``:`` or is
``localhost`` (Docker's rule), so ``docker://app:1`` is refused rather than silently sent to
Docker Hub. ``docker.io`` (and ``index.docker.io``) are accepted as written: a one-component name
there gets Docker Hub's ``library/`` prefix, and requests go to ``registry-1.docker.io``.
Repository and tag follow the grammar of the OCI distribution spec.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from closurepack.digest import Digest
from closurepack.errors import ImageError, OptionError
from closurepack.registry import PREFIX, is_registry_reference

__all__ = ["PREFIX", "RegistryRef", "is_registry_reference", "parse_reference", "push_tags"]

# OCI distribution spec, "Pulling manifests": <name> and <reference> grammars.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
# Patterns, not compiled regexes: re compiles (and caches) them at the first reference parsed,
# not on import (~3 ms here), as every build imports this module and most parse none.
_REPOSITORY = rf"{_COMPONENT}(?:/{_COMPONENT})*"
_TAG = r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_HOST = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-fA-F:.]+\])(?::[0-9]{{1,5}})?"
_DOCKER_HUB = ("docker.io", "index.docker.io")
#: Where Docker Hub's API actually answers.
_DOCKER_HUB_API = "registry-1.docker.io"
#: Names longer than this are refused by registries (distribution/reference's limit).
_MAX_NAME = 255


@dataclass(frozen=True)
class RegistryRef:
    """A parsed registry reference. ``host`` is as written (``127.0.0.1:5000``);
    ``digest`` wins over ``tag`` when both are given."""

    host: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @property
    def registry(self) -> str:
        """The host[:port] whose API is spoken to (Docker Hub's API host for docker.io)."""
        return _DOCKER_HUB_API if self.host in _DOCKER_HUB else self.host

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest, else the tag, else ``latest``."""
        if self.digest is not None:
            return str(self.digest)
        return self.tag or "latest"

    @property
    def name(self) -> str:
        """``HOST/REPO`` as written."""
        return f"{self.host}/{self.repository}"

    def with_digest(self, digest: Digest) -> RegistryRef:
        return RegistryRef(self.host, self.repository, None, digest)

    def __str__(self) -> str:
        if self.digest is not None:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.reference}"


def parse_reference(text: str, *, for_push: bool = False) -> RegistryRef:
    """Parse ``docker://HOST/REPO[:TAG|@DIGEST]`` (the prefix may be left out); an OptionError
    naming ``text`` and the fault. ``for_push`` refuses a digest (a push names a tag)."""
    rest = text.removeprefix(PREFIX)
    if "//" in rest or not rest:
        raise OptionError(f"registry reference {text!r}: expected docker://HOST/REPO[:TAG]")
    name, at, digest_text = rest.partition("@")
    digest = None
    if at:
        try:
            digest = Digest.parse(digest_text)
        except ImageError:
            raise OptionError(
                f"registry reference {text!r}: invalid digest {digest_text!r}"
                " (expected sha256:<64 hex digits>)"
            ) from None
        if for_push:
            raise OptionError(
                f"registry reference {text!r}: a push destination names a tag, not a digest"
            )
    host, slash, path = name.partition("/")
    if not slash or not ("." in host or ":" in host or host == "localhost"):
        raise OptionError(
            f"registry reference {text!r}: name the registry host first,"
            " e.g. docker://localhost:5000/app:1 or docker://docker.io/library/debian"
        )
    if not re.fullmatch(_HOST, host) or (":" in host and not _port_ok(host)):
        raise OptionError(f"registry reference {text!r}: invalid registry host {host!r}")
    tag = None
    last_slash = path.rfind("/")
    colon = path.rfind(":")
    if colon > last_slash:
        path, tag = path[:colon], path[colon + 1 :]
        if not re.fullmatch(_TAG, tag):
            raise OptionError(
                f"registry reference {text!r}: invalid tag {tag!r}"
                " (letters, digits, _ . -; at most 128, not starting with . or -)"
            )
    if host in _DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not re.fullmatch(_REPOSITORY, path):
        raise OptionError(
            f"registry reference {text!r}: invalid repository {path!r}"
            " (lower-case letters, digits and . _ - between /-separated parts)"
        )
    if len(host) + 1 + len(path) > _MAX_NAME:
        raise OptionError(f"registry reference {text!r}: name longer than {_MAX_NAME} characters")
    return RegistryRef(host, path, tag, digest)


def push_tags(ref: RegistryRef, tags: Sequence[str]) -> tuple[str, ...]:
    """The tags a push to ``ref`` writes: its own (``latest`` when it names none), then the
    tag of each ``--tag``, each once.

    A ``--tag`` is ``TAG``, or ``NAME:TAG`` whose NAME is ``ref``'s repository (``REPO`` or
    ``HOST/REPO``); one naming another repository is an OptionError: a push writes one
    repository (copy the image on with ``skopeo copy``).
    """
    found = [ref.reference]
    for text in tags:
        slash, colon = text.rfind("/"), text.rfind(":")
        if colon <= slash:  # a bare TAG
            if not re.fullmatch(_TAG, text):
                raise OptionError(
                    f"--tag {text!r}: invalid tag (letters, digits, _ . -; at most 128,"
                    " not starting with . or -), or NAME:TAG"
                )
            found.append(text)
            continue
        name = text[:colon]
        first = name.split("/", 1)[0]
        hosted = "/" in name and ("." in first or ":" in first or first == "localhost")
        spelled = f"{PREFIX}{text}" if hosted else f"{PREFIX}{ref.host}/{text}"
        try:
            other = parse_reference(spelled)
        except OptionError as exc:
            raise OptionError(f"--tag {text!r}: {str(exc).partition(': ')[2]}") from None
        if other.digest is not None or other.tag is None:
            raise OptionError(f"--tag {text!r}: expected TAG or NAME:TAG")
        if (other.registry, other.repository) != (ref.registry, ref.repository):
            raise OptionError(
                f"--tag {text!r}: a push to {ref.name} tags that repository only"
                f" (give TAG or {ref.repository}:TAG; copy the image to {other.name} with"
                " skopeo copy)"
            )
        found.append(other.tag)
    return tuple(dict.fromkeys(found))


def _port_ok(host: str) -> bool:
    port = host.rpartition(":")[2]
    if host.startswith("[") and not host.rpartition("]")[2]:
        return True  # a bare [ipv6] address
    return port.isdigit() and 1 <= int(port) <= 65535
