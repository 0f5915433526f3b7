"""Layering pipelines in the JSON vocabulary of nixpkgs' ``layeringPipeline``.

Origin: nixpkgs ``dockerTools`` ``layeringPipeline``
(``pkgs/build-support/flatten-references-graph``, Adrian Gierakowski), reimplemented over our
closures. A pipeline is a JSON list of steps applied in turn to a value that starts as the whole
closure graph. Values are graphs (sets of items with
the references between them), lists of values, or objects (name -> value). Steps:

``["subcomponent_out", PATHS]``  graph -> ``{"main": PATHS and all they reach, "rest": the rest}``
``["subcomponent_in", PATHS]``   graph -> ``{"main": PATHS and all that reach them, "rest": ...}``
``["split_paths", PATHS]``       graph -> ``{"main", "common", "rest"}``: PATHS with the
                                 dependencies only they reach; the dependencies they share with
                                 the rest of the graph; the rest (empty parts are dropped). A
                                 PATHS entry may be ``{"children_of": PATH or [PATH, ...]}``.
``["popularity_contest"]``       graph -> list of one-item graphs, most popular first (nixpkgs'
                                 ``referencesByPopularity`` order within that graph)
``["split_every", N]``           graph -> list of graphs of N items (items by NAR size, then path)
``["limit_layers", N]``          list -> its first N-1 elements and one merge of all the others
``["reverse"]``                  list -> reversed list
``["flatten"]``                  anything -> flat list of graphs
``["over", KEY, STEP]``          object -> the same object with STEP applied to its KEY (no-op
                                 when KEY is absent, e.g. a ``split_paths`` without common part)
``["map", STEP]``                list or object -> STEP applied to every element
``["pipe", [STEP, ...]]``        the steps applied in turn

PATHS is a store path or a list of them; paths not in the graph are ignored, as in nixpkgs.
The result is flattened (objects in key order: main, common, rest) into layers, bottom first;
empty graphs are dropped. If there are more layers than the budget, the last ones are merged as
by ``limit_layers`` (nixpkgs would fail at image load time instead). ``remove_paths`` is refused:
closurepack always puts every closure item in the image.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from closurepack.errors import PlanError
from closurepack.graph import Closure
from closurepack.strategies.popularity import popularity_order

__all__ = ["Pipeline", "load_pipeline", "parse_pipeline"]


@dataclass(frozen=True)
class _Graph:
    """A sub-graph: a set of items of the closure, with the references among them."""

    paths: frozenset[str]


_Value = _Graph | list[Any] | dict[str, Any]
_Step = Callable[[Closure, _Value], _Value]

#: How deep "over", "map" and "pipe" may nest (each level costs a few stack frames when run).
_MAX_DEPTH = 50
_GRAPH_STEPS = ("subcomponent_out", "subcomponent_in", "split_paths")
_OTHER_STEPS: tuple[str, ...] = ("popularity_contest", "limit_layers", "split_every", "reverse")
_OTHER_STEPS += ("flatten", "over", "map", "pipe")


def load_pipeline(spec: str) -> Pipeline:
    """Parse ``spec``: a JSON pipeline text, or ``@FILE`` naming a file that holds one."""
    if spec.startswith("@"):
        name = spec[1:]
        try:
            text = Path(name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PlanError(f"{name}: cannot read the layering pipeline: {exc}") from exc
        return parse_pipeline(text, source=name)
    return parse_pipeline(spec, source="--strategy")


def parse_pipeline(text: str, *, source: str = "<pipeline>") -> Pipeline:
    """Parse and validate a JSON pipeline; errors name ``source`` and the step at fault."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise PlanError(f"{source}: the layering pipeline is not valid JSON: {exc}") from exc
    if not isinstance(obj, list) or not obj:
        raise PlanError(f"{source}: a layering pipeline must be a non-empty JSON list of steps")
    steps = [_parse_step(step, where=f"{source}: step {i + 1}") for i, step in enumerate(obj)]
    return Pipeline(tuple(steps), json.dumps(obj, separators=(",", ":")))


