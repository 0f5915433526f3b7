"""verify and inspect: every mismatch is found and reported; readback errors are one line."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import pytest

from closurepack.digest import Digest
from closurepack.errors import ImageError, InputError, SourceError
from closurepack.image import Image, ImageConfig, assemble_image, canonical_json, manifest_for
from closurepack.layer import BuiltLayer
from closurepack.readback import read_base_image, read_image
from closurepack.transports import write_image
from closurepack.validate import format_inspection, inspect_image, verify_image
from handmade import busybox_image, make_layer
from runtimes import DockerEngine, PodmanRunner, require_tool, run_tool


@pytest.fixture
def image(tmp_path: Path) -> Image:
    return busybox_image(tmp_path / "layers")


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _member_offset(archive: Path, name: str) -> tuple[int, int]:
    with tarfile.open(archive) as tar:
        info = tar.getmember(name)
        return info.offset_data, info.size


@pytest.mark.parametrize("kind", ["docker-archive", "oci", "oci-archive"])
@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_sound_images_verify_clean(tmp_path: Path, kind: str, compression: str) -> None:
    img = busybox_image(tmp_path / "layers", compression=compression)
    target = f"{kind}:{tmp_path / 'img'}"
    write_image(img, target)
    assert verify_image(target) == []


def test_oci_flipped_layer_and_config_bytes_are_both_reported(tmp_path: Path, image: Image) -> None:
    root = tmp_path / "layout"
    write_image(image, f"oci:{root}")
    blobs = root / "blobs" / "sha256"
    _flip(blobs / image.layers[0].digest.hex, image.layers[0].size // 2)
    _flip(blobs / image.config_digest.hex, 10)
    problems = verify_image(f"oci:{root}")
    assert any(p.startswith("config: digest is") for p in problems), problems
    assert any(
        p.startswith("layer 0") and f"manifest says {image.layers[0].digest}" in p for p in problems
    ), problems
    assert not any(p.startswith("layer 1") for p in problems), problems


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_damage_anywhere_in_a_layer_is_reported_not_raised(
    tmp_path: Path, compression: str
) -> None:
    # Wherever a byte is damaged, the decoder's complaint (bad header, bad deflate data,
    # checksum) becomes a problem naming the layer, on one line.
    layer = make_layer(
        tmp_path / "l", {"data": random.Random(1).randbytes(3000) * 3}, compression=compression
    )
    img = assemble_image([layer], config=ImageConfig())
    root = tmp_path / "layout"
    write_image(img, f"oci:{root}")
    blob = root / "blobs" / "sha256" / layer.digest.hex
    good = blob.read_bytes()
    for offset in range(0, len(good), max(1, len(good) // 97)):
        damaged = bytearray(good)
        damaged[offset] ^= 0xFF
        blob.write_bytes(bytes(damaged))
        problems = verify_image(f"oci:{root}")
        assert problems, offset
        assert all(p.startswith("layer 0") for p in problems), (offset, problems)
        assert not any("\n" in p for p in problems)
    blob.write_bytes(good)
    assert verify_image(f"oci:{root}") == []


def test_docker_archive_flipped_layer_and_config_are_both_reported(
    tmp_path: Path, image: Image
) -> None:
    archive = tmp_path / "img.tar"
    write_image(image, f"docker-archive:{archive}")
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))[0]  # type: ignore[arg-type]
    offset, size = _member_offset(archive, manifest["Layers"][1])
    _flip(archive, offset + size // 2)
    offset, _ = _member_offset(archive, manifest["Config"])
    _flip(archive, offset + 5)
    problems = verify_image(f"docker-archive:{archive}")
    assert any(p.startswith("config: digest is") and "file name" in p for p in problems), problems
    assert any(p.startswith("layer 1") for p in problems), problems
    assert not any(p.startswith("layer 0") for p in problems), problems


def test_uncompressed_layer_change_is_a_diff_id_mismatch(tmp_path: Path) -> None:
    img = busybox_image(tmp_path / "layers", compression="none")
    root = tmp_path / "layout"
    write_image(img, f"oci:{root}")
    blob = root / "blobs" / "sha256" / img.layers[1].digest.hex
    data = bytearray(blob.read_bytes())
    at = data.index(b"hi from closurepack")
    data[at] = ord("H")
    blob.write_bytes(bytes(data))
    problems = verify_image(f"oci:{root}")
    assert len(problems) == 2, problems
    assert "digest is" in problems[0]
    assert f"config diff_id is {img.layers[1].diff_id}" in problems[1]


def _write_raw(root: Path, config: dict[str, object], layers: list[BuiltLayer]) -> str:
    """Write an image whose config we control (possibly inconsistent) to an OCI layout."""
    config_bytes = canonical_json(config)
    image = Image(
        config_bytes=config_bytes,
        manifest_bytes=manifest_for(config_bytes, layers),
        layers=tuple(layers),
    )
    write_image(image, f"oci:{root}")
    return f"oci:{root}"


def test_layer_count_and_diff_id_mismatches_are_reported(tmp_path: Path) -> None:
    a = make_layer(tmp_path, {"a": b"a"})
    b = make_layer(tmp_path, {"b": b"b"}, compression="zstd")
    good = assemble_image([a, b], config=ImageConfig())
    config = json.loads(good.config_bytes)
    config["rootfs"]["diff_ids"] = [str(b.diff_id)]  # one too few, and the wrong one
    problems = verify_image(_write_raw(tmp_path / "l", config, [a, b]))
    assert any("1 diff_ids but the manifest has 2 layers" in p for p in problems), problems
    assert any(p.startswith("layer 0") and "diff_id" in p for p in problems), problems
    with pytest.raises(ImageError, match="1 diff_ids for 2 layers"):
        read_image(f"oci:{tmp_path / 'l'}")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("config", "oops", "'config' is not a JSON object"),
        ("rootfs", ["layers"], "'rootfs' is not a JSON object"),
        ("history", 7, "'history' is not a JSON array"),
        ("config.Env", 5, "config.Env is not an array of strings"),
        ("config.Cmd", ["/bin/sh", 1], "config.Cmd is not an array of strings"),
        ("config.Labels", "a=b", "config.Labels is not an object"),
        ("config.ExposedPorts", 80, "config.ExposedPorts is not an object"),
        ("config.User", 0, "config.User is not a string"),
    ],
)
def test_config_fields_of_the_wrong_json_type_are_one_line_errors(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    # A config that is JSON but not shaped like one: verify reports, reading refuses, and
    # neither lets an AttributeError or TypeError out (nor does a build --from it later).
    config = json.loads(assemble_image([], config=ImageConfig(), base=None).config_bytes)
    top, _, inner = field.partition(".")
    if inner:
        config[top][inner] = value
    else:
        config[field] = value
    source = _write_raw(tmp_path / "l", config, [])
    problems = verify_image(source)
    if field == "rootfs":
        assert any("rootfs.type" in p for p in problems), problems
    for read in (read_image, read_base_image, inspect_image):
        with pytest.raises(ImageError, match=message) as info:
            read(source)
        assert "\n" not in str(info.value)


def test_wrong_sizes_and_missing_blobs_are_reported(tmp_path: Path, image: Image) -> None:
    root = tmp_path / "layout"
    write_image(image, f"oci:{root}")
    manifest = json.loads(image.manifest_bytes)
    manifest["layers"][1]["size"] += 1
    manifest["config"]["size"] -= 1
    new_manifest = canonical_json(manifest)
    blobs = root / "blobs" / "sha256"
    (blobs / Digest.of_bytes(new_manifest).hex).write_bytes(new_manifest)
    index = json.loads((root / "index.json").read_bytes())
    index["manifests"][0]["digest"] = str(Digest.of_bytes(new_manifest))
    index["manifests"][0]["size"] = len(new_manifest) + 3
    (root / "index.json").write_bytes(canonical_json(index))
    (blobs / image.layers[0].digest.hex).unlink()
    problems = verify_image(f"oci:{root}")
    assert any(p.startswith("manifest: size is") for p in problems), problems
    assert any(p.startswith("config: size is") for p in problems), problems
    assert any(p.startswith("layer 0") and "missing" in p for p in problems), problems
    assert any(p.startswith("layer 1") and "size is" in p for p in problems), problems


def test_inspect_reports_layers_and_store_items(tmp_path: Path, image: Image) -> None:
    for kind in ("docker-archive", "oci", "oci-archive"):
        target = f"{kind}:{tmp_path / kind}"
        write_image(image, target)
        info = inspect_image(target)
        assert info["config_digest"] == str(image.config_digest)
        assert info["manifest_digest"] == str(image.manifest_digest)
        assert info["config"]["Cmd"] == ["/bin/sh"]
        assert "Labels" not in info["config"]  # only our own label was there
        assert [la["paths"] for la in info["layers"]] == [
            ["/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-busybox"],
            [],
        ]
        assert [la["digest"] for la in info["layers"]] == [str(la.digest) for la in image.layers]
        assert [la["comment"] for la in info["layers"]] == ["store items", "customisation"]
        assert info["total_size"] == sum(la.size for la in image.layers)
        text = format_inspection(info)
        assert "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-busybox" in text
        assert str(image.manifest_digest) in text


def test_base_image_read_back_builds_on(tmp_path: Path, image: Image) -> None:
    write_image(image, f"oci-archive:{tmp_path / 'base.tar'}")
    base = read_base_image(f"oci-archive:{tmp_path / 'base.tar'}")
    extra = make_layer(tmp_path, {"x": b"x"}, paths=("/nix/store/bbbb-x",))
    top = assemble_image([extra], config=ImageConfig(env=["EXTRA=1"]), base=base)
    assert top.config["config"]["Env"] == ["PATH=/bin", "EXTRA=1"]
    paths = top.layer_paths()
    assert paths[str(image.layers[0].diff_id)] == [
        "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-busybox"
    ]
    assert paths[str(extra.diff_id)] == ["/nix/store/bbbb-x"]
    write_image(top, f"docker-archive:{tmp_path / 'top.tar'}")
    assert verify_image(f"docker-archive:{tmp_path / 'top.tar'}") == []


@pytest.mark.parametrize(
    ("make", "source", "error"),
    [
        (None, "oci:{tmp}/nothing", SourceError),
        ("garbage", "docker-archive:{tmp}/garbage", SourceError),
        ("garbage", "oci-archive:{tmp}/garbage", SourceError),
        ("layout", "oci:{tmp}/layout:nosuchtag", SourceError),
        (None, "-", InputError),
        (None, "nonsense", InputError),
    ],
)
def test_unreadable_sources_raise_one_line_errors(
    tmp_path: Path, image: Image, make: str | None, source: str, error: type[Exception]
) -> None:
    if make == "garbage":
        (tmp_path / "garbage").write_bytes(b"this is not a tar file" * 100)
    elif make == "layout":
        write_image(image, f"oci:{tmp_path / 'layout'}:sometag")
    with pytest.raises(error) as info:
        verify_image(source.format(tmp=tmp_path))
    assert "\n" not in str(info.value)
    if make == "layout":
        assert "sometag" in str(info.value)


# --- images written by other tools read back ----------------------------------------------


def _assert_same_image(source: str, image: Image) -> None:
    assert verify_image(source) == []
    back = read_image(source)
    assert back.config["rootfs"] == image.config["rootfs"]
    assert back.layer_paths() == image.layer_paths()
    assert inspect_image(source)["layers"][0]["paths"] == list(image.layers[0].paths)


@pytest.mark.integration
def test_archives_written_by_skopeo_read_back(tmp_path: Path, image: Image) -> None:
    require_tool("skopeo")
    write_image(image, f"oci:{tmp_path / 'src'}:t")
    for dest in (
        f"docker-archive:{tmp_path / 'sk.tar'}:sk/copy:1",
        f"oci-archive:{tmp_path / 'sk-oci.tar'}:t",
        f"oci:{tmp_path / 'sk-oci'}:t",
    ):
        run_tool("skopeo", "copy", f"oci:{tmp_path / 'src'}:t", dest)
        _assert_same_image(dest, image)


@pytest.mark.integration
@pytest.mark.slow
def test_docker_save_output_reads_back(
    tmp_path: Path, image: Image, docker_engine: DockerEngine
) -> None:
    write_image(image, f"docker-archive:{tmp_path / 'in.tar'}:cp/saved:1")
    docker_engine.load(tmp_path / "in.tar")
    docker_engine.docker("save", "-o", tmp_path / "saved.tar", "cp/saved:1")
    _assert_same_image(f"docker-archive:{tmp_path / 'saved.tar'}", image)
    _assert_same_image(f"docker-archive:{tmp_path / 'saved.tar'}:cp/saved:1", image)
    assert read_image(f"docker-archive:{tmp_path / 'saved.tar'}").config_digest == (
        image.config_digest
    )


@pytest.mark.integration
@pytest.mark.slow
def test_podman_save_output_reads_back(
    tmp_path: Path, image: Image, podman_runner: PodmanRunner
) -> None:
    write_image(image, f"oci-archive:{tmp_path / 'in.tar'}:1")
    ref = podman_runner.load(tmp_path / "in.tar")
    for fmt, kind in (("docker-archive", "docker-archive"), ("oci-archive", "oci-archive")):
        out = tmp_path / f"saved-{fmt}.tar"
        run_tool(*podman_runner.command("save", "--format", fmt, "-o", out, ref))
        _assert_same_image(f"{kind}:{out}", image)


# --- choosing an image in a layout or archive holding several ------------------------------


def test_nested_index_picks_the_host_platform(tmp_path: Path) -> None:
    root = tmp_path / "layout"
    ours = busybox_image(tmp_path / "a")
    other = busybox_image(tmp_path / "b", config=ImageConfig(architecture="s390x"))
    if other.platform == ours.platform:
        other = busybox_image(tmp_path / "b", config=ImageConfig(architecture="riscv64"))
    write_image(other, f"oci:{root}:other")
    write_image(ours, f"oci:{root}:ours")
    index = json.loads((root / "index.json").read_bytes())
    nested = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [  # the other platform first: choosing must not just take the first
                {k: v for k, v in m.items() if k != "annotations"}
                for m in reversed(index["manifests"])
            ],
        }
    )
    digest = Digest.of_bytes(nested)
    (root / "blobs" / "sha256" / digest.hex).write_bytes(nested)
    top = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": str(digest),
                "size": len(nested),
                "annotations": {"org.opencontainers.image.ref.name": "multi"},
            }
        ],
    }
    (root / "index.json").write_bytes(canonical_json(top))
    assert read_image(f"oci:{root}:multi").config_digest == ours.config_digest
    assert read_image(f"oci:{root}").config_digest == ours.config_digest
    assert verify_image(f"oci:{root}:multi") == []

    # A nested index that is not an object, or an entry whose platform is not one: one-line
    # errors or a skipped entry, never an AttributeError; and with the host's entry skipped,
    # an error listing the platforms there are, never a silent pick of another platform's.
    weird = json.loads(nested)
    host = next(m for m in weird["manifests"] if m["platform"] == ours.platform)
    host["platform"] = "linux/amd64"
    weird_bytes = canonical_json(weird)
    (root / "blobs" / "sha256" / Digest.of_bytes(weird_bytes).hex).write_bytes(weird_bytes)
    top["manifests"][0].update(digest=str(Digest.of_bytes(weird_bytes)), size=len(weird_bytes))
    (root / "index.json").write_bytes(canonical_json(top))
    other_platform = f"linux/{other.platform['architecture']}"
    with pytest.raises(
        SourceError,
        match=rf"no image for this host's platform, linux/\w+ "
        rf"\(platforms: {other_platform}\); choose one with --platform",
    ):
        read_image(f"oci:{root}:multi")
    (root / "blobs" / "sha256" / Digest.of_bytes(weird_bytes).hex).write_bytes(b'["a list"]')
    with pytest.raises(ImageError, match="is not an image index"):
        read_image(f"oci:{root}:multi")


def test_several_images_need_a_tag(tmp_path: Path) -> None:
    first = busybox_image(tmp_path / "a")
    second = busybox_image(tmp_path / "b", config=ImageConfig(cmd=["/bin/true"]))
    write_image(first, f"oci:{tmp_path / 'layout'}:one")
    write_image(second, f"oci:{tmp_path / 'layout'}:two")
    with pytest.raises(SourceError, match="2 images; name one with :TAG"):
        read_image(f"oci:{tmp_path / 'layout'}")

    # A docker-archive holding two images (as `docker save a b` writes): chosen by RepoTags.
    write_image(first, f"docker-archive:{tmp_path / 'a.tar'}:cp/first:1")
    write_image(second, f"docker-archive:{tmp_path / 'b.tar'}:cp/second:1")
    both = tmp_path / "both.tar"
    manifests = []
    with tarfile.open(both, "w") as out:
        seen: set[str] = set()
        for part in ("a.tar", "b.tar"):
            with tarfile.open(tmp_path / part) as src:
                for member in src.getmembers():
                    if member.name == "manifest.json":
                        manifests.extend(json.load(src.extractfile(member)))  # type: ignore[arg-type]
                    elif member.name not in seen and member.name != "repositories":
                        seen.add(member.name)
                        out.addfile(member, src.extractfile(member) if member.isfile() else None)
        data = canonical_json(manifests)
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        out.addfile(info, io.BytesIO(data))
    with pytest.raises(SourceError, match="holds 2 images"):
        read_image(f"docker-archive:{both}")
    chosen = read_image(f"docker-archive:{both}:cp/second:1")
    assert chosen.config_digest == second.config_digest
    with pytest.raises(SourceError, match="no image tagged cp/third:1"):
        read_image(f"docker-archive:{both}:cp/third:1")
    assert verify_image(f"docker-archive:{both}:cp/first:1") == []
