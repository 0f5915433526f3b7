"""Docker credential helpers: run ``docker-credential-NAME get`` and read its JSON answer.

The protocol (docker/docker-credential-helpers): the server address goes to the helper's
standard input, and it answers ``{"ServerURL": ..., "Username": ..., "Secret": ...}`` on standard
output, or says ``credentials not found`` and exits non-zero when it has nothing for that server.
A helper that is not installed is skipped (with a debug log line): a ``config.json`` copied from
another machine often names a store this one lacks, and the lookup goes on to the next source.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping

from closurepack.errors import RegistryAuthError

__all__ = ["HELPER_TIMEOUT", "run_helper"]

_log = logging.getLogger(__name__)

HELPER_TIMEOUT = 60.0
"""Seconds a helper may take (a keyring may ask the user to unlock it)."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_NOT_FOUND = "credentials not found"
# Docker's helpers answer this user name when the secret is an OAuth2 identity (refresh) token.
_IDENTITY_TOKEN_USER = "<token>"


def run_helper(
    name: str, server: str, *, where: str, environ: Mapping[str, str]
) -> tuple[str, str] | None:
    """``(username, secret)`` from helper ``docker-credential-NAME`` for ``server``.

    ``None`` when the helper has nothing for the server or is not installed. ``where`` names the
    configuration entry that chose the helper, for error messages. A helper that fails, hangs or
    answers nonsense is a :class:`RegistryAuthError`; its answer is never quoted, since it may
    hold the secret.
    """
    if not _NAME.fullmatch(name):
        # Not quoted: a mangled file may hold anything there.
        raise RegistryAuthError(
            f"{where}: credential helper name is not a plain program name "
            "(letters, digits, '.', '_', '-')"
        )
    program_name = f"docker-credential-{name}"
    program = shutil.which(program_name, path=environ.get("PATH", os.defpath))
    if program is None:
        _log.debug("%s: %s is not installed; skipping it", where, program_name)
        return None
    try:
        proc = subprocess.run(
            [program, "get"],
            input=server.encode(),
            capture_output=True,
            timeout=HELPER_TIMEOUT,
            env=dict(environ),
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RegistryAuthError(
            f"{where}: {program_name} get {server} did not answer in {HELPER_TIMEOUT:g} s"
        ) from None
    except OSError as exc:
        raise RegistryAuthError(
            f"{where}: cannot run {program_name}: {exc.strerror or exc}"
        ) from None
    stdout = proc.stdout.decode(errors="replace")
    stderr = proc.stderr.decode(errors="replace")
    if _NOT_FOUND in stdout.lower() or (proc.returncode != 0 and _NOT_FOUND in stderr.lower()):
        return None
    if proc.returncode != 0:
        # The helper's own complaint is shown: it failed, so it handed out no secret.
        detail = (stderr.strip() or stdout.strip()).splitlines()
        reason = f": {detail[0][:200]}" if detail else ""
        raise RegistryAuthError(
            f"{where}: {program_name} get {server} failed with exit status {proc.returncode}"
            f"{reason}"
        )
    return _parse_answer(stdout, program_name=program_name, server=server, where=where)


def _parse_answer(
    text: str, *, program_name: str, server: str, where: str
) -> tuple[str, str] | None:
    bad = f"{where}: {program_name} get {server} answered"
    try:
        answer = json.loads(text)
    except ValueError:
        raise RegistryAuthError(f"{bad} something that is not JSON") from None
    if not isinstance(answer, dict):
        raise RegistryAuthError(f"{bad} JSON that is not an object")
    username = answer.get("Username", "")
    secret = answer.get("Secret", "")
    if not isinstance(username, str) or not isinstance(secret, str):
        raise RegistryAuthError(f"{bad} a Username or Secret that is not a string")
    if not secret:
        return None
    if username == _IDENTITY_TOKEN_USER:
        raise RegistryAuthError(
            f"{bad} an identity token (OAuth2 refresh token), which closurepack does not support; "
            "give --creds USER:PASSWORD instead"
        )
    if not username:
        raise RegistryAuthError(f"{bad} a Secret without a Username")
    return username, secret
