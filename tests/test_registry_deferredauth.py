"""DeferredAuth against real registries: nothing made for an anonymous one; at the first 401
the real auth answers it without sending the request a second time anonymously."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from closurepack.errors import RegistryAuthError
from closurepack.registry.auth import RegistryAuth
from closurepack.registry.client import _make_auth
from closurepack.registry.credentials import Credentials
from closurepack.registry.deferredauth import DeferredAuth
from closurepack.registry.options import RegistryOptions
from closurepack.registry.reference import parse_reference
from registry_auth_fixtures import PASSWORD, USER, AuthRegistry
from registry_fixtures import Registry

SCOPES = ["repository:app:pull,push"]


def _counting(make: Callable[[], httpx.Auth]) -> tuple[DeferredAuth, list[int]]:
    made: list[int] = []

    def counted() -> httpx.Auth:
        made.append(1)
        return make()

    return DeferredAuth(counted), made


def _client(auth: httpx.Auth, seen: list[tuple[str, int]]) -> httpx.Client:
    def record(response: httpx.Response) -> None:
        seen.append((response.request.headers.get("Authorization", "")[:5], response.status_code))

    return httpx.Client(auth=auth, timeout=30, event_hooks={"response": [record]})


def test_an_anonymous_registry_never_makes_the_auth(shared_registry: Registry) -> None:
    auth, made = _counting(lambda: RegistryAuth(None, SCOPES))
    seen: list[tuple[str, int]] = []
    with _client(auth, seen) as client:
        assert client.get(f"http://{shared_registry.host}/v2/").status_code == 200
        assert client.get(f"http://{shared_registry.host}/v2/app/tags/list").status_code == 404
    assert made == []
    assert seen == [("", 200), ("", 404)]


def test_the_first_401_is_answered_by_the_auth_made_then(
    htpasswd_registry: AuthRegistry,
) -> None:
    auth, made = _counting(lambda: RegistryAuth(Credentials(USER, PASSWORD), SCOPES))
    seen: list[tuple[str, int]] = []
    with _client(auth, seen) as client:
        assert client.get(f"{htpasswd_registry.url}/v2/").status_code == 200
        assert client.get(f"{htpasswd_registry.url}/v2/").status_code == 200
    assert made == [1]
    # anonymous once, then Basic: the 401 is not asked again anonymously; later Basic up front
    assert seen == [("", 401), ("Basic", 200), ("Basic", 200)]


def test_no_credentials_at_the_first_401_is_the_auths_error(
    htpasswd_registry: AuthRegistry,
) -> None:
    auth, _ = _counting(lambda: RegistryAuth(None, SCOPES))
    with _client(auth, []) as client, pytest.raises(RegistryAuthError, match="credentials"):
        client.get(f"{htpasswd_registry.url}/v2/")


def test_credentials_named_by_the_options_are_read_up_front(tmp_path: Path) -> None:
    ref = parse_reference("127.0.0.1:1/app:1", for_push=True)
    assert isinstance(_make_auth(ref, RegistryOptions(), SCOPES), DeferredAuth)
    assert isinstance(_make_auth(ref, RegistryOptions(creds="u:p"), SCOPES), RegistryAuth)
    with pytest.raises(RegistryAuthError, match="no such auth file"):
        _make_auth(ref, RegistryOptions(authfile=tmp_path / "none.json"), SCOPES)
