"""RegistryAuth against real registries: Debian's docker-registry with htpasswd and with token
auth (a token server run by the test), through httpx; and the WWW-Authenticate parser."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.server
import json
import logging
import re
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest

from closurepack.errors import RegistryAuthError
from closurepack.registry.auth import TOKEN_RESPONSE_LIMIT, RegistryAuth
from closurepack.registry.challenge import Challenge, parse_challenges
from closurepack.registry.credentials import Credentials
from registry_auth_fixtures import (
    PASSWORD,
    READER,
    READER_PASSWORD,
    SERVICE,
    USER,
    AuthRegistry,
    TokenServer,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
PUSH_PULL = ["repository:app:pull,push"]


def _client(auth: RegistryAuth, seen: list[tuple[str, str, int]]) -> httpx.Client:
    def record(response: httpx.Response) -> None:
        seen.append((response.request.method, response.request.url.path, response.status_code))

    return httpx.Client(auth=auth, timeout=30, event_hooks={"response": [record]})


def _digest(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _push_blob(client: httpx.Client, base: str, repo: str, blob: bytes) -> dict[str, object]:
    started = client.post(f"{base}/v2/{repo}/blobs/uploads/")
    assert started.status_code == 202, started.text
    location = httpx.URL(base).join(started.headers["Location"])
    done = client.put(
        location.copy_merge_params({"digest": _digest(blob)}),
        content=blob,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert done.status_code == 201, done.text
    return {"digest": _digest(blob), "size": len(blob)}


def _push_and_read_back(client: httpx.Client, base: str, repo: str = "app") -> None:
    """Push a tiny image (config, one layer, manifest) and read every part back."""
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    layer = b"a tiny layer for the registry auth tests\n"
    config_desc = _push_blob(client, base, repo, config)
    layer_desc = _push_blob(client, base, repo, layer)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer_desc}],
        }
    ).encode()
    put = client.put(
        f"{base}/v2/{repo}/manifests/v1", content=manifest, headers={"Content-Type": OCI_MANIFEST}
    )
    assert put.status_code == 201, put.text
    got = client.get(f"{base}/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert got.status_code == 200
    assert got.content == manifest
    for blob in (config, layer):
        read = client.get(f"{base}/v2/{repo}/blobs/{_digest(blob)}")
        assert read.status_code == 200
        assert read.content == blob


def _base64_pair() -> str:
    return base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def _assert_secret_free(exc: BaseException, *secrets: str) -> None:
    text = "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)
    for secret in secrets:
        assert secret not in text


# --- WWW-Authenticate -------------------------------------------------------------------------


def test_parse_challenges_reads_params_token68_and_several_challenges() -> None:
    got = parse_challenges(
        [
            'Bearer realm="https://auth.example/token",service="reg",'
            'scope="repository:a/b:pull,push", Basic realm="x \\"y\\""',
            "Negotiate abc==, Foo",
        ]
    )
    assert got == [
        Challenge(
            "bearer",
            {
                "realm": "https://auth.example/token",
                "service": "reg",
                "scope": "repository:a/b:pull,push",
            },
        ),
        Challenge("basic", {"realm": 'x "y"'}),
        Challenge("negotiate", {}, token68="abc=="),
        Challenge("foo", {}),
    ]


def test_parse_challenges_takes_unquoted_values_and_odd_spacing() -> None:
    assert parse_challenges(["  BASIC  realm = plain ,charset=UTF-8"]) == [
        Challenge("basic", {"realm": "plain", "charset": "UTF-8"})
    ]


@pytest.mark.parametrize("header", ["=x", 'Bearer realm="unterminated', "Bearer a=b, c=@"])
def test_parse_challenges_refuses_broken_headers(header: str) -> None:
    with pytest.raises(ValueError, match="position"):
        parse_challenges([header])


def test_registry_auth_repr_hides_the_password() -> None:
    auth = RegistryAuth(Credentials(USER, PASSWORD), PUSH_PULL)
    assert PASSWORD not in repr(auth)
    assert USER in repr(auth)


# --- Basic (htpasswd) ---------------------------------------------------------------------------


@pytest.mark.integration
def test_basic_auth_pushes_and_reads_back(htpasswd_registry: AuthRegistry) -> None:
    seen: list[tuple[str, str, int]] = []
    auth = RegistryAuth(Credentials(USER, PASSWORD), PUSH_PULL)
    with _client(auth, seen) as client:
        assert client.get(f"{htpasswd_registry.url}/v2/").status_code == 200
        _push_and_read_back(client, htpasswd_registry.url)
    # One anonymous try, then Basic; later requests send Basic up front.
    statuses = [status for _, _, status in seen]
    assert statuses[:2] == [401, 200]
    assert 401 not in statuses[2:]


@pytest.mark.integration
def test_basic_auth_wrong_password_is_one_line_without_the_secret(
    htpasswd_registry: AuthRegistry,
) -> None:
    auth = RegistryAuth(Credentials(USER, "not-the-" + PASSWORD), PUSH_PULL)
    with httpx.Client(auth=auth) as client, pytest.raises(RegistryAuthError) as info:
        client.get(f"{htpasswd_registry.url}/v2/")
    assert str(info.value) == (
        f"{htpasswd_registry.host}: authentication failed for user {USER}: 401 Unauthorized"
    )
    _assert_secret_free(info.value, PASSWORD)


@pytest.mark.integration
def test_basic_auth_without_credentials_says_how_to_give_them(
    htpasswd_registry: AuthRegistry,
) -> None:
    host = htpasswd_registry.host
    auth = RegistryAuth(None, PUSH_PULL)
    with httpx.Client(auth=auth) as client, pytest.raises(RegistryAuthError) as info:
        client.get(f"{htpasswd_registry.url}/v2/")
    assert str(info.value) == (
        f"{host}: authentication required: no credentials found for {host} "
        "(give --creds or --authfile, or log in with podman/docker login)"
    )


@pytest.mark.integration
def test_a_one_shot_body_meeting_a_401_is_a_clear_error(htpasswd_registry: AuthRegistry) -> None:
    def body() -> Iterator[bytes]:
        yield b"chunk"

    auth = RegistryAuth(Credentials(USER, PASSWORD), PUSH_PULL)
    with httpx.Client(auth=auth) as client:
        with pytest.raises(RegistryAuthError, match="cannot be sent twice"):
            client.post(f"{htpasswd_registry.url}/v2/app/blobs/uploads/", content=body())
        # The credentials are known now, so the same request goes through up front.
        started = client.post(f"{htpasswd_registry.url}/v2/app/blobs/uploads/", content=body())
    assert started.status_code == 202


# --- Bearer (token) -------------------------------------------------------------------------------


@pytest.mark.integration
def test_token_auth_pushes_and_reads_back_with_one_token(
    token_registry: AuthRegistry, token_server: TokenServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[tuple[str, str, int]] = []
    auth = RegistryAuth(Credentials(USER, PASSWORD), PUSH_PULL)
    with _client(auth, seen) as client:
        assert client.get(f"{token_registry.url}/v2/").status_code == 200
        _push_and_read_back(client, token_registry.url)
    assert token_server.count() == 1
    asked = token_server.requests[0]
    assert asked["user"] == USER
    assert asked["scopes"] == PUSH_PULL
    assert asked["query"]["service"] == [SERVICE]
    # Only the very first registry request was answered 401: the token went up front after.
    registry_statuses = [s for _, path, s in seen if path.startswith("/v2/")]
    assert registry_statuses.count(401) == 1
    assert registry_statuses[0] == 401
    # Every log line (ours, httpx's, httpcore's) is free of the password and the token.
    assert "token from" in caplog.text
    assert PASSWORD not in caplog.text
    assert _base64_pair() not in caplog.text


@pytest.mark.integration
def test_token_auth_asks_for_every_scope_and_the_challenges(
    token_registry: AuthRegistry, token_server: TokenServer
) -> None:
    scopes = ["repository:app:pull,push", "repository:base:pull"]
    with httpx.Client(auth=RegistryAuth(Credentials(USER, PASSWORD), scopes)) as client:
        response = client.get(f"{token_registry.url}/v2/other/tags/list")
    assert response.status_code == 404  # authorised; the repository does not exist
    assert token_server.requests[-1]["scopes"] == [*scopes, "repository:other:pull"]


@pytest.mark.integration
def test_token_access_token_field_and_default_lifetime(
    token_registry: AuthRegistry, token_server: TokenServer
) -> None:
    token_server.token_field = "access_token"
    token_server.expires_in = None
    with httpx.Client(auth=RegistryAuth(Credentials(USER, PASSWORD), PUSH_PULL)) as client:
        assert client.get(f"{token_registry.url}/v2/").status_code == 200
        assert client.get(f"{token_registry.url}/v2/").status_code == 200
    assert token_server.count() == 1


@pytest.mark.integration
def test_an_expired_token_is_renewed_before_the_next_request(
    token_registry: AuthRegistry, token_server: TokenServer
) -> None:
    token_server.expires_in = 1
    seen: list[tuple[str, str, int]] = []
    with _client(RegistryAuth(Credentials(USER, PASSWORD), PUSH_PULL), seen) as client:
        assert client.get(f"{token_registry.url}/v2/").status_code == 200
        assert client.get(f"{token_registry.url}/v2/").status_code == 200
        assert token_server.count() == 1
        time.sleep(1.2)
        assert client.get(f"{token_registry.url}/v2/").status_code == 200
    assert token_server.count() == 2
    # The renewal came before the request: the registry answered 401 only the first time.
    assert [s for _, path, s in seen if path == "/v2/"] == [401, 200, 200, 200]


@pytest.mark.integration
def test_a_token_issued_earlier_lives_less(
    token_registry: AuthRegistry, token_server: TokenServer
) -> None:
    token_server.expires_in = 4
    token_server.issued_ago = 2  # handed out again, say by a cache: 2 s of its 4 are gone
    with httpx.Client(auth=RegistryAuth(Credentials(USER, PASSWORD), PUSH_PULL)) as client:
        assert client.get(f"{token_registry.url}/v2/").status_code == 200
        time.sleep(2)
        assert client.get(f"{token_registry.url}/v2/").status_code == 200
    assert token_server.count() == 2


@pytest.mark.integration
def test_a_token_server_clock_far_behind_does_not_expire_tokens_on_arrival(
    token_registry: AuthRegistry, token_server: TokenServer
) -> None:
    token_server.issued_ago = 3600
    with httpx.Client(auth=RegistryAuth(Credentials(USER, PASSWORD), PUSH_PULL)) as client:
        for _ in range(3):
            assert client.get(f"{token_registry.url}/v2/").status_code == 200
    assert token_server.count() == 1


@pytest.mark.integration
def test_the_token_request_keeps_the_client_timeout(
    token_registry: AuthRegistry, token_server: TokenServer
) -> None:
    token_server.stall = 3
    auth = RegistryAuth(Credentials(USER, PASSWORD), PUSH_PULL)
    with httpx.Client(auth=auth, timeout=0.5) as client, pytest.raises(httpx.ReadTimeout):
        client.get(f"{token_registry.url}/v2/")


@pytest.mark.integration
def test_one_auth_shared_by_threads(
    token_registry: AuthRegistry, token_server: TokenServer
) -> None:
    auth = RegistryAuth(Credentials(USER, PASSWORD), PUSH_PULL)
    with httpx.Client(auth=auth) as client:
        assert client.get(f"{token_registry.url}/v2/").status_code == 200
        with ThreadPoolExecutor(max_workers=6) as pool:
            statuses = list(
                pool.map(lambda _: client.get(f"{token_registry.url}/v2/").status_code, range(30))
            )
    assert statuses == [200] * 30
    assert token_server.count() == 1


@pytest.mark.integration
def test_a_token_refused_later_is_refreshed_with_the_new_scope(
    token_registry: AuthRegistry, token_server: TokenServer
) -> None:
    auth = RegistryAuth(Credentials(USER, PASSWORD), ["repository:app:pull"])
    with httpx.Client(auth=auth) as client:
        assert client.get(f"{token_registry.url}/v2/").status_code == 200
        assert token_server.count() == 1
        # Pushing needs push: the registry refuses the cached pull token, a new one is asked.
        started = client.post(f"{token_registry.url}/v2/app/blobs/uploads/")
        assert started.status_code == 202
        assert token_server.count() == 2
        # The challenge's scope is added (the registry names the actions in either order).
        first, added = token_server.requests[-1]["scopes"]
        assert first == "repository:app:pull"
        assert added in {"repository:app:pull,push", "repository:app:push,pull"}
        # The refreshed token is then reused.
        client.post(f"{token_registry.url}/v2/app/blobs/uploads/")
    assert token_server.count() == 2


@pytest.mark.integration
def test_token_wrong_password_is_one_line_without_the_secret(
    token_registry: AuthRegistry, token_server: TokenServer
) -> None:
    auth = RegistryAuth(Credentials(USER, "wrong-" + PASSWORD), PUSH_PULL)
    with httpx.Client(auth=auth) as client, pytest.raises(RegistryAuthError) as info:
        client.get(f"{token_registry.url}/v2/")
    assert str(info.value) == (
        f"{token_registry.host}: authentication failed for user {USER}: 401 Unauthorized "
        f"from the token server {token_server.url}"
    )
    _assert_secret_free(info.value, PASSWORD)


@pytest.mark.integration
def test_token_without_credentials_needing_access_says_how_to_give_them(
    token_registry: AuthRegistry, token_server: TokenServer
) -> None:
    with httpx.Client(auth=RegistryAuth(None, PUSH_PULL)) as client:
        # The anonymous token is good for /v2/ ...
        assert client.get(f"{token_registry.url}/v2/").status_code == 200
        # ... and grants no repository.
        with pytest.raises(RegistryAuthError) as info:
            client.get(f"{token_registry.url}/v2/app/tags/list")
    assert str(info.value).startswith(
        f"{token_registry.host}: authentication required: no credentials found for"
    )
    assert token_server.requests[0]["user"] == ""


@pytest.mark.integration
def test_token_without_the_granted_scope_is_access_denied(
    token_registry: AuthRegistry, token_server: TokenServer
) -> None:
    auth = RegistryAuth(Credentials(READER, READER_PASSWORD), PUSH_PULL)
    with httpx.Client(auth=auth) as client, pytest.raises(RegistryAuthError) as info:
        client.post(f"{token_registry.url}/v2/app/blobs/uploads/")
    message = str(info.value)
    assert message.startswith(f"{token_registry.host}: access denied for user {READER}: 401")
    assert re.search(r"does not grant access for repository:app:(pull,push|push,pull)$", message)
    assert "\n" not in message
    _assert_secret_free(info.value, READER_PASSWORD)


@pytest.mark.integration
def test_an_oversized_token_answer_is_refused(
    token_registry: AuthRegistry, token_server: TokenServer
) -> None:
    token_server.oversize = True
    auth = RegistryAuth(Credentials(USER, PASSWORD), PUSH_PULL)
    with httpx.Client(auth=auth) as client, pytest.raises(RegistryAuthError) as info:
        client.get(f"{token_registry.url}/v2/")
    assert str(info.value) == (
        f"{token_registry.host}: the token server {token_server.url} answered more than "
        f"{TOKEN_RESPONSE_LIMIT} bytes"
    )


@pytest.mark.integration
def test_token_auth_works_with_an_async_client(
    token_registry: AuthRegistry, token_server: TokenServer
) -> None:
    async def run() -> list[int]:
        auth = RegistryAuth(Credentials(USER, PASSWORD), PUSH_PULL)
        async with httpx.AsyncClient(auth=auth) as client:
            first = await client.get(f"{token_registry.url}/v2/")
            second = await client.get(f"{token_registry.url}/v2/app/tags/list")
            third = await client.get(f"{token_registry.url}/v2/nothing-here/tags/list")
        return [first.status_code, second.status_code, third.status_code]

    assert asyncio.run(run()) == [200, 200, 404]
    # One token for app; a second one when the challenge asked for nothing-here too.
    assert token_server.count() == 2
    assert token_server.requests[-1]["scopes"] == [*PUSH_PULL, "repository:nothing-here:pull"]


# --- registries and token servers that answer nonsense ----------------------------------------


@dataclass
class _Scripted:
    """A tiny HTTP server on 127.0.0.1 answering each path as scripted: (status, headers, body),
    from ``with_token`` for requests that carry a Bearer token; ``hits``: the paths asked."""

    url: str = ""
    answers: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)
    with_token: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)


@pytest.fixture
def scripted() -> Iterator[_Scripted]:
    state = _Scripted()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            del format, args

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            state.hits.append(path)
            answers = state.answers
            if self.headers.get("Authorization", "").startswith("Bearer "):
                answers = {**answers, **state.with_token}
            status, headers, body = answers.get(path, (404, {}, b""))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def _challenge(scripted: _Scripted, header: str | None) -> None:
    headers = {} if header is None else {"WWW-Authenticate": header}
    scripted.answers["/v2/"] = (401, headers, b"")


def _token_answer(scripted: _Scripted, status: int, body: bytes) -> None:
    _challenge(scripted, f'Bearer realm="{scripted.url}/token",service="s"')
    scripted.answers["/token"] = (status, {"Content-Type": "application/json"}, body)


def _error(scripted: _Scripted, credentials: Credentials | None = None) -> str:
    auth = RegistryAuth(credentials, PUSH_PULL)
    with httpx.Client(auth=auth, timeout=10) as client, pytest.raises(RegistryAuthError) as info:
        client.get(f"{scripted.url}/v2/")
    _assert_secret_free(info.value, PASSWORD)
    message = str(info.value)
    host = scripted.url.removeprefix("http://")
    assert message.startswith(f"{host}: ")
    return message.removeprefix(f"{host}: ")


def test_a_401_without_a_usable_challenge(scripted: _Scripted) -> None:
    _challenge(scripted, None)
    assert (
        _error(scripted) == "401 Unauthorized without a Basic or Bearer challenge (offered: none)"
    )
    _challenge(scripted, "Negotiate abc==")
    assert _error(scripted).endswith("(offered: negotiate)")


def test_a_broken_challenge_header(scripted: _Scripted) -> None:
    _challenge(scripted, 'Bearer realm="x", =oops')
    assert _error(scripted) == (
        "cannot read the registry's WWW-Authenticate header: unexpected '=' at position 18"
    )


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ('Bearer service="s"', "the registry's Bearer challenge names no realm"),
        ('Bearer realm="ftp://x/token"', "the token realm 'ftp://x/token' is not an http(s) URL"),
        ('Bearer realm="http:///token"', "the token realm 'http:///token' is not an http(s) URL"),
        ('Bearer realm="https://[::1/"', "the token realm 'https://[::1/' is not an http(s) URL"),
    ],
)
def test_a_bearer_challenge_without_a_usable_realm(
    scripted: _Scripted, header: str, message: str
) -> None:
    _challenge(scripted, header)
    assert _error(scripted, Credentials(USER, PASSWORD)) == message


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (500, b"{}", "answered 500 Internal Server Error"),
        (200, b"<html>", "answered something that is not JSON"),
        (200, b'["token"]', "answered JSON that is not an object"),
        (200, b'{"expires_in": 60}', "answered no usable token (neither token nor access_token)"),
        (200, b'{"token": "has a space"}', "answered no usable token"),
    ],
)
def test_a_token_server_answering_nonsense(
    scripted: _Scripted, status: int, body: bytes, message: str
) -> None:
    _token_answer(scripted, status, body)
    got = _error(scripted, Credentials(USER, PASSWORD))
    assert got.startswith(f"the token server {scripted.url}/token {message}")


def test_a_token_refused_without_credentials_asks_for_them(scripted: _Scripted) -> None:
    _token_answer(scripted, 401, b"{}")
    assert _error(scripted).startswith("authentication required: no credentials found")


def test_odd_expiry_fields_fall_back_to_the_default(scripted: _Scripted) -> None:
    body = json.dumps({"token": "t0k", "expires_in": "soon", "issued_at": "yesterday"}).encode()
    _token_answer(scripted, 200, body)
    scripted.with_token["/v2/"] = (200, {}, b"{}")
    with httpx.Client(auth=RegistryAuth(None, PUSH_PULL), timeout=10) as client:
        for _ in range(3):
            assert client.get(f"{scripted.url}/v2/").status_code == 200
    assert scripted.hits == ["/v2/", "/token", "/v2/", "/v2/", "/v2/"]
