"""Destinations: parsing, archive layouts, atomicity, determinism, and real tools reading them."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from closurepack.digest import Digest
from closurepack.errors import DestinationError, OptionError
from closurepack.image import Image, ImageConfig, ImageLayer, assemble_image
from closurepack.layer import BuiltLayer
from closurepack.mediatypes import MediaType
from closurepack.readback import BlobLayer, read_image
from closurepack.transports import (
    WriteOptions,
    image_repo_name,
    parse_destination,
    parse_repo_tag,
    write_image,
)
from closurepack.transports.docker_archive import v1_ids
from closurepack.validate import verify_image
from handmade import busybox_image, make_layer, oci_validator
from runtimes import DockerEngine, PodmanRunner, require_tool, run_tool

# --- parse_destination -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "path", "reference"),
    [
        ("docker-archive:out.tar", "docker-archive", "out.tar", None),
        ("docker-archive:/x/out.tar:app:1.2", "docker-archive", "/x/out.tar", "app:1.2"),
        ("docker-archive:out.tar:app", "docker-archive", "out.tar", "app:latest"),
        (
            "docker-archive:o.tar:localhost:5000/team/app:v1",
            "docker-archive",
            "o.tar",
            "localhost:5000/team/app:v1",
        ),
        ("oci:layout", "oci", "layout", None),
        ("oci:/srv/layout:v2", "oci", "/srv/layout", "v2"),
        ("oci-archive:img.tar:latest", "oci-archive", "img.tar", "latest"),
        ("-", "stdout", None, None),
    ],
)
def test_parse_destination(text: str, kind: str, path: str | None, reference: str | None) -> None:
    dest = parse_destination(text)
    assert dest.kind == kind
    assert dest.path == (Path(path) if path else None)
    assert dest.reference == reference


@pytest.mark.parametrize(
    "text",
    [
        "out.tar",
        "docker:foo",
        "registry:foo",
        "oci:",
        "docker-archive:",
        "docker-archive:o.tar:Upper/Case:tag",
        "docker-archive:o.tar:app:bad tag",
        "oci:dir:bad/tag",
        "stdout:x",
    ],
)
def test_bad_destinations_raise_option_error(text: str) -> None:
    with pytest.raises(OptionError) as info:
        parse_destination(text)
    assert repr(text) in str(info.value) or text.rsplit(":", maxsplit=1)[-1] in str(info.value)


# --- helpers ----------------------------------------------------------------------------


@pytest.fixture
def image(tmp_path: Path) -> Image:
    return busybox_image(tmp_path / "layers")


def _members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def _blob(layer: ImageLayer) -> bytes:
    with layer.open() as f:
        return f.read()


def _read_member(path: Path, name: str) -> bytes:
    with tarfile.open(path) as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()


# --- docker-archive -----------------------------------------------------------------------


def test_docker_archive_layout(tmp_path: Path, image: Image) -> None:
    out = tmp_path / "img.tar"
    write_image(image, f"docker-archive:{out}", tags=["demo/app:1"])
    names = [m.name for m in _members(out)]
    ids = v1_ids(image)
    assert len(set(ids)) == len(image.layers) == 2

    manifest = json.loads(_read_member(out, "manifest.json"))
    assert manifest == [
        {
            "Config": f"{image.config_digest.hex}.json",
            "RepoTags": ["demo/app:1"],
            "Layers": [f"{i}/layer.tar" for i in ids],
        }
    ]
    assert _read_member(out, f"{image.config_digest.hex}.json") == image.config_bytes
    assert json.loads(_read_member(out, "repositories")) == {"demo/app": {"1": ids[-1]}}
    for index, (v1, layer) in enumerate(zip(ids, image.layers, strict=True)):
        assert _read_member(out, f"{v1}/VERSION") == b"1.0"
        assert _read_member(out, f"{v1}/layer.tar") == _blob(layer)
        v1json = json.loads(_read_member(out, f"{v1}/json"))
        assert v1json["id"] == v1
        assert v1json.get("parent") == (ids[index - 1] if index else None)
    top = json.loads(_read_member(out, f"{ids[-1]}/json"))
    assert top["config"]["Cmd"] == ["/bin/sh"]
    assert top["os"] == "linux"
    # Every blob is stored once.
    assert len(names) == len(set(names))
    assert sum(n.endswith("layer.tar") for n in names) == 2


def test_docker_archive_tags(tmp_path: Path, image: Image) -> None:
    out = tmp_path / "a.tar"
    write_image(image, f"docker-archive:{out}:from/dest:x", tags=["from/option:y", "z"])
    assert json.loads(_read_member(out, "manifest.json"))[0]["RepoTags"] == [
        "from/dest:x",
        "from/option:y",
        "z:latest",
    ]
    assert json.loads(_read_member(out, "repositories")) == {
        "from/dest": {"x": v1_ids(image)[-1]},
        "from/option": {"y": v1_ids(image)[-1]},
        "z": {"latest": v1_ids(image)[-1]},
    }
    write_image(image, f"docker-archive:{out}", tags="one:1")  # a lone string is one tag
    assert json.loads(_read_member(out, "manifest.json"))[0]["RepoTags"] == ["one:1"]
    write_image(
        image, f"docker-archive:{out}", tags=["a:1", "a:1"], options=WriteOptions(name="ignored")
    )
    assert json.loads(_read_member(out, "manifest.json"))[0]["RepoTags"] == ["a:1"]
    write_image(image, f"docker-archive:{out}", options=WriteOptions(name="Hello World-2.12"))
    assert json.loads(_read_member(out, "manifest.json"))[0]["RepoTags"] == [
        "hello-world-2.12:latest"
    ]
    write_image(image, f"docker-archive:{out}", options=WriteOptions(name="+++"))
    assert json.loads(_read_member(out, "manifest.json"))[0]["RepoTags"] == ["closurepack:latest"]
    write_image(image, f"docker-archive:{out}")
    assert json.loads(_read_member(out, "manifest.json"))[0]["RepoTags"] == ["closurepack:latest"]
    with pytest.raises(OptionError):
        write_image(image, f"docker-archive:{out}", tags=["Bad Name"])


@pytest.mark.parametrize(
    ("name", "repo"),
    [
        ("hello-2.12", "hello-2.12"),
        ("App.v2", "app.v2"),
        ("gtk+3", "gtk-3"),
        ("._x_", "x"),
        ("a..b", "a-b"),
        ("x__y", "x__y"),
        ("a-_b", "a-b"),
        ("python3.11-env", "python3.11-env"),
        ("Ω", None),
        ("", None),
        (None, None),
    ],
)
def test_image_repo_name(name: str | None, repo: str | None) -> None:
    assert image_repo_name(name) == repo
    if repo is not None:
        assert parse_repo_tag(repo) == (repo, "latest")


def test_archives_are_deterministic(tmp_path: Path) -> None:
    for kind in ("docker-archive", "oci-archive"):
        outputs = []
        for attempt in range(2):
            # Fresh layer files each time: same content must give the same bytes.
            img = busybox_image(tmp_path / f"{kind}-{attempt}", config=ImageConfig(created=1234))
            out = tmp_path / f"{kind}-{attempt}.tar"
            write_image(img, f"{kind}:{out}")
            outputs.append(out.read_bytes())
        assert outputs[0] == outputs[1]
        for member in _members(tmp_path / f"{kind}-0.tar"):
            assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
            assert member.mtime == 1234
            assert member.mode in (0o644, 0o755)


def test_stdout_stream_equals_the_archive_file(tmp_path: Path, image: Image) -> None:
    out = tmp_path / "file.tar"
    write_image(image, f"docker-archive:{out}:a/b:c")
    stream = io.BytesIO()
    write_image(image, "-", tags=["a/b:c"], options=WriteOptions(stream=stream))
    assert stream.getvalue() == out.read_bytes()


def test_stdout_refuses_a_terminal(image: Image) -> None:
    leader, follower = os.openpty()
    try:
        with (
            os.fdopen(follower, "wb", closefd=False) as tty,
            pytest.raises(DestinationError, match="terminal"),
        ):
            write_image(image, "-", options=WriteOptions(stream=tty))
    finally:
        os.close(leader)
        os.close(follower)


def test_stdout_memory_stays_bounded(tmp_path: Path) -> None:
    big = make_layer(tmp_path, {"blob": bytes(range(256)) * (160 * 1024)}, compression="none")
    assert big.size > 40 * 1024 * 1024
    img = assemble_image([big], config=ImageConfig())

    class Sink:
        total = 0

        def write(self, data: bytes) -> int:
            self.total += len(data)
            return len(data)

        def flush(self) -> None:
            pass

    sink = Sink()
    tracemalloc.start()
    try:
        write_image(img, "-", options=WriteOptions(stream=sink))  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sink.total > big.size
    assert peak < 8 * 1024 * 1024


def _tampered_layer(tmp_path: Path) -> BuiltLayer:
    """A layer whose blob no longer matches its digest (changed after it was described)."""
    layer = make_layer(tmp_path / "bad", {"f": b"original"}, compression="none")
    data = bytearray(layer.blob_path.read_bytes())
    data[600] ^= 0xFF
    layer.blob_path.write_bytes(bytes(data))
    return layer


@pytest.mark.parametrize("kind", ["docker-archive", "oci-archive"])
def test_failed_archive_write_keeps_the_previous_file(
    tmp_path: Path, image: Image, kind: str
) -> None:
    out = tmp_path / "keep.tar"
    write_image(image, f"{kind}:{out}")
    before = out.read_bytes()
    bad = assemble_image([*image.layers, _tampered_layer(tmp_path)], config=ImageConfig())
    with pytest.raises(DestinationError, match="digest"):
        write_image(bad, f"{kind}:{out}")
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["keep.tar"]


_WRITE_UNDER_A_SIZE_LIMIT = """
import resource, signal, sys
from pathlib import Path
from closurepack.transports import write_image
from closurepack.errors import DestinationError
from handmade import busybox_image