@dataclass(frozen=True)
class Pipeline:
    """A parsed pipeline, usable as a strategy: ``pipeline(closure, budget=n)``."""

    steps: tuple[_Step, ...]
    text: str

    def __call__(self, closure: Closure, *, budget: int) -> list[tuple[str, ...]]:
        value: _Value = _Graph(frozenset(closure.items))
        for step in self.steps:
            value = step(closure, value)
        graphs = _limit([g for g in _flatten(value) if g.paths], max(budget, 1))
        return [tuple(sorted(g.paths)) for g in graphs]


def _parse_step(step: Any, *, where: str, depth: int = 0) -> _Step:
    if not isinstance(step, list) or not step or not isinstance(step[0], str):
        raise PlanError(f"{where}: a step must be a list starting with its name, not {step!r}")
    name, args = step[0], step[1:]
    where = f"{where} ({name!r})"
    if depth > _MAX_DEPTH:
        raise PlanError(f"{where}: steps nested more than {_MAX_DEPTH} deep")

    def arity(count: int) -> None:
        if len(args) != count:
            raise PlanError(f"{where}: takes {count} argument(s), got {len(args)}")

    if name in _GRAPH_STEPS:
        arity(1)
        specs = _path_specs(args[0], where=where, children_ok=name == "split_paths")
        if name == "split_paths":
            return lambda closure, value: _split_paths(closure, _graph(value, where), specs)
        up = name == "subcomponent_in"
        return lambda closure, value: _subcomponent(closure, _graph(value, where), specs, up=up)
    if name == "popularity_contest":
        arity(0)
        return lambda closure, value: _popularity(closure, _graph(value, where))
    if name in ("limit_layers", "split_every"):
        arity(1)
        count = args[0]
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise PlanError(f"{where}: needs a positive whole number, not {count!r}")
        if name == "split_every":
            return lambda closure, value: _split_every(closure, _graph(value, where), count)
        return lambda closure, value: _limit(_list(value, where), count)
    if name == "reverse":
        arity(0)
        return lambda closure, value: list(reversed(_list(value, where)))
    if name == "flatten":
        arity(0)
        return lambda closure, value: list(_flatten(value))
    if name == "over":
        arity(2)
        if not isinstance(args[0], str):
            raise PlanError(f"{where}: the key must be a string, not {args[0]!r}")
        key, inner = args[0], _parse_step(args[1], where=f"{where} step", depth=depth + 1)
        return lambda closure, value: _over(closure, _object(value, where), key, inner)
    if name == "map":
        arity(1)
        inner = _parse_step(args[0], where=f"{where} step", depth=depth + 1)
        return lambda closure, value: _map(closure, value, inner, where)
    if name == "pipe":
        arity(1)
        if not isinstance(args[0], list):
            raise PlanError(f"{where}: takes a list of steps, not {args[0]!r}")
        inners = [
            _parse_step(s, where=f"{where} step {i + 1}", depth=depth + 1)
            for i, s in enumerate(args[0])
        ]
        return lambda closure, value: _pipe(closure, value, inners)
    if name == "remove_paths":
        raise PlanError(f"{where}: not supported: closurepack puts every closure item in the image")
    known = sorted((*_GRAPH_STEPS, *_OTHER_STEPS))
    raise PlanError(f"{where}: unknown step; known: {', '.join(known)}")


def _path_specs(arg: Any, *, where: str, children_ok: bool) -> list[str | tuple[str, ...]]:
    """Paths as strings; ``{"children_of": ...}`` entries as tuples of parent paths."""
    entries = arg if isinstance(arg, list) else [arg]
    specs: list[str | tuple[str, ...]] = []
    for entry in entries:
        if isinstance(entry, str):
            specs.append(entry)
        elif children_ok and isinstance(entry, dict) and set(entry) == {"children_of"}:
            parents = entry["children_of"]
            parents = parents if isinstance(parents, list) else [parents]
            if not all(isinstance(p, str) for p in parents):
                raise PlanError(f"{where}: 'children_of' takes store paths, not {parents!r}")
            specs.append(tuple(parents))
        else:
            raise PlanError(f"{where}: expected store paths, not {entry!r}")
    return specs


