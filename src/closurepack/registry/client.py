"""An HTTP client for one registry: TLS set up as asked, HTTP only where allowed, retries.

:func:`open_client` pings ``/v2/`` once to settle the scheme (HTTPS, or plain HTTP for loopback
and insecure hosts when HTTPS does not answer) and the credentials; :meth:`RegistryClient.request`
retries connection errors, 5xx and 429 answers with exponential backoff (honouring
``Retry-After``) and turns every other failure into one line naming what was asked, the
registry and its answer.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from urllib.request import getproxies

import httpx

from closurepack import __version__
from closurepack.errors import ClosurepackError, ImageError, RegistryAuthError, RegistryError
from closurepack.registry.deferredauth import DeferredAuth
from closurepack.registry.options import RegistryOptions
from closurepack.registry.reference import RegistryRef
from closurepack.registry.tls import (
    SchemeTransport,
    certificate_unverified,
    lean_ssl_context,
    prepare_ssl_context,
    ssl_context,
)

__all__ = [
    "Body",
    "RegistryClient",
    "TransientRegistryError",
    "get_if_there",
    "open_client",
    "prepare_ssl_context",
    "read_limited",
    "ssl_context",
]

#: A request body: bytes, or a callable giving a fresh iterator of chunks for each try.
Body = bytes | Callable[[], Iterable[bytes]] | None

#: Retry-After is honoured up to this many seconds (a registry asking for more is broken).
_MAX_RETRY_AFTER = 60.0
_DETAIL_LIMIT = 300


class TransientRegistryError(RegistryError):
    """The last try failed in a way that may pass (connection error, 5xx, 429): an upload that
    broke like this is started again."""


def _make_auth(ref: RegistryRef, options: RegistryOptions, scopes: Sequence[str]) -> httpx.Auth:
    """The authentication of requests to ``ref``'s registry for ``scopes``: anonymous until the
    registry asks (a 401 challenge), then Basic or a Bearer token with the credentials found for
    the registry and repository (``--creds``, ``--authfile``, the usual auth files).

    Credentials the options name are read now (a bad one fails at once); the usual auth files
    and the auth machinery only at the registry's first 401 (:class:`DeferredAuth`)."""

    def make() -> httpx.Auth:
        from closurepack.registry.auth import RegistryAuth  # noqa: PLC0415 - only once asked
        from closurepack.registry.credentials import lookup_credentials  # noqa: PLC0415

        credentials = lookup_credentials(
            f"{ref.registry}/{ref.repository}", creds=options.creds, authfile=options.authfile
        )
        return RegistryAuth(credentials, scopes)

    if options.creds is not None or options.authfile is not None:
        return make()
    return DeferredAuth(make)


def read_limited(
    response: httpx.Response,
    limit: int,
    what: str,
    *,
    error: type[ClosurepackError] = RegistryError,
) -> bytes:
    """The body of a streamed ``response``, at most ``limit`` bytes (``error`` past that, by its
    Content-Length or as it streams); the response is closed."""
    try:
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > limit:
            raise error(f"{what}: {length} bytes, more than the {limit} bytes accepted")
        parts: list[bytes] = []
        total = 0
        for chunk in response.iter_bytes():
            total += len(chunk)
            if total > limit:
                raise error(f"{what}: more than the {limit} bytes accepted")
            parts.append(chunk)
        return b"".join(parts)
    except httpx.HTTPError as exc:
        raise RegistryError(f"{what}: reading the answer failed: {exc}") from exc
    finally:
        response.close()


def get_if_there(
    client: RegistryClient, path: str, what: str, *, limit: int, accept: str
) -> tuple[bytes, str] | None:
    """The body (at most ``limit`` bytes: an ImageError past that) and content type of
    ``GET /v2/<repo>/<path>`` (redirects followed); None when the answer is 404."""
    response = client.request(
        "GET", client.url(path), what=what, ok=(200, 404), headers={"Accept": accept},
        stream=True, follow_redirects=True,
    )  # fmt: skip
    if response.status_code == 404:
        response.close()
        return None
    kind = response.headers.get("Content-Type", "").partition(";")[0].strip()
    return read_limited(response, limit, what, error=ImageError), kind