image = busybox_image(Path(sys.argv[1]))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, write() fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
try:
    write_image(image, sys.argv[2])
except DestinationError as exc:
    print(exc)
"""


@pytest.mark.parametrize("kind", ["docker-archive", "oci-archive"])
def test_a_failed_archive_write_is_blamed_on_the_archive(tmp_path: Path, kind: str) -> None:
    # A full disk (here: a file size limit, in a child process) while a layer is copied into
    # the archive is a write error naming the archive, not a read error of the layer.
    out = tmp_path / "out.tar"
    result = subprocess.run(
        [sys.executable, "-c", _WRITE_UNDER_A_SIZE_LIMIT, tmp_path / "layers", f"{kind}:{out}"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
    )
    assert result.stdout.strip() == f"{out}: cannot write: File too large", result.stdout
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["layers"]


class _Interrupting(io.BytesIO):
    """A blob stream that is interrupted (as by Ctrl-C) after its first read."""

    def read(self, size: int | None = -1, /) -> bytes:
        if self.tell():
            raise KeyboardInterrupt
        return super().read(min(size or 4096, 4096))

    def readinto(self, buffer: Any, /) -> int:
        if self.tell():
            raise KeyboardInterrupt
        return super().readinto(memoryview(buffer)[:4096])


@pytest.mark.parametrize("kind", ["docker-archive", "oci-archive", "oci"])
def test_interrupted_write_leaves_no_partial_output(
    tmp_path: Path, image: Image, kind: str
) -> None:
    target = tmp_path / "out"
    write_image(image, f"{kind}:{target}:keep")
    snapshot = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    data = bytes(range(256)) * 64
    layer = BlobLayer(
        digest=Digest.of_bytes(data),
        diff_id=Digest.of_bytes(data),
        size=len(data),
        media_type=MediaType.OCI_LAYER,
        opener=lambda: _Interrupting(data),
    )
    interrupted = assemble_image([*image.layers, layer], config=ImageConfig(cmd=["/x"]))
    with pytest.raises(KeyboardInterrupt):
        write_image(interrupted, f"{kind}:{target}:keep")
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == snapshot
    assert verify_image(f"{kind}:{target}:keep") == []


# --- oci layout ---------------------------------------------------------------------------


def test_oci_layout_keeps_other_tags(tmp_path: Path) -> None:
    root = tmp_path / "layout"
    first = busybox_image(tmp_path / "l1")
    second = busybox_image(tmp_path / "l2", config=ImageConfig(cmd=["/bin/true"]))
    write_image(first, f"oci:{root}:one")
    write_image(second, f"oci:{root}:two")
    index = json.loads((root / "index.json").read_bytes())
    tags = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
    assert tags == ["one", "two"]
    assert json.loads((root / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}

    # Replacing "one" keeps its position and leaves "two" untouched.
    third = busybox_image(tmp_path / "l3", config=ImageConfig(cmd=["/bin/echo"]))
    blob = root / "blobs" / "sha256" / first.layers[0].digest.hex
    mtime = blob.stat().st_mtime_ns
    write_image(third, f"oci:{root}", tags=["ignored/name:one"])
    index = json.loads((root / "index.json").read_bytes())
    assert [m["digest"] for m in index["manifests"]] == [
        str(third.manifest_digest),
        str(second.manifest_digest),
    ]
    assert blob.stat().st_mtime_ns == mtime  # shared blob skipped, not rewritten
    assert read_image(f"oci:{root}:two").config_digest == second.config_digest
    assert read_image(f"oci:{root}:one").config_digest == third.config_digest
    assert verify_image(f"oci:{root}:one") == []
    assert verify_image(f"oci:{root}:two") == []

    assert [e.message for e in oci_validator("image-index-schema.json").iter_errors(index)] == []
    layout = json.loads((root / "oci-layout").read_bytes())
    errors = oci_validator("image-layout-schema.json").iter_errors(layout)
    assert [e.message for e in errors] == []
    manifest = json.loads((root / "blobs/sha256" / third.manifest_digest.hex).read_bytes())
    errors = oci_validator("image-manifest-schema.json").iter_errors(manifest)
    assert [e.message for e in errors] == []


def test_failed_oci_write_leaves_index_unchanged(tmp_path: Path, image: Image) -> None:
    root = tmp_path / "layout"
    write_image(image, f"oci:{root}:good")
    before = (root / "index.json").read_bytes()
    bad = assemble_image([*image.layers, _tampered_layer(tmp_path)], config=ImageConfig())
    with pytest.raises(DestinationError):
        write_image(bad, f"oci:{root}:good")
    assert (root / "index.json").read_bytes() == before
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]
    assert verify_image(f"oci:{root}:good") == []


def test_oci_index_is_replaced_after_every_blob_it_names_is_durable(
    tmp_path: Path, image: Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each blob is fsynced before its rename, the layers are in place before the config and
    manifest are written (those two at once, a thread each), ``index.json`` is renamed into
    place only after the blobs' directory and its own temp file were fsynced (the two at
    once), and its own directory after that."""
    root = tmp_path / "layout"
    events: list[tuple[str, str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        real_fsync(fd)
        name = threading.current_thread().name
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), name))

    def replace(src: Any, dst: Any) -> None:
        real_replace(src, dst)
        events.append(("replace", f"{src} {dst}", threading.current_thread().name))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_image(image, f"oci:{root}:t")
    blobs = root / "blobs" / "sha256"
    renamed = {e[1].split()[1]: e for e in events if e[0] == "replace"}
    index_at = events.index(renamed[str(root / "index.json")])
    placed = {Path(t).name: e for t, e in renamed.items() if t.startswith(f"{blobs}/")}
    small = {image.config_digest.hex, image.manifest_digest.hex}
    assert set(placed) == {p.name for p in blobs.iterdir()}
    assert set(placed) == {layer.digest.hex for layer in image.layers} | small
    synced_at, synced_on = {}, {}
    for name, rename in placed.items():
        temp = rename[1].split()[0]
        synced = next(e for e in events if e[:2] == ("fsync", temp))
        synced_at[name], synced_on[name] = events.index(synced), synced[2]
        assert synced_at[name] < events.index(rename) < index_at
    layers_placed = max(events.index(e) for name, e in placed.items() if name not in small)
    assert layers_placed < min(synced_at[name] for name in small)
    assert len({synced_on[name] for name in small}) == 2  # (a thread each)
    dir_synced = next(e for e in events if e[:2] == ("fsync", str(blobs)))
    assert max(events.index(e) for e in placed.values()) < events.index(dir_synced) < index_at
    assert dir_synced[2] == "fsync-dir"  # (while index.json's temp file is, on this thread)
    temp = renamed[str(root / "index.json")][1].split()[0]
    index_synced = next(e for e in events if e[:2] == ("fsync", temp))
    assert max(events.index(e) for e in placed.values()) < events.index(index_synced) < index_at
    assert [e[1] for e in events[index_at + 1 :]] == [str(root)]
    assert verify_image(f"oci:{root}:t") == []


