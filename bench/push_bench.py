"""Benchmark pushing an image to a registry: closurepack build -o docker:// against skopeo.

Usage::

    python bench/make_debian_store.py /tmp/cp-bench/store      # once: ~830 MiB, 144 items
    python bench/push_bench.py --store /tmp/cp-bench/store [--repeat 3] [--jobs N]

Every round starts Debian's ``/usr/bin/docker-registry`` on 127.0.0.1 (a free port, filesystem
storage in a fresh temp directory, access log on) and stops it at the end of the round. Rows:

- ``closurepack build+push (cold)``: ``closurepack build -o docker://REG/app:1`` with an empty
  cache: the layers are pushed while the others are still being built;
- ``closurepack build -o oci: (cold)`` then ``skopeo copy oci:DIR docker://REG/skopeo:1`` (a
  fresh repository): the two-step way, and their sum;
- ``closurepack re-push (warm)``: the first command again, straight after it: unchanged image,
  warm layer cache, the program's files in the page cache as the push left them;
- ``closurepack update push``: one item nothing refers to gets new content and a new store path
  (as ``build_bench.py`` makes it), pushed as ``app:2`` with a copy of the warm cache, through a
  small counting TCP proxy in front of the registry: the registry's access log records response
  sizes only, so the proxy parses the HTTP requests and counts their header and body bytes.

Wall time is taken around each command, CPU time is ``resource.getrusage(RUSAGE_CHILDREN)``
(the command's whole process tree); the registry's own CPU time is read from ``/proc``. The page
cache is dropped before each cold run when this machine allows it, else the store is read once
before each cold run so both start equally warm. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_bench import (
    drop_page_cache,
    load_closure,
    make_changed_store,
    store_closure_file,
    warm_up,
)

__all__ = [
    "CountedRequest",
    "CountingProxy",
    "Goal",
    "LoggedRequest",
    "RequestCounter",
    "Row",
    "check_goals",
    "fastest",
    "main",
    "parse_access_log",
    "render_table",
    "uploaded_digests",
]

DEFAULT_STORE = Path(os.environ.get("CLOSUREPACK_BENCH_STORE", "/tmp/cp-bench/store"))
REGISTRY_BINARY = "/usr/bin/docker-registry"
MIB = 2**20
_TICK = os.sysconf("SC_CLK_TCK")
_REQUEST_LINE = re.compile(rb"^([A-Z]+) (\S+) HTTP/1\.[01]$")
# Apache combined format: ... "METHOD PATH HTTP/1.1" STATUS SIZE ...  (SIZE = response bytes)
_ACCESS = re.compile(
    r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>[0-9]{3}) (?P<size>[0-9]+|-)'
)
_UPLOAD_DIGEST = re.compile(
    r"/blobs/uploads/[^?]*\?(?:[^ ]*&)?digest=(sha256(?::|%3A)[0-9a-f]{64})"
)
_MAX_HEAD = 1 << 16
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = f"{OCI_MANIFEST}, application/vnd.docker.distribution.manifest.v2+json"

COLD = "closurepack build+push (cold)"
OCI = "closurepack build -o oci: (cold)"
SKOPEO = "skopeo copy oci: -> docker://"
SUM = "build -o oci: + skopeo copy (sum)"
REPUSH = "closurepack re-push (warm, unchanged)"
UPDATE = "closurepack update push (1 item changed)"
WARM_OCI = "  for scale: warm build -o oci: (no push)"
STARTUP = "  for scale: closurepack --version"
FLOOR = "  for scale: import httpx, httpcore, click"
ROW_ORDER = (COLD, OCI, SKOPEO, SUM, REPUSH, WARM_OCI, STARTUP, FLOOR, UPDATE)
#: What any re-push by this program costs before its own code runs: the interpreter loading the
#: HTTP client and the command-line library, as ``closurepack`` loads them (httpx's own command
#: line and the async back-ends left out, as ``closurepack.cli.main`` leaves them out).
_FLOOR = (
    "import sys\n"
    "for name in ('httpx._main', 'anyio', 'trio'):\n"
    "    sys.modules.setdefault(name, None)\n"
    "import click, httpx, httpcore\n"
)


# ---------------------------------------------------------------------------------------------
# counting what a client sends


@dataclass
class CountedRequest:
    """One HTTP request seen on the wire: its request line, header and body byte counts."""

    method: str
    path: str
    header_bytes: int = 0
    body_bytes: int = 0


class RequestCounter:
    """Parses one connection's client-to-server byte stream into HTTP/1.1 requests.

    Bodies are delimited by ``Content-Length`` or ``Transfer-Encoding: chunked`` (chunk data
    counts as body, chunk framing as header bytes). Bytes that are not HTTP (a TLS hello that a
    client tries first) make the rest of the connection opaque: counted in ``other_bytes``.
    """

    def __init__(self) -> None:
        self.requests: list[CountedRequest] = []
        self.other_bytes = 0
        self._buf = b""
        self._state = "head"  # head | body | chunk-size | chunk-data | chunk-end | trailer | opaque
        self._left = 0

    @property
    def total_bytes(self) -> int:
        return self.other_bytes + sum(r.header_bytes + r.body_bytes for r in self.requests)

    def feed(self, data: bytes) -> None:
        """Account for the next bytes the client sent."""
        if self._state == "opaque":
            self.other_bytes += len(data)
            return
        self._buf += data
        while self._buf and self._state != "opaque":
            if not self._step():
                break

    def _step(self) -> bool:
        """Consume what the current state can from the buffer; False when it needs more."""
        if self._state == "head":
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > _MAX_HEAD or not _could_be_request(self._buf):
                    self._go_opaque()
                return False
            return self._head(end + 4)
        if self._state in ("body", "chunk-data"):
            n = min(self._left, len(self._buf))
            self.requests[-1].body_bytes += n
            self._buf, self._left = self._buf[n:], self._left - n
            if self._left == 0:
                self._state = "head" if self._state == "body" else "chunk-end"
            return True
        if self._state == "chunk-end":
            if len(self._buf) < 2:
                return False
            self._frame(2)
            self._state = "chunk-size"
            return True
        line_end = self._buf.find(b"\r\n")
        if line_end < 0:
            return False
        line = self._buf[:line_end]
        self._frame(line_end + 2)
        if self._state == "trailer":
            if not line:
                self._state = "head"
            return True
        # chunk-size line: hex size, optional ";extension"
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            self._go_opaque()
            return False
        if size == 0:
            self._state = "trailer"
        else:
            self._state, self._left = "chunk-data", size
        return True

    def _head(self, length: int) -> bool:
        head, self._buf = self._buf[:length], self._buf[length:]
        lines = head[:-4].split(b"\r\n")
        match = _REQUEST_LINE.match(lines[0])
        if match is None:
            self.other_bytes += len(head)
            self._go_opaque()
            return False
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        self.requests.append(
            CountedRequest(match[1].decode(), match[2].decode(errors="replace"), len(head))
        )
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            self._state = "chunk-size"
        else:
            length_text = headers.get(b"content-length", b"0")
            self._left = int(length_text) if length_text.isdigit() else 0
            self._state = "body" if self._left else "head"
        return True

    def _frame(self, n: int) -> None:
        self.requests[-1].header_bytes += n
        self._buf = self._buf[n:]

    def _go_opaque(self) -> None:
        self.other_bytes += len(self._buf)
        self._buf = b""
        self._state = "opaque"


def _could_be_request(buf: bytes) -> bool:
    """Whether an incomplete head can still become an HTTP request (starts like ``GET /``)."""
    first = buf.split(b"\r\n", 1)[0]
    method = first.split(b" ", 1)[0]
    return (method.isalpha() and method.isupper()) or (not first.strip() and len(buf) < 4)


class CountingProxy:
    """A TCP proxy on 127.0.0.1 that forwards to ``upstream`` and counts what clients send.

    Use as a context manager; :attr:`port` is where to connect. :meth:`requests` and
    :meth:`sent_bytes` cover every connection so far (call :meth:`reset` to start over).
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port: int = self._server.getsockname()[1]
        self._counters: list[RequestCounter] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.received_bytes = 0

    def __enter__(self) -> CountingProxy:
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        self._server.close()

    def reset(self) -> None:
        with self._lock:
            self._counters = []
            self.received_bytes = 0

    def requests(self) -> list[CountedRequest]:
        with self._lock:
            return [r for c in self._counters for r in c.requests]

    def sent_bytes(self) -> int:
        with self._lock:
            return sum(c.total_bytes for c in self._counters)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            counter = RequestCounter()
            with self._lock:
                self._counters.append(counter)
            left = [2]  # directions still open; the last one to finish closes both sockets
            for src, dst, count in ((client, upstream, counter.feed), (upstream, client, None)):
                t = threading.Thread(target=self._pipe, args=(src, dst, count, left), daemon=True)
                t.start()

    def _pipe(
        self,
        src: socket.socket,
        dst: socket.socket,
        count: Callable[[bytes], None] | None,
        left: list[int],
    ) -> None:
        try:
            while data := src.recv(1 << 16):
                if count is not None:
                    with self._lock:
                        count(data)
                else:
                    self.received_bytes += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
                with contextlib.suppress(OSError):
                    sock.shutdown(how)
            with self._lock:
                left[0] -= 1
                if left[0] == 0:
                    src.close()
                    dst.close()


