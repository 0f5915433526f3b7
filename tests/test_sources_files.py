"""load_closure_file: every format on real data, compression, and every error case."""

from __future__ import annotations

import gc
import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest
import zstandard

from closurepack.errors import ClosureError
from closurepack.graph import Closure
from closurepack.sources import load_closure_file, nar_size
from closurepack.sources.files import parse_closure

DATA = Path(__file__).parent / "data"
FORMATS = DATA / "formats"
CLOSURES = DATA / "closures"


def _raw_graph(path: Path) -> dict[str, tuple[int, tuple[str, ...]]]:
    """path -> (narSize, sorted references without self) read with plain json, as a reference."""
    doc = json.loads(path.read_text())
    return _raw_graph_from(doc["closure"] if isinstance(doc, dict) else doc)


def _raw_graph_from(doc: list[dict[str, Any]]) -> dict[str, tuple[int, tuple[str, ...]]]:
    return {
        o["path"]: (o["narSize"], tuple(sorted(set(o["references"]) - {o["path"]}))) for o in doc
    }


def _graph(closure: Closure) -> dict[str, tuple[int, tuple[str, ...]]]:
    return {i.path: (i.nar_size, i.references) for i in closure}


def _write(tmp_path: Path, text: str, name: str = "closure.json") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# Formats ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["python3.base.json", "nginx.base.json", "nginx.updated.json"])
def test_path_info_array_form(name: str) -> None:
    closure = load_closure_file(CLOSURES / name)
    assert _graph(closure) == _raw_graph(CLOSURES / name)
    assert closure.store_dir == "/nix/store"
    assert closure.source == str(CLOSURES / name)
    first = json.loads((CLOSURES / name).read_text())[0]
    assert closure.items[first["path"]].nar_hash == first["narHash"]


def test_roots_are_the_items_nothing_refers_to() -> None:
    closure = load_closure_file(CLOSURES / "python3.base.json")
    referred = {r for i in closure for r in i.references}
    assert closure.roots == tuple(p for p in sorted(closure.items) if p not in referred)
    assert any(r.rsplit("/", 1)[1].split("-", 1)[1].startswith("python3-") for r in closure.roots)


def test_path_info_object_form_2_19(tmp_path: Path) -> None:
    """Nix >= 2.19 keys the objects by path; the result must equal the array form's."""
    array = json.loads((CLOSURES / "nginx.base.json").read_text())
    keyed = {o["path"]: {k: v for k, v in o.items() if k != "path"} for o in array}
    closure = load_closure_file(_write(tmp_path, json.dumps(keyed)))
    assert _graph(closure) == _raw_graph(CLOSURES / "nginx.base.json")


@pytest.mark.parametrize("version", [1, 2, 3])
def test_path_info_json_format_versions(tmp_path: Path, version: int) -> None:
    """Nix's own examples: version 1 has full paths, 2 and 3 base names plus storeDir."""
    foo = json.loads((FORMATS / f"path-info-json-{version}-impure.json").read_text())
    bar = json.loads((FORMATS / f"path-info-json-{version}-empty_pure.json").read_text())
    names = ["n5wkd9frr45pa74if5gpz9j7mifg27fh-foo", "g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar"]
    key = "/nix/store/{}" if version == 1 else "{}"
    doc = {key.format(names[0]): foo, key.format(names[1]): bar}
    closure = load_closure_file(_write(tmp_path, json.dumps(doc)))
    foo_path, bar_path = (f"/nix/store/{n}" for n in names)
    assert closure.items[foo_path].references == (bar_path,)  # self-reference dropped
    assert closure.items[foo_path].nar_size == 34878
    assert closure.items[bar_path].nar_size == 0
    assert closure.items[bar_path].references == ()
    assert closure.roots == (foo_path,)


def test_base_names_use_the_given_store_dir(tmp_path: Path) -> None:
    doc = {
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x": {
            "narSize": 1,
            "references": ["bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-y"],
            "storeDir": "/gnu/store",
        },
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-y": {
            "narSize": 2,
            "references": [],
            "storeDir": "/gnu/store",
        },
    }
    closure = load_closure_file(_write(tmp_path, json.dumps(doc)))
    assert closure.store_dir == "/gnu/store"
    x = closure.items["/gnu/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x"]
    assert x.references == ("/gnu/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-y",)


