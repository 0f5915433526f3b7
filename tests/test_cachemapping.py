"""The shared layer cache's mapping as data: parsing is strict, merging keeps the newest entry
last and at most MAX_ENTRIES, entries that disagree about one blob are dropped."""

from __future__ import annotations

import json
import logging

import pytest

from closurepack.digest import Digest
from closurepack.errors import ImageError, OptionError
from closurepack.mediatypes import MediaType
from closurepack.registry import cachemapping
from closurepack.registry.cachemapping import (
    CACHE_TAG,
    CacheEntry,
    artifact,
    consistent_entries,
    merge_entries,
    parse_cache_ref,
)
from closurepack.registry.reference import RegistryRef

REF = RegistryRef("localhost:5000", "cache", CACHE_TAG)


def _entry(n: int, *, diff: int | None = None, size: int = 10) -> CacheEntry:
    return CacheEntry(
        Digest.of_bytes(b"blob %d" % n),
        size,
        MediaType.OCI_LAYER_GZIP,
        Digest.of_bytes(b"tar %d" % (n if diff is None else diff)),
        REF,
    )


def _key(n: int) -> str:
    return f"{n:064x}"


def test_cache_references() -> None:
    assert parse_cache_ref("docker://localhost:5000/cache", option="--cache-to") == REF
    tagged = parse_cache_ref("docker://localhost:5000/cache:v2", option="--cache-from")
    assert tagged.tag == "v2"
    pinned = parse_cache_ref(f"docker://localhost:5000/cache@{Digest.of_bytes(b'')}",
                             option="--cache-from")  # fmt: skip
    assert pinned.digest == Digest.of_bytes(b"")
    with pytest.raises(OptionError, match="a push destination names a tag"):
        parse_cache_ref(
            f"docker://localhost:5000/cache@{Digest.of_bytes(b'')}", option="--cache-to"
        )
    with pytest.raises(OptionError, match=r"^--cache-from 'oci:x': expected docker://"):
        parse_cache_ref("oci:x", option="--cache-from")


def test_artifact_round_trips() -> None:
    entries = {_key(1): _entry(1), _key(2): _entry(2)}
    body, (config, mapping) = artifact(entries)
    manifest = json.loads(body)
    assert manifest["artifactType"] == cachemapping.ARTIFACT_TYPE
    assert config == b"{}"
    assert manifest["layers"][0]["digest"] == str(Digest.of_bytes(mapping))
    assert cachemapping._parse_mapping(mapping, REF) == entries
    assert list(cachemapping._parse_mapping(mapping, REF)) == [_key(1), _key(2)]


@pytest.mark.parametrize(
    ("mapping", "fault"),
    [
        (b"[1]", "not a JSON object"),
        (b"{", "not valid JSON"),
        (b'{"format": "other", "layers": {}}', "not a closurepack-layer-cache-1 mapping"),
        (b'{"format": "closurepack-layer-cache-1", "layers": {"../x": {}}}', "bad entry"),
        (b'{"format": "closurepack-layer-cache-1", "layers": {"%s": {"size": -1}}}'
         % _key(1).encode(), "bad size -1"),
        (b'{"format": "closurepack-layer-cache-1", "layers": {"%s": {"size": 1,'
         b' "mediaType": "text/plain"}}}' % _key(1).encode(), "unknown media type"),
        (b'{"format": "closurepack-layer-cache-1", "layers": {"%s": {"size": 1,'
         b' "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "md5:1"}}}'
         % _key(1).encode(), "md5:1"),
    ],
)  # fmt: skip
def test_malformed_mappings_are_refused_whole(mapping: bytes, fault: str) -> None:
    with pytest.raises(ImageError, match=f"^layer cache {REF}: mapping.*{fault}"):
        cachemapping._parse_mapping(mapping, REF)


def test_merge_puts_new_and_changed_entries_last_and_bounds_the_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    existing = {_key(1): _entry(1), _key(2): _entry(2), _key(3): _entry(3)}
    merged, changed = merge_entries(existing, [(_key(2), _entry(2))])
    assert not changed
    assert list(merged) == [_key(1), _key(2), _key(3)]
    merged, changed = merge_entries(existing, [(_key(1), _entry(9)), (_key(4), _entry(4))])
    assert changed
    assert list(merged) == [_key(2), _key(3), _key(1), _key(4)]
    assert merged[_key(1)] == _entry(9)  # the newer entry wins
    monkeypatch.setattr(cachemapping, "MAX_ENTRIES", 2)
    merged, _ = merge_entries(existing, [(_key(4), _entry(4))])
    assert list(merged) == [_key(3), _key(4)]  # the oldest dropped


def test_entries_disagreeing_about_a_blob_are_all_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    same = {_key(1): _entry(1), _key(2): _entry(1), _key(3): _entry(3)}
    assert consistent_entries(same) == same  # one blob for two keys, told alike: fine
    assert caplog.records == []
    liar = {**same, _key(4): _entry(1, diff=7)}
    with caplog.at_level(logging.WARNING):
        assert consistent_entries(liar) == {_key(3): _entry(3)}
    (record,) = caplog.records
    assert f"blob {_entry(1).digest} is named with different sizes or diff_ids" in record.message
    resized = {_key(1): _entry(1), _key(2): _entry(1, size=11)}
    assert consistent_entries(resized) == {}
