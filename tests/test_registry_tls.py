"""Registries over TLS (docker-registry with a certificate of a CA the test makes with openssl):
verified by default, trusted through --cert-dir (also for a client certificate), or unverified
with --tls-verify=false / --no-tls-verify / --insecure-registry HOST."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from clistore import APP, Store, run
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
