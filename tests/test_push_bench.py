"""The pure helpers of bench/push_bench.py: counting request bytes on the wire (the parser and the
TCP proxy), reading docker-registry's access log, picking rounds and judging the goals. The
benchmark itself is never run here."""

from __future__ import annotations

import hashlib
import random
import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import push_bench as pb

from registry_fixtures import Registry


def _request(method: str, path: str, body: bytes = b"", *, chunked: bool = False) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:5000\r\n"
    if chunked:
        framed = b""
        for i in range(0, len(body), 7):
            part = body[i : i + 7]
            framed += f"{len(part):x};ext=1\r\n".encode() + part + b"\r\n"
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + framed + b"0\r\n\r\n"
    if body or method in ("PUT", "PATCH"):
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


def _stream() -> tuple[bytes, list[tuple[str, str, int]]]:
    body = bytes(range(256)) * 40 + b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"  # looks like a head inside
    calls = [
        ("HEAD", "/v2/app/blobs/sha256:aa", b"", False),
        ("POST", "/v2/app/blobs/uploads/", b"", False),
        ("PATCH", "/v2/app/blobs/uploads/u1", body, False),
        ("PUT", "/v2/app/blobs/uploads/u1?digest=x", b"", False),
        ("PUT", "/v2/app/manifests/2", b"{}" * 33, True),
        ("GET", "/v2/", b"", False),
    ]
    data = b"".join(_request(m, p, b, chunked=c) for m, p, b, c in calls)
    return data, [(m, p, len(b)) for m, p, b, _ in calls]


@pytest.mark.parametrize("split", ["whole", "bytes", "random"])
def test_request_counter_splits_requests_and_counts_bodies(split: str) -> None:
    data, expected = _stream()
    counter = pb.RequestCounter()
    if split == "whole":
        counter.feed(data)
    elif split == "bytes":
        for i in range(len(data)):
            counter.feed(data[i : i + 1])
    else:
        rng, i = random.Random(7), 0
        while i < len(data):
            n = rng.randint(1, 300)
            counter.feed(data[i : i + n])
            i += n
    got = [(r.method, r.path, r.body_bytes) for r in counter.requests]
    assert got == expected
    assert counter.other_bytes == 0
    assert counter.total_bytes == len(data)
    # the chunk framing of the manifest counts as header bytes, not body
    manifest = counter.requests[4]
    assert (
        manifest.header_bytes
        == len(_request("PUT", "/v2/app/manifests/2", b"{}" * 33, chunked=True)) - 66
    )


def test_request_counter_counts_non_http_bytes_apart() -> None:
    counter = pb.RequestCounter()
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(200)
    counter.feed(hello[:5])
    counter.feed(hello[5:])
    counter.feed(b"GET / HTTP/1.1\r\n\r\n")  # after garbage the connection stays opaque
    assert counter.requests == []
    assert counter.other_bytes == len(hello) + 18
    assert counter.total_bytes == counter.other_bytes


def test_request_counter_gives_up_on_a_bad_request_line() -> None:
    counter = pb.RequestCounter()
    counter.feed(b"HELLO there\r\n\r\nmore")
    assert counter.requests == []
    assert counter.other_bytes == len(b"HELLO there\r\n\r\nmore")


@pytest.mark.integration
def test_proxy_counts_an_upload_that_the_registry_logs(registry: Registry) -> None:
    """Through the proxy to a real docker-registry: the body bytes counted are the blob's size,
    and the registry's access log names the uploaded digest (but not the request's size)."""
    port = int(registry.host.rsplit(":", 1)[1])
    blob = random.Random(3).randbytes(300_000)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    with pb.CountingProxy(("127.0.0.1", port)) as proxy, httpx.Client() as client:
        base = f"http://127.0.0.1:{proxy.port}/v2/bench"
        start = client.post(f"{base}/blobs/uploads/", headers={"Content-Length": "0"})
        assert start.status_code == 202
        location = str(start.url.join(start.headers["Location"]))
        mid = len(blob) // 3
        patch = client.patch(
            location,
            content=blob[:mid],
            headers={"Content-Range": f"0-{mid - 1}", "Content-Type": "application/octet-stream"},
        )
        assert patch.status_code == 202
        location = str(patch.url.join(patch.headers["Location"]))
        done = client.put(
            str(httpx.URL(location).copy_merge_params({"digest": digest})), content=blob[mid:]
        )
        assert done.status_code == 201
        requests = proxy.requests()
    assert [r.method for r in requests] == ["POST", "PATCH", "PUT"]
    assert sum(r.body_bytes for r in requests if r.method in ("PUT", "PATCH")) == len(blob)
    assert proxy.sent_bytes() > len(blob)  # plus the request heads
    logged = pb.parse_access_log(registry.log.read_text())
    assert pb.uploaded_digests(logged) == [digest]
    assert all(r.response_bytes < 1000 for r in logged)  # the log's size is the answer's


