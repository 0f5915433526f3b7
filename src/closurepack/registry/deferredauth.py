"""``DeferredAuth``: requests go out anonymously until the registry first answers ``401``;
only then is the real authentication (:class:`~closurepack.registry.auth.RegistryAuth`, with
the credentials looked up in the auth files) made, and it answers that 401 and every later
request.

An anonymous registry (a re-push to a local one) so never loads the credential files, their
helpers or the challenge parser. The options that name credentials (``--creds``,
``--authfile``) do not come here: those are read up front, so that a bad one fails at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator

import httpx

from closurepack.errors import RegistryAuthError

__all__ = ["DeferredAuth"]


class DeferredAuth(httpx.Auth):
    """An httpx auth for synchronous clients that makes ``make()`` at the first 401."""

    def __init__(self, make: Callable[[], httpx.Auth]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._inner: httpx.Auth | None = None

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        with self._lock:
            inner = self._inner
        if inner is not None:
            yield from inner.sync_auth_flow(request)
            return
        response = yield request
        if response.status_code != 401:
            return
        with self._lock:
            fresh = self._inner is None
            if fresh:
                self._inner = self._make()
            inner = self._inner
        assert inner is not None
        flow = inner.sync_auth_flow(request)
        step = next(flow)
        if fresh:
            # a new auth knows no token, realm or Basic host yet: its first request is this
            # one as it went out, anonymous, and the registry has answered it already
            try:
                step = flow.send(response)
            except StopIteration:
                return
        elif not isinstance(request.stream, httpx.ByteStream):
            # another request made the auth meanwhile: this one goes again its way, which a
            # one-shot body cannot (as RegistryAuth says for its own retries)
            raise RegistryAuthError(
                f"{request.url.host}: {request.method} {request.url.path} needs authentication"
                " and its body cannot be sent twice; authenticate with a request without a"
                " body first"
            )
        while True:
            answer = yield step
            try:
                step = flow.send(answer)
            except StopIteration:
                return

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Only :meth:`sync_auth_flow` is served (closurepack's registry client is synchronous)."""
        raise NotImplementedError("DeferredAuth serves synchronous httpx clients only")
