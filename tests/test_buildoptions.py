"""build_image's options objects: validated when made, frozen, sequences kept as tuples."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from closurepack.buildoptions import BuildInput, LayerOptions
from closurepack.errors import OptionError, PlanError


@pytest.mark.parametrize("jobs", [0, -3])
def test_layer_options_refuse_fewer_than_one_job(jobs: int) -> None:
    with pytest.raises(OptionError, match=f"^--jobs must be at least 1, not {jobs}$"):
        LayerOptions(jobs=jobs)


@pytest.mark.parametrize("limit", [0, 128])
def test_build_input_refuses_a_layer_limit_out_of_range(limit: int) -> None:
    with pytest.raises(PlanError, match=f"--max-layers must be between 1 and 127.*not {limit}$"):
        BuildInput(max_layers=limit)


def test_build_input_refuses_an_unknown_store_database() -> None:
    with pytest.raises(OptionError, match=r"^store database 'nixos': expected one of \['guix', "):
        BuildInput(store_db="nixos")  # type: ignore[arg-type]


def test_sequences_are_kept_as_tuples_and_the_options_are_frozen(tmp_path: Path) -> None:
    given = BuildInput(
        store_paths=["/nix/store/a"], closure_files=[tmp_path / "c.json"], previous=["p.json"]
    )
    assert given.store_paths == ("/nix/store/a",)
    assert given.closure_files == (tmp_path / "c.json",)
    assert given.previous == ("p.json",)
    again = BuildInput(
        store_paths=("/nix/store/a",), closure_files=(tmp_path / "c.json",), previous=("p.json",)
    )
    assert given == again
    assert hash(given) == hash(again)
    layers = LayerOptions(cache_from=["docker://h/r"], jobs=2)
    assert layers.cache_from == ("docker://h/r",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        layers.jobs = 1  # type: ignore[misc]
