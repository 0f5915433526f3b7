"""Shared pytest fixtures: the real Nix closure fixture, and paths to tests/data."""

from __future__ import annotations

from pathlib import Path

import pytest

from nixfixture import NixClosure, NixUnavailableError, build_closure

DATA_DIR = Path(__file__).parent / "data"

# store and app_closure: small stores for CLI tests (tests/clistore.py); podman_runner and
# docker_engine: real runtimes for end-to-end tests (tests/runtimes.py); registry and
# shared_registry: a real docker-registry on 127.0.0.1 (tests/registry_fixtures.py);
# htpasswd_registry, token_registry, token_server: registries that demand authentication
# (tests/registry_auth_fixtures.py); requiretools: every skip fails under
# CLOSUREPACK_REQUIRE_TOOLS=1 (CI); pytester: runs inner pytest sessions that test it.
pytest_plugins = [
    "clistore",
    "pytester",
    "registry_auth_fixtures",
    "registry_fixtures",
    "requiretools",
    "runtimes",
]


@pytest.fixture(scope="session")
def nix_closure() -> NixClosure:
    """The closure of tests/fixtures/nix/closure.nix, built with real Nix; skips without Nix."""
    try:
        return build_closure()
    except NixUnavailableError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The directory of small real data files copied for the tests (tests/data)."""
    return DATA_DIR
