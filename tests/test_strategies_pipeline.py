"""JSON layering pipelines (nixpkgs ``layeringPipeline`` vocabulary): results and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from closurepack.errors import PlanError
from closurepack.graph import Closure, StoreItem
from closurepack.strategies import get_strategy, parse_pipeline, popularity_order

NAMES = ["app", "perl", "libc", "zlib", "tool", "shared"]
APP, PERL, LIBC, ZLIB, TOOL, SHARED = (f"/nix/store/{i:032d}-{n}" for i, n in enumerate(NAMES))


@pytest.fixture
def closure() -> Closure:
    # app -> perl -> shared -> libc ; app -> tool -> shared ; perl -> zlib -> libc
    edges = {
        APP: [PERL, TOOL],
        PERL: [SHARED, ZLIB],
        TOOL: [SHARED],
        SHARED: [LIBC],
        ZLIB: [LIBC],
        LIBC: [],
    }
    sizes = {APP: 1, PERL: 50, TOOL: 2, SHARED: 3, ZLIB: 4, LIBC: 100}
    items = [StoreItem(p, sizes[p], tuple(r)) for p, r in edges.items()]
    return Closure.from_items(items, source="test")


def run(spec: object, closure: Closure, budget: int = 10) -> list[set[str]]:
    strategy = get_strategy(json.dumps(spec))
    return [set(group) for group in strategy(closure, budget=budget)]


def test_subcomponent_out_then_popularity_of_the_rest(closure: Closure) -> None:
    spec = [
        ["subcomponent_out", [PERL]],
        ["over", "rest", ["pipe", [["popularity_contest"], ["limit_layers", 2]]]],
    ]
    # The rest is app -> tool: tool is more popular (score 2 against 1).
    assert run(spec, closure) == [{PERL, SHARED, ZLIB, LIBC}, {TOOL}, {APP}]


def test_subcomponent_in(closure: Closure) -> None:
    assert run([["subcomponent_in", [SHARED]]], closure) == [
        {SHARED, PERL, TOOL, APP},
        {ZLIB, LIBC},
    ]


def test_split_paths_main_common_rest(closure: Closure) -> None:
    # perl and what only it reaches (zlib); shared deps with the rest (shared, libc); the rest.
    assert run([["split_paths", [PERL]]], closure) == [{PERL, ZLIB}, {SHARED, LIBC}, {APP, TOOL}]
    assert run([["split_paths", [{"children_of": APP}]]], closure) == [
        {PERL, TOOL, SHARED, ZLIB, LIBC},
        {APP},
    ]
    # No match: everything is "rest"; the single root itself: everything is "main".
    assert run([["split_paths", ["/nix/store/x-none"]]], closure) == [set(closure.items)]
    assert run([["split_paths", [APP]], ["over", "main", ["split_every", 4]]], closure) == [
        {APP, TOOL, SHARED, ZLIB},
        {PERL, LIBC},
    ]


def test_reverse_map_flatten_and_implicit_limit(closure: Closure) -> None:
    order = popularity_order(closure)
    assert run([["popularity_contest"], ["reverse"]], closure) == [{p} for p in reversed(order)]
    mapped = run(
        [["subcomponent_out", [ZLIB]], ["map", ["popularity_contest"]], ["flatten"]], closure
    )
    assert len(mapped) == 6
    # More layers than the budget: the last ones are merged, as limit_layers would.
    assert run([["popularity_contest"]], closure, budget=3) == [
        {order[0]},
        {order[1]},
        set(order[2:]),
    ]


def test_pipeline_from_file(tmp_path: Path, closure: Closure) -> None:
    spec = tmp_path / "pipeline.json"
    spec.write_text(json.dumps([["subcomponent_out", [ZLIB]]]))
    groups = get_strategy(f"@{spec}")(closure, budget=5)
    assert [set(g) for g in groups] == [{ZLIB, LIBC}, {APP, PERL, TOOL, SHARED}]
    with pytest.raises(PlanError, match=r"missing\.json: cannot read"):
        get_strategy(f"@{tmp_path / 'missing.json'}")


def _nested(depth: int) -> list[object]:
    step: list[object] = ["reverse"]
    for _ in range(depth):
        step = ["pipe", [step]]
    return step


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("[", "not valid JSON"),
        ("[]", "non-empty JSON list"),
        ('["popularity_contest"]', "step 1: a step must be a list"),
        ('[["nope"]]', "step 1 \\('nope'\\): unknown step; known: flatten, limit_layers"),
        ('[["limit_layers", 0]]', "positive whole number"),
        ('[["limit_layers", true]]', "positive whole number"),
        ('[["popularity_contest", 3]]', "takes 0 argument"),
        ('[["over", 1, ["reverse"]]]', "key must be a string"),
        ('[["pipe", "x"]]', "list of steps"),
        ('[["subcomponent_out", [1]]]', "expected store paths"),
        ('[["split_paths", [{"children_of": [2]}]]]', "children_of"),
        ('[["remove_paths", ["/nix/store/a-b"]]]', "not supported"),
        ('[["pipe", [["reverse"], ["bad"]]]]', "step 1 \\('pipe'\\) step 2 \\('bad'\\)"),
    ],
)
def test_bad_pipelines_are_plan_errors(spec: str, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        parse_pipeline(spec, source="--strategy")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([["limit_layers", 3]], "applies to a list of layers, but got a graph"),
        ([["popularity_contest"], ["popularity_contest"]], "applies to a graph, but got a list"),
        ([["over", "rest", ["reverse"]]], "applies to an object"),
    ],
)
def test_steps_applied_to_the_wrong_kind_of_value(
    spec: object, message: str, closure: Closure
) -> None:
    with pytest.raises(PlanError, match=message):
        run(spec, closure)


def test_deep_nesting_is_a_plan_error_not_a_recursion_error() -> None:
    with pytest.raises(PlanError, match="not valid JSON"):
        parse_pipeline("[" * 100_000)
    # Valid JSON, but near the stack limit when walked (600 levels raised RecursionError).
    text = "[" + '["pipe", [' * 400 + '["reverse"]' + "]]" * 400 + "]"
    with pytest.raises(PlanError, match="nested more than 50 deep"):
        parse_pipeline(text)


def test_nesting_up_to_the_limit_runs(closure: Closure) -> None:
    spec = [["popularity_contest"], _nested(50)]
    assert run(spec, closure) == [{p} for p in reversed(popularity_order(closure))]
