"""Fuzzing the parsers of what users hand us: closure files, plans and image configs.

Every input, random bytes or random JSON shaped like the real thing, must either parse or raise
an error of closurepack's exception tree whose message is one line: never another exception
(a KeyError, TypeError or RecursionError would be a traceback for the user) and never a message
spanning lines. A few hundred examples per parser in the normal run; the ``slow`` run (part of
./run-tests and CI) tries thousands.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from closurepack.errors import ClosurepackError, PlanError
from closurepack.plan import LayerPlan
from closurepack.previous import plan_from_image_config
from closurepack.readback import read_image
from closurepack.sources.files import parse_closure

NORMAL, SLOW = 300, 2000
EXAMPLES = [
    pytest.param(NORMAL, id="normal"),
    pytest.param(SLOW, id="slow", marks=pytest.mark.slow),
]

PATHS = st.sampled_from(
    [
        "/nix/store/" + "a" * 32 + "-a",
        "/nix/store/" + "b" * 32 + "-b",
        "/gnu/store/" + "c" * 32 + "-c",
        "/nix/store/../etc",
        "/nix/store/x\ny",
        "/nix/store/x\0y",
        "nix/store/rel",
        "/nix/store/",
        "/",
        "",
        "b" * 32 + "-b",
    ]
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8),
    PATHS,
)  # fmt: skip
KEYS = st.sampled_from(
    ["path", "narSize", "references", "narHash", "storeDir", "valid", "closure", "images",
     "layers", "paths", "size", "origin", "name", "roots", "version", "store_dir", "strategy",
     "max_layers", "metadata", "format", "config", "rootfs", "diff_ids", "history", "Labels",
     "Env", "Cmd", "Entrypoint", "ExposedPorts", "Volumes", "WorkingDir", "User", "StopSignal",
     "comment", "empty_layer", "dev.closurepack.layers", "architecture", "os", "created",
     "x"]
) | PATHS  # fmt: skip
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=20,
)


def _encode(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


def _mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    """``seed`` with a few bytes replaced, inserted or cut off."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(seed)
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, max(len(data) - 1, 0)))
            how = draw(st.sampled_from(["flip", "insert", "cut"]))
            if how == "flip" and data:
                data[at] = draw(st.integers(0, 255))
            elif how == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=4))
            else:
                del data[at:]
        return bytes(data)

    return mutate()


def _check(call: Callable[[], object]) -> None:
    try:
        call()
    except ClosurepackError as exc:
        message = str(exc)
        assert message, "an empty message"
        assert len(message.splitlines()) == 1, message  # no \n, \r, \v, \x85, \u2028...
    # Anything else propagates: the test fails with it.


def _run(examples: int, strategy: st.SearchStrategy[Any], body: Callable[[Any], None]) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(strategy)
    def inner(value: Any) -> None:
        body(value)

    inner()


# Closure files ---------------------------------------------------------------------------------

CLOSURE_SEED = _encode(
    [
        {"path": "/nix/store/" + "a" * 32 + "-a", "narSize": 1, "references": []},
        {
            "path": "/nix/store/" + "b" * 32 + "-b",
            "narSize": 2,
            "references": ["/nix/store/" + "a" * 32 + "-a"],
        },
    ]
)
TEXT_SEED = (
    "/nix/store/" + "b" * 32 + "-b\n\n1\n/nix/store/" + "a" * 32 + "-a\n"
    "/nix/store/" + "a" * 32 + "-a\n\n0\n"
).encode()


def _parse_closure(data: bytes) -> None:
    # store_root: nowhere, so items without a size are 0 and no host file is read
    _check(lambda: parse_closure(data, source="fuzz.json", store_root=Path("/nonexistent")))


@pytest.mark.parametrize("examples", EXAMPLES)
def test_closure_files_from_bytes(examples: int) -> None:
    data = st.binary(max_size=200) | _mutations(CLOSURE_SEED) | _mutations(TEXT_SEED)
    _run(examples, data, _parse_closure)


