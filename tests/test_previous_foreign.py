"""--previous with images made by other tools (no dev.closurepack.layers label): the store items
of each layer are read from its tar entry names, the planner keeps the layers whose items are
all still there, and a build reuses the blobs of those holding store items only."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from clistore import APP, GLIBC, LIBFOO, TOOL, ZLIB, Store, read_docker_archive, read_oci, run
from closurepack.decompression import open_decompressed
from closurepack.digest import Digest
from closurepack.errors import ImageError
from closurepack.image import ImageConfig, assemble_image
from closurepack.layer import BuiltLayer
from closurepack.layerlist import list_store_items
from closurepack.mediatypes import layer_media_type
from closurepack.transports import write_image
from handmade import make_layer
from runtimes import require_tool, run_tool

OTHER = "/nix/store/" + "9" * 32 + "-elsewhere-1.0"  # in no closure of these tests


def _store_tar(
    store: Store, items: list[str], *, prefix: str = "./", extra: bool = False, also: str = ""
) -> bytes:
    """A layer tar of ``items`` laid out as dockerTools does (``./nix/store/...``, parents
    first), plus ``etc/passwd`` when ``extra``, and an empty item ``also``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("nix", "nix/store"):
            info = tarfile.TarInfo(prefix + name)
            info.type, info.mode = tarfile.DIRTYPE, 0o555
            tar.addfile(info)
        for path in sorted(items):
            top = store.files(path)
            for file in [top, *sorted(top.rglob("*"))]:
                rel = path.lstrip("/") + str(file)[len(str(top)) :]
                tar.add(file, arcname=prefix + rel, recursive=False)
        if also:
            info = tarfile.TarInfo(prefix + also.lstrip("/"))
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        if extra:
            for name, data in (("etc", None), ("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")):
                info = tarfile.TarInfo(prefix + name)
                if data is None:
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _blob_layer(directory: Path, raw: bytes, compression: str = "gzip") -> BuiltLayer:
    from isal import igzip

    blob = igzip.compress(raw, mtime=0) if compression == "gzip" else raw
    directory.mkdir(parents=True, exist_ok=True)
    digest = Digest.of_bytes(blob)
    path = directory / digest.hex
    path.write_bytes(blob)
    return BuiltLayer(digest, Digest.of_bytes(raw), len(blob), layer_media_type(compression), path)


def _foreign_image(store: Store, tmp_path: Path, dest: str) -> list[BuiltLayer]:
    """An image as another tool makes it, no label: [glibc zlib] (./ names), [libfoo +
    etc/passwd] (/ names), [nix/ nix/store/ only], [glibc + an item of no closure]."""
    blobs = tmp_path / "foreign-blobs"
    layers = [
        _blob_layer(blobs, _store_tar(store, [GLIBC, ZLIB])),
        _blob_layer(blobs, _store_tar(store, [LIBFOO], prefix="/", extra=True), "none"),
        make_layer(blobs, {"nix": None, "nix/store": None}),
        _blob_layer(blobs, _store_tar(store, [GLIBC], prefix="", also=OTHER)),
    ]
    image = assemble_image(layers, config=ImageConfig(cmd=("/bin/app",)))
    assert "dev.closurepack.layers" not in image.config_bytes.decode()
    write_image(image, dest)
    return layers


