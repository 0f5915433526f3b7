"""Registries over TLS (docker-registry with a certificate of a CA the test makes with openssl):
verified by default, trusted through --cert-dir (also for a client certificate), or unverified
with --tls-verify=false / --no-tls-verify / --insecure-registry HOST."""

from __future__ import annotations

import http.server
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from clistore import APP, Store, run
from closurepack.errors import RegistryError
from closurepack.registry import RegistryOptions, parse_reference, tls
from closurepack.registry.client import _http_client, get_if_there, open_client
from registry_fixtures import Registry, start_registry
from runtimes import require_tool

pytestmark = pytest.mark.integration


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _issue(directory: Path, name: str, extension: str) -> None:
    """``name.key`` + ``name.crt`` signed by ``ca``, with the given X.509 extension."""
    key, csr = directory / f"{name}.key", directory / f"{name}.csr"
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", csr, "-subj", f"/CN={name}")  # fmt: skip
    ext = directory / f"{name}.ext"
    ext.write_text(extension + "\n")
    _openssl("x509", "-req", "-in", csr, "-CA", directory / "ca.crt", "-CAkey",
             directory / "ca.key", "-CAcreateserial", "-days", "2", "-out",
             directory / f"{name}.crt", "-extfile", ext)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tool("openssl")
    directory = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", directory / "ca.key", "-out", directory / "ca.crt",
             "-days", "2", "-subj", "/CN=closurepack test CA")  # fmt: skip
    _issue(directory, "server", "subjectAltName=IP:127.0.0.1")
    _issue(directory, "client", "extendedKeyUsage=clientAuth")
    return directory


def _tls_config(pki: Path, *, client_ca: bool) -> str:
    text = (f"  tls:\n    certificate: {pki / 'server.crt'}\n"
            f"    key: {pki / 'server.key'}\n")  # fmt: skip
    if client_ca:
        text += f"    clientcas:\n      - {pki / 'ca.crt'}\n"
    return text