# ---------------------------------------------------------------------------------------------
# the registry's access log


@dataclass(frozen=True)
class LoggedRequest:
    """One access-log line: request line, status, and the response size the registry logged."""

    method: str
    path: str
    status: int
    response_bytes: int


def parse_access_log(text: str) -> list[LoggedRequest]:
    """The requests in a docker-registry log (Apache combined format lines; others skipped)."""
    found = []
    for line in text.splitlines():
        m = _ACCESS.search(line)
        if m:
            size = 0 if m["size"] == "-" else int(m["size"])
            found.append(LoggedRequest(m["method"], m["path"], int(m["status"]), size))
    return found


def uploaded_digests(requests: Sequence[LoggedRequest]) -> list[str]:
    """Digests of the blob uploads the registry completed (``PUT .../uploads/...?digest=``)."""
    digests = []
    for r in requests:
        m = _UPLOAD_DIGEST.search(r.path)
        if r.method == "PUT" and 200 <= r.status < 300 and m:
            digests.append(m[1].replace("%3A", ":"))
    return digests


# ---------------------------------------------------------------------------------------------
# rows and goals


@dataclass
class Row:
    """One measured command (``ok`` False: it failed or did not run; ``note`` says why)."""

    name: str
    ok: bool = False
    wall_s: float = 0.0
    cpu_s: float = 0.0
    registry_cpu_s: float = 0.0
    load_before: float = 0.0
    note: str = ""
    walls: list[float] = field(default_factory=list)
    extra: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Goal:
    name: str
    verdict: str  # PASS | FAIL | SKIP
    detail: str


