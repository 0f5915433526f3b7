"""Registry credentials: ``--creds``, an ``--authfile``, or the files podman and docker log in to.

Order (the first source that has credentials for the registry wins):

1. ``creds`` (``--creds USER:PASSWORD``); a missing password is an error, never a prompt.
2. ``authfile`` (``--authfile FILE``): it must exist, and it is the only file read, as in
   podman and skopeo. Likewise ``$REGISTRY_AUTH_FILE`` when set (a missing one holds nothing).
3. Otherwise, in turn: ``$XDG_RUNTIME_DIR/containers/auth.json`` (``/run/containers/UID/
   auth.json`` without ``XDG_RUNTIME_DIR``), ``${XDG_CONFIG_HOME:-~/.config}/containers/
   auth.json``, ``${DOCKER_CONFIG:-~/.docker}/config.json``. Missing files are skipped.

Within one file (containers-auth.json(5), docker's config.json): ``credHelpers[HOST]``, then the
``auths`` entries from the most specific key to the least (for ``host/ns/repo``: ``host/ns/repo``,
``host/ns``, ``host``; ``https://host/v1/``-style keys count as ``host``), then ``credsStore``.
An entry holds ``auth`` (base64 of ``USER:PASSWORD``) or ``username`` and ``password``; an entry
with neither (docker's marker for a credential store) holds nothing. ``identitytoken`` (OAuth2
refresh tokens) is refused with a clear error. No secret ever appears in an error or a repr.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from closurepack.errors import RegistryAuthError

__all__ = [
    "Credentials",
    "auth_file_paths",
    "lookup_credentials",
    "parse_creds",
    "registry_keys",
]

_DOCKER_HUB = "docker.io"
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
# What docker itself calls Docker Hub in config.json and hands to credential helpers.
_DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
_MAX_AUTH_FILE = 4 << 20


@dataclass(frozen=True, repr=False)
class Credentials:
    """A user name and password (or token) for one registry; ``repr`` never shows the password."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>)"

    __str__ = __repr__


def parse_creds(creds: str) -> Credentials:
    """``USER:PASSWORD`` (the password may contain ``:``) as :class:`Credentials`."""
    username, sep, password = creds.partition(":")
    if not sep or not password:
        # Never echo the value: a mistyped --creds may be the password alone.
        raise RegistryAuthError(
            "--creds: expected USER:PASSWORD, and the password is missing "
            "(closurepack never prompts for one)"
        )
    if not username:
        raise RegistryAuthError("--creds: expected USER:PASSWORD, and the user name is empty")
    return Credentials(username, password)