class RegistryClient:
    """Requests to one registry repository, with retries; use it through :func:`open_client`."""

    def __init__(self, ref: RegistryRef, options: RegistryOptions, http: httpx.Client) -> None:
        self.ref = ref
        self.options = options
        self._http = http
        self.base = ""

    @property
    def registry(self) -> str:
        return self.ref.registry

    def url(self, path: str, repository: str | None = None) -> str:
        """``{base}/v2/{repository}/{path}`` (the reference's repository by default)."""
        return f"{self.base}/v2/{repository or self.ref.repository}/{path}"

    def connect(self) -> None:
        """Ping ``/v2/`` over HTTPS, or plain HTTP where that is allowed and HTTPS fails (on
        loopback, HTTPS is first tried without the system trust store: :meth:`_probe_tls`)."""
        host = self.registry
        schemes = ["https", "http"] if self.options.plain_http_allowed(host) else ["https"]
        first_error: RegistryError | None = None
        for scheme in schemes:
            last = scheme == schemes[-1]
            try:
                response = self._ping(scheme, tries=None if last else 1)
            except RegistryError as exc:
                if isinstance(exc, RegistryAuthError) or last:
                    if first_error is not None and not isinstance(exc, RegistryAuthError):
                        if str(exc).startswith(str(first_error)):
                            raise RegistryError(f"{exc}, over HTTPS and plain HTTP") from exc
                        raise RegistryError(f"{exc}; over HTTPS: {first_error}") from exc
                    raise
                first_error = exc
                continue
            response.close()
            self.base = f"{scheme}://{host}"
            return

    def _ping(self, scheme: str, *, tries: int | None) -> httpx.Response:
        url = f"{scheme}://{self.registry}/v2/"
        if scheme == "https" and self.options.plain_http_allowed(self.registry):
            self._probe_tls(url)
        return self.request("GET", url, what="registry ping", ok=(200, 401), tries=tries)

    def _probe_tls(self, url: str) -> None:
        """Raise the HTTPS ping's failure when a handshake with :func:`lean_ssl_context` fails
        for any reason but the server's certificate (a plain-HTTP loopback registry): the
        system trust store is not loaded for that. Nothing is sent unless the handshake
        passes; a certificate it cannot verify leaves the verdict to the full context."""
        if self.options.insecure(self.registry):
            return  # its context loads no trust store anyway
        lean = httpx.HTTPTransport(verify=lean_ssl_context(self.options, self.registry))
        timeout = httpx.Timeout(self.options.timeout, connect=min(30.0, self.options.timeout))
        try:
            with httpx.Client(transport=lean, timeout=timeout) as probe:
                probe.get(url).close()
        except httpx.TransportError as exc:
            if not certificate_unverified(exc):
                raise TransientRegistryError(
                    f"registry ping: {self.registry}: {_describe(exc)}"
                ) from exc

    def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        ok: Sequence[int] = (200,),
        headers: Mapping[str, str] | None = None,
        content: Body = None,
        tries: int | None = None,
        stream: bool = False,
        follow_redirects: bool = False,
    ) -> httpx.Response:
        """Send a request until an answer in ``ok`` comes (``retries`` + 1 tries by default).

        Connection errors, 5xx and 429 are tried again after a pause; anything else, or the
        last failure, is a RegistryError (RegistryAuthError for 401/403) naming ``what``.
        With ``stream`` the body of the answer is left unread (close the response).
        """
        attempts = self.options.retries + 1 if tries is None else max(1, tries)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            body = content() if callable(content) else content
            try:
                request = self._http.build_request(
                    method, url, headers=dict(headers or {}), content=body
                )
                response = self._http.send(request, stream=True, follow_redirects=follow_redirects)
            except httpx.TransportError as exc:
                if last:
                    tried = f" (after {attempts} tries)" if attempts > 1 else ""
                    raise TransientRegistryError(
                        f"{what}: {self.registry}: {_describe(exc)}{tried}"
                    ) from exc
                self.pause(attempt, None)
                continue
            status = response.status_code
            if status in ok:
                if not stream:
                    try:
                        response.read()
                    except httpx.TransportError as exc:
                        response.close()
                        if last:
                            raise TransientRegistryError(
                                f"{what}: {self.registry}: {_describe(exc)}"
                            ) from exc
                        self.pause(attempt, None)
                        continue
                return response
            retriable = status == 429 or status >= 500
            if retriable and not last:
                wait = _retry_after(response)
                response.close()
                self.pause(attempt, wait)
                continue
            raise self._error(response, what, attempts if retriable else 1, retriable)
        raise AssertionError("unreachable")  # pragma: no cover

    def pause(self, attempt: int, retry_after: float | None = None) -> None:
        """Wait before try ``attempt + 2``: the backoff, or what ``Retry-After`` asked for."""
        backoff = min(self.options.max_backoff, self.options.backoff * (2**attempt))
        time.sleep(backoff if retry_after is None else min(retry_after, _MAX_RETRY_AFTER))

    def _error(
        self, response: httpx.Response, what: str, attempts: int, retriable: bool
    ) -> RegistryError:
        try:
            response.read()
            detail = _error_detail(response.content)
        except httpx.HTTPError:
            detail = ""
        finally:
            response.close()
        status = response.status_code
        answer = f"{status} {response.reason_phrase}".strip()
        text = f"{what}: {self.registry} answered {answer}{': ' + detail if detail else ''}"
        if attempts > 1:
            text += f" (after {attempts} tries)"
        if status == 401:
            return RegistryAuthError(f"{text}; give --creds USER:PASS or --authfile FILE")
        if status == 403:
            return RegistryAuthError(text)
        return TransientRegistryError(text) if retriable else RegistryError(text)


