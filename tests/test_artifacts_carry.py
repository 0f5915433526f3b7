"""artifacts.carry: the blobs of artifacts read for ``copy``, checked against their descriptors
and within the limits on what an untrusted source can make ``copy`` read."""

from __future__ import annotations

import pytest

from closurepack.artifacts import (
    ARTIFACT_COUNT_LIMIT,
    Attachment,
    artifact_manifest,
    carry,
    parse_referrer,
)
from closurepack.digest import Digest
from closurepack.errors import ImageError

_SUBJECT = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": str(Digest.of_bytes(b"image")), "size": 5}  # fmt: skip


def _found(document: bytes) -> tuple[bytes, object]:
    attachment = Attachment(
        "application/spdx+json", document, "sbom.spdx.json", "1970-01-01T00:00:01Z"
    )
    body = artifact_manifest(attachment, _SUBJECT)
    return body, parse_referrer(body, where="test")


def _store(*documents: bytes) -> dict[Digest, bytes]:
    blobs = {Digest.of_bytes(d): d for d in documents}
    blobs[Digest.of_bytes(b"{}")] = b"{}"
    return blobs


def test_carry_reads_the_config_and_each_document_byte_for_byte() -> None:
    blobs = _store(b"doc one")
    (carried,) = carry([_found(b"doc one")], lambda d, size: blobs.get(d), "src")  # type: ignore[list-item]
    assert carried.blobs == (b"{}", b"doc one")
    assert carried.manifest == _found(b"doc one")[0]


def test_a_blob_of_other_bytes_is_refused() -> None:
    blobs = {d: b + b"!" for d, b in _store(b"doc one").items()}
    with pytest.raises(
        ImageError, match=r"^src: artifact sha256:[0-9a-f]{64}: blob .*does not match"
    ):
        carry([_found(b"doc one")], lambda d, size: blobs.get(d), "src")  # type: ignore[list-item]


def test_a_missing_blob_is_refused() -> None:
    blobs = _store()
    with pytest.raises(ImageError, match=r"blob sha256:[0-9a-f]{64}: missing$"):
        carry([_found(b"doc one")], lambda d, size: blobs.get(d), "src")  # type: ignore[list-item]


def test_more_artifacts_than_the_limit_are_refused_before_any_blob_is_read() -> None:
    read: list[Digest] = []

    def read_blob(digest: Digest, size: int) -> bytes | None:
        read.append(digest)
        return None

    found = [_found(b"doc %d" % i) for i in range(ARTIFACT_COUNT_LIMIT + 1)]
    with pytest.raises(ImageError, match=rf"^src: more than {ARTIFACT_COUNT_LIMIT} artifacts$"):
        carry(found, read_blob, "src")  # type: ignore[arg-type]
    assert read == []
