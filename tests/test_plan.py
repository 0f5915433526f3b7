"""The plan's JSON form: round trip and the checks made when reading one."""

from __future__ import annotations

import json

import pytest

from closurepack.errors import PlanError
from closurepack.plan import ImagePlan, LayerPlan, PlannedLayer

A = "/gnu/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a"
B = "/gnu/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b"


def test_round_trip() -> None:
    plan = LayerPlan(
        (ImagePlan((PlannedLayer((A,), 3, "previous"), PlannedLayer((B,), 4)), "x", (B,)),),
        store_dir="/gnu/store",
        strategy="size",
        max_layers=5,
        metadata={"k": 1},
    )
    assert LayerPlan.from_json(plan.to_json(indent=2)) == plan
    bare = LayerPlan.from_json(
        json.dumps({"store_dir": "/gnu/store", "images": [{"layers": [{"paths": [B, A]}]}]})
    )
    assert bare.store_dir == "/gnu/store"
    assert bare.images[0].layers == (PlannedLayer((A, B)),)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ({"layers": [{"paths": [A]}], "roots": [1]}, "'roots' must be a list of store paths"),
        ({"layers": [{"paths": [A]}], "roots": A}, "'roots' must be a list of store paths"),
        ({"layers": [{"paths": [A]}], "name": 2}, "'name' must be a string"),
        ({"layers": [{"paths": [A], "size": -1}]}, "invalid 'size' or 'origin'"),
        ({"layers": [{"paths": ["gnu/store/x-y"]}]}, "not absolute"),
        ({"layers": [{"paths": [5]}]}, "store path 5 is not a string"),
    ],
)
def test_bad_images_are_one_line_plan_errors(image: object, message: str) -> None:
    with pytest.raises(PlanError, match=r"^p\.json: images\[0\]") as info:
        LayerPlan.from_json(
            json.dumps({"store_dir": "/gnu/store", "images": [image]}), source="p.json"
        )
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def _plan(paths: list[object], **top: object) -> str:
    return json.dumps({**top, "images": [{"layers": [{"paths": paths}]}]})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # no store_dir: before, it was taken from the paths, so "/etc/passwd" made "/etc" a store
        (_plan(["/etc/passwd"]), "p.json: no 'store_dir'"),
        (_plan([A]), "p.json: no 'store_dir'"),
        (
            _plan(["/etc/passwd"], store_dir="/nix/store"),
            "p.json: images[0].layers[0]: /etc/passwd is not an item of the store /nix/store",
        ),
        (
            _plan([A], store_dir="/nix/store"),
            f"p.json: images[0].layers[0]: {A} is not an item of the store /nix/store",
        ),
        (
            _plan([f"{A}/bin/sh"], store_dir="/gnu/store"),
            f"p.json: images[0].layers[0]: {A}/bin/sh is not an item of the store /gnu/store",
        ),
        (
            _plan(["/gnu/store/../../etc/passwd"], store_dir="/gnu/store"),
            "p.json: images[0].layers[0]: store path '/gnu/store/../../etc/passwd' contains '..'",
        ),
        (
            _plan(["gnu/store/" + "a" * 32 + "-a"], store_dir="/gnu/store"),
            "p.json: images[0].layers[0]: store path 'gnu/store/",
        ),
        (_plan([A], store_dir="gnu/store"), "p.json: 'store_dir' must be an absolute directory"),
        (_plan([A], store_dir="/gnu/store/"), "'store_dir' must be an absolute directory"),
        (_plan(["/etc/passwd"], store_dir="/"), "'store_dir' must be an absolute directory"),
        (_plan([A], store_dir="/gnu/../store"), "'store_dir' must be an absolute directory"),
        (_plan([A], store_dir=7), "'store_dir' must be an absolute directory"),
    ],
)
def test_paths_that_are_not_items_of_store_dir_are_refused(text: str, message: str) -> None:
    with pytest.raises(PlanError) as info:
        LayerPlan.from_json(text, source="p.json")
    assert message in str(info.value)
    assert str(info.value).startswith("p.json: ")
    assert "\n" not in str(info.value)


def test_roots_must_be_items_of_store_dir() -> None:
    text = json.dumps(
        {"store_dir": "/gnu/store", "images": [{"layers": [{"paths": [A]}], "roots": ["/etc"]}]}
    )
    with pytest.raises(PlanError, match=r"^p\.json: images\[0\]\.roots: .*'/etc'"):
        LayerPlan.from_json(text, source="p.json")


def test_deeply_nested_json_is_a_plan_error() -> None:
    with pytest.raises(PlanError, match=r"^p\.json: not valid JSON: .*recursion"):
        LayerPlan.from_json("[" * 100_000, source="p.json")
