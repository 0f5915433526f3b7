"""Real registries that demand authentication, for the registry auth tests (a pytest plugin).

``htpasswd_registry``: Debian's ``docker-registry`` (distribution 2.8) on 127.0.0.1 with
``auth: htpasswd`` over a file made by ``htpasswd -Bbn``. ``token_registry``: the same registry
with ``auth: token``, whose realm is ``token_server``, a small token server this plugin runs in
a thread: it checks Basic credentials and issues ES256 JWTs signed with a key made here, the
certificate of which is the registry's ``rootcertbundle`` (the token carries it in ``x5c``).
The token server counts what it is asked, so tests can see tokens being reused.

Missing tools skip the tests, or fail them when ``CLOSUREPACK_REQUIRE_TOOLS=1``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.server
import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

__all__ = [
    "AuthRegistry",
    "TokenServer",
    "htpasswd_registry",
    "need_tool",
    "token_registry",
    "token_server",
]

USER = "alice"
PASSWORD = "pw-9f3Kq-SECRET-77x"  # a string no message may contain
READER = "reader"  # may only pull
READER_PASSWORD = "rd-5tT2m-SECRET-41y"
SERVICE = "closurepack-test-registry"
ISSUER = "closurepack-test-issuer"


def need_tool(name: str) -> str:
    """The path of ``name``: skip without it, or fail when CLOSUREPACK_REQUIRE_TOOLS=1."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (scripts/setup.sh installs it)"
        if os.environ.get("CLOSUREPACK_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class AuthRegistry:
    """A running registry: ``url`` (``http://127.0.0.1:PORT``) and ``host`` (``127.0.0.1:PORT``)."""

    url: str
    host: str
    proc: subprocess.Popen[bytes]
    log: Path


def _start_registry(workdir: Path, auth: dict[str, Any]) -> AuthRegistry:
    program = need_tool("docker-registry")
    port = _free_port()
    storage = workdir / "storage"
    storage.mkdir(parents=True)
    config = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
        "auth": auth,
    }
    # JSON is YAML: the registry reads this file as its YAML configuration.
    config_path = workdir / "config.yml"
    config_path.write_text(json.dumps(config))
    log = workdir / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [program, "serve", str(config_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={"PATH": os.environ.get("PATH", os.defpath)},
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            pytest.fail(f"docker-registry exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            httpx.get(f"{url}/v2/", timeout=2)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"docker-registry did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
    return AuthRegistry(url=url, host=f"127.0.0.1:{port}", proc=proc, log=log)


def _stop(registry: AuthRegistry) -> None:
    registry.proc.terminate()
    try:
        registry.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        registry.proc.kill()
        registry.proc.wait()


@pytest.fixture(scope="module")
def htpasswd_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthRegistry]:
    """A registry with ``auth: htpasswd`` for USER / PASSWORD."""
    htpasswd = need_tool("htpasswd")
    workdir = tmp_path_factory.mktemp("htpasswd-registry")
    line = subprocess.run(
        [htpasswd, "-Bbn", USER, PASSWORD], capture_output=True, check=True
    ).stdout
    users = workdir / "htpasswd"
    users.write_bytes(line.strip() + b"\n")
    registry = _start_registry(
        workdir, {"htpasswd": {"realm": "closurepack-test", "path": str(users)}}
    )
    yield registry
    _stop(registry)


@dataclass
class TokenServer:
    """The test's token server: ``url`` is the realm; ``requests`` what it was asked.

    Knobs tests may set: ``expires_in`` (None: leave it out, and ``issued_at`` too),
    ``issued_ago`` (seconds to date ``issued_at`` back), ``oversize`` (answer with more than
    closurepack's limit), ``stall`` (seconds to wait before answering), ``token_field``
    (``token`` or ``access_token``).
    """

    url: str
    cert_pem: bytes
    key: Any
    cert_der: bytes
    requests: list[dict[str, Any]] = field(default_factory=list)
    expires_in: int | None = 300
    oversize: bool = False
    stall: float = 0.0
    issued_ago: float = 0.0
    token_field: str = "token"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
        self.expires_in = 300
        self.oversize = False
        self.stall = 0.0
        self.issued_ago = 0.0
        self.token_field = "token"

    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def issue(self, user: str | None, scopes: list[str]) -> str:
        """A JWT for ``user`` granting the requested scopes (READER: pull only; anonymous: none)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            wanted = [a for a in actions.split(",") if a]
            if user is None:
                wanted = []
            elif user == READER:
                wanted = [a for a in wanted if a == "pull"]
            if wanted:
                access.append({"type": kind, "name": name, "actions": wanted})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        claims = {
            "iss": ISSUER,
            "sub": user or "",
            "aud": SERVICE,
            "exp": now + 3600,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header))}.{_b64url(json.dumps(claims))}"
        der = self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing_input}.{_b64url(signature)}"


def _b64url(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _make_key_and_cert() -> tuple[Any, bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "closurepack test token signer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (
        key,
        cert.public_bytes(serialization.Encoding.PEM),
        cert.public_bytes(serialization.Encoding.DER),
    )


_USERS = {USER: PASSWORD, READER: READER_PASSWORD}


def _handler(server: TokenServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            del format, args

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            user = self._user()
            with server.lock:
                server.requests.append(
                    {"user": user, "scopes": query.get("scope", []), "query": query}
                )
            if url.path != "/token" or user is False:
                self._answer(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}')
                return
            if query.get("service") != [SERVICE]:
                self._answer(400, b'{"errors":[{"code":"BAD SERVICE"}]}')
                return
            token = server.issue(user or None, query.get("scope", []))
            answer: dict[str, Any] = {server.token_field: token}
            if server.expires_in is not None:
                answer["expires_in"] = server.expires_in
                issued = time.time() - server.issued_ago
                answer["issued_at"] = datetime.datetime.fromtimestamp(
                    issued, datetime.UTC
                ).isoformat()
            body = json.dumps(answer).encode()
            if server.stall:
                time.sleep(server.stall)
            if server.oversize:
                body = json.dumps({**answer, "padding": "x" * (2 << 20)}).encode()
            self._answer(200, body)

        def _user(self) -> str | bool:
            """The checked user; "" for anonymous; False for wrong credentials."""
            header = self.headers.get("Authorization")
            if header is None:
                return ""
            scheme, _, blob = header.partition(" ")
            if scheme != "Basic":
                return False
            user, _, password = base64.b64decode(blob).decode().partition(":")
            return user if _USERS.get(user) == password else False

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture(scope="module")
def _token_server_running() -> Iterator[TokenServer]:
    key, cert_pem, cert_der = _make_key_and_cert()
    state = TokenServer(url="", cert_pem=cert_pem, key=key, cert_der=cert_der)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/token"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


@pytest.fixture
def token_server(_token_server_running: TokenServer) -> Iterator[TokenServer]:
    """The token server, its counters and knobs reset for each test."""
    _token_server_running.reset()
    yield _token_server_running
    _token_server_running.reset()


@pytest.fixture(scope="module")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory, _token_server_running: TokenServer
) -> Iterator[AuthRegistry]:
    """A registry with ``auth: token`` trusting the token server's certificate."""
    workdir = tmp_path_factory.mktemp("token-registry")
    bundle = workdir / "token-signer.pem"
    bundle.write_bytes(_token_server_running.cert_pem)
    registry = _start_registry(
        workdir,
        {
            "token": {
                "realm": _token_server_running.url,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(bundle),
            }
        },
    )
    yield registry
    with contextlib.suppress(Exception):
        _stop(registry)