def test_access_log_parsing_and_uploaded_digests() -> None:
    d1, d2 = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    text = "\n".join(
        [
            "time=... level=info msg=listening",
            f'127.0.0.1 - - [02/Dec/2026:00:20:03 +0000] "HEAD /v2/app/blobs/{d1} HTTP/1.1"'
            ' 404 157 "" "closurepack/0.1"',
            '127.0.0.1 - - [x] "POST /v2/app/blobs/uploads/ HTTP/1.1" 202 0 "" "ua"',
            f'127.0.0.1 - - [x] "PUT /v2/app/blobs/uploads/u1?_state=S%3D&digest={d1} HTTP/1.1"'
            ' 201 0 "" "ua"',
            f'127.0.0.1 - - [x] "PUT /v2/app/blobs/uploads/u2?digest=sha256%3A{"b" * 64}'
            ' HTTP/1.1" 201 - "" "ua"',
            f'127.0.0.1 - - [x] "PUT /v2/app/blobs/uploads/u3?digest={d2} HTTP/1.1" 400 99 "" "u"',
            '127.0.0.1 - - [x] "PUT /v2/app/manifests/2 HTTP/1.1" 201 0 "" "ua"',
        ]
    )
    logged = pb.parse_access_log(text)
    assert [(r.method, r.status, r.response_bytes) for r in logged] == [
        ("HEAD", 404, 157),
        ("POST", 202, 0),
        ("PUT", 201, 0),
        ("PUT", 201, 0),
        ("PUT", 400, 99),
        ("PUT", 201, 0),
    ]
    # the failed upload and the manifest are not blob uploads
    assert pb.uploaded_digests(logged) == [d1, d2]


def _row(name: str, wall: float, ok: bool = True, **extra: int) -> pb.Row:
    return pb.Row(name, ok=ok, wall_s=wall, cpu_s=wall / 2, extra=dict(extra))


def test_fastest_and_sum_row_pick_the_fastest_good_round() -> None:
    runs = [_row("x", 3.0), _row("x", 1.0, ok=False), _row("x", 2.0), _row("x", 2.5)]
    best = pb.fastest(runs)
    assert best.wall_s == 2.0
    assert best.walls == [3.0, 2.0, 2.5]
    failed = [_row("x", 1.0, ok=False)]
    assert pb.fastest(failed) is failed[0]
    total = pb.sum_row(
        [
            (_row(pb.OCI, 3.0), _row(pb.SKOPEO, 2.0)),
            (_row(pb.OCI, 2.0), _row(pb.SKOPEO, 2.5)),
            (_row(pb.OCI, 1.0), _row(pb.SKOPEO, 0.1, ok=False)),
        ]
    )
    assert total.ok
    assert total.wall_s == 4.5
    assert total.cpu_s == 2.25
    assert total.walls == [5.0, 4.5]
    assert not pb.sum_row([(_row(pb.OCI, 1.0, ok=False), _row(pb.SKOPEO, 1.0))]).ok


def _rows(cold: float, two: float, repush: float, sent: int, other: int = 0) -> dict[str, pb.Row]:
    return {
        pb.COLD: _row(pb.COLD, cold),
        pb.SUM: _row(pb.SUM, two),
        pb.REPUSH: _row(pb.REPUSH, repush),
        pb.UPDATE: _row(
            pb.UPDATE,
            1.0,
            body_bytes=sent,
            expected_bytes=1000,
            unexpected_uploads=other,
            new_layers=1,
        ),
    }


def test_goals_pass_at_their_bounds() -> None:
    goals = pb.check_goals(_rows(cold=5.0, two=5.0, repush=0.099, sent=1000))
    assert [g.verdict for g in goals] == ["PASS", "PASS", "PASS"]
    assert "1.00x" in goals[0].detail
    assert "2.0%" in goals[1].detail


@pytest.mark.parametrize(
    ("rows", "failing"),
    [
        (_rows(cold=5.1, two=5.0, repush=0.01, sent=1000), 0),
        (_rows(cold=5.0, two=6.0, repush=0.1, sent=1000), 1),
        (_rows(cold=5.0, two=6.0, repush=0.01, sent=1001), 2),
        (_rows(cold=5.0, two=6.0, repush=0.01, sent=1000, other=1), 2),
    ],
)
def test_each_goal_can_fail(rows: dict[str, pb.Row], failing: int) -> None:
    verdicts = [g.verdict for g in pb.check_goals(rows)]
    assert verdicts == ["FAIL" if i == failing else "PASS" for i in range(3)]


def test_goals_skip_without_their_rows() -> None:
    rows = _rows(cold=5.0, two=6.0, repush=0.01, sent=1000)
    rows[pb.COLD] = pb.Row(pb.COLD, note="failed")
    del rows[pb.UPDATE]
    assert [g.verdict for g in pb.check_goals(rows)] == ["SKIP", "SKIP", "SKIP"]


def test_render_table_shows_ratios_to_cold_and_skipped_rows() -> None:
    rows = _rows(cold=4.0, two=5.0, repush=0.2, sent=1000)
    rows[pb.SKOPEO] = pb.Row(pb.SKOPEO, note="the oci: build failed")
    rows[pb.REPUSH].load_before = 1.25
    table = pb.render_table(rows).splitlines()
    assert len(table) == 2 + len(rows)
    by_name = {line[:42].strip(): line for line in table[2:]}
    assert by_name[pb.SKOPEO].endswith("skipped: the oci: build failed")
    assert by_name[pb.SUM].split()[-1] == "1.250"  # 5.0 / 4.0
    fields = by_name[pb.REPUSH][42:].split()
    assert fields == ["0.20", "0.10", "0.00", "1.25", "0.050"]