def _describe(exc: httpx.TransportError) -> str:
    message = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {message}"[:_DETAIL_LIMIT]


def _error_detail(body: bytes) -> str:
    """``CODE: message`` of the distribution spec's error body, else the first text line."""
    try:
        obj = json.loads(body)
        errors = obj.get("errors") if isinstance(obj, dict) else None
        if isinstance(errors, list) and errors:
            parts = [
                f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
                for e in errors
                if isinstance(e, dict)
            ]
            return "; ".join(p for p in parts if p)[:_DETAIL_LIMIT]
    except (ValueError, RecursionError):
        pass
    text = body[:_DETAIL_LIMIT].decode(errors="replace")
    return " ".join(text.split())


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _http_client(registry: str, options: RegistryOptions, auth: httpx.Auth) -> httpx.Client:
    timeout = httpx.Timeout(options.timeout, connect=min(30.0, options.timeout))
    headers = {"User-Agent": f"closurepack/{__version__}"}
    limits = httpx.Limits(max_connections=options.jobs + 2)
    if getproxies():
        # httpx sends through the environment's proxies only with the transports it makes
        # itself, and it makes them now: the TLS context too
        return httpx.Client(
            verify=ssl_context(options, registry), limits=limits, auth=auth, timeout=timeout,
            headers=headers,
        )  # fmt: skip
    # the TLS context (with the system trust store) only at the first https:// request
    transport = SchemeTransport(lambda: ssl_context(options, registry), limits)
    return httpx.Client(transport=transport, auth=auth, timeout=timeout, headers=headers)


@contextlib.contextmanager
def open_client(
    ref: RegistryRef, options: RegistryOptions, scopes: Sequence[str]
) -> Iterator[RegistryClient]:
    """A connected :class:`RegistryClient` for ``ref`` (its ping done), closed afterwards."""
    http = _http_client(ref.registry, options, _make_auth(ref, options, scopes))
    with http:
        client = RegistryClient(ref, options, http)
        client.connect()
        yield client