def fastest(runs: Sequence[Row]) -> Row:
    """The fastest good run (all good runs' walls kept in ``walls``), else the last run."""
    good = [r for r in runs if r.ok]
    if not good:
        return runs[-1]
    best = min(good, key=lambda r: r.wall_s)
    best.walls = [r.wall_s for r in good]
    return best


def sum_row(pairs: Sequence[tuple[Row, Row]]) -> Row:
    """The two-step row of each round added up; the fastest round's sum."""
    sums = []
    for a, b in pairs:
        if a.ok and b.ok:
            sums.append(
                Row(
                    SUM,
                    ok=True,
                    wall_s=a.wall_s + b.wall_s,
                    cpu_s=a.cpu_s + b.cpu_s,
                    registry_cpu_s=a.registry_cpu_s + b.registry_cpu_s,
                    load_before=a.load_before,
                )
            )
    return fastest(sums) if sums else Row(SUM, note="a step failed")


def check_goals(rows: dict[str, Row]) -> list[Goal]:
    """The goals of bench/README.md judged on the rows (SKIP when a needed row is missing)."""
    goals = []
    cold, two, repush, update = (rows.get(n) for n in (COLD, SUM, REPUSH, UPDATE))
    name = "build-and-push no slower than build -o oci: + skopeo copy"
    if cold and cold.ok and two and two.ok:
        goals.append(
            Goal(
                name,
                "PASS" if cold.wall_s <= two.wall_s else "FAIL",
                f"{cold.wall_s:.2f} s vs {two.wall_s:.2f} s ({cold.wall_s / two.wall_s:.2f}x)",
            )
        )
    else:
        goals.append(Goal(name, "SKIP", "a needed row did not run"))
    name = "re-push of the unchanged image < 2% of the cold build-and-push"
    if repush and repush.ok and cold and cold.ok:
        frac = repush.wall_s / cold.wall_s
        goals.append(
            Goal(
                name,
                "PASS" if frac < 0.02 else "FAIL",
                f"{repush.wall_s:.2f} s = {100 * frac:.1f}% of {cold.wall_s:.2f} s",
            )
        )
    else:
        goals.append(Goal(name, "SKIP", "a needed row did not run"))
    name = "update sends only the changed layer(s), the config and the manifest"
    if update and update.ok and "expected_bytes" in update.extra:
        sent, expected = update.extra["body_bytes"], update.extra["expected_bytes"]
        uploads_ok = update.extra.get("unexpected_uploads", 0) == 0
        goals.append(
            Goal(
                name,
                "PASS" if sent == expected and uploads_ok else "FAIL",
                f"PUT/PATCH bodies {sent} bytes vs layer(s) + config + manifest {expected} bytes"
                f" ({update.extra.get('new_layers', 0)} new layer(s),"
                f" {update.extra.get('unexpected_uploads', 0)} other blob upload(s));"
                f" all requests on the wire {update.extra.get('wire_bytes', 0)} bytes"
                f" in {update.extra.get('requests', 0)} requests",
            )
        )
    else:
        goals.append(Goal(name, "SKIP", "the update row did not run"))
    return goals


