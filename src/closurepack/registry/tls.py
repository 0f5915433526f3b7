"""TLS for registry clients: contexts made once per setting, loaded only when HTTPS is spoken.

Loading the system trust store takes tens of milliseconds, more than the rest of a re-push's
requests. A client's requests go through :class:`SchemeTransport`: plain ``http://`` ones over a
transport that holds no trust store, ``https://`` ones (the registry, a Bearer token realm, a
blob redirect to another host) over one made at the first such request with the full context
of :func:`ssl_context`. The only HTTPS attempt made without that context is the ping of a
loopback registry (:func:`lean_ssl_context`, which differs from it in the system CAs alone):
when it meets a certificate it cannot verify, the ping is sent again with the full context.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

import httpx

from closurepack.errors import ClosurepackError, RegistryError
from closurepack.registry.options import RegistryOptions

__all__ = [
    "SchemeTransport",
    "certificate_unverified",
    "lean_ssl_context",
    "prepare_ssl_context",
    "ssl_context",
]


class _Making:
    """A TLS context one thread makes and the others wait for: the part of a
    ``concurrent.futures.Future`` used here, without importing that package for a re-push."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._context: ssl.SSLContext | None = None
        self._error: BaseException | None = None

    def set_result(self, context: ssl.SSLContext) -> None:
        self._context = context
        self._done.set()

    def set_exception(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    def result(self) -> ssl.SSLContext:
        """The context once made; the maker's failure raised again."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._context is not None
        return self._context


#: The TLS contexts made so far, by (verification off, cert_dir, system trust store loaded):
#: every blob read opens a client of its own.
_CONTEXTS: dict[tuple[bool, Path | None, bool], _Making] = {}
_CONTEXTS_LOCK = threading.Lock()


def ssl_context(options: RegistryOptions, host: str) -> ssl.SSLContext:
    """The TLS context for ``host``: the system trust store plus ``cert_dir``'s CAs and client
    certificate; no verification at all for insecure hosts. Made once per process for each
    such setting (``cert_dir`` is read then), and shared by the clients; a failure is not
    kept (the next call tries again)."""
    return _context(options, host, system_trust=True)


def lean_ssl_context(options: RegistryOptions, host: str) -> ssl.SSLContext:
    """:func:`ssl_context`'s context without the system trust store (the same checks, the same
    ``cert_dir``): a handshake it completes, the full one completes too; one it fails for any
    reason but an unverified certificate, the full one fails too."""
    return _context(options, host, system_trust=False)


def _context(options: RegistryOptions, host: str, *, system_trust: bool) -> ssl.SSLContext:
    insecure = options.insecure(host)
    key = (insecure, options.cert_dir, system_trust and not insecure)
    with _CONTEXTS_LOCK:
        made = _CONTEXTS.get(key)
        mine = made is None
        if made is None:
            made = _CONTEXTS[key] = _Making()
    if mine:
        try:
            made.set_result(_make_ssl_context(options, host, system_trust=key[2]))
        except BaseException as exc:
            with _CONTEXTS_LOCK:
                del _CONTEXTS[key]
            made.set_exception(exc)
    return made.result()


def prepare_ssl_context(options: RegistryOptions, host: str) -> None:
    """Start making :func:`ssl_context`'s context for ``host`` in the background (while a build
    plans), so that connecting later need not wait for it; a failure is left for the real
    call to report."""

    def make() -> None:
        with contextlib.suppress(ClosurepackError, OSError, ssl.SSLError):
            ssl_context(options, host)

    threading.Thread(target=make, name="tls-context", daemon=True).start()


def _make_ssl_context(options: RegistryOptions, host: str, *, system_trust: bool) -> ssl.SSLContext:
    if options.insecure(host):
        # nothing is verified: the system trust store is not even loaded
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif system_trust:
        context = ssl.create_default_context()
    else:
        # create_default_context's checks (certificate and host name required), no CA yet
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cert_dir = options.cert_dir
    if cert_dir is None:
        return context
    try:
        for ca in sorted(cert_dir.glob("*.crt")):
            context.load_verify_locations(cafile=str(ca))
        for cert in sorted(cert_dir.glob("*.cert")):
            key = cert.with_suffix(".key")
            if not key.is_file():
                raise RegistryError(f"--cert-dir {cert_dir}: {cert.name} has no {key.name}")
            context.load_cert_chain(str(cert), str(key))
        for key in sorted(cert_dir.glob("*.key")):
            if not key.with_suffix(".cert").is_file():
                raise RegistryError(f"--cert-dir {cert_dir}: {key.name} has no {key.stem}.cert")
    except (OSError, ssl.SSLError) as exc:
        raise RegistryError(f"--cert-dir {cert_dir}: cannot load certificates: {exc}") from exc
    return context


def certificate_unverified(exc: BaseException) -> bool:
    """Whether ``exc`` was caused by a server certificate that was not verified."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


class SchemeTransport(httpx.BaseTransport):
    """``http://`` requests over a transport without TLS, ``https://`` ones over a transport
    with ``tls()``'s context, made (and the context with it) at the first such request."""

    def __init__(self, tls: Callable[[], ssl.SSLContext], limits: httpx.Limits) -> None:
        self._tls = tls
        self._limits = limits
        # a context no handshake can pass (it trusts no CA): plain HTTP never uses one
        self._plain = httpx.HTTPTransport(
            verify=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), limits=limits
        )
        self._https: httpx.HTTPTransport | None = None
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme == "https":
            return self._secure().handle_request(request)
        return self._plain.handle_request(request)

    def _secure(self) -> httpx.HTTPTransport:
        with self._lock:
            if self._https is None:
                self._https = httpx.HTTPTransport(verify=self._tls(), limits=self._limits)
            return self._https

    def close(self) -> None:
        with self._lock:
            https, self._https = self._https, None
        self._plain.close()
        if https is not None:
            https.close()