def test_structured_attrs_bare_list() -> None:
    path = FORMATS / "nix2container-hello-closure-graph.json"
    closure = load_closure_file(path)
    assert _graph(closure) == _raw_graph(path)
    assert len(closure) == 5
    hello = next(i for i in closure if i.package_name == "hello-2.10")
    bash = next(i for i in closure if i.package_name == "bash-5.1-p12")
    assert closure.roots == (hello.path, bash.path)  # the list holds bash too, unreferenced
    assert hello.nar_hash == "sha256:1cbfg6ggpyja8dd5fwdvsba82l1xvfikhvxqk3rsqdj7lqyg58dy"


def test_structured_attrs_single_key_object(tmp_path: Path) -> None:
    graph = json.loads((FORMATS / "nix2container-hello-closure-graph.json").read_text())
    closure = load_closure_file(_write(tmp_path, json.dumps({"closure": graph})))
    assert _graph(closure) == _raw_graph(FORMATS / "nix2container-hello-closure-graph.json")


def test_structured_attrs_whole_attrs_json_from_nix() -> None:
    """The .attrs.json a Nix 2.8 builder got (recorded from tests/fixtures/nix/graphs.nix)."""
    path = FORMATS / "nix-2.8-structured-attrs.json"
    closure = load_closure_file(path)
    attrs = json.loads(path.read_text())
    assert _graph(closure) == _raw_graph_from(attrs["closure"])
    assert closure.roots == tuple(attrs["exportReferencesGraph"]["closure"])


def test_text_format_from_nix_sizes_from_files(tmp_path: Path) -> None:
    """Nix 2.8's text exportReferencesGraph; no sizes in it, so they come from the files."""
    path = FORMATS / "nix-2.8-export-references-graph.txt"
    reference = load_closure_file(FORMATS / "nix-2.8-path-info.json")
    store_root = tmp_path / "root"
    # No files under this store root: the graph is read, every size is 0.
    empty = load_closure_file(path, store_root=store_root)
    assert {p: i.references for p, i in empty.items.items()} == {
        p: i.references for p, i in reference.items.items()
    }
    assert {i.nar_size for i in empty} == {0}
    # Files for one item: its size is their NAR size, the others stay 0.
    note = next(p for p in reference.items if p.endswith("-note.txt"))
    note_file = store_root / note.lstrip("/")
    note_file.parent.mkdir(parents=True)
    note_file.write_text("note: a single-file store item\n")
    sized = load_closure_file(path, store_root=store_root)
    assert sized.items[note].nar_size == reference.items[note].nar_size == nar_size(note_file)
    assert sum(i.nar_size for i in sized) == sized.items[note].nar_size


def test_text_format_guix_style(tmp_path: Path) -> None:
    text = (
        "/gnu/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-hello-2.12\n"
        "/gnu/store/dddddddddddddddddddddddddddddddd-hello-2.12.drv\n"
        "2\n"
        "/gnu/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-hello-2.12\n"
        "/gnu/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-glibc-2.35\n"
        "/gnu/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-glibc-2.35\n"
        "\n"
        "0\n"
    )
    closure = load_closure_file(_write(tmp_path, text, "graph"), store_root=tmp_path)
    assert closure.store_dir == "/gnu/store"
    assert closure.items["/gnu/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-hello-2.12"].references == (
        "/gnu/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-glibc-2.35",
    )


def test_zstd_compressed_real_file() -> None:
    compressed = load_closure_file(CLOSURES / "python3.base.json.zst")
    assert _graph(compressed) == _graph(load_closure_file(CLOSURES / "python3.base.json"))


def test_zstd_without_content_size_and_gzip(tmp_path: Path) -> None:
    raw = (CLOSURES / "nginx.base.json").read_bytes()
    streamed = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    no_size = tmp_path / "a.zst"
    no_size.write_bytes(streamed.compress(raw) + streamed.flush())
    gz = tmp_path / "a.json.gz"
    gz.write_bytes(gzip.compress(raw))
    expected = _raw_graph(CLOSURES / "nginx.base.json")
    assert _graph(load_closure_file(no_size)) == expected
    assert _graph(load_closure_file(gz)) == expected