def render_table(rows: dict[str, Row]) -> str:
    """The human table: wall, CPU (the command's and the registry's), load before, notes."""
    head = (
        f"{'row':<42} {'wall s':>8} {'CPU s':>7} {'reg CPU s':>9} {'load':>5} {'of cold':>8}  note"
    )
    lines = [head, "-" * len(head)]
    cold = rows.get(COLD)
    for name, r in rows.items():
        if not r.ok:
            lines.append(f"{name:<42} skipped: {r.note}")
            continue
        of_cold = f"{r.wall_s / cold.wall_s:.3f}" if cold and cold.ok else "-"
        lines.append(
            f"{name:<42} {r.wall_s:8.2f} {r.cpu_s:7.2f} {r.registry_cpu_s:9.2f}"
            f" {r.load_before:5.2f} {of_cold:>8}  {r.note}".rstrip()
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the registry and running commands


@dataclass
class Registry:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cpu_s(self) -> float:
        """User + system CPU seconds the registry process has used so far."""
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_bytes()
            fields = stat[stat.rindex(b")") + 2 :].split()
            return (int(fields[11]) + int(fields[12])) / _TICK
        except (OSError, ValueError, IndexError):
            return 0.0

    def logged(self) -> list[LoggedRequest]:
        time.sleep(0.3)  # the registry logs a request after answering it
        return parse_access_log(self.log.read_text(errors="replace"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_registry(directory: Path) -> Registry:
    port = _free_port()
    directory.mkdir(parents=True)
    config = directory / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: false\n"
        f"storage:\n  filesystem:\n    rootdirectory: {directory / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = directory / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [REGISTRY_BINARY, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    registry = Registry(proc, port, log)
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://{registry.host}/v2/", timeout=2):
                return registry
        except (urllib.error.URLError, OSError) as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_registry(registry)
                raise SystemExit(f"push_bench: docker-registry did not start: {exc}") from exc
            time.sleep(0.1)


def stop_registry(registry: Registry) -> None:
    if registry.proc.poll() is None:
        os.kill(registry.proc.pid, signal.SIGTERM)
        try:
            registry.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(registry.proc.pid, signal.SIGKILL)
            registry.proc.wait(timeout=10)


def run(name: str, argv: Sequence[str], *, work: Path, registry: Registry | None) -> Row:
    """Run ``argv``; wall time around it, CPU of its process tree, the registry's CPU."""
    row = Row(name, load_before=os.getloadavg()[0])
    err = work / f"stderr-{re.sub(r'[^A-Za-z0-9]+', '-', name).strip('-')}.txt"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    reg_before = registry.cpu_s() if registry else 0.0
    start = time.perf_counter()
    with err.open("wb") as out:
        proc = subprocess.run(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=out, check=False
        )
    row.wall_s = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    row.cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    row.registry_cpu_s = (registry.cpu_s() - reg_before) if registry else 0.0
    row.walls = [row.wall_s]
    if proc.returncode != 0:
        tail = err.read_text(errors="replace").strip().splitlines()[-2:]
        row.note = f"failed (exit {proc.returncode}): {' | '.join(tail)[:300]}"
        return row
    row.ok = True
    return row


def get_manifest(host: str, repository: str, tag: str) -> tuple[bytes, dict[str, object]]:
    """The manifest bytes of ``repository:tag`` straight from the registry, and its JSON."""
    request = urllib.request.Request(
        f"http://{host}/v2/{repository}/manifests/{tag}", headers={"Accept": ACCEPT}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body: bytes = response.read()
    return body, json.loads(body)


def _blobs(manifest: dict[str, object]) -> dict[str, int]:
    layers = manifest["layers"]
    config = manifest["config"]
    assert isinstance(layers, list)
    assert isinstance(config, dict)
    found = {str(d["digest"]): int(d["size"]) for d in layers}
    found[str(config["digest"])] = int(config["size"])
    return found


def _interpreter(exe: Sequence[str]) -> list[str]:
    """The Python that runs ``exe``: the interpreter of an installed script (its ``#!`` line),
    or the command itself when it is one (``python -m closurepack``)."""
    if Path(exe[0]).name.startswith("python"):
        return [exe[0]]
    try:
        with open(exe[0], "rb") as script:
            first = script.readline(4096)
    except OSError:
        return [sys.executable]
    if first.startswith(b"#!"):
        return first[2:].decode().split()
    return [sys.executable]


def _verify(exe: list[str], ref: str) -> str:
    proc = subprocess.run(
        [*exe, "verify", ref], capture_output=True, text=True, check=False, timeout=900
    )
    if proc.returncode == 0:
        return "verify OK"
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return f"verify FAILED (exit {proc.returncode}): {lines[-1] if lines else ''}"


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        return "?"


# ---------------------------------------------------------------------------------------------
# main


@dataclass(frozen=True)
class _Setup:
    exe: list[str]
    root: Path
    closure: Path
    root2: Path
    closure2: Path
    jobs: int
    work: Path
    prepare_cold: Callable[[], object]
    verify: bool


def _round(i: int, s: _Setup) -> dict[str, Row]:
    """One round: a fresh registry, every row once."""
    rows: dict[str, Row] = {}
    work = s.work / f"round-{i}"
    work.mkdir()
    registry = start_registry(work / "registry")
    try:
        with CountingProxy(("127.0.0.1", registry.port)) as proxy:

            def build(dest: str, closure: Path, root: Path, cache: Path) -> list[str]:
                return [
                    *s.exe,
                    "build",
                    "--closure",
                    str(closure),
                    "--store-root",
                    str(root),
                    "-o",
                    dest,
                    "--jobs",
                    str(s.jobs),
                    "--cache-dir",
                    str(cache),
                    "--quiet",
                ]

            cache = work / "cache-push"
            cache.mkdir()
            app1 = f"docker://{registry.host}/app:1"
            s.prepare_cold()
            rows[COLD] = run(
                COLD, build(app1, s.closure, s.root, cache), work=work, registry=registry
            )
            if rows[COLD].ok:
                # straight after the push it repeats, as a user re-running it does: the next
                # row's cold start drops the page cache, and a re-push after it would read the
                # program's own files (the HTTP stack's) from disk, not measure a warm re-push
                rows[REPUSH] = run(
                    REPUSH, build(app1, s.closure, s.root, cache), work=work, registry=registry
                )
            oci_cache, layout = work / "cache-oci", work / "oci"
            oci_cache.mkdir()
            s.prepare_cold()
            rows[OCI] = run(
                OCI,
                build(f"oci:{layout}", s.closure, s.root, oci_cache),
                work=work,
                registry=registry,
            )
            skopeo = [
                "skopeo",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                f"oci:{layout}",
                f"docker://{registry.host}/skopeo:1",
            ]
            rows[SKOPEO] = (
                run(SKOPEO, skopeo, work=work, registry=registry)
                if rows[OCI].ok
                else Row(SKOPEO, note="the oci: build failed")
            )
            if not rows[COLD].ok:
                rows[REPUSH] = Row(REPUSH, note="the cold push failed")
                rows[UPDATE] = Row(UPDATE, note="the cold push failed")
                return rows
            if rows[OCI].ok:
                rows[WARM_OCI] = run(
                    WARM_OCI,
                    build(f"oci:{work / 'oci-warm'}", s.closure, s.root, oci_cache),
                    work=work,
                    registry=None,
                )
            rows[STARTUP] = run(STARTUP, [*s.exe, "--version"], work=work, registry=None)
            rows[FLOOR] = run(FLOOR, [*_interpreter(s.exe), "-c", _FLOOR], work=work, registry=None)
            cache2 = work / "cache-update"
            shutil.copytree(cache, cache2, symlinks=True)
            mark = len(registry.logged())
            proxy.reset()
            app2 = f"docker://127.0.0.1:{proxy.port}/app:2"
            update = run(
                UPDATE, build(app2, s.closure2, s.root2, cache2), work=work, registry=registry
            )
            rows[UPDATE] = update
            if update.ok:
                _account_update(update, registry, proxy, mark)
            if s.verify:
                for name, ref in ((COLD, app1), (UPDATE, f"docker://{registry.host}/app:2")):
                    if rows[name].ok:
                        rows[name].note = "; ".join(
                            n for n in (rows[name].note, _verify(s.exe, ref)) if n
                        )
    finally:
        stop_registry(registry)
        shutil.rmtree(work, ignore_errors=True)
    return rows


def _account_update(row: Row, registry: Registry, proxy: CountingProxy, mark: int) -> None:
    """Fill the update row's byte counts: what went on the wire, and what should have."""
    logged = registry.logged()[mark:]  # before this function's own GETs below
    _, old = get_manifest(registry.host, "app", "1")
    new_body, new = get_manifest(registry.host, "app", "2")
    old_blobs, new_blobs = _blobs(old), _blobs(new)
    fresh = {d: n for d, n in new_blobs.items() if d not in old_blobs}
    config_digest = str(new["config"]["digest"])  # type: ignore[index]
    uploads = uploaded_digests(logged)
    requests = proxy.requests()
    body = sum(r.body_bytes for r in requests if r.method in ("PUT", "PATCH"))
    expected = sum(fresh.values()) + len(new_body)
    row.extra = {
        "body_bytes": body,
        "expected_bytes": expected,
        "new_layers": len([d for d in fresh if d != config_digest]),
        "new_layer_bytes": sum(n for d, n in fresh.items() if d != config_digest),
        "config_bytes": new_blobs[config_digest],
        "manifest_bytes": len(new_body),
        "unexpected_uploads": len([d for d in uploads if d not in fresh]),
        "wire_bytes": proxy.sent_bytes(),
        "requests": len(requests),
        "logged_requests": len(logged),
    }
    row.note = (
        f"sent {body} B in PUT/PATCH bodies; changed layer(s) {row.extra['new_layer_bytes']} B"
        f" + config {row.extra['config_bytes']} B + manifest {len(new_body)} B = {expected} B;"
        f" registry logged {len(logged)} requests, {len(uploads)} blob upload(s)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE, help="from make_debian_store")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the fastest is reported")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--closurepack", default=None, help="command to run (default: on PATH)")
    parser.add_argument("--change-item", default=None, help="substring of the item to change")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument(
        "--page-cache",
        choices=["auto", "drop", "warm"],
        default="auto",
        help="drop before each cold run (auto: if allowed), or warm it before each",
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the untimed verify")
    args = parser.parse_args(argv)

    root = args.store.resolve()
    closure_file = store_closure_file(root, "push_bench")
    if closure_file is None:
        return 2
    for tool in (REGISTRY_BINARY, "skopeo"):
        if shutil.which(tool) is None:
            print(f"push_bench: {tool} is not installed", file=sys.stderr)
            return 2
    exe = args.closurepack.split() if args.closurepack else [shutil.which("closurepack") or ""]
    if not exe[0]:
        print("push_bench: closurepack is not on PATH (give --closurepack)", file=sys.stderr)
        return 2
    closure = load_closure(closure_file)
    # closurepack runs as installed, its bytecode cached (as build_bench does): with
    # PYTHONDONTWRITEBYTECODE every command would compile its modules again, which costs a
    # re-push more than all its work
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    work = Path(tempfile.mkdtemp(prefix="cp-push-bench-", dir=args.work_dir))
    try:
        items_file = work / "items.txt"
        items_file.write_text("".join(str(o["path"]).lstrip("/") + "\n" for o in closure))
        root2, closure2, old, new = make_changed_store(
            root, closure, work / "store-changed", args.change_item
        )
        drop = args.page_cache != "warm" and drop_page_cache()
        if args.page_cache == "drop" and not drop:
            print("push_bench: cannot drop the page cache (need root)", file=sys.stderr)
            return 2

        def prepare_cold() -> None:
            if drop:
                drop_page_cache()
            else:
                warm_up(root, items_file)

        cache_note = (
            "page cache dropped before each cold run"
            if drop
            else "page cache warmed (store read once) before each cold run"
        )
        setup = _Setup(
            exe, root, closure_file, root2, closure2, args.jobs, work, prepare_cold, False
        )
        history: dict[str, list[Row]] = {}
        sums: list[tuple[Row, Row]] = []
        rounds = max(1, args.repeat)
        for i in range(rounds):
            setup = _Setup(**{**setup.__dict__, "verify": not args.no_verify and i == rounds - 1})
            rows = _round(i, setup)
            for name, r in rows.items():
                history.setdefault(name, []).append(r)
                status = f"{r.wall_s:.2f} s (load {r.load_before:.2f})" if r.ok else r.note
                print(f"  round {i + 1} {name}: {status}", file=sys.stderr)
            sums.append((rows[OCI], rows[SKOPEO]))
        best = {name: fastest(runs) for name, runs in history.items()}
        best[SUM] = sum_row(sums)
        # The verify notes come from the last round: keep them on the reported row.
        for name in (COLD, UPDATE):
            last = history.get(name, [Row(name)])[-1]
            if name in best and last is not best[name] and "verify" in last.note:
                verdict = last.note.rsplit("; ", 1)[-1]
                best[name].note = "; ".join(n for n in (best[name].note, verdict) if n)
        best = {n: best[n] for n in ROW_ORDER if n in best}
        env = {
            "commit": _commit(),
            "items": len(closure),
            "nar_mib": round(sum(int(str(o["narSize"])) for o in closure) / MIB, 1),
            "cpus": os.cpu_count(),
            "jobs": args.jobs,
            "repeat": rounds,
            "page_cache": cache_note,
            "changed": f"{old.rsplit('/', 1)[1]} -> {new.rsplit('/', 1)[1]}",
            "skopeo": subprocess.run(
                ["skopeo", "--version"], capture_output=True, text=True, check=False
            ).stdout.strip(),
            "load_after": f"{os.getloadavg()[0]:.2f}",
        }
        print("")
        print("; ".join(f"{k}: {v}" for k, v in env.items()))
        print(render_table(best))
        print("")
        for goal in check_goals(best):
            print(f"{goal.verdict:4}  {goal.name}: {goal.detail}")
        walls = {n: r.walls for n, r in best.items() if len(r.walls) > 1}
        if walls:
            print(
                "\nwall s of every round: "
                + "; ".join(f"{n}: {', '.join(f'{w:.2f}' for w in ws)}" for n, ws in walls.items())
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
