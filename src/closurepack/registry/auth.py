"""``RegistryAuth``: an httpx auth that answers a registry's 401 challenges, Basic or Bearer.

The first request to a registry goes out anonymously. On ``401``, the ``WWW-Authenticate``
challenges decide: ``Basic`` retries with the credentials; ``Bearer realm=,service=,scope=`` asks
the realm for a token (the docker registry token specification: ``GET realm?service=S&scope=..``
with every scope of this auth plus the challenge's, with Basic credentials when there are any)
and retries with ``Authorization: Bearer``. Tokens are cached per registry and sent up front
until they expire (``expires_in``, default 60 s); an expired one is renewed before the request,
a refused one after the registry's next 401. A retry that fails again is one
:class:`RegistryAuthError` line naming the registry and user, never the secret.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import httpx

from closurepack.errors import RegistryAuthError
from closurepack.registry.challenge import Challenge, parse_challenges
from closurepack.registry.credentials import Credentials

__all__ = ["DEFAULT_TOKEN_LIFETIME", "TOKEN_RESPONSE_LIMIT", "RegistryAuth"]

_log = logging.getLogger(__name__)

DEFAULT_TOKEN_LIFETIME = 60.0
"""Seconds a token lives when the token server gives no ``expires_in`` (the spec's default)."""
TOKEN_RESPONSE_LIMIT = 1 << 20
"""Bytes a token server's answer may have; a larger one is refused, not read."""
_MAX_MARGIN = 5.0
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")


@dataclass(frozen=True)
class _Step:
    """A request the flow wants sent; ``token``: read its (bounded) answer, naming it so."""

    request: httpx.Request
    token: str | None = None


@dataclass(frozen=True)
class _Token:
    value: str
    renew_at: float  # time.monotonic() after which the token is renewed first


@dataclass(frozen=True)
class _Realm:
    url: str
    service: str | None


class _LimitedStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, what: str) -> None:
        self._inner = inner
        self._what = what

    def __iter__(self) -> Iterator[bytes]:
        total = 0
        for chunk in self._inner:
            total += len(chunk)
            if total > TOKEN_RESPONSE_LIMIT:
                raise _too_large(self._what)
            yield chunk

    def close(self) -> None:
        self._inner.close()


class _AsyncLimitedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, what: str) -> None:
        self._inner = inner
        self._what = what

    async def __aiter__(self) -> AsyncIterator[bytes]:
        total = 0
        async for chunk in self._inner:
            total += len(chunk)
            if total > TOKEN_RESPONSE_LIMIT:
                raise _too_large(self._what)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


def _too_large(what: str) -> RegistryAuthError:
    return RegistryAuthError(f"{what} answered more than {TOKEN_RESPONSE_LIMIT} bytes")