@pytest.mark.slow
def test_generated_big_closure_loads(tmp_path: Path) -> None:
    """60,000 items, each referring to up to 5 earlier ones, made here (the size of Debian's
    whole archive as one closure; its speed is measured by bench/plan_bench.py: speed goals are
    benchmarks, never timed unit tests)."""
    count = 60000
    paths = [f"/nix/store/{i:032d}-item-{i}" for i in range(count)]
    doc = [
        {
            "path": paths[i],
            "narSize": i,
            "narHash": "sha256-x",
            "references": [paths[(i * 7 + k) % i] for k in range(min(i, 5))],
        }
        for i in range(count)
    ]
    path = tmp_path / "big.json.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(json.dumps(doc).encode()))
    closure = load_closure_file(path)
    assert len(closure) == count
    assert closure.items[paths[10]].references == tuple(
        sorted({paths[(70 + k) % 10] for k in range(5)})
    )


# Errors ----------------------------------------------------------------------------------------

GOOD = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a"
OTHER = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b"


def _entry(path: str, refs: list[str] | None = None, size: object = 1) -> dict[str, object]:
    return {"path": path, "narSize": size, "references": refs or []}


def _load_error(tmp_path: Path, content: object | str) -> str:
    text = content if isinstance(content, str) else json.dumps(content, indent=1)
    path = _write(tmp_path, text)
    with pytest.raises(ClosureError) as info:
        load_closure_file(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    return message


def test_error_unparsable_json_names_the_line(tmp_path: Path) -> None:
    message = _load_error(tmp_path, '[\n {"path": "/nix/store/x-a",\n  "narSize": 1,,\n}]')
    assert ":3:" in message
    assert "invalid JSON" in message


def test_error_json_nested_too_deeply(tmp_path: Path) -> None:
    assert "invalid JSON: nested too deeply" in _load_error(tmp_path, "[" * 100_000)


def test_error_not_a_closure_file(tmp_path: Path) -> None:
    assert "not a closure file" in _load_error(tmp_path, "hello\n")
    assert "empty" in _load_error(tmp_path, "  \n")


def test_zstd_multi_frame_and_truncated(tmp_path: Path) -> None:
    raw = (CLOSURES / "nginx.base.json").read_bytes()
    compressor = zstandard.ZstdCompressor()
    frames = tmp_path / "frames.zst"
    frames.write_bytes(
        b"".join(compressor.compress(raw[i : i + 999]) for i in range(0, len(raw), 999))
    )
    assert _graph(load_closure_file(frames)) == _raw_graph(CLOSURES / "nginx.base.json")
    cut = tmp_path / "cut.zst"
    cut.write_bytes(compressor.compress(raw)[:-10])
    with pytest.raises(ClosureError, match="truncated zstd data"):
        load_closure_file(cut)


def test_error_bad_compressed_data(tmp_path: Path) -> None:
    path = tmp_path / "bad.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + b"garbage" * 10)
    with pytest.raises(ClosureError, match="cannot decompress"):
        load_closure_file(path)


def test_error_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ClosureError, match="cannot read"):
        load_closure_file(tmp_path / "nope.json")


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"path": 3, "narSize": 1, "references": []}, "'path' must be a string"),
        (_entry(GOOD, size="12"), "'narSize' must be a non-negative integer"),
        (_entry(GOOD, size=True), "'narSize' must be a non-negative integer"),
        (_entry(GOOD, size=-5), "'narSize' must be a non-negative integer"),
        (_entry(GOOD, size=1.5), "'narSize' must be a non-negative integer"),
        ({"path": GOOD, "narSize": 1, "references": GOOD}, "'references' must be a list"),
        ({"path": GOOD, "narSize": 1}, "'references' must be a list"),
        ({"path": GOOD, "narSize": 1, "references": [None]}, "non-empty strings"),
        ({**_entry(GOOD), "narHash": 5}, "'narHash' must be a string"),
        ("just a string", "expected an object"),
    ],
)
def test_error_wrong_field_types(tmp_path: Path, entry: object, expected: str) -> None:
    message = _load_error(tmp_path, [_entry(OTHER), entry])
    assert expected in message
    assert "item 1" in message


def test_error_null_entry_in_object_form(tmp_path: Path) -> None:
    message = _load_error(tmp_path, {GOOD: None})
    assert GOOD in message
    assert "not a valid store path" in message


def test_error_invalid_path_in_array_form(tmp_path: Path) -> None:
    message = _load_error(tmp_path, [_entry(OTHER), {"path": GOOD, "valid": False}])
    assert f"item 1 ({GOOD}) is not a valid store path" in message