def _graph(value: _Value, where: str) -> _Graph:
    if not isinstance(value, _Graph):
        raise PlanError(f"{where}: applies to a graph, but got {_kind(value)}")
    return value


def _list(value: _Value, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise PlanError(f"{where}: applies to a list of layers, but got {_kind(value)}")
    return value


def _object(value: _Value, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PlanError(
            f"{where}: applies to an object such as subcomponent_out's, but got {_kind(value)}"
        )
    return value


def _kind(value: _Value) -> str:
    if isinstance(value, _Graph):
        return "a graph"
    if isinstance(value, list):
        return "a list"
    return f"an object with keys {sorted(value)}"


def _flatten(value: _Value) -> Iterable[_Graph]:
    if isinstance(value, _Graph):
        yield value
        return
    for inner in value.values() if isinstance(value, dict) else value:
        yield from _flatten(inner)


def _pipe(closure: Closure, value: _Value, steps: Sequence[_Step]) -> _Value:
    for step in steps:
        value = step(closure, value)
    return value


def _over(closure: Closure, value: dict[str, Any], key: str, step: _Step) -> _Value:
    if key not in value:
        return value
    return {k: step(closure, v) if k == key else v for k, v in value.items()}


def _map(closure: Closure, value: _Value, step: _Step, where: str) -> _Value:
    if isinstance(value, dict):
        return {k: step(closure, v) for k, v in value.items()}
    return [step(closure, v) for v in _list(value, where)]


def _limit(graphs: list[Any], count: int) -> list[Any]:
    if len(graphs) <= count:
        return list(graphs)
    rest = list(_flatten(graphs[count - 1 :]))
    return [*graphs[: count - 1], _Graph(frozenset().union(*(g.paths for g in rest)))]


def _reach(closure: Closure, start: Iterable[str], within: frozenset[str], *, up: bool) -> set[str]:
    seen: set[str] = set()
    stack = [p for p in start if p in within]
    while stack:
        path = stack.pop()
        if path in seen:
            continue
        seen.add(path)
        nexts = closure.referrers(path) if up else closure.items[path].references
        stack.extend(p for p in nexts if p in within)
    return seen


def _subcomponent(
    closure: Closure, graph: _Graph, specs: Sequence[str | tuple[str, ...]], *, up: bool
) -> dict[str, Any]:
    main = _reach(closure, (s for s in specs if isinstance(s, str)), graph.paths, up=up)
    return {"main": _Graph(frozenset(main)), "rest": _Graph(graph.paths - main)}


def _split_paths(
    closure: Closure, graph: _Graph, specs: Sequence[str | tuple[str, ...]]
) -> dict[str, Any]:
    within = graph.paths
    split: set[str] = set()
    for spec in specs:
        if isinstance(spec, str):
            if spec in within:
                split.add(spec)
        else:
            for parent in spec:
                if parent in within:
                    split.update(r for r in closure.items[parent].references if r in within)
    if not split:
        return {"rest": graph}
    roots = [p for p in within if not any(r in within for r in closure.referrers(p))]
    if len(roots) == 1 and roots[0] in split:
        return {"main": graph}
    split_off = _reach(closure, split, within, up=False)
    # Everything reachable from the roots without entering a split path.
    starts = [r for r in roots if r not in split]
    rest_with_common = _reach(closure, starts, within - split, up=False)
    common = split_off & rest_with_common
    parts = {
        "main": split_off - common,
        "common": common,
        "rest": rest_with_common - common,
    }
    return {k: _Graph(frozenset(v)) for k, v in parts.items() if v}


def _popularity(closure: Closure, graph: _Graph) -> list[Any]:
    if not graph.paths:
        return []
    sub = closure.restrict(graph.paths)
    return [_Graph(frozenset((p,))) for p in popularity_order(sub)]


def _split_every(closure: Closure, graph: _Graph, count: int) -> list[Any]:
    order = sorted(graph.paths, key=lambda p: (closure.items[p].nar_size, p))
    return [_Graph(frozenset(order[i : i + count])) for i in range(0, len(order), count)]
