"""A real registry for the tests: Debian's ``docker-registry`` (distribution 2.x) on 127.0.0.1,
and a containerd of their own for ``ctr``.

``registry`` (one per test) and ``shared_registry`` (one per module) start
``docker-registry serve CONFIG`` with storage in a temp directory and the access log on, wait for
``/v2/``, and stop it by its pid afterwards. Requests are counted from the registry's own access
log (:meth:`Registry.requests`), never from closurepack's counters.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = [
    "Containerd",
    "Registry",
    "Request",
    "containerd",
    "free_port",
    "registry",
    "shared_registry",
    "start_registry",
]

# The access log is Apache's combined format: ... "METHOD PATH HTTP/1.1" STATUS SIZE ...
_ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>[0-9]{3}) ')


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    status: int


@dataclass
class Registry:
    """A running registry: ``host`` is ``127.0.0.1:PORT``; ``log`` its output."""

    host: str
    root: Path
    log: Path

    def requests(self, since: int = 0) -> list[Request]:
        """The requests the registry logged, from the ``since``-th on (see :meth:`mark`)."""
        # The registry logs after answering: give the last answer's line a moment to land.
        time.sleep(0.2)
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            match = _ACCESS.search(line)
            if match:
                found.append(Request(match["method"], match["path"], int(match["status"])))
        return found[since:]

    def mark(self) -> int:
        """How many requests were logged so far (give it to :meth:`requests` later)."""
        return len(self.requests())

    def blob_writes(self, since: int = 0) -> list[Request]:
        """Requests that start, send or finish a blob upload (mount requests included)."""
        return [
            r
            for r in self.requests(since)
            if "/blobs/uploads" in r.path and r.method in ("POST", "PATCH", "PUT")
        ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def start_registry(
    directory: Path, *, extra_config: str = "", tls: ssl.SSLContext | None = None
) -> Iterator[Registry]:
    """Run a registry with its storage under ``directory`` until the block ends.

    ``extra_config`` goes on in the ``http:`` section (e.g. ``tls:``); then ``tls`` is the
    context the readiness probe uses (HTTPS).
    """
    binary = "/usr/bin/docker-registry"
    if not os.access(binary, os.X_OK):
        if os.environ.get("CLOSUREPACK_REQUIRE_TOOLS") == "1":
            pytest.fail("docker-registry is not installed (CLOSUREPACK_REQUIRE_TOOLS=1)")
        pytest.skip("docker-registry is not installed")
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: false\n"
        f"storage:\n  filesystem:\n    rootdirectory: {directory / 'data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{extra_config}"
    )
    log = directory / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    server = Registry(f"127.0.0.1:{port}", directory, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                scheme = "https" if tls is not None else "http"
                url = f"{scheme}://{server.host}/v2/"
                with urllib.request.urlopen(url, timeout=2, context=tls):
                    break
            except (urllib.error.URLError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"docker-registry did not start: {log.read_text()[-800:]}")
                time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A fresh registry for one test."""
    with start_registry(tmp_path / "registry") as server:
        yield server


@pytest.fixture(scope="module")
def shared_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """One registry for a module's tests (use distinct repository names)."""
    with start_registry(tmp_path_factory.mktemp("registry")) as server:
        yield server


@dataclass
class Containerd:
    """A containerd of the test's own (root, state and socket under a temp directory)."""

    directory: Path

    def ctr(self, *args: str, timeout: float = 300) -> str:
        argv = ["ctr", "--address", str(self.directory / "sock"), *args]
        proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            pytest.fail(
                f"{' '.join(argv)} exited {proc.returncode}:"
                f" {proc.stderr.decode(errors='replace')[-2000:]}"
            )
        return proc.stdout.decode(errors="replace")


def _require(name: str) -> None:
    import shutil

    if shutil.which(name) is None:
        if os.environ.get("CLOSUREPACK_REQUIRE_TOOLS") == "1":
            pytest.fail(f"{name} is not installed (CLOSUREPACK_REQUIRE_TOOLS=1)")
        pytest.skip(f"{name} is not installed")


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    """A containerd started for the module (CRI plugin off) and stopped by its pid."""
    import shutil
    import tempfile

    _require("containerd")
    _require("ctr")
    # Short path: unix socket paths are limited to 108 bytes.
    directory = Path(tempfile.mkdtemp(prefix="cpc-", dir="/tmp"))
    config = directory / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{directory}/root"\nstate = "{directory}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{directory}/sock"\n'
    )
    with (directory / "log").open("wb") as log:
        proc = subprocess.Popen(
            ["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    daemon = Containerd(directory)
    try:
        deadline = time.monotonic() + 30
        while True:
            probe = subprocess.run(
                ["ctr", "--address", str(directory / "sock"), "version"],
                capture_output=True,
                check=False,
            )
            if probe.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"containerd did not start: {(directory / 'log').read_text()[-800:]}")
            time.sleep(0.2)
        yield daemon
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)
