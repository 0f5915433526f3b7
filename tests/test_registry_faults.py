"""The registry transport under faults: a small proxy in front of the real registry answers
500 or 429, breaks connections in the middle of an upload, asks for chunks of a minimum size, or
misreports digests; closurepack retries, restarts uploads and reports what cannot be fixed in one
line. Chunked uploads and image indexes are exercised here too."""

from __future__ import annotations

import http.client
import http.server
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from clistore import APP, Store, run
from closurepack.errors import RegistryAuthError, RegistryError
from closurepack.image import Image, host_architecture
from closurepack.platforms import host_platform
from closurepack.readback import read_image
from closurepack.registry import RegistryOptions, parse_reference
from closurepack.registry.push import push_image
from closurepack.validate import inspect_image, verify_image
from registry_fixtures import Registry

pytestmark = pytest.mark.integration

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


@dataclass
class Fault:
    """Answer requests matching ``method`` and ``part`` (of the path) ``times`` times with
    ``action``: an HTTP status, ``"reset"`` (cut the connection after half the request
    body), ``"cut"`` (pass the registry's answer on, but cut the connection after half its
    body), ``"no-range"`` (drop the request's Range header, as a registry without range
    support would answer), or a callable that may change the registry's answer headers."""

    method: str
    part: str
    action: int | str | Callable[[dict[str, str]], None]
    times: int = 1
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    method: str
    path: str
    length: int
    at: float
    answer: int | str


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``target`` applying :class:`Fault` rules."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                proxy.handle(self)

        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
            setattr(Handler, f"do_{method}", Handler._any)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.method == method and fault.part in path:
                    fault.times -= 1
                    return fault
        return None

    def handle(self, req: http.server.BaseHTTPRequestHandler) -> None:
        method, path = req.command, req.path
        length = int(req.headers.get("Content-Length") or 0)
        fault = self._fault(method, path)
        record = Seen(method, path, length, time.monotonic(), 0)
        with self._lock:
            self.seen.append(record)
        if fault is not None and fault.action == "reset":
            req.rfile.read(length // 2)
            # RST instead of FIN: the client sees a broken connection mid-request.
            req.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            req.close_connection = True
            record.answer = "reset"
            req.connection.close()
            return
        body = req.rfile.read(length) if length else b""
        if fault is not None and isinstance(fault.action, int):
            record.answer = fault.action
            req.send_response(fault.action)
            for key, value in fault.headers.items():
                req.send_header(key, value)
            req.send_header("Content-Length", "0")
            req.end_headers()
            return
        upstream = http.client.HTTPConnection(self.target, timeout=60)
        headers = {k: v for k, v in req.headers.items() if k.lower() not in _HOP}
        headers["Content-Length"] = str(len(body))
        if fault is not None and fault.action == "no-range":
            headers = {k: v for k, v in headers.items() if k.lower() != "range"}
        upstream.request(method, path, body=body, headers=headers)
        answer = upstream.getresponse()
        data = answer.read()
        out = {k: v for k, v in answer.getheaders() if k.lower() not in _HOP}
        out["Content-Length"] = answer.getheader("Content-Length") or str(len(data))
        if fault is not None and callable(fault.action):
            fault.action(out)
        record.answer = answer.status
        req.send_response(answer.status)
        for key, value in out.items():
            req.send_header(key, value)
        req.end_headers()
        if fault is not None and fault.action == "cut":
            req.wfile.write(data[: len(data) // 2])
            req.wfile.flush()
            time.sleep(0.3)  # a reset drops what the client has not read yet: let it read
            req.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            req.close_connection = True
            record.answer = "cut"
            req.connection.close()
        elif method != "HEAD":
            req.wfile.write(data)
        upstream.close()


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    server = FaultProxy(registry.host)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def image(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Image:
    """A small image (the app closure) read back from an OCI layout, to push."""
    closure = store.closure_file(tmp_path / "app.json", [APP])
    layout = tmp_path / "layout"
    argv = ["build", "--closure", closure, "--store-root", store.root, "--no-cache",
            "--entrypoint", "/bin/app", "-o", f"oci:{layout}:app"]  # fmt: skip
    status, _, err = run(argv, capsys)
    assert status == 0, err
    return read_image(f"oci:{layout}:app")


def _options(**changes: object) -> RegistryOptions:
    values = {"retries": 3, "backoff": 0.01, "jobs": 2, **changes}
    return RegistryOptions(**values)  # type: ignore[arg-type]


def _push(image: Image, host: str, tag: str = "1", **changes: object) -> str:
    ref = parse_reference(f"docker://{host}/app:{tag}", for_push=True)
    return str(push_image(image, ref, options=_options(**changes)))


def test_500_and_429_are_retried(image: Image, proxy: FaultProxy, registry: Registry) -> None:
    proxy.faults = [
        Fault("POST", "/blobs/uploads/", 500, times=2),
        Fault("PUT", "/manifests/1", 429, headers={"Retry-After": "1"}),
    ]
    digest = _push(image, proxy.host)
    assert digest == str(image.manifest_digest)
    assert verify_image(f"docker://{registry.host}/app:1") == []
    answered = [s for s in proxy.seen if s.answer in (500, 429)]
    assert len(answered) == 3
    # The manifest was sent again only after the second Retry-After asked for.
    puts = [s for s in proxy.seen if s.method == "PUT" and "/manifests/1" in s.path]
    assert [p.answer for p in puts] == [429, 201]
    assert puts[1].at - puts[0].at >= 0.9


def test_upload_broken_mid_way_is_started_again(
    image: Image, proxy: FaultProxy, registry: Registry
) -> None:
    layer = image.layers[0]
    proxy.faults = [Fault("PUT", layer.digest.hex, "reset")]
    _push(image, proxy.host)
    assert verify_image(f"docker://{registry.host}/app:1") == []
    assert "reset" in [s.answer for s in proxy.seen]
    # Two upload sessions for that blob reached the registry: the broken one and the new one.
    puts = [r for r in registry.requests() if r.method == "PUT" and str(layer.digest.hex) in r.path]
    assert [r.status for r in puts] == [201]
    assert len([r for r in registry.requests() if r.method == "POST"]) == len(image.layers) + 2


def test_persistent_failure_is_one_line_naming_manifest_and_registry(
    image: Image, proxy: FaultProxy
) -> None:
    proxy.faults = [Fault("PUT", "/manifests/1", 503, times=100)]
    with pytest.raises(RegistryError) as caught:
        _push(image, proxy.host)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"manifest {image.manifest_digest} for {proxy.host}/app:1: ")
    assert f"{proxy.host} answered 503 Service Unavailable (after 4 tries)" in message


def test_broken_upload_gives_up_naming_the_blob(image: Image, proxy: FaultProxy) -> None:
    layer = image.layers[0]
    proxy.faults = [Fault("PUT", layer.digest.hex, "reset", times=100)]
    with pytest.raises(RegistryError) as caught:
        _push(image, proxy.host, retries=1)
    message = str(caught.value)
    assert "\n" not in message
    assert f"upload of blob {layer.digest} ({layer.size} bytes) to {proxy.host}/app" in message
    assert "(after 2 tries)" in message


def test_unauthorized_is_an_auth_error(image: Image, proxy: FaultProxy) -> None:
    proxy.faults = [Fault("HEAD", "/blobs/", 401, times=100)]
    with pytest.raises(
        RegistryAuthError, match=r"401 Unauthorized without a Basic or Bearer challenge"
    ):
        _push(image, proxy.host)


def test_registry_misreporting_a_digest_is_refused(image: Image, proxy: FaultProxy) -> None:
    def lie(headers: dict[str, str]) -> None:
        headers["Docker-Content-Digest"] = "sha256:" + "0" * 64

    proxy.faults = [Fault("PUT", "/manifests/1", lie)]
    with pytest.raises(RegistryError, match="stored it as sha256:0000"):
        _push(image, proxy.host)


def test_chunked_upload_honours_the_minimum_chunk(
    image: Image, proxy: FaultProxy, registry: Registry
) -> None:
    def minimum(headers: dict[str, str]) -> None:
        headers["OCI-Chunk-Min-Length"] = "256"

    proxy.faults = [Fault("POST", "/blobs/uploads/", minimum, times=100)]
    _push(image, proxy.host, monolithic_limit=0, chunk_size=100)
    assert verify_image(f"docker://{registry.host}/app:1") == []
    patches = [s for s in proxy.seen if s.method == "PATCH"]
    big = [la for la in image.layers if la.size > 256]
    assert big  # some layer needed more than one chunk
    assert len(patches) > len(image.layers) + 1
    sessions: dict[str, list[int]] = {}
    for patch in patches:
        sessions.setdefault(patch.path.partition("?")[0], []).append(patch.length)
    # every chunk is the minimum asked for, but the last of a blob, which may be shorter
    assert all(set(lengths[:-1]) <= {256} and lengths[-1] <= 256 for lengths in sessions.values())
    assert any(len(lengths) > 1 for lengths in sessions.values())
    assert [r for r in registry.requests() if r.method == "PATCH" and r.status != 202] == []


def test_index_gives_this_hosts_platform(image: Image, registry: Registry) -> None:
    digest = _push(image, registry.host)
    manifest = image.manifest_bytes
    arch, _ = host_architecture()
    other = "arm64" if arch != "arm64" else "amd64"
    entry = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
             "size": len(manifest)}  # fmt: skip
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {**entry, "platform": {"architecture": other, "os": "linux"}},
            {**entry, "platform": {"architecture": arch, "os": "linux"}},
        ],
    }
    body = json.dumps(index).encode()
    answer = httpx.put(
        f"http://{registry.host}/v2/app/manifests/multi",
        content=body,
        headers={"Content-Type": "application/vnd.oci.image.index.v1+json"},
    )
    assert answer.status_code == 201, answer.text
    info = inspect_image(f"docker://{registry.host}/app:multi")
    assert info["manifest_digest"] == digest
    assert verify_image(f"docker://{registry.host}/app:multi", platform=host_platform()) == []
    # verified whole, the index is caught listing the host's image for another platform too
    assert verify_image(f"docker://{registry.host}/app:multi") == [
        f"linux/{other}: config: the image is for linux/{arch}, the index lists it for"
        f" linux/{other}"
    ]