class RegistryAuth(httpx.Auth):
    """Authentication for one registry client: ``httpx.Client(auth=RegistryAuth(creds, scopes))``.

    ``scopes`` are the token scopes every token is asked for, e.g.
    ``["repository:app:pull,push", "repository:base:pull"]`` (pull on the source repository of
    a cross-repository mount). Safe to share between threads (one lock guards the caches).
    A request whose body is a one-shot stream cannot be sent twice: when such a request meets a
    401, the token is still fetched and cached, then a :class:`RegistryAuthError` says so; send
    a request without a body first (the ``POST`` that starts an upload does).
    """

    def __init__(self, credentials: Credentials | None, scopes: Sequence[str]) -> None:
        self._credentials = credentials
        self._scopes = tuple(dict.fromkeys(scopes))
        self._lock = threading.Lock()
        self._tokens: dict[str, _Token] = {}
        self._realms: dict[str, _Realm] = {}
        self._extra_scopes: dict[str, list[str]] = {}
        self._basic: set[str] = set()

    def __repr__(self) -> str:
        user = self._credentials.username if self._credentials else None
        return f"RegistryAuth(user={user!r}, scopes={list(self._scopes)!r})"

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        flow = self._flow(request)
        step = next(flow)
        while True:
            response = yield step.request
            if step.token is not None:
                if isinstance(response.stream, httpx.SyncByteStream):
                    response.stream = _LimitedStream(response.stream, step.token)
                response.read()
            try:
                step = flow.send(response)
            except StopIteration:
                return

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        flow = self._flow(request)
        step = next(flow)
        while True:
            response = yield step.request
            if step.token is not None:
                if isinstance(response.stream, httpx.AsyncByteStream):
                    response.stream = _AsyncLimitedStream(response.stream, step.token)
                await response.aread()
            try:
                step = flow.send(response)
            except StopIteration:
                return

    def _flow(self, request: httpx.Request) -> Generator[_Step, httpx.Response, None]:
        key = _origin_key(request.url)
        origin = _origin(request.url)
        with self._lock:
            token = self._tokens.get(key)
            realm = self._realms.get(key)
            basic = key in self._basic
        sent_basic = False
        sent_token: str | None = None
        if token is not None and time.monotonic() < token.renew_at:
            sent_token = token.value
        elif realm is not None:
            sent_token = yield from self._fetch_token(request, realm)
        elif basic and self._credentials is not None:
            request.headers["Authorization"] = _basic_header(self._credentials)
            sent_basic = True
        if sent_token is not None:
            request.headers["Authorization"] = f"Bearer {sent_token}"
        response = yield _Step(request)
        if not _needs_auth(request, response):
            return
        challenge = _pick_challenge(origin, response)
        if challenge.scheme == "bearer":
            realm = self._learn_realm(request, challenge, stale=sent_token)
            value = yield from self._fetch_token(request, realm)
            request.headers["Authorization"] = f"Bearer {value}"
        else:
            if self._credentials is None:
                raise _no_credentials(origin)
            if sent_basic:
                raise _failed(origin, self._credentials, response)
            with self._lock:
                self._basic.add(key)
            request.headers["Authorization"] = _basic_header(self._credentials)
        if not isinstance(request.stream, httpx.ByteStream):
            raise RegistryAuthError(
                f"{origin}: {request.method} {request.url.path} needs authentication and its "
                "body cannot be sent twice; authenticate with a request without a body first"
            )
        response = yield _Step(request)
        if not _needs_auth(request, response):
            return
        if self._credentials is None:
            raise _no_credentials(origin)
        if challenge.scheme == "basic" or realm is None:
            raise _failed(origin, self._credentials, response)
        again = _pick_challenge(origin, response)
        denied = again.params.get("error") == "insufficient_scope"
        scope = again.params.get("scope")
        detail = f" for {scope}" if scope else ""
        reason = "does not grant access" if denied else "was refused"
        raise RegistryAuthError(
            f"{origin}: access denied for user {self._credentials.username}: "
            f"{_status(response)}: the token from {realm.url} {reason}{detail}"
        )

    def _learn_realm(
        self, request: httpx.Request, challenge: Challenge, *, stale: str | None
    ) -> _Realm:
        """Remember the challenge's realm and scope for the registry; drop a refused token."""
        origin = _origin(request.url)
        url = challenge.params.get("realm")
        if not url:
            raise RegistryAuthError(f"{origin}: the registry's Bearer challenge names no realm")
        realm = _Realm(url, challenge.params.get("service"))
        key = _origin_key(request.url)
        with self._lock:
            self._realms[key] = realm
            cached = self._tokens.get(key)
            if stale is not None and cached is not None and cached.value == stale:
                del self._tokens[key]
            extra = self._extra_scopes.setdefault(key, [])
            for scope in challenge.params.get("scope", "").split():
                if scope not in self._scopes and scope not in extra:
                    extra.append(scope)
        return realm

    def _fetch_token(
        self, request: httpx.Request, realm: _Realm
    ) -> Generator[_Step, httpx.Response, str]:
        """Ask the realm for a token covering every scope; cache it; return it."""
        origin = _origin(request.url)
        key = _origin_key(request.url)
        try:
            url = httpx.URL(realm.url)
        except httpx.InvalidURL:
            url = None
        if url is None or url.scheme not in {"http", "https"} or not url.host:
            raise RegistryAuthError(
                f"{origin}: the token realm {realm.url!r} is not an http(s) URL"
            )
        with self._lock:
            scopes = [*self._scopes, *self._extra_scopes.get(key, [])]
        params: list[tuple[str, str | int | float | bool | None]] = [
            ("scope", scope) for scope in scopes
        ]
        if realm.service:
            params.insert(0, ("service", realm.service))
        headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        if self._credentials is not None:
            if url.scheme == "http" and request.url.scheme == "https":
                raise RegistryAuthError(
                    f"{origin}: refusing to send credentials to the token server {realm.url} "
                    "over plain http"
                )
            params.append(("account", self._credentials.username))
            headers["Authorization"] = _basic_header(self._credentials)
        # httpx gives only the request it was handed its timeouts: the token request takes the
        # same, or a stalled token server would hang the client for ever.
        extensions = (
            {"timeout": request.extensions["timeout"]} if "timeout" in request.extensions else {}
        )
        token_request = httpx.Request(
            "GET", url, params=params, headers=headers, extensions=extensions
        )
        asked_at = time.monotonic()
        asked_wall = time.time()
        response = yield _Step(token_request, token=f"{origin}: the token server {realm.url}")
        if response.status_code in {401, 403}:
            if self._credentials is None:
                raise _no_credentials(origin)
            raise _failed(origin, self._credentials, response, server=realm.url)
        if response.status_code != 200:
            raise RegistryAuthError(
                f"{origin}: the token server {realm.url} answered {_status(response)}"
            )
        value, lifetime = _parse_token(response.content, origin=origin, realm=realm.url)
        renew_at = asked_at + lifetime - min(_MAX_MARGIN, lifetime / 10)
        issued = _issued_at(response.content)
        if issued is not None:
            # A token issued before we asked (handed out again by a cache) lives less; one that
            # would already be stale on arrival means the clocks disagree: then ours counts.
            shortened = renew_at - max(0.0, asked_wall - issued)
            if shortened > time.monotonic():
                renew_at = shortened
        with self._lock:
            self._tokens[key] = _Token(value, renew_at)
        _log.debug(
            "%s: got a token from %s for %s, valid %g s", origin, realm.url, scopes, lifetime
        )
        return value