def _probe(pki: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
    return context


@pytest.fixture(scope="module")
def tls_registry(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry over TLS with a certificate of the test's CA."""
    with start_registry(
        tmp_path_factory.mktemp("tls"), extra_config=_tls_config(pki, client_ca=False),
        tls=_probe(pki),
    ) as server:  # fmt: skip
        yield server


@pytest.fixture(scope="module")
def mtls_registry(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry over TLS that also wants a client certificate of the test's CA."""
    with start_registry(
        tmp_path_factory.mktemp("mtls"), extra_config=_tls_config(pki, client_ca=True),
        tls=_probe(pki),
    ) as server:  # fmt: skip
        yield server


def _build(
    store: Store, tmp_path: Path, dest: str, capsys: pytest.CaptureFixture[str], *extra: object
) -> tuple[int, str, str]:
    closure = store.closure_file(tmp_path / "app.json", [APP])
    argv = ["build", "--closure", closure, "--store-root", store.root, "--cache-dir",
            tmp_path / "c", "-q", "-o", dest, *extra]  # fmt: skip
    return run(argv, capsys)


def _cert_dir(pki: Path, tmp_path: Path, *, client: bool) -> Path:
    certs = tmp_path / "certs"
    certs.mkdir(parents=True)
    (certs / "ca.crt").write_bytes((pki / "ca.crt").read_bytes())
    if client:
        (certs / "client.cert").write_bytes((pki / "client.crt").read_bytes())
        (certs / "client.key").write_bytes((pki / "client.key").read_bytes())
    return certs


def test_unknown_ca_is_refused_by_default(
    tls_registry: Registry, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = f"docker://{tls_registry.host}/app:1"
    status, out, err = _build(store, tmp_path, dest, capsys)
    assert status == 5
    assert out == ""
    assert err.count("\n") == 1
    assert "CERTIFICATE_VERIFY_FAILED" in err


@pytest.mark.parametrize(
    "flags",
    [
        ("--tls-verify=false",),
        ("--no-tls-verify",),
        ("--insecure-registry", "HOST"),
    ],
)
def test_unverified_tls_when_asked(
    flags: tuple[str, ...],
    tls_registry: Registry,
    store: Store,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [f.replace("HOST", tls_registry.host) for f in flags]
    dest = f"docker://{tls_registry.host}/unverified:1"
    status, out, err = _build(store, tmp_path, dest, capsys, *argv)
    assert status == 0, err
    assert out.startswith(f"{tls_registry.host}/unverified@sha256:")
    status, text, err = run(["verify", dest, *argv], capsys)
    assert (status, text.strip()) == (0, f"{dest}: ok"), err


def test_cert_dir_trusts_the_ca(
    tls_registry: Registry,
    pki: Path,
    store: Store,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    certs = _cert_dir(pki, tmp_path, client=False)
    dest = f"docker://{tls_registry.host}/trusted:1"
    status, out, err = _build(store, tmp_path, dest, capsys, "--cert-dir", certs)
    assert status == 0, err
    status, text, err = run(["inspect", dest, "--cert-dir", certs], capsys)
    assert status == 0, err
    assert out.strip().partition("@")[2] in text


def test_client_certificate_from_cert_dir(
    mtls_registry: Registry,
    pki: Path,
    store: Store,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dest = f"docker://{mtls_registry.host}/app:1"
    only_ca = _cert_dir(pki, tmp_path / "a", client=False)
    status, _, err = _build(store, tmp_path, dest, capsys, "--cert-dir", only_ca)
    assert status == 5
    assert err.count("\n") == 1
    assert f"registry ping: {mtls_registry.host}" in err
    with_client = _cert_dir(pki, tmp_path / "b", client=True)
    status, out, err = _build(store, tmp_path, dest, capsys, "--cert-dir", with_client)
    assert status == 0, err
    assert out.startswith(f"{mtls_registry.host}/app@sha256:")


def test_cert_without_key_is_refused(
    pki: Path, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = _cert_dir(pki, tmp_path, client=True)
    (certs / "client.key").unlink()
    status, out, err = _build(
        store, tmp_path, "docker://127.0.0.1:1/app:1", capsys, "--cert-dir", certs
    )
    assert (status, out) == (5, "")
    assert f"--cert-dir {certs}: client.cert has no client.key" in err
    assert err.count("\n") == 1


# --- the system trust store, loaded only for HTTPS ----------------------------------------------


class _Answers(http.server.BaseHTTPRequestHandler):
    """A registry's ``/v2/`` behind a Bearer token from an HTTPS realm, and that realm:
    the server's ``answers`` by path, ``hits`` the paths asked."""

    server: _Scripted

    def log_message(self, format: str, *args: object) -> None:
        del format, args

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        self.server.hits.append(path)
        status, headers, body = self.server.answer(path, self.headers.get("Authorization", ""))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Scripted(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, realm: str = "") -> None:
        super().__init__(("127.0.0.1", 0), _Answers)
        self.realm = realm
        self.hits: list[str] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def answer(self, path: str, authorization: str) -> tuple[int, dict[str, str], bytes]:
        if path == "/token":
            return 200, {"Content-Type": "application/json"}, b'{"token": "granted"}'
        if authorization == "Bearer granted":
            return 200, {}, b"{}"
        challenge = f'Bearer realm="{self.realm}",service="test"'
        return 401, {"WWW-Authenticate": challenge}, b""

    def handle_error(self, request: object, client_address: object) -> None:
        del request, client_address  # a client refusing the certificate: expected here

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


@pytest.fixture
def realm_registry(
    pki: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[_Scripted, _Scripted]]:
    """A plain-HTTP loopback registry whose token realm is HTTPS, with a certificate of the
    test's CA; each test starts without TLS contexts made."""
    monkeypatch.setattr(tls, "_CONTEXTS", {})
    realm = _Scripted()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki / "server.crt"), str(pki / "server.key"))
    realm.socket = context.wrap_socket(realm.socket, server_side=True)
    registry = _Scripted(f"https://{realm.host}/token")
    yield registry, realm
    registry.stop()
    realm.stop()


def _system_trust_loaded() -> list[bool]:
    return [key[2] for key in tls._CONTEXTS]


def test_an_https_realm_of_a_plain_http_registry_is_checked_with_the_system_trust_store(
    realm_registry: tuple[_Scripted, _Scripted], pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The realm's certificate is verified with the system trust store (SSL_CERT_FILE makes the
    test's CA part of it), loaded at the token request, not before."""
    registry, realm = realm_registry
    ref = parse_reference(f"docker://{registry.host}/app:1", for_push=True)
    options = RegistryOptions(retries=0, creds="user:secret")
    monkeypatch.setenv("SSL_CERT_FILE", str(pki / "ca.crt"))
    with open_client(ref, options, ["repository:app:pull"]) as client:
        assert client.base == f"http://{registry.host}"
        assert _system_trust_loaded() == [False, True]  # the probe's, then the realm's
        client.request("GET", client.url("tags/list"), what="tags")
    assert realm.hits == ["/token"]
    assert registry.hits == ["/v2/", "/v2/", "/v2/app/tags/list"]


def test_an_https_realm_with_a_certificate_the_store_does_not_trust_is_refused(
    realm_registry: tuple[_Scripted, _Scripted],
) -> None:
    registry, realm = realm_registry
    ref = parse_reference(f"docker://{registry.host}/app:1", for_push=True)
    options = RegistryOptions(retries=0, creds="user:secret")
    with (
        pytest.raises(RegistryError, match="CERTIFICATE_VERIFY_FAILED"),
        open_client(ref, options, ["repository:app:pull"]),
    ):
        pass
    assert realm.hits == []


def test_a_plain_http_loopback_registry_never_loads_the_system_trust_store(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTPS is tried first on loopback, but the handshake with a plain-HTTP registry fails
    before any certificate: no context holding the system trust store is made."""
    monkeypatch.setattr(tls, "_CONTEXTS", {})
    ref = parse_reference(f"docker://{registry.host}/app:1", for_push=True)
    with open_client(ref, RegistryOptions(), ["repository:app:pull"]) as client:
        assert client.base == f"http://{registry.host}"
        assert get_if_there(client, "manifests/1", "tag", limit=1 << 20, accept="*/*") is None
    assert _system_trust_loaded() == [False]


def test_the_lean_context_checks_as_the_default_one() -> None:
    """The loopback probe's context is ssl.create_default_context's in every setting but the
    CAs loaded."""
    lean = tls.lean_ssl_context(RegistryOptions(), "127.0.0.1:5000")
    reference = ssl.create_default_context()
    settings = (
        "verify_mode", "check_hostname", "verify_flags", "options", "minimum_version",
        "maximum_version", "protocol", "post_handshake_auth", "keylog_filename",
    )  # fmt: skip
    assert {n: getattr(lean, n) for n in settings} == {n: getattr(reference, n) for n in settings}
    assert lean.get_ciphers() == reference.get_ciphers()
    assert lean.cert_store_stats()["x509_ca"] == 0 < reference.cert_store_stats()["x509_ca"]


def test_with_proxies_in_the_environment_the_context_is_made_up_front(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """httpx honours HTTPS_PROXY only with the transports it makes (and their TLS context)."""
    monkeypatch.setattr(tls, "_CONTEXTS", {})
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:1")
    auth = httpx.Auth()
    with _http_client("registry.example", RegistryOptions(), auth) as client:
        proxied = [t for t in client._mounts.values() if t is not None]
    assert proxied
    assert _system_trust_loaded() == [True]


def test_threads_wait_for_the_context_one_makes_and_share_its_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One thread makes a setting's context; the others wait and get that context, or the
    same failure; a failure is not kept (the next call makes it again)."""
    monkeypatch.setattr(tls, "_CONTEXTS", {})
    release = threading.Event()
    calls: list[bool] = []
    made = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)

    def make(options: RegistryOptions, host: str, *, system_trust: bool) -> ssl.SSLContext:
        calls.append(system_trust)
        release.wait(10)
        if len(calls) == 1:
            raise RegistryError("no context this time")
        return made

    monkeypatch.setattr(tls, "_make_ssl_context", make)
    options = RegistryOptions()
    got: list[object] = []

    def ask() -> None:
        try:
            got.append(tls.ssl_context(options, "registry.example"))
        except RegistryError as exc:
            got.append(exc)

    waiting = threading.Semaphore(0)

    class Making(tls._Making):
        def result(self) -> ssl.SSLContext:
            if not release.is_set():
                waiting.release()  # a thread that did not make it waits now
            return super().result()

    monkeypatch.setattr(tls, "_Making", Making)
    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    assert waiting.acquire(timeout=10)
    assert waiting.acquire(timeout=10)
    release.set()
    for thread in threads:
        thread.join(10)
    assert calls == [True]
    assert len(got) == 3
    assert all(isinstance(g, RegistryError) for g in got)
    assert len({id(g) for g in got}) == 1
    assert tls.ssl_context(options, "registry.example") is made
    assert tls.ssl_context(options, "registry.example") is made
    assert calls == [True, True]
