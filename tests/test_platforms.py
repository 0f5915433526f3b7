"""Platforms: ``OS/ARCH[/VARIANT]`` parsed as OCI names them, and an index entry chosen for
one (or the host's), with an error listing the platforms an index has."""

from __future__ import annotations

from typing import Any

import pytest

from closurepack.errors import OptionError, SourceError
from closurepack.image import ImageConfig
from closurepack.imageindex import ImageIndex
from closurepack.platforms import (
    Platform,
    choose_entry,
    entry_platform,
    host_platform,
    parse_platform,
)
from handmade import busybox_image


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/x86_64", Platform("linux", "amd64")),
        ("linux/aarch64", Platform("linux", "arm64")),
        ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
        ("linux/arm/v7", Platform("linux", "arm", "v7")),
        ("linux/armv7l", Platform("linux", "arm", "v7")),
        ("freebsd/amd64", Platform("freebsd", "amd64")),
    ],
)
def test_parse_platform(text: str, expected: Platform) -> None:
    assert parse_platform(text) == expected
    assert str(parse_platform(str(expected))) == str(expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("linux", "--platform 'linux': expected OS/ARCH[/VARIANT], e.g. linux/arm64"),
        ("linux/", "--platform 'linux/': expected OS/ARCH[/VARIANT]"),
        ("/amd64", "--platform '/amd64': expected OS/ARCH[/VARIANT]"),
        ("linux/arm/v7/x", "--platform 'linux/arm/v7/x': expected OS/ARCH[/VARIANT]"),
        ("linux/vax", "--platform 'linux/vax': unknown architecture"),
        ("li nux/amd64", "--platform 'li nux/amd64': invalid operating system name"),
    ],
)
def test_bad_platforms_are_one_line_option_errors(text: str, message: str) -> None:
    with pytest.raises(OptionError) as info:
        parse_platform(text)
    assert str(info.value).startswith(message.split("'--arch", maxsplit=1)[0])
    assert "\n" not in str(info.value)


def _entry(os_name: str, arch: str, variant: str | None = None) -> dict[str, Any]:
    platform = {"os": os_name, "architecture": arch}
    if variant is not None:
        platform["variant"] = variant
    prefix = "" if os_name == "linux" else os_name
    return {"digest": f"sha256:{prefix}{arch}{variant or ''}", "platform": platform}


ENTRIES = [
    {"digest": "sha256:attestation", "platform": {"os": "unknown", "architecture": "unknown"}},
    {"digest": "sha256:noplatform"},
    _entry("linux", "arm", "v6"),
    _entry("linux", "arm", "v7"),
    _entry("linux", "arm64"),
    _entry("linux", "amd64"),
    _entry("windows", "amd64"),
]


def test_choose_entry_matches_os_architecture_and_variant() -> None:
    def chosen(text: str) -> str:
        return str(choose_entry(ENTRIES, parse_platform(text), where="x")["digest"])

    assert chosen("linux/arm/v7") == "sha256:armv7"
    assert chosen("linux/arm/v6") == "sha256:armv6"
    assert chosen("linux/arm64/v8") == "sha256:arm64"  # an entry without a variant fits
    assert chosen("windows/amd64") == "sha256:windowsamd64"
    assert chosen("linux/amd64") == "sha256:amd64"
    host = host_platform()
    found = choose_entry(
        [_entry(host.os, host.architecture, host.variant or None)], None, where="x"
    )
    assert entry_platform(found) == host


def test_a_missing_platform_lists_those_there_are() -> None:
    with pytest.raises(SourceError) as info:
        choose_entry(ENTRIES, parse_platform("linux/arm/v5"), where="oci:dir:tag")
    assert str(info.value) == (
        "oci:dir:tag: the index has no image for linux/arm/v5 (platforms: linux/arm/v6,"
        " linux/arm/v7, linux/arm64, linux/amd64, windows/amd64); choose another with --platform"
    )
    with pytest.raises(SourceError, match=r"for this host's platform, .*\(platforms: none\)"):
        choose_entry(ENTRIES[:2], None, where="x")


def test_index_lists_each_platform_once_and_each_shared_blob_once(tmp_path: Any) -> None:
    amd = busybox_image(tmp_path / "a", config=ImageConfig(architecture="amd64"))
    arm = busybox_image(tmp_path / "a", config=ImageConfig(architecture="arm64"))
    index = ImageIndex.of([(Platform("linux", "amd64"), amd), (Platform("linux", "arm64"), arm)])
    assert len(index.layers) == 2  # the same two layers in both images
    assert set(index.small_blobs) == {
        amd.config_digest, amd.manifest_digest, arm.config_digest, arm.manifest_digest,
        index.digest,
    }  # fmt: skip
    docker = ImageIndex.of(
        [(Platform("linux", "amd64"), amd), (Platform("linux", "arm64"), arm)], docker=True
    )
    assert docker.media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
    assert docker.digest != index.digest
    assert all(
        e.image.manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
        for e in docker.images
    )
    with pytest.raises(OptionError, match="linux/amd64: given more than once"):
        ImageIndex.of([(Platform("linux", "amd64"), amd), (Platform("linux", "amd64"), arm)])
    with pytest.raises(OptionError, match="at least one image"):
        ImageIndex.of([])