@pytest.mark.parametrize("examples", EXAMPLES)
def test_closure_files_from_json(examples: int) -> None:
    item = st.fixed_dictionaries(
        {"path": PATHS},
        optional={"narSize": SCALARS, "references": st.lists(PATHS, max_size=3) | JSON,
                  "narHash": SCALARS, "valid": SCALARS, "storeDir": SCALARS},
    )  # fmt: skip
    docs = (
        st.lists(item, max_size=4)
        | st.dictionaries(PATHS, item, max_size=3)
        | st.fixed_dictionaries({"closure": st.lists(item, max_size=4)})
        | JSON
    )
    _run(examples, docs, lambda doc: _parse_closure(_encode(doc)))


# Plans -----------------------------------------------------------------------------------------

PLAN_SEED = LayerPlan.from_json_obj(
    {
        "store_dir": "/nix/store",
        "images": [{"name": "a", "layers": [{"paths": ["/nix/store/" + "a" * 32 + "-a"]}]}],
    }
).to_json()


def _parse_plan(data: bytes) -> None:
    _check(lambda: LayerPlan.from_json(data, source="fuzz-plan.json"))


@pytest.mark.parametrize("examples", EXAMPLES)
def test_plans_from_bytes(examples: int) -> None:
    _run(examples, st.binary(max_size=200) | _mutations(PLAN_SEED.encode()), _parse_plan)


@pytest.mark.parametrize("examples", EXAMPLES)
def test_plans_from_json(examples: int) -> None:
    layer = st.fixed_dictionaries(
        {"paths": st.lists(PATHS, max_size=3) | JSON},
        optional={"size": SCALARS, "origin": SCALARS},
    )
    image = st.fixed_dictionaries(
        {"layers": st.lists(layer, max_size=3) | JSON},
        optional={"name": SCALARS, "roots": st.lists(PATHS, max_size=2) | JSON},
    )
    plan = st.fixed_dictionaries(
        {"images": st.lists(image, max_size=3) | JSON},
        optional={"version": SCALARS, "store_dir": SCALARS, "max_layers": SCALARS,
                  "strategy": SCALARS, "metadata": JSON, "format": SCALARS},
    )  # fmt: skip
    _run(examples, plan | JSON, lambda doc: _parse_plan(_encode(doc)))


# Image configs ---------------------------------------------------------------------------------

DIFF_ID = "sha256:" + "0" * 64


def _config_docs() -> st.SearchStrategy[Any]:
    label = st.one_of(
        JSON.map(json.dumps),
        st.dictionaries(st.just(DIFF_ID) | st.text(max_size=5), st.lists(PATHS, max_size=2)
                        | JSON).map(json.dumps),
        SCALARS,
    )  # fmt: skip
    container = st.fixed_dictionaries(
        {},
        optional={
            "Labels": st.fixed_dictionaries({"dev.closurepack.layers": label}) | JSON,
            "Env": st.lists(st.text(max_size=6), max_size=2) | JSON,
            "Cmd": JSON, "Entrypoint": JSON, "ExposedPorts": JSON, "Volumes": JSON,
            "WorkingDir": JSON, "User": JSON, "StopSignal": JSON,
        },
    )  # fmt: skip
    return st.fixed_dictionaries(
        {},
        optional={
            "config": container | JSON,
            "rootfs": st.fixed_dictionaries(
                {"diff_ids": st.lists(st.just(DIFF_ID) | SCALARS, max_size=2) | JSON}
            ) | JSON,
            "history": st.lists(
                st.fixed_dictionaries({}, optional={"comment": SCALARS, "empty_layer": SCALARS})
                | JSON, max_size=2,
            ) | JSON,
            "architecture": SCALARS, "os": SCALARS, "created": SCALARS,
        },
    ) | JSON  # fmt: skip


