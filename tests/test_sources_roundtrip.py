"""Properties: any closure written in any supported format loads back as the same graph, and a
directory store built from a random graph scans back to that graph."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from closurepack.sources import load_closure_file, nar_size, scan_closure
from closurepack.sources.scan import NIX_BASE32

Graph = dict[str, tuple[int, tuple[str, ...]]]


@st.composite
def graphs(draw: st.DrawFn, store_dir: str = "/nix/store") -> Graph:
    """A random DAG: item i may refer only to items before it; distinct Nix-style hashes."""
    count = draw(st.integers(1, 12))
    hashes = draw(
        st.lists(
            st.text(NIX_BASE32, min_size=32, max_size=32),
            min_size=count,
            max_size=count,
            unique=True,
        )
    )
    names = draw(
        st.lists(
            st.text("abcdefghijklmnopqrstuvwxyz0123456789+._-", min_size=1, max_size=20),
            min_size=count,
            max_size=count,
        )
    )
    paths = [f"{store_dir}/{h}-{n}" for h, n in zip(hashes, names, strict=True)]
    graph: Graph = {}
    for i, path in enumerate(paths):
        refs = draw(st.sets(st.sampled_from(paths[:i]))) if i else set()
        graph[path] = (draw(st.integers(0, 2**40)), tuple(sorted(refs)))
    return graph


def _loaded(closure_file: Path, store_root: Path | None = None) -> Graph:
    closure = load_closure_file(closure_file, store_root=store_root)
    return {i.path: (i.nar_size, i.references) for i in closure}


def _entries(graph: Graph, *, self_refs: bool) -> list[dict[str, object]]:
    return [
        {
            "path": path,
            "narSize": size,
            "narHash": "sha256:" + "0" * 52,
            "references": sorted({*refs, path} if self_refs else refs),
        }
        for path, (size, refs) in graph.items()
    ]


@settings(max_examples=40, deadline=None)
@given(graphs(), st.booleans())
def test_every_json_form_round_trips(graph: Graph, self_refs: bool) -> None:
    entries = _entries(graph, self_refs=self_refs)
    store_dir = "/nix/store/"
    forms = {
        "array.json": entries,
        "keyed.json": {e["path"]: {k: v for k, v in e.items() if k != "path"} for e in entries},
        "basenames.json": {
            path.removeprefix(store_dir): {
                "narSize": size,
                "references": [r.removeprefix(store_dir) for r in refs],
                "storeDir": "/nix/store",
            }
            for path, (size, refs) in graph.items()
        },
        "graph.json": {"closure": entries},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, doc in forms.items():
            path = Path(tmp, name)
            path.write_text(json.dumps(doc))
            assert _loaded(path) == graph, name
            packed = Path(tmp, name + ".zst")
            packed.write_bytes(zstandard.ZstdCompressor().compress(path.read_bytes()))
            assert _loaded(packed) == graph, name


@settings(max_examples=40, deadline=None)
@given(graphs(store_dir="/gnu/store"))
def test_text_form_round_trips_with_sizes_from_files(graph: Graph) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp, "root")
        lines = []
        expected: Graph = {}
        for index, (path, (_, refs)) in enumerate(graph.items()):
            if index % 2:  # every other item has files (of a size we know), the rest none
                location = root / path.lstrip("/")
                location.parent.mkdir(parents=True, exist_ok=True)
                location.write_bytes(b"x" * index)
                expected[path] = (nar_size(location), refs)
            else:
                expected[path] = (0, refs)
            lines += [path, "", str(len(refs)), *refs]
        text_file = Path(tmp, "graph")
        text_file.write_text("\n".join(lines) + "\n")
        assert _loaded(text_file, store_root=root) == expected


@settings(max_examples=25, deadline=None)
@given(graphs(), st.data())
def test_scan_recovers_the_graph_written_into_files(graph: Graph, data: st.DataObject) -> None:
    """Each item mentions its references' paths in a file, a symlink or a file name."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp, "nix", "store")
        store.mkdir(parents=True)
        for path, (_, refs) in graph.items():
            item = store / path.rsplit("/", 1)[1]
            item.mkdir()
            (item / "padding").write_bytes(bytes(data.draw(st.binary(max_size=64))))
            for n, ref in enumerate(refs):
                how = data.draw(st.sampled_from(["contents", "symlink", "name"]))
                if how == "contents":
                    (item / f"f{n}").write_bytes(b"\0prefix " + ref.encode() + b"/lib\0")
                elif how == "symlink":
                    (item / f"l{n}").symlink_to(f"{ref}/bin/x")
                else:
                    (item / ref.rsplit("/", 1)[1]).mkdir()
        closure = scan_closure(Path(tmp))
        assert {i.path: i.references for i in closure} == {p: r for p, (_, r) in graph.items()}
        for item in closure:
            assert item.nar_size == nar_size(store / item.name)
