"""Image assembly: options validation, config and manifest JSON, base-image inheritance."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from closurepack.digest import Digest
from closurepack.errors import OptionError
from closurepack.image import (
    LAYERS_LABEL,
    BaseImage,
    ImageConfig,
    assemble_image,
    canonical_json,
    docker_manifest_bytes,
    host_architecture,
    rfc3339,
)
from closurepack.layer import BuiltLayer
from closurepack.mediatypes import MediaType
from handmade import make_layer, oci_validator


@pytest.fixture
def layers(tmp_path: Path) -> list[BuiltLayer]:
    return [
        make_layer(
            tmp_path,
            {"nix": None, "nix/store": None, "nix/store/a-x": b"x"},
            paths=("/nix/store/a-x",),
            comment="store items",
        ),
        make_layer(
            tmp_path,
            {"nix": None, "nix/store": None, "nix/store/b-y": b"yy"},
            compression="zstd",
            paths=("/nix/store/b-y", "/nix/store/c-z"),
            comment="store items",
        ),
        make_layer(tmp_path, {"etc": None, "etc/motd": b"hi"}, compression="none"),
    ]


# --- ImageConfig ---------------------------------------------------------------------


def test_default_architecture_is_the_host_in_oci_names() -> None:
    arch, variant = host_architecture()
    config = ImageConfig()
    assert config.arch == arch
    assert config.variant == variant
    assert config.arch not in ("x86_64", "aarch64")


@pytest.mark.parametrize(
    ("given_arch", "arch", "variant"),
    [
        ("x86_64", "amd64", ""),
        ("amd64", "amd64", ""),
        ("aarch64", "arm64", ""),
        ("armv7l", "arm", "v7"),
        ("arm/v6", "arm", "v6"),
        ("i686", "386", ""),
        ("riscv64", "riscv64", ""),
        ("linux/arm64", "arm64", ""),
        ("linux/arm/v7", "arm", "v7"),
    ],
)
def test_architecture_names_are_mapped(given_arch: str, arch: str, variant: str) -> None:
    config = ImageConfig(architecture=given_arch)
    assert (config.arch, config.variant) == (arch, variant)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"architecture": "vax"}, "--arch"),
        ({"env": ["NOEQUALS"]}, "--env 'NOEQUALS'"),
        ({"env": ["=value"]}, "--env"),
        ({"exposed_ports": ["http"]}, "--expose 'http'"),
        ({"exposed_ports": ["70000"]}, "--expose"),
        ({"exposed_ports": ["0/tcp"]}, "--expose"),
        ({"exposed_ports": ["80/icmp"]}, "--expose"),
        ({"working_dir": "relative/dir"}, "--workdir"),
        ({"volumes": ["data"]}, "--volume"),
        ({"labels": {LAYERS_LABEL: "{}"}}, "reserved"),
        ({"stop_signal": "TERM please"}, "--stop-signal"),
        ({"user": "a b"}, "--user"),
        ({"cmd": "/bin/sh -c x"}, "--cmd"),
        ({"created": -5}, "created"),
    ],
)
def test_invalid_options_raise_option_error(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(OptionError, match=fragment.replace("(", r"\(")) as info:
        ImageConfig(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_ports_are_normalised() -> None:
    config = ImageConfig(exposed_ports=["80", "53/udp", "0443/tcp"])
    assert config.exposed_ports == ("80/tcp", "53/udp", "443/tcp")


def test_rfc3339() -> None:
    assert rfc3339(1) == "1970-01-01T00:00:01Z"
    assert rfc3339(1700000000) == "2023-11-14T22:13:20Z"


# --- assemble_image --------------------------------------------------------------------


def test_config_and_manifest_describe_the_layers(layers: list[BuiltLayer]) -> None:
    config = ImageConfig(
        architecture="arm64",
        created=1700000000,
        entrypoint=["/bin/app"],
        cmd=["--serve"],
        env=["PATH=/bin", "LANG=C.UTF-8"],
        working_dir="/srv",
        user="1000:1000",
        labels={"org.example": "yes"},
        exposed_ports=["8080", "53/udp"],
        volumes=["/data"],
        stop_signal="SIGINT",
    )
    image = assemble_image(layers, config=config)

    assert image.config_digest == Digest(hashlib.sha256(image.config_bytes).hexdigest())
    assert image.manifest_digest == Digest(hashlib.sha256(image.manifest_bytes).hexdigest())
    cfg = json.loads(image.config_bytes)
    assert cfg["architecture"] == "arm64"
    assert cfg["os"] == "linux"
    assert cfg["created"] == "2023-11-14T22:13:20Z"
    assert cfg["rootfs"] == {"type": "layers", "diff_ids": [str(la.diff_id) for la in layers]}
    assert [h["created_by"] for h in cfg["history"]] == ["closurepack"] * 3
    assert [h.get("comment") for h in cfg["history"]] == ["store items", "store items", None]
    assert {h["created"] for h in cfg["history"]} == {"2023-11-14T22:13:20Z"}
    c = cfg["config"]
    assert c["Entrypoint"] == ["/bin/app"]
    assert c["Cmd"] == ["--serve"]
    assert c["Env"] == ["PATH=/bin", "LANG=C.UTF-8"]
    assert c["WorkingDir"] == "/srv"
    assert c["User"] == "1000:1000"
    assert c["ExposedPorts"] == {"53/udp": {}, "8080/tcp": {}}
    assert c["Volumes"] == {"/data": {}}
    assert c["StopSignal"] == "SIGINT"
    assert c["Labels"]["org.example"] == "yes"
    # Only layers holding store items are recorded, by diff_id.
    assert json.loads(c["Labels"][LAYERS_LABEL]) == {
        str(layers[0].diff_id): ["/nix/store/a-x"],
        str(layers[1].diff_id): ["/nix/store/b-y", "/nix/store/c-z"],
    }
    assert image.layer_paths()[str(layers[1].diff_id)] == ["/nix/store/b-y", "/nix/store/c-z"]

    manifest = json.loads(image.manifest_bytes)
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == MediaType.OCI_MANIFEST
    assert manifest["config"] == {
        "mediaType": MediaType.OCI_CONFIG,
        "digest": str(image.config_digest),
        "size": len(image.config_bytes),
    }
    assert manifest["layers"] == [
        {"mediaType": str(la.media_type), "digest": str(la.digest), "size": la.size}
        for la in layers
    ]
    assert [la.blob_path.stat().st_size for la in layers] == [la.size for la in layers]


def test_json_is_canonical(layers: list[BuiltLayer]) -> None:
    image = assemble_image(layers, config=ImageConfig(env=["Z=1", "A=2"]))
    for raw in (image.config_bytes, image.manifest_bytes):
        assert raw == canonical_json(json.loads(raw))
        assert b" " not in raw.replace(b"store items", b"")
    again = assemble_image(layers, config=ImageConfig(env=["Z=1", "A=2"]))
    assert again.config_bytes == image.config_bytes
    assert again.manifest_digest == image.manifest_digest


def test_output_matches_the_oci_schemas(layers: list[BuiltLayer]) -> None:
    image = assemble_image(layers, config=ImageConfig(exposed_ports=["80"], volumes=["/v"]))
    config_errors = oci_validator("config-schema.json").iter_errors(image.config)
    manifest_errors = oci_validator("image-manifest-schema.json").iter_errors(image.manifest)
    assert [e.message for e in config_errors] == []
    assert [e.message for e in manifest_errors] == []


def test_schema_check_is_not_vacuous(layers: list[BuiltLayer]) -> None:
    image = assemble_image(layers, config=ImageConfig())
    broken = json.loads(image.manifest_bytes)
    del broken["config"]["digest"]
    assert list(oci_validator("image-manifest-schema.json").iter_errors(broken))


def test_docker_manifest_uses_docker_media_types(layers: list[BuiltLayer]) -> None:
    image = assemble_image(layers, config=ImageConfig())
    manifest = json.loads(docker_manifest_bytes(image))
    assert manifest["mediaType"] == MediaType.DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == MediaType.DOCKER_CONFIG
    assert manifest["config"]["digest"] == str(image.config_digest)
    assert [la["mediaType"] for la in manifest["layers"]] == [
        MediaType.DOCKER_LAYER_GZIP,
        "application/vnd.oci.image.layer.v1.tar+zstd",
        MediaType.DOCKER_LAYER,
    ]
    assert [la["digest"] for la in manifest["layers"]] == [str(la.digest) for la in layers]


def _base(layers: list[BuiltLayer], **config: object) -> BaseImage:
    base_cfg = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2020-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/bin", "FOO=base", "KEEP=1"],
            "Cmd": ["/bin/base"],
            "WorkingDir": "/base",
            "ExposedPorts": {"22/tcp": {}},
            "Labels": {"from": "base", "shared": "base"},
            **config,
        },
        "rootfs": {"type": "layers", "diff_ids": [str(la.diff_id) for la in layers]},
        "history": [
            {"created": "2020-01-01T00:00:00Z", "created_by": "ENV X=1", "empty_layer": True},
            *({"created": "2020-01-01T00:00:00Z", "created_by": "base step"} for _ in layers),
        ],
    }
    return BaseImage(config=base_cfg, layers=tuple(layers))


def test_base_image_values_are_inherited_and_env_merged(layers: list[BuiltLayer]) -> None:
    base = _base(layers[:1])
    ours = ImageConfig(env=["FOO=ours", "NEW=2"], labels={"shared": "ours"}, exposed_ports=["80"])
    image = assemble_image(layers[1:], config=ours, base=base)
    cfg = image.config
    assert cfg["rootfs"]["diff_ids"] == [str(la.diff_id) for la in layers]
    assert [str(la.digest) for la in image.layers] == [str(la.digest) for la in layers]
    assert cfg["config"]["Env"] == ["PATH=/usr/bin", "FOO=ours", "KEEP=1", "NEW=2"]
    assert cfg["config"]["Cmd"] == ["/bin/base"]
    assert cfg["config"]["WorkingDir"] == "/base"
    assert cfg["config"]["ExposedPorts"] == {"22/tcp": {}, "80/tcp": {}}
    assert cfg["config"]["Labels"]["from"] == "base"
    assert cfg["config"]["Labels"]["shared"] == "ours"
    # The base's history (with its empty_layer entry) is kept, then one entry per new layer.
    assert [h["created_by"] for h in cfg["history"]] == [
        "ENV X=1",
        "base step",
        "closurepack",
        "closurepack",
    ]
    # The base layer holds store items too: recorded alongside ours.
    assert set(image.layer_paths()) == {str(layers[0].diff_id), str(layers[1].diff_id)}


def test_new_entrypoint_resets_the_base_cmd(layers: list[BuiltLayer]) -> None:
    image = assemble_image(
        layers[1:], config=ImageConfig(entrypoint=["/bin/new"]), base=_base(layers[:1])
    )
    assert image.config["config"]["Entrypoint"] == ["/bin/new"]
    assert "Cmd" not in image.config["config"]


def test_base_label_entries_for_vanished_layers_are_dropped(layers: list[BuiltLayer]) -> None:
    stale = canonical_json({"sha256:" + "0" * 64: ["/nix/store/gone"]}).decode()
    base = _base(layers[:1], Labels={LAYERS_LABEL: stale})
    image = assemble_image(layers[1:], config=ImageConfig(), base=base)
    assert "sha256:" + "0" * 64 not in image.layer_paths()
    assert str(layers[1].diff_id) in image.layer_paths()


@given(
    base_env=st.lists(st.tuples(st.sampled_from("ABCDE"), st.text("xyz", max_size=3))),
    our_env=st.lists(st.tuples(st.sampled_from("CDEFG"), st.text("xyz", max_size=3))),
)
def test_env_merge_ours_win_per_key(
    base_env: list[tuple[str, str]], our_env: list[tuple[str, str]]
) -> None:
    base = BaseImage(
        config={"config": {"Env": [f"{k}={v}" for k, v in base_env]}, "history": []}, layers=()
    )
    image = assemble_image([], config=ImageConfig(env=[f"{k}={v}" for k, v in our_env]), base=base)
    merged = image.config["config"].get("Env", [])
    keys = [item.partition("=")[0] for item in merged]
    assert len(keys) == len(set(keys))
    expected = dict(base_env) | dict(our_env)
    assert dict(item.split("=", 1) for item in merged) == expected