def test_oci_refuses_a_foreign_directory(tmp_path: Path, image: Image) -> None:
    (tmp_path / "stuff.txt").write_text("not a layout")
    with pytest.raises(DestinationError, match="not an OCI layout"):
        write_image(image, f"oci:{tmp_path}")


def test_archive_path_that_is_a_directory(tmp_path: Path, image: Image) -> None:
    with pytest.raises(DestinationError, match="is a directory"):
        write_image(image, f"docker-archive:{tmp_path}")


def test_oci_archive_holds_one_layout(tmp_path: Path, image: Image) -> None:
    out = tmp_path / "img.tar"
    write_image(image, f"oci-archive:{out}:v3")
    names = [m.name for m in _members(out)]
    assert names[:2] == ["oci-layout", "index.json"]
    blob_names = [n for n in names if n.startswith("blobs/sha256/") and len(n) > 14]
    expected = {la.digest.hex for la in image.layers}
    expected |= {image.config_digest.hex, image.manifest_digest.hex}
    assert {n.rsplit("/", 1)[1] for n in blob_names} == expected
    assert blob_names == sorted(blob_names)
    index = json.loads(_read_member(out, "index.json"))
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "v3"
    for name in blob_names:
        assert Digest.of_bytes(_read_member(out, name)).hex == name.rsplit("/", 1)[1]