def _plan(argv: list[object], capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    status, out, err = run(["plan", *argv, "--json"], capsys)
    assert status == 0, err
    layers = json.loads(out)["images"][0]["layers"]
    assert isinstance(layers, list)
    return layers


# listing one layer --------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["./", "/", ""])
@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_a_layer_lists_the_items_whose_top_entry_it_holds(
    store: Store, tmp_path: Path, prefix: str, compression: str
) -> None:
    import zstandard
    from isal import igzip

    raw = _store_tar(store, [GLIBC, ZLIB], prefix=prefix)
    blob = {
        "gzip": lambda: igzip.compress(raw),
        "zstd": lambda: zstandard.ZstdCompressor().compress(raw),
        "none": lambda: raw,
    }[compression]()
    listing = list_store_items(
        lambda: io.BytesIO(blob), compression, store_dir="/nix/store", where="x"
    )
    assert listing.items == (GLIBC, ZLIB)
    assert listing.only_store
    assert listing.digest == Digest.of_bytes(blob)
    assert listing.size == len(blob)
    assert listing.diff_id == Digest.of_bytes(raw)
    # the same layer read for another store directory holds nothing of it
    guix = list_store_items(
        lambda: io.BytesIO(blob), compression, store_dir="/gnu/store", where="x"
    )
    assert guix.items == ()
    assert not guix.only_store


def test_what_counts_as_an_item_and_what_as_other_content() -> None:
    from handmade import tar_bytes

    def listing(files: dict[str, bytes | str | None]) -> tuple[tuple[str, ...], bool]:
        raw = tar_bytes(files)
        found = list_store_items(lambda: io.BytesIO(raw), "none", store_dir="/gnu/store", where="x")
        return found.items, found.only_store

    item = "gnu/store/" + "a" * 32 + "-guile-3.0"
    assert listing({"gnu": None, "gnu/store": None}) == ((), True)  # no item: holds none
    assert listing({"gnu": None, "gnu/store": None, item: None, f"{item}/bin": None}) == (
        ("/" + item,),
        True,
    )
    # the files of an item without its top entry: not held, and other content
    assert listing({f"{item}/bin/guile": b"x"}) == ((), False)
    # a whiteout in the store directory, a file elsewhere: other content beside the item
    assert listing({item: None, "gnu/store/.wh." + "b" * 32 + "-x": b""}) == (("/" + item,), False)
    assert listing({item: None, "etc/passwd": b"root\n"}) == (("/" + item,), False)


def _entries(*infos: tarfile.TarInfo) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info in infos:
            tar.addfile(info)
    return buf.getvalue()


def _info(name: str, kind: bytes = tarfile.DIRTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(
    ("odd", "reason"),
    [
        (_info("nix/store/" + "a" * 32 + "-x/dev", tarfile.CHRTYPE), "a device"),
        (_info("nix/store/" + "a" * 32 + "-x/fifo", tarfile.FIFOTYPE), "a fifo"),
        (_info("nix/store/" + "a" * 32 + "-x/pw", tarfile.LNKTYPE, "etc/passwd"), "link out"),
        (_info("nix/store/" + "a" * 32 + "-x/../../../etc", tarfile.DIRTYPE), "a .. name"),
        (_info("./nix", tarfile.SYMTYPE, "/elsewhere"), "a link over the store"),
    ],
)
def test_entries_no_store_holds_make_a_layer_not_store_only(
    odd: tarfile.TarInfo, reason: str
) -> None:
    item = _info("nix/store/" + "a" * 32 + "-x")
    inside = _info("nix/store/" + "a" * 32 + "-x/ok", tarfile.LNKTYPE, "/nix/store/b-y/f")
    for raw, only in ((_entries(item, inside), True), (_entries(item, odd), False)):
        found = list_store_items(
            lambda raw=raw: io.BytesIO(raw), "none", store_dir="/nix/store", where="x"
        )
        assert found.items == ("/" + item.name,), reason
        assert found.only_store is only, reason


def test_a_layer_that_is_no_tar_is_one_error_naming_it() -> None:
    with pytest.raises(ImageError, match=r"^img: layer 0: cannot read the layer as a tar"):
        list_store_items(lambda: io.BytesIO(b"x" * 700), "none", store_dir="/nix/store",
                         where="img: layer 0")  # fmt: skip
    with pytest.raises(ImageError, match=r"^img: layer 1: corrupt gzip stream"):
        list_store_items(lambda: io.BytesIO(b"\x1f\x8b" + b"x" * 100), "gzip",
                         store_dir="/nix/store", where="img: layer 1")  # fmt: skip


# plan and build with a foreign --previous -----------------------------------------------------


@pytest.mark.parametrize("kind", ["oci", "docker-archive", "oci-archive"])
def test_plan_keeps_the_foreign_layers_whose_items_are_all_present(
    kind: str, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = tmp_path / ("foreign" if kind == "oci" else "foreign.tar")
    _foreign_image(store, tmp_path, f"{kind}:{where}")
    both = store.closure_file(tmp_path / "both.json", [APP, TOOL])
    layers = _plan(
        ["--closure", both, "--strategy", "per-item", "--previous", f"{kind}:{where}"], capsys
    )
    kept = [layer["paths"] for layer in layers if layer.get("origin") == "previous"]
    # [glibc zlib] and [libfoo] (its etc/passwd does not count); not the empty one, not the
    # one holding an item this closure lacks
    assert kept == [[GLIBC, ZLIB], [LIBFOO]]
    assert sorted(p for layer in layers for p in layer["paths"]) == sorted(  # type: ignore[attr-defined]
        [GLIBC, ZLIB, LIBFOO, APP, TOOL]
    )


def test_build_reuses_the_foreign_blobs_of_store_items_only(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = _foreign_image(store, tmp_path, f"oci:{tmp_path / 'foreign'}")
    both = store.closure_file(tmp_path / "both.json", [APP, TOOL])
    new = tmp_path / "new"
    argv = ["build", "--closure", both, "--store-root", store.root, "--cmd", "/bin/app",
            "--previous", f"oci:{tmp_path / 'foreign'}", "--cache-dir", tmp_path / "cache",
            "-o", f"oci:{new}"]  # fmt: skip
    status, _, err = run(argv, capsys)
    assert status == 0, err
    image = read_oci(new)
    # the [glibc zlib] layer is the foreign blob itself
    assert image.layer_digests[0] == str(foreign[0].digest)
    assert image.manifest["layers"][0]["mediaType"] == str(foreign[0].media_type)
    # the [libfoo] layer is kept as planned but built here: no etc/passwd from the other image
    assert str(foreign[1].digest) not in image.layer_digests
    names = set(image.layer_members(1))
    assert LIBFOO.lstrip("/") in names
    assert not any(name.startswith("etc") for name in names)
    # the label now records the reused layer's items: a later --previous reads it
    recorded = json.loads(image.config["config"]["Labels"]["dev.closurepack.layers"])
    assert recorded[str(foreign[0].diff_id)] == [GLIBC, ZLIB]
    status, out, err = run(["verify", f"oci:{new}"], capsys)
    assert status == 0, err
    assert out.strip().endswith(": ok")


def test_a_foreign_blob_that_perms_touch_is_built_anew(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = _foreign_image(store, tmp_path, f"oci:{tmp_path / 'foreign'}")
    both = store.closure_file(tmp_path / "both.json", [APP, TOOL])
    new = tmp_path / "new"
    argv = ["build", "--closure", both, "--store-root", store.root, "--cmd", "/bin/app",
            "--previous", f"oci:{tmp_path / 'foreign'}", "--no-cache",
            "--perms", f"{ZLIB}/lib/deep/data.txt=0600:9:9", "-o", f"oci:{new}"]  # fmt: skip
    status, _, err = run(argv, capsys)
    assert status == 0, err
    image = read_oci(new)
    assert str(foreign[0].digest) not in image.layer_digests  # the other tool's blob lacks it
    members = image.layer_members(0)
    assert {GLIBC.lstrip("/"), ZLIB.lstrip("/")} <= set(members)  # the layer kept as planned
    data = members[ZLIB.lstrip("/") + "/lib/deep/data.txt"]
    assert (data.mode, data.uid, data.gid) == (0o600, 9, 9)


def test_build_into_a_docker_archive_from_a_foreign_docker_archive(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old.tar"
    foreign = _foreign_image(store, tmp_path, f"docker-archive:{old}")
    lib = store.closure_file(tmp_path / "lib.json", [LIBFOO])
    new = tmp_path / "new.tar"
    status, _, err = run(
        ["build", "--closure", lib, "--store-root", store.root, "--previous",
         f"docker-archive:{old}", "--no-cache", "-o", f"docker-archive:{new}"],
        capsys,
    )  # fmt: skip
    assert status == 0, err
    _, config = read_docker_archive(new)
    assert config["rootfs"]["diff_ids"][0] == str(foreign[0].diff_id)


def test_a_foreign_image_without_store_items_is_one_error(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layer = make_layer(tmp_path / "blobs", {"nix": None, "nix/store": None, "etc": None})
    archive = tmp_path / "foreign.tar"
    write_image(assemble_image([layer], config=ImageConfig()), f"docker-archive:{archive}")
    both = store.closure_file(tmp_path / "both.json", [APP])
    status, out, err = run(["plan", "--closure", both, "--previous", str(archive)], capsys)
    assert status == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert str(archive) in err
    assert "hold no items of /nix/store" in err


def test_a_foreign_layer_with_a_wrong_diff_id_is_one_error(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = tmp_path / "foreign"
    _foreign_image(store, tmp_path, f"oci:{layout}")
    image = read_oci(layout)
    config = dict(image.config)
    config["rootfs"] = {"type": "layers", "diff_ids": ["sha256:" + "0" * 64] * 4}
    raw = json.dumps(config).encode()
    digest = Digest.of_bytes(raw)
    (layout / "blobs" / "sha256" / digest.hex).write_bytes(raw)
    manifest = dict(image.manifest, config={**image.manifest["config"], "digest": str(digest),
                                            "size": len(raw)})  # fmt: skip
    body = json.dumps(manifest).encode()
    mdigest = Digest.of_bytes(body)
    (layout / "blobs" / "sha256" / mdigest.hex).write_bytes(body)
    index = dict(image.index)
    index["manifests"] = [{**index["manifests"][0], "digest": str(mdigest), "size": len(body)}]
    (layout / "index.json").write_text(json.dumps(index))
    both = store.closure_file(tmp_path / "both.json", [APP])
    status, _, err = run(["plan", "--closure", both, "--previous", f"oci:{layout}"], capsys)
    assert status != 0
    assert len(err.strip().splitlines()) == 1
    assert "layer 0" in err
    assert "the config says sha256:" + "0" * 64 in err


@pytest.mark.integration
def test_an_image_made_by_buildah_is_a_previous(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Real buildah: one commit per layer (glibc+zlib, then libfoo), written as an OCI layout
    (uncompressed layers) and a docker-archive."""
    require_tool("buildah")
    base = ["buildah", "--storage-driver", "vfs", "--root", str(tmp_path / "bh-root"),
            "--runroot", str(tmp_path / "bh-run")]  # fmt: skip
    image = "scratch"
    for number, items in enumerate([[GLIBC, ZLIB], [LIBFOO]]):
        tree = tmp_path / f"tree{number}"
        for path in items:
            (tree / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            run_tool("cp", "-a", store.files(path), tree / path.lstrip("/"))
        container = run_tool(*base, "from", image).strip()
        run_tool(*base, "copy", container, tree / "nix", "/nix")
        image = f"localhost/step{number}"
        run_tool(*base, "commit", "-q", container, image)
        run_tool(*base, "rm", container)
    layout = tmp_path / "bh-oci"
    archive = tmp_path / "bh.tar"
    run_tool(*base, "push", image, f"oci:{layout}:v1")
    run_tool(*base, "push", image, f"docker-archive:{archive}")
    both = store.closure_file(tmp_path / "both.json", [APP, TOOL])
    for previous in (f"oci:{layout}:v1", f"docker-archive:{archive}"):
        layers = _plan(
            ["--closure", both, "--strategy", "per-item", "--previous", previous], capsys
        )
        kept = [layer["paths"] for layer in layers if layer.get("origin") == "previous"]
        assert kept == [[GLIBC, ZLIB], [LIBFOO]], previous
    new = tmp_path / "new"
    status, _, err = run(
        ["build", "--closure", both, "--store-root", store.root, "--previous",
         f"oci:{layout}:v1", "--no-cache", "-o", f"oci:{new}"],
        capsys,
    )  # fmt: skip
    assert status == 0, err
    assert read_oci(new).layer_digests[:2] == read_oci(layout, "v1").layer_digests


@pytest.mark.integration
def test_a_foreign_image_in_a_registry_is_a_previous(
    registry: object, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_tool("skopeo")
    host = registry.host  # type: ignore[attr-defined]
    foreign = _foreign_image(store, tmp_path, f"oci:{tmp_path / 'foreign'}:1")
    run_tool("skopeo", "copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'foreign'}:1",
             f"docker://{host}/foreign:1")  # fmt: skip
    both = store.closure_file(tmp_path / "both.json", [APP, TOOL])
    layers = _plan(
        ["--closure", both, "--strategy", "per-item", "--previous", f"docker://{host}/foreign:1"],
        capsys,
    )
    kept = [layer["paths"] for layer in layers if layer.get("origin") == "previous"]
    assert kept == [[GLIBC, ZLIB], [LIBFOO]]
    new = tmp_path / "new"
    status, _, err = run(
        ["build", "--closure", both, "--store-root", store.root, "--previous",
         f"docker://{host}/foreign:1", "--no-cache", "-o", f"oci:{new}"],
        capsys,
    )  # fmt: skip
    assert status == 0, err
    assert read_oci(new).layer_digests[0] == str(foreign[0].digest)


@pytest.mark.integration
def test_a_foreign_registry_image_is_downloaded_once(
    registry: object, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its layers are fetched once to be listed; the reusable ones are kept from that read for
    the build instead of being fetched again (counted in the registry's access log)."""
    require_tool("skopeo")
    host = registry.host  # type: ignore[attr-defined]
    foreign = _foreign_image(store, tmp_path, f"oci:{tmp_path / 'foreign'}:1")
    run_tool("skopeo", "copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'foreign'}:1",
             f"docker://{host}/foreign:1")  # fmt: skip
    from closurepack.validate import inspect_image

    # as the registry holds them (skopeo compressed the uncompressed one on the way)
    layers = [str(la["digest"]) for la in inspect_image(f"docker://{host}/foreign:1")["layers"]]
    mark = registry.mark()  # type: ignore[attr-defined]
    both = store.closure_file(tmp_path / "both.json", [APP, TOOL])
    new = tmp_path / "new"
    status, _, err = run(
        ["build", "--closure", both, "--store-root", store.root, "--strategy", "per-item",
         "--previous", f"docker://{host}/foreign:1", "--no-cache", "-o", f"oci:{new}"],
        capsys,
    )  # fmt: skip
    assert status == 0, err
    built = read_oci(new).layer_digests
    assert built[0] == str(foreign[0].digest)  # reused as it is
    gets = [
        r.path.rsplit("/", 1)[1]
        for r in registry.requests(mark)  # type: ignore[attr-defined]
        if r.method == "GET" and "/blobs/sha256:" in r.path
    ]
    assert sorted(d for d in gets if d in layers) == sorted(layers)  # each one GET, no more
    status, out, err = run(["verify", f"oci:{new}"], capsys)
    assert status == 0, err
    assert out.strip().endswith(": ok")


def test_open_decompressed_is_what_lists_layers() -> None:
    """The listing reads through decompression.open_decompressed: a truncated zstd layer is the
    same one-line error there as everywhere else."""
    import zstandard

    from handmade import tar_bytes

    blob = zstandard.ZstdCompressor().compress(tar_bytes({"nix": None}))[:-4]
    with pytest.raises(ImageError) as direct, open_decompressed("zstd", io.BytesIO(blob)) as reader:
        reader.read()
    with pytest.raises(ImageError) as listed:
        list_store_items(lambda: io.BytesIO(blob), "zstd", store_dir="/nix/store", where="L")
    assert str(listed.value).startswith("L: ")
    assert str(direct.value).split(": ", 1)[1] == str(listed.value).split(": ", 1)[1]


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def test_listing_streams_in_bounded_memory(tmp_path: Path) -> None:
    """A 32 MiB file and 20,000 entries: the listing's peak allocation stays far below the
    layer's size (nothing reads the layer, or keeps its entries, in memory). The file needs
    only to be well over the 6 MiB bound; 128 MiB cost a quarter more time for nothing."""
    import tracemalloc

    item = "nix/store/" + "a" * 32 + "-big"
    blob = tmp_path / "big.tar.gz"
    with tarfile.open(str(blob), mode="w|gz", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_info(item))
        big = tarfile.TarInfo(f"{item}/zeros")
        big.size = 32 << 20
        tar.addfile(big, _Zeros(big.size))
        for number in range(20_000):
            tar.addfile(_info(f"{item}/d/{number:05d}"))
    tracemalloc.start()
    try:
        found = list_store_items(
            lambda: blob.open("rb"), "gzip", store_dir="/nix/store", where="big"
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found.items == ("/" + item,)
    assert found.only_store
    assert found.size == blob.stat().st_size
    assert peak < 6 << 20, peak  # about 1.7 MiB; keeping every entry took 11 MiB


def test_a_foreign_blob_that_changed_since_it_was_listed_is_not_used(tmp_path: Path) -> None:
    from closurepack.errors import SourceError
    from closurepack.mediatypes import MediaType
    from closurepack.previous import ForeignLayer

    def layer(opener: object) -> ForeignLayer:
        return ForeignLayer(
            paths=(GLIBC,),
            digest=Digest.of_bytes(b"as listed"),
            diff_id=Digest.of_bytes(b"tar"),
            size=9,
            media_type=MediaType.OCI_LAYER,
            opener=opener,  # type: ignore[arg-type]
            where="img: layer 0",
        )

    out = tmp_path / "out"
    with pytest.raises(ImageError, match=r"^img: layer 0: blob content is sha256:"):
        layer(lambda: io.BytesIO(b"changed!!")).materialize(out)
    assert list(out.iterdir()) == []  # nothing half-written

    def gone() -> io.BytesIO:
        raise FileNotFoundError(2, "No such file or directory")

    with pytest.raises(SourceError, match=r"^img: layer 0: cannot read: "):
        layer(gone).materialize(out)
    assert layer(lambda: io.BytesIO(b"as listed")).materialize(out).blob_path.read_bytes() == (
        b"as listed"
    )


def test_a_missing_foreign_blob_is_one_line(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = tmp_path / "foreign"
    foreign = _foreign_image(store, tmp_path, f"oci:{layout}")
    (layout / "blobs" / "sha256" / foreign[1].digest.hex).unlink()
    both = store.closure_file(tmp_path / "both.json", [APP])
    status, out, err = run(["plan", "--closure", both, "--previous", f"oci:{layout}"], capsys)
    assert status == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert foreign[1].digest.hex in err
    assert "missing" in err