def _parse_token(body: bytes, *, origin: str, realm: str) -> tuple[str, float]:
    """The token and its lifetime in seconds from a token server's JSON answer."""
    bad = f"{origin}: the token server {realm} answered"
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        raise RegistryAuthError(f"{bad} something that is not JSON") from None
    if not isinstance(answer, dict):
        raise RegistryAuthError(f"{bad} JSON that is not an object")
    value = answer.get("token") or answer.get("access_token")
    if not isinstance(value, str) or not _TOKEN_CHARS.fullmatch(value):
        raise RegistryAuthError(f"{bad} no usable token (neither token nor access_token)")
    expires_in = answer.get("expires_in")
    lifetime = DEFAULT_TOKEN_LIFETIME
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
        lifetime = float(expires_in)
    return value, lifetime


def _issued_at(body: bytes) -> float | None:
    """``issued_at`` (RFC 3339) as a POSIX time, or ``None`` when absent or unreadable."""
    try:
        issued = json.loads(body).get("issued_at")
        if not isinstance(issued, str):
            return None
        return datetime.fromisoformat(issued.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError, OverflowError):
        return None


def _needs_auth(request: httpx.Request, response: httpx.Response) -> bool:
    """A 401 from the registry itself (not from a host a redirect led to)."""
    return response.status_code == 401 and _origin_key(response.request.url) == _origin_key(
        request.url
    )


def _pick_challenge(origin: str, response: httpx.Response) -> Challenge:
    headers = response.headers.get_list("www-authenticate")
    try:
        challenges = parse_challenges(headers)
    except ValueError as exc:
        raise RegistryAuthError(
            f"{origin}: cannot read the registry's WWW-Authenticate header: {exc}"
        ) from None
    for scheme in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == scheme:
                return challenge
    offered = ", ".join(c.scheme for c in challenges) or "none"
    raise RegistryAuthError(
        f"{origin}: {_status(response)} without a Basic or Bearer challenge (offered: {offered})"
    )


def _basic_header(credentials: Credentials) -> str:
    pair = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _no_credentials(origin: str) -> RegistryAuthError:
    return RegistryAuthError(
        f"{origin}: authentication required: no credentials found for {origin} "
        "(give --creds or --authfile, or log in with podman/docker login)"
    )


def _failed(
    origin: str, credentials: Credentials, response: httpx.Response, *, server: str | None = None
) -> RegistryAuthError:
    where = f" from the token server {server}" if server else ""
    return RegistryAuthError(
        f"{origin}: authentication failed for user {credentials.username}: "
        f"{_status(response)}{where}"
    )


def _status(response: httpx.Response) -> str:
    return f"{response.status_code} {response.reason_phrase}".strip()


def _origin(url: httpx.URL) -> str:
    """``host[:port]`` as users write a registry's name."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return host if url.port is None else f"{host}:{url.port}"


def _origin_key(url: httpx.URL) -> str:
    return f"{url.scheme}://{_origin(url)}"