@pytest.mark.parametrize("kind", ["docker-archive", "oci", "oci-archive"])
def test_round_trip_through_readback(tmp_path: Path, image: Image, kind: str) -> None:
    target = f"{kind}:{tmp_path / 'out'}"
    write_image(image, target)
    back = read_image(target)
    assert back.config_bytes == image.config_bytes
    # docker-archive has no manifest: the one rebuilt from it must be ours, byte for byte.
    assert back.manifest_digest == image.manifest_digest
    assert [la.paths for la in back.layers] == [la.paths for la in image.layers]
    assert [_blob(la) for la in back.layers] == [_blob(la) for la in image.layers]
    assert verify_image(target) == []


# --- real tools -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The busybox image (gzip) in every destination kind, plus a zstd one."""
    base = tmp_path_factory.mktemp("dest")
    img = busybox_image(base / "layers")
    zimg = busybox_image(base / "zlayers", compression="zstd")
    out = {
        "docker-archive": f"docker-archive:{base / 'd.tar'}:cp/test:gzip",
        "oci": f"oci:{base / 'oci'}:gzip",
        "oci-archive": f"oci-archive:{base / 'o.tar'}:gzip",
        "zstd-docker-archive": f"docker-archive:{base / 'z.tar'}:cp/test:zstd",
        "zstd-oci-archive": f"oci-archive:{base / 'zo.tar'}:zstd",
    }
    for key, target in out.items():
        write_image(zimg if key.startswith("zstd") else img, target)
    return out


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["docker-archive", "oci", "oci-archive"])
def test_skopeo_inspects_and_copies(tmp_path: Path, written: dict[str, str], kind: str) -> None:
    require_tool("skopeo")
    info = json.loads(run_tool("skopeo", "inspect", written[kind]))
    assert info["Architecture"]
    assert info["Env"] == ["PATH=/bin"]
    assert len(info["Layers"]) == 2
    raw = json.loads(run_tool("skopeo", "inspect", "--config", written[kind]))
    assert (
        raw["rootfs"]["diff_ids"]
        == json.loads(read_image(written[kind]).config_bytes)["rootfs"]["diff_ids"]
    )
    copy = f"oci:{tmp_path / 'copy'}:c"
    run_tool("skopeo", "copy", written[kind], copy)
    assert verify_image(copy) == []
    assert read_image(copy).config["rootfs"] == read_image(written[kind]).config["rootfs"]