def lookup_credentials(
    registry: str,
    *,
    creds: str | None = None,
    authfile: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Credentials | None:
    """The credentials for ``registry`` (``host[:port]``, optionally ``/namespace/repo``).

    ``None`` when no source has any: the registry is then tried anonymously. ``environ``
    (default: ``os.environ``) supplies ``HOME``, ``PATH`` and the variables of the module
    docstring, and is the environment credential helpers run in.
    """
    if creds is not None:
        return parse_creds(creds)
    env = os.environ if environ is None else environ
    keys = registry_keys(registry)
    if authfile is not None:
        if not authfile.is_file():
            what = "is not a file" if authfile.exists() else "no such auth file"
            raise RegistryAuthError(f"{authfile}: {what} (given with --authfile)")
        return _lookup_in_file(authfile, keys, env)
    for path in auth_file_paths(env, use_home_fallback=environ is None):
        if path.is_file():
            found = _lookup_in_file(path, keys, env)
            if found is not None:
                return found
    return None


def auth_file_paths(env: Mapping[str, str], *, use_home_fallback: bool = True) -> list[Path]:
    """The auth files read, in order, when no ``--authfile`` is given.

    ``use_home_fallback``: without ``HOME`` in ``env``, use the account's home directory.
    """
    explicit = env.get("REGISTRY_AUTH_FILE")
    if explicit:
        return [Path(explicit)]
    paths = []
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        paths.append(Path(runtime, "containers", "auth.json"))
    else:
        paths.append(Path(f"/run/containers/{os.getuid()}/auth.json"))
    home = env.get("HOME") or (str(Path.home()) if use_home_fallback else "")
    config_home = env.get("XDG_CONFIG_HOME") or (str(Path(home, ".config")) if home else "")
    if config_home:
        paths.append(Path(config_home, "containers", "auth.json"))
    docker_config = env.get("DOCKER_CONFIG") or (str(Path(home, ".docker")) if home else "")
    if docker_config:
        paths.append(Path(docker_config, "config.json"))
    return paths


def registry_keys(registry: str) -> list[str]:
    """The ``auths`` keys that apply to ``registry``, most specific first.

    ``quay.io/ns/app`` gives ``quay.io/ns/app``, ``quay.io/ns``, ``quay.io``; Docker Hub's
    aliases (``index.docker.io``, ``registry-1.docker.io``) all become ``docker.io``.
    """
    normal = _normalise_key(registry)
    parts = normal.split("/")
    return ["/".join(parts[:n]) for n in range(len(parts), 0, -1)]


def _normalise_key(key: str) -> str:
    """``host[:port][/path]`` with a lower-case host; ``http(s)://host/...`` keys are ``host``."""
    rest = key.strip()
    scheme, sep, after = rest.partition("://")
    if sep and scheme.lower() in {"http", "https"}:
        # Docker's legacy keys ("https://index.docker.io/v1/") name a host; their path is not a
        # repository (containers-auth.json(5)). A query naming a scheme is treated alike.
        rest = after.split("/", 1)[0]
    rest = rest.rstrip("/")
    host, slash, path = rest.partition("/")
    host = host.lower()
    if host in _DOCKER_HUB_ALIASES:
        host = _DOCKER_HUB
    return f"{host}{slash}{path}"


def _helper_server(host: str) -> str:
    """The server name a credential helper is asked about (docker's own name for Docker Hub)."""
    return _DOCKER_HUB_SERVER if host == _DOCKER_HUB else host


def _run_helper(
    name: str, server: str, *, where: str, environ: Mapping[str, str]
) -> tuple[str, str] | None:
    """:func:`~closurepack.registry.credhelper.run_helper`, imported (with subprocess) only
    when an auth file names a helper: most pushes run none."""
    from closurepack.registry.credhelper import run_helper  # noqa: PLC0415

    return run_helper(name, server, where=where, environ=environ)


def _lookup_in_file(path: Path, keys: list[str], env: Mapping[str, str]) -> Credentials | None:
    config = _read_auth_file(path)
    host = keys[-1]
    helpers = _string_map(config, "credHelpers", path)
    for key, name in helpers.items():
        if _normalise_key(key) == host:
            found = _run_helper(
                name, _helper_server(host), where=f"{path}: credHelpers[{key!r}]", environ=env
            )
            if found is not None:
                return Credentials(*found)
            break
    for key, entry in _matching_entries(config, keys, path):
        found_entry = _entry_credentials(entry, where=f"{path}: auths[{key!r}]")
        if found_entry is not None:
            return found_entry
    store = config.get("credsStore")
    if store is not None:
        if not isinstance(store, str):
            raise RegistryAuthError(f"{path}: credsStore is not a string")
        if store:
            found = _run_helper(
                store, _helper_server(host), where=f"{path}: credsStore", environ=env
            )
            if found is not None:
                return Credentials(*found)
    return None


def _read_auth_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            raw = fh.read(_MAX_AUTH_FILE + 1)
    except OSError as exc:
        raise RegistryAuthError(f"{path}: cannot read auth file: {exc.strerror or exc}") from None
    if len(raw) > _MAX_AUTH_FILE:
        raise RegistryAuthError(f"{path}: auth file is larger than {_MAX_AUTH_FILE >> 20} MiB")
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        # json's message gives only a position, never the text around it (it may be a secret).
        where = (
            f" (line {exc.lineno} column {exc.colno})"
            if isinstance(exc, json.JSONDecodeError)
            else ""
        )
        raise RegistryAuthError(f"{path}: auth file is not valid JSON{where}") from None
    if not isinstance(config, dict):
        raise RegistryAuthError(f"{path}: auth file is not a JSON object")
    return config


def _string_map(config: Mapping[str, Any], name: str, path: Path) -> dict[str, str]:
    value = config.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise RegistryAuthError(f"{path}: {name} is not an object of strings")
    return value


def _matching_entries(
    config: Mapping[str, Any], keys: list[str], path: Path
) -> Iterator[tuple[str, Any]]:
    """``(key, entry)`` of ``auths`` for ``keys``, in their order; exact keys before legacy URLs."""
    auths = config.get("auths")
    if auths is None:
        return
    if not isinstance(auths, dict):
        raise RegistryAuthError(f"{path}: auths is not a JSON object")
    by_key: dict[str, list[str]] = {}
    # Plain keys first, so "host" beats "https://host/v1/" when a file has both.
    for original in sorted(auths, key=lambda k: "://" in k):
        by_key.setdefault(_normalise_key(original), []).append(original)
    for key in keys:
        for original in by_key.get(key, []):
            yield original, auths[original]


def _entry_credentials(entry: Any, *, where: str) -> Credentials | None:
    if not isinstance(entry, dict):
        raise RegistryAuthError(f"{where} is not a JSON object")
    if entry.get("identitytoken"):
        raise RegistryAuthError(
            f"{where} holds an identitytoken (OAuth2 refresh token), which closurepack does not "
            "support; give --creds USER:PASSWORD instead"
        )
    auth = entry.get("auth")
    if auth:
        if not isinstance(auth, str):
            raise RegistryAuthError(f"{where}.auth is not a string")
        try:
            decoded = base64.b64decode(auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise RegistryAuthError(
                f"{where}.auth is not base64 of USER:PASSWORD in UTF-8"
            ) from None
        user, sep, secret = decoded.partition(":")
        if not sep or not user:
            raise RegistryAuthError(f"{where}.auth is not base64 of USER:PASSWORD")
        return Credentials(user, secret)
    username: object = entry.get("username")
    password: object = entry.get("password")
    if username or password:
        if not username or not password:
            raise RegistryAuthError(f"{where}: has a username or a password, not both")
        if not isinstance(username, str) or not isinstance(password, str):
            raise RegistryAuthError(f"{where}: username and password must both be strings")
        return Credentials(username, password)
    return None