def _layout_with_config(root: Path, config: bytes, layers: int) -> str:
    """An OCI layout whose manifest lists ``layers`` (missing) layer blobs and ``config``."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    config_hex = hashlib.sha256(config).hexdigest()
    (blobs / config_hex).write_bytes(config)
    manifest = _encode(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": f"sha256:{config_hex}", "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": "sha256:" + f"{i:x}" * 64, "size": 1} for i in range(layers)],
        }
    )  # fmt: skip
    manifest_hex = hashlib.sha256(manifest).hexdigest()
    (blobs / manifest_hex).write_bytes(manifest)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (root / "index.json").write_bytes(
        _encode({"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": f"sha256:{manifest_hex}", "size": len(manifest)}]})
    )  # fmt: skip
    return f"oci:{root}"


def _read_config(tmp_path: Path, config: bytes, layers: int) -> None:
    source = _layout_with_config(tmp_path / "layout", config, layers)
    _check(lambda: read_image(source))
    try:
        doc = json.loads(config)
    except (ValueError, RecursionError):
        return
    if isinstance(doc, dict):
        _check(lambda: plan_from_image_config(doc, source="fuzz"))


@pytest.mark.parametrize("examples", EXAMPLES)
def test_image_configs_from_bytes(tmp_path: Path, examples: int) -> None:
    labels = {"dev.closurepack.layers": json.dumps({DIFF_ID: []})}
    seed = _encode({"config": {"Labels": labels}, "history": [{}],
                    "rootfs": {"type": "layers", "diff_ids": [DIFF_ID]}})  # fmt: skip
    data = st.tuples(st.binary(max_size=200) | _mutations(seed), st.integers(0, 2))
    _run(examples, data, lambda value: _read_config(tmp_path, *value))


@pytest.mark.parametrize("examples", EXAMPLES)
def test_image_configs_from_json(tmp_path: Path, examples: int) -> None:
    data = st.tuples(_config_docs().map(_encode), st.integers(0, 2))
    _run(examples, data, lambda value: _read_config(tmp_path, *value))


def test_the_fuzzers_reach_success_and_failure() -> None:
    """The seeds parse, so mutations near them exercise the deep checks, not only the first."""
    assert len(parse_closure(CLOSURE_SEED, source="seed")) == 2
    assert len(parse_closure(TEXT_SEED, source="seed")) == 2
    assert LayerPlan.from_json(PLAN_SEED).images[0].name == "a"
    with pytest.raises(ClosurepackError):
        parse_closure(b"[{}]", source="x")


# What the fuzzers found ------------------------------------------------------------------------


@pytest.mark.parametrize("diff_ids", [None, 3, True])
def test_previous_image_whose_diff_ids_are_no_list(diff_ids: object) -> None:
    """Was a TypeError traceback from --previous: now "records no store layers"."""
    label = json.dumps({DIFF_ID: ["/nix/store/" + "a" * 32 + "-a"]})
    config = {"config": {"Labels": {"dev.closurepack.layers": label}},
              "rootfs": {"diff_ids": diff_ids}}  # fmt: skip
    with pytest.raises(PlanError, match="fuzz: the image records no store layers"):
        plan_from_image_config(config, source="fuzz")


def test_a_line_break_inside_a_name_still_gives_one_line() -> None:
    """A text closure file whose path holds a carriage return (lines split at "\\n" only):
    the message quoted it and spanned two lines."""
    data = b"/a\rb/x\n\n0\n/y/z\n\n0\n"
    with pytest.raises(ClosurepackError) as info:
        parse_closure(data, source="odd.txt")
    assert str(info.value) == "odd.txt: /y/z is not a direct child of the store /a; b"
    assert str(ClosurepackError("tool said:\n  first\n\n  second\n")) == (
        "tool said:; first; second"
    )
    assert str(ClosurepackError("plain")) == "plain"