@pytest.mark.integration
def test_umoci_unpacks_and_runc_runs(tmp_path: Path, written: dict[str, str]) -> None:
    require_tool("umoci")
    layout = written["oci"].removeprefix("oci:")
    bundle = tmp_path / "bundle"
    run_tool("umoci", "unpack", "--image", layout, bundle)
    assert (bundle / "rootfs/bin/busybox").stat().st_size > 100_000
    assert (bundle / "rootfs/bin/sh").readlink() == Path("busybox")
    assert (bundle / "rootfs/etc/greeting").read_text() == "hi from closurepack\n"
    spec = json.loads((bundle / "config.json").read_text())
    assert spec["process"]["args"] == ["/bin/sh"]
    assert "PATH=/bin" in spec["process"]["env"]
    # (require_tool skips, or fails under CLOSUREPACK_REQUIRE_TOOLS=1, without runc)
    runc = require_tool("runc")
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/bin/sh", "-c", "echo hi; cat /etc/greeting"]
    (bundle / "config.json").write_text(json.dumps(spec))
    name = f"cp-{tmp_path.name[-20:]}".replace("_", "-")
    out = run_tool(runc, "run", "--bundle", bundle, name, timeout=60)
    assert out == "hi\nhi from closurepack\n"


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["docker-archive", "oci-archive", "zstd-docker-archive"])
def test_podman_loads_and_runs(
    podman_runner: PodmanRunner, written: dict[str, str], kind: str
) -> None:
    archive = Path(written[kind].split(":")[1])
    ref = podman_runner.load(archive)
    out = podman_runner.run(ref, "/bin/sh", "-c", "echo hi; cat /etc/greeting")
    assert out == "hi\nhi from closurepack\n"


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["docker-archive", "zstd-docker-archive"])
def test_docker_loads_and_runs(
    docker_engine: DockerEngine, written: dict[str, str], kind: str
) -> None:
    archive = Path(written[kind].split(":")[1])
    ref = docker_engine.load(archive)
    assert ref.startswith("cp/test:")
    out = docker_engine.run(ref, "/bin/sh", "-c", "echo hi; cat /etc/greeting; echo $PATH")
    assert out == "hi\nhi from closurepack\n/bin\n"
    config = json.loads(docker_engine.docker("image", "inspect", ref))[0]
    assert config["Id"] == str(read_image(written[kind]).config_digest)


