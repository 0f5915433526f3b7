"""The plan's JSON form: round trip and the checks made when reading one."""

from __future__ import annotations

import json

import pytest

from closurepack.errors import PlanError
from closurepack.plan import ImagePlan, LayerPlan, PlannedLayer

A = "/gnu/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a"
B = "/gnu/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b"


def test_round_trip_and_store_dir_from_the_paths() -> None:
    plan = LayerPlan(
        (ImagePlan((PlannedLayer((A,), 3, "previous"), PlannedLayer((B,), 4)), "x", (B,)),),
        store_dir="/gnu/store",
        strategy="size",
        max_layers=5,
        metadata={"k": 1},
    )
    assert LayerPlan.from_json(plan.to_json(indent=2)) == plan
    bare = LayerPlan.from_json(json.dumps({"images": [{"layers": [{"paths": [B, A]}]}]}))
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
        LayerPlan.from_json(json.dumps({"images": [image]}), source="p.json")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_paths_outside_the_named_store_are_refused() -> None:
    text = json.dumps({"store_dir": "/nix/store", "images": [{"layers": [{"paths": [A]}]}]})
    with pytest.raises(PlanError, match="not all in the store '/nix/store'"):
        LayerPlan.from_json(text, source="p.json")


def test_deeply_nested_json_is_a_plan_error() -> None:
    with pytest.raises(PlanError, match=r"^p\.json: not valid JSON: .*recursion"):
        LayerPlan.from_json("[" * 100_000, source="p.json")
