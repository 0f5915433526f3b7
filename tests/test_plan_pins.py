"""Every strategy's plans of generated closures, pinned by digest.

Planning is made faster from time to time (issue 11); the plans must not change. The closures
here are generated from a fixed seed with the shapes that matter to the strategies: shared
libraries many items depend on, long chains, equal sizes and equal names (ties), items of no
size, and a closure of several images (graph roots) for ``stable``'s per-image rules. Each plan
is hashed (its layers, bottom first, as JSON); the digests were taken before the speed work
of issue 11, so a test fails as soon as any layer of any plan differs.
"""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from closurepack.graph import Closure, StoreItem
from closurepack.planner import plan_closures
from closurepack.strategies import STRATEGIES, popularity_scores
from closurepack.strategies.stable import stable

NAMES = ["glibc", "zlib", "openssl", "python3", "perl", "bash", "curl", "gcc-lib", "ncurses"]


def generated_closure(count: int, seed: int) -> Closure:
    """A closure of ``count`` items: each refers to a few earlier ones, popular ones more often."""
    rng = random.Random(seed)
    paths: list[str] = []
    weights: list[int] = []  # how often each item has been picked, plus one
    items: list[StoreItem] = []
    position: dict[str, int] = {}
    for number in range(count):
        digest = hashlib.sha256(f"{seed}-{number}".encode()).hexdigest()[:32]
        name = rng.choice(NAMES) if rng.random() < 0.2 else f"pkg{rng.randrange(count // 3)}"
        path = f"/nix/store/{digest}-{name}-{rng.randrange(4)}.{rng.randrange(3)}"
        refs: set[str] = set()
        if paths:
            for _ in range(min(len(paths), int(rng.expovariate(0.3)))):
                if rng.random() < 0.3:  # a near neighbour: chains
                    refs.add(paths[max(0, len(paths) - 1 - rng.randrange(5))])
                else:
                    refs.add(rng.choices(paths, weights)[0])
        for ref in refs:
            weights[position[ref]] += 1
        size = rng.choice([0, 4096, 4096, int(rng.lognormvariate(11, 2.5))])
        items.append(StoreItem(path, size, tuple(sorted(refs))))
        position[path] = len(paths)
        paths.append(path)
        weights.append(1)
    return Closure.from_items(items, source="generated")


def digest_of(groups: object) -> str:
    return hashlib.sha256(json.dumps(groups).encode()).hexdigest()[:16]


@pytest.fixture(scope="module")
def big() -> Closure:
    return generated_closure(2500, seed=11)


@pytest.fixture(scope="module")
def images() -> Closure:
    whole = generated_closure(900, seed=12)
    roots = sorted(whole.roots)[::7][:6]
    return whole.subclosure(roots)


# strategy -> digests of its plans of ``big`` at BUDGETS, then of the planner's default plan.
PINS = {
    "auto": [
        "e3328ad05882e609",
        "a697973a452d5962",
        "7a155f7414623f89",
        "d22b274b5e2955bb",
        "b620a14211084232",
    ],
    "dominator": [
        "e3328ad05882e609",
        "4b5aa0311226fd23",
        "5c51792be0b14be2",
        "e500517588de8bd9",
        "e4be8ec1b7ac22cb",
    ],
    "per-item": ["133cb337a45a723f"],
    "popularity": [
        "3f689f5d7ba62625",
        "2dc4c80d14f7a028",
        "b06e4e49237167fe",
        "09518bdb37113289",
        "884d9b3f6119cb74",
    ],
    "single": [
        "6053069e39f59c77",
        "6053069e39f59c77",
        "6053069e39f59c77",
        "6053069e39f59c77",
        "e3328ad05882e609",
    ],
    "size": [
        "bdae6284a7d9be24",
        "faeccbea6f34dfdc",
        "43747f4d6e791122",
        "f4de3fe42d68283c",
        "06c35a3f30b8aa99",
    ],
    "stable": [
        "e3328ad05882e609",
        "40cbd1f712c3822e",
        "61856c9d211159cc",
        "44ca497db47b8c48",
        "44ca497db47b8c48",
    ],
}
BUDGETS = [1, 2, 12, 99]


def plans_of(closure: Closure, name: str) -> list[str]:
    """The digests of ``name``'s plans of ``closure`` at :data:`BUDGETS`, then the planner's."""
    if name == "per-item":
        return [digest_of(STRATEGIES[name](closure, budget=len(closure)))]
    found = [digest_of(STRATEGIES[name](closure, budget=budget)) for budget in BUDGETS]
    plan = plan_closures([closure], strategy=name, max_layers=100)
    found.append(digest_of([layer.paths for layer in plan.images[0].layers]))
    return found


@pytest.mark.parametrize("name", sorted(PINS))
def test_the_plans_are_the_pinned_ones(big: Closure, name: str) -> None:
    assert plans_of(big, name) == PINS[name]


def test_the_popularity_scores_are_the_pinned_ones(big: Closure) -> None:
    scores = popularity_scores(big)
    assert digest_of(sorted(scores.items())) == POPULARITY_SCORES


POPULARITY_SCORES = "d28667c67e987b73"

# stable of several images (its per-image rules), coarsened and not, at budgets 3 and 20.
STABLE_IMAGES = ["cb14f13bc9062a1a", "60ebed21cdefe109", "cd1f70c5ff0330c3", "e86eb9ae35d0fbe5"]


def test_stable_plans_of_several_images_are_the_pinned_ones(images: Closure) -> None:
    assert 1 < len(images.roots) <= 64
    found = [
        digest_of(stable(images, budget=budget, exact_limit=limit))
        for budget in (3, 20)
        for limit in (300, 40)
    ]
    assert found == STABLE_IMAGES


def test_stable_after_a_smaller_budget_plans_as_afresh(big: Closure) -> None:
    """stable keeps its greedy's merges per closure and replays them for a larger budget (the
    planner's refills): the plan must be the one a fresh closure gets."""

    def fresh() -> Closure:
        return Closure(big.store_dir, big.items, big.roots, big.source)

    reused = fresh()
    stable(reused, budget=67)  # coarsened to 200 clusters, as for every budget from 67
    for budget in (70, 99, 67):
        assert stable(reused, budget=budget) == stable(fresh(), budget=budget)


def test_auto_after_other_budgets_plans_as_afresh(big: Closure) -> None:
    """auto continues its labelling from the largest budget it ran for on the closure: a
    smaller budget afterwards must not see the larger one's labels, a larger one must."""
    reused = Closure(big.store_dir, big.items, big.roots, big.source)
    for budget in (40, 12, 60, 60, 3):
        fresh = Closure(big.store_dir, big.items, big.roots, big.source)
        assert STRATEGIES["auto"](reused, budget=budget) == STRATEGIES["auto"](fresh, budget=budget)
