"""A pytest plugin: with ``CLOSUREPACK_REQUIRE_TOOLS=1`` (set by ``.ci/run``) every skip fails.

Real-tool tests skip cleanly on a laptop without podman or Nix; in CI a skip would hide a test
that never ran, so there a skip of any kind (a missing tool, daemon or data file, or
``pytest.skip`` anywhere, at collection or in a test) is reported as a failure with its reason.
Deselection (``-m "not slow"``) is not a skip and is unaffected.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

__all__ = ["REQUIRE_TOOLS", "pytest_make_collect_report", "pytest_runtest_makereport"]

REQUIRE_TOOLS = "CLOSUREPACK_REQUIRE_TOOLS"


def _required() -> bool:
    return os.environ.get(REQUIRE_TOOLS, "") not in ("", "0")


def _fail_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    if not (_required() and report.skipped) or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    reason = reason.removeprefix("Skipped: ")
    report.outcome = "failed"
    report.longrepr = f"skipped while {REQUIRE_TOOLS}=1 (CI runs every test): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[Any]:
    outcome = yield
    _fail_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[Any]:
    outcome = yield
    _fail_skip(outcome.get_result())