def test_oversized_manifest_is_refused(image: Image, registry: Registry, proxy: FaultProxy) -> None:
    _push(image, registry.host)

    def huge(headers: dict[str, str]) -> None:
        headers["Content-Length"] = str(5 << 20)

    proxy.faults = [Fault("GET", "/manifests/", huge)]
    with pytest.raises(RegistryError, match="more than the 4194304 bytes accepted"):
        read_image(f"docker://{proxy.host}/app:1")


def _blob_gets(registry: Registry, digest: object, since: int) -> list[int]:
    """The statuses of the registry's answers to GETs of blob ``digest``."""
    return [
        r.status
        for r in registry.requests(since)
        if r.method == "GET" and r.path.endswith(f"/blobs/{digest}")
    ]


def test_a_blob_read_broken_mid_way_resumes_with_a_range(
    image: Image, proxy: FaultProxy, registry: Registry, tmp_path: Path
) -> None:
    from closurepack.copying import CopyOptions, copy_image

    _push(image, registry.host)
    layer = max(image.layers, key=lambda la: la.size)
    proxy.faults = [Fault("GET", f"/blobs/{layer.digest}", "cut")]
    mark = registry.mark()
    copy = f"oci:{tmp_path / 'copy'}"
    copy_image(f"docker://{proxy.host}/app:1", copy, options=CopyOptions(registry=_options()))
    assert [s.answer for s in proxy.seen if str(layer.digest) in s.path] == ["cut", 206]
    assert _blob_gets(registry, layer.digest, mark) == [200, 206]  # the rest, not all again
    assert verify_image(copy) == []