def test_error_single_path_info_without_path() -> None:
    with pytest.raises(ClosureError, match="single path-info object without 'path'"):
        load_closure_file(FORMATS / "path-info-json-2-pure.json")


def test_error_reference_outside_the_closure(tmp_path: Path) -> None:
    message = _load_error(tmp_path, [_entry(GOOD, [OTHER])])
    assert f"{GOOD} refers to {OTHER}, which is not in the closure" in message


def test_error_cycle_between_distinct_items(tmp_path: Path) -> None:
    message = _load_error(tmp_path, [_entry(GOOD, [OTHER]), _entry(OTHER, [GOOD])])
    assert "cycle" in message
    assert GOOD in message
    assert OTHER in message


def test_self_reference_is_ignored(tmp_path: Path) -> None:
    closure = load_closure_file(_write(tmp_path, json.dumps([_entry(GOOD, [GOOD])])))
    assert closure.items[GOOD].references == ()
    assert closure.roots == (GOOD,)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/nix/store/../etc/passwd", "'..'"),
        ("/nix/store/x/../../y", "'..'"),
        ("/nix/store/abc-\0x", "NUL"),
        ("", "empty store path"),
        ("/nix/store/", "not a direct child"),
        ("nix/store/abc-x", "not absolute"),
        ("/nix/other/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x", "not a direct child of the store"),
    ],
)
def test_error_bad_store_paths(tmp_path: Path, path: str, expected: str) -> None:
    assert expected in _load_error(tmp_path, [_entry(GOOD), _entry(path)])


def test_error_duplicate_items(tmp_path: Path) -> None:
    assert f"duplicate item {GOOD}" in _load_error(tmp_path, [_entry(GOOD), _entry(GOOD)])


def test_error_empty_closure(tmp_path: Path) -> None:
    assert "empty" in _load_error(tmp_path, [])


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        (f"{GOOD}\n\n1\n", 3, "1 references announced, file ends first"),
        (f"{GOOD}\n\nzwei\n", 3, "expected a reference count"),
        (f"{GOOD}\n", 1, "truncated item"),
        (f"{GOOD}\n\n0\nnot-a-path\n\n0\n", 4, "expected a store path"),
        (f"{GOOD}\n\n1\nrelative\n", 4, "is not a path"),
    ],
)
def test_error_text_format_names_the_line(
    tmp_path: Path, text: str, line: int, expected: str
) -> None:
    message = _load_error(tmp_path, text)
    assert f":{line}:" in message
    assert expected in message


def test_error_text_format_reference_outside_closure(tmp_path: Path) -> None:
    message = _load_error(tmp_path, f"{GOOD}\n\n1\n{OTHER}\n")
    assert "not in the closure" in message


def test_error_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(f"{GOOD}\n\n0\n".encode() + b"/nix/store/\xff\n")
    with pytest.raises(ClosureError, match=r":4: not UTF-8"):
        load_closure_file(path)


def test_parse_closure_with_roots() -> None:
    data = (CLOSURES / "python3.base.json").read_bytes()
    some = sorted(json.loads(data), key=lambda o: o["path"])[0]["path"]
    closure = parse_closure(data, source="x", roots=[some])
    assert closure.roots == (some,)
    with pytest.raises(ClosureError, match="root /nix/store/nope-x is not in the closure"):
        parse_closure(data, source="x", roots=["/nix/store/nope-x"])


def test_unreadable_size_source_is_skipped_not_guessed(tmp_path: Path) -> None:
    """An item whose files are absent gets 0, never a size from some other place."""
    text = f"{GOOD}\n\n0\n"
    os.makedirs(tmp_path / "nix/store")
    closure = load_closure_file(_write(tmp_path, text, "g"), store_root=tmp_path)
    assert closure.items[GOOD].nar_size == 0


def test_parsing_leaves_the_garbage_collector_as_it_was(tmp_path: Path) -> None:
    assert gc.isenabled()
    load_closure_file(CLOSURES / "nginx.base.json")
    assert gc.isenabled()
    _load_error(tmp_path, [_entry(GOOD, [OTHER])])  # fails inside the paused section
    assert gc.isenabled()
    gc.disable()
    try:
        load_closure_file(CLOSURES / "nginx.base.json")
        assert not gc.isenabled()
    finally:
        gc.enable()
