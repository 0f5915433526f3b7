"""The chunks a layer's pipe fills are kept for the next layers' pipes (no new zeroed MiB a
chunk), and what an earlier layer left in them changes no byte of a later one."""

from __future__ import annotations

from pathlib import Path

import pytest

from closurepack import layerbuild
from closurepack.layer import BuiltLayer
from closurepack.layerbuild import build_store_layer
from test_layerbuild import APP, LIB, make_store


def _build(root: Path, dest: Path, compression: str) -> BuiltLayer:
    return build_store_layer(
        [APP, LIB], store_root=root, store_dir="/nix/store", compression=compression, dest_dir=dest
    )


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_spare_chunks_are_reused_and_change_no_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: str
) -> None:
    root = make_store(tmp_path / "store")
    monkeypatch.setattr(layerbuild, "_spare_chunks", [])
    fresh = _build(root, tmp_path / "fresh", compression)
    assert layerbuild._spare_chunks  # its chunks were kept for the next layer
    # spares full of other bytes, as an earlier layer would leave them
    spares = [bytearray(b"\xff" * layerbuild._CHUNK) for _ in range(layerbuild._SPARE_CHUNKS)]
    monkeypatch.setattr(layerbuild, "_spare_chunks", list(spares))
    made: list[int] = []

    def counting_bytearray(size: int) -> bytearray:
        made.append(size)
        return bytearray(size)

    monkeypatch.setattr(layerbuild, "bytearray", counting_bytearray, raising=False)
    again = _build(root, tmp_path / "again", compression)
    assert made == []  # every chunk came from the spares
    assert (again.digest, again.diff_id, again.size) == (fresh.digest, fresh.diff_id, fresh.size)
    assert again.blob_path.read_bytes() == fresh.blob_path.read_bytes()
    # given back, no more than the limit, and the same chunks (none lost, none new)
    assert len(layerbuild._spare_chunks) == layerbuild._SPARE_CHUNKS
    assert {id(chunk) for chunk in layerbuild._spare_chunks} == {id(chunk) for chunk in spares}