@pytest.mark.integration
@pytest.mark.slow
def test_docker_loads_the_v1_layout_alone(tmp_path: Path, docker_engine: DockerEngine) -> None:
    """Without manifest.json docker falls back to the legacy V1 loader: it must work too."""
    img = busybox_image(
        tmp_path / "layers", config=ImageConfig(cmd=["/bin/sh", "-c", "echo v1 layout"])
    )
    source = tmp_path / "full.tar"
    write_image(img, f"docker-archive:{source}:cp/v1only:1")
    v1_only = tmp_path / "v1.tar"
    with tarfile.open(source) as src, tarfile.open(v1_only, "w") as dst:
        for member in src.getmembers():
            if member.name != "manifest.json":
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    docker_engine.docker("load", "-i", v1_only)
    assert docker_engine.run("cp/v1only:1") == "v1 layout\n"
    inspect = json.loads(docker_engine.docker("image", "inspect", "cp/v1only:1"))[0]
    assert inspect["Config"]["Cmd"] == ["/bin/sh", "-c", "echo v1 layout"]
    assert inspect["RootFS"]["Layers"] == img.config["rootfs"]["diff_ids"]


def _blob_names(path: Path) -> set[str]:
    return {m.name.rsplit("/", 1)[1] for m in _members(path) if m.name.startswith("blobs/sha256/")}


def test_oci_archive_adds_a_tag_and_keeps_the_others(tmp_path: Path, image: Image) -> None:
    out = tmp_path / "img.tar"
    write_image(image, f"oci-archive:{out}:base")
    extra = make_layer(tmp_path / "extra", {"etc/app.conf": b"v1"})
    first = assemble_image([*image.layers, extra], config=ImageConfig(env=("V=1",)))
    write_image(first, f"oci-archive:{out}:app")
    index = json.loads(_read_member(out, "index.json"))
    tags = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
    assert tags == ["base", "app"]
    assert verify_image(f"oci-archive:{out}:base") == []
    assert verify_image(f"oci-archive:{out}:app") == []
    assert extra.digest.hex in _blob_names(out)

    # Replacing the tag drops the blobs only the old "app" reached, and keeps "base" whole.
    newer = make_layer(tmp_path / "newer", {"etc/app.conf": b"v2"})
    second = assemble_image([*image.layers, newer], config=ImageConfig(env=("V=2",)))
    write_image(second, f"oci-archive:{out}:app")
    blobs = _blob_names(out)
    assert extra.digest.hex not in blobs
    assert first.manifest_digest.hex not in blobs
    assert {newer.digest.hex, second.manifest_digest.hex, image.manifest_digest.hex} <= blobs
    assert read_image(f"oci-archive:{out}:app").manifest_digest == second.manifest_digest
    assert read_image(f"oci-archive:{out}:base").manifest_digest == image.manifest_digest
    assert verify_image(f"oci-archive:{out}:base") == []


def test_oci_archive_refuses_to_replace_a_file_that_is_not_one(
    tmp_path: Path, image: Image
) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("precious")
    with pytest.raises(DestinationError, match="not an OCI archive"):
        write_image(image, f"oci-archive:{out}")
    assert out.read_text() == "precious"
    docker = tmp_path / "docker.tar"
    write_image(image, f"docker-archive:{docker}")
    before = docker.read_bytes()
    with pytest.raises(DestinationError, match="not an OCI archive"):
        write_image(image, f"oci-archive:{docker}")
    assert docker.read_bytes() == before