def test_without_range_support_a_broken_read_starts_again(
    image: Image, proxy: FaultProxy, registry: Registry
) -> None:
    _push(image, registry.host)
    layer = max(image.layers, key=lambda la: la.size)
    proxy.faults = [
        Fault("GET", f"/blobs/{layer.digest}", "cut"),
        Fault("GET", f"/blobs/{layer.digest}", "no-range"),
    ]
    mark = registry.mark()
    assert verify_image(f"docker://{proxy.host}/app:1", registry=_options()) == []
    assert _blob_gets(registry, layer.digest, mark) == [200, 200]  # the whole blob again


def test_a_blob_read_that_keeps_breaking_is_one_line(
    image: Image, proxy: FaultProxy, registry: Registry
) -> None:
    _push(image, registry.host)
    layer = max(image.layers, key=lambda la: la.size)
    proxy.faults = [Fault("GET", f"/blobs/{layer.digest}", "cut", times=100)]
    pulled = read_image(f"docker://{proxy.host}/app:1", registry=_options(retries=2))
    (broken,) = [la for la in pulled.layers if la.digest == layer.digest]
    with pytest.raises(RegistryError) as caught, broken.open() as blob:
        blob.read()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"blob {layer.digest} of {proxy.host}/app:1: reading failed after ")
    assert message.endswith(" (after 3 tries)")
    assert len([s for s in proxy.seen if str(layer.digest) in s.path]) == 3


def test_an_answer_for_another_range_is_not_taken(
    image: Image, proxy: FaultProxy, registry: Registry
) -> None:
    _push(image, registry.host)
    layer = max(image.layers, key=lambda la: la.size)

    def elsewhere(headers: dict[str, str]) -> None:
        headers["Content-Range"] = f"bytes 0-{layer.size - 1}/{layer.size}"

    proxy.faults = [
        Fault("GET", f"/blobs/{layer.digest}", "cut"),
        Fault("GET", f"/blobs/{layer.digest}", elsewhere),
    ]
    mark = registry.mark()
    assert verify_image(f"docker://{proxy.host}/app:1", registry=_options()) == []
    # the 206 claims to start at 0: the blob is read again from its start instead
    assert _blob_gets(registry, layer.digest, mark) == [200, 206, 200]
