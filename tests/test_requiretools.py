"""CLOSUREPACK_REQUIRE_TOOLS=1 (set by .ci/run) turns every skip into a failure (requiretools)."""

from __future__ import annotations

from pathlib import Path

import pytest

from requiretools import REQUIRE_TOOLS

INNER = """
import pytest

@pytest.fixture
def tool():
    pytest.skip("frobnicate is not installed")

def test_skips_in_the_body():
    pytest.skip("no daemon here")

def test_skips_in_a_fixture(tool):
    pass

@pytest.mark.skipif(True, reason="data file missing")
def test_skipif_marker():
    pass

@pytest.mark.xfail(reason="known", strict=True)
def test_expected_failure():
    assert False

@pytest.mark.slow
def test_deselected():
    pytest.skip("never runs")

def test_passes():
    pass
"""


def _run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, value: str | None):
    if value is None:
        monkeypatch.delenv(REQUIRE_TOOLS, raising=False)
    else:
        monkeypatch.setenv(REQUIRE_TOOLS, value)
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow\n")
    pytester.makepyfile(test_inner=INNER)
    return pytester.runpytest_inprocess("-p", "requiretools", "-m", "not slow", "-rA")


def test_every_skip_fails_when_tools_are_required(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(pytester, monkeypatch, "1")
    # a skip in setup (fixture, skipif marker) fails as a setup error
    result.assert_outcomes(failed=1, errors=2, passed=1, xfailed=1, deselected=1)
    output = result.stdout.str()
    for reason in ("frobnicate is not installed", "no daemon here", "data file missing"):
        assert f"skipped while {REQUIRE_TOOLS}=1 (CI runs every test): {reason}" in output


@pytest.mark.parametrize("value", [None, "0"])
def test_skips_stay_skips_otherwise(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    result = _run(pytester, monkeypatch, value)
    result.assert_outcomes(skipped=3, passed=1, xfailed=1, deselected=1)


def test_a_module_skipped_at_collection_fails(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(REQUIRE_TOOLS, "1")
    pytester.makepyfile(
        test_module='import pytest\npytest.importorskip("no_such_module_here")\n'
        "def test_x():\n    pass\n"
    )
    result = pytester.runpytest_inprocess("-p", "requiretools")
    assert result.ret != 0
    assert "no_such_module_here" in result.stdout.str()
    assert "skipped while" in result.stdout.str()


def test_ci_requires_the_tools() -> None:
    """.ci/run exports the variable before it runs ./run-tests."""
    lines = (Path(__file__).parents[1] / ".ci" / "run").read_text().splitlines()
    assert f"export {REQUIRE_TOOLS}=1" in lines
    assert lines.index(f"export {REQUIRE_TOOLS}=1") < lines.index("./run-tests")
