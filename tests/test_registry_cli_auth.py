"""Pushing and reading through the command line against registries that demand credentials (real
docker-registry with htpasswd and with token auth): the credentials come from the files users
already have, a wrong password is one line, and no secret is ever printed."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from clistore import Store, run_child
from registry_auth_fixtures import PASSWORD, USER, AuthRegistry, TokenServer

pytestmark = pytest.mark.integration


def _auth_json(path: Path, host: str, user: str, password: str) -> Path:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    return path


def _cli(*argv: object, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_child(argv, env=env, cwd=cwd, timeout=300)


def _env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG")}
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(tmp_path / "run"), XDG_CONFIG_HOME=str(home))
    env.pop("SOURCE_DATE_EPOCH", None)
    return env


def _push_argv(store: Store, closure: Path, dest: str, cache: Path) -> list[object]:
    return [
        "build", "--closure", closure, "--store-root", store.root, "--cache-dir", cache,
        "--entrypoint", "/bin/app", "-q", "-o", dest,
    ]  # fmt: skip


@pytest.mark.parametrize("where", ["authfile", "REGISTRY_AUTH_FILE", "docker-config"])
def test_push_and_inspect_with_credentials_from_files(
    htpasswd_registry: AuthRegistry, store: Store, app_closure: Path, tmp_path: Path, where: str
) -> None:
    env = _env(tmp_path)
    extra: list[object] = []
    if where == "authfile":
        extra = ["--authfile", _auth_json(tmp_path / "auth.json", htpasswd_registry.host, USER,
                                          PASSWORD)]  # fmt: skip
    elif where == "REGISTRY_AUTH_FILE":
        env["REGISTRY_AUTH_FILE"] = str(
            _auth_json(tmp_path / "auth.json", htpasswd_registry.host, USER, PASSWORD)
        )
    else:
        docker = Path(env["HOME"]) / ".docker"
        docker.mkdir()
        _auth_json(docker / "config.json", htpasswd_registry.host, USER, PASSWORD)
    dest = f"docker://{htpasswd_registry.host}/auth-{where.lower()}:1"
    argv = _push_argv(store, app_closure, dest, tmp_path / "cache")
    pushed = _cli(*argv, *extra, env=env, cwd=tmp_path)
    assert pushed.returncode == 0, pushed.stderr
    repo = f"{htpasswd_registry.host}/auth-{where.lower()}"
    assert pushed.stdout.startswith(f"{repo}@sha256:"), pushed.stdout
    # read back through the same credentials
    shown = _cli("inspect", "--json", dest, *extra, env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["manifest_digest"] == pushed.stdout.strip().split("@")[1]
    checked = _cli("verify", dest, *extra, env=env, cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert PASSWORD not in pushed.stdout + pushed.stderr + shown.stderr + checked.stdout


def test_wrong_password_is_one_line_and_no_secret(
    htpasswd_registry: AuthRegistry, store: Store, app_closure: Path, tmp_path: Path
) -> None:
    env = _env(tmp_path)
    wrong = "not-the-pw-SECRET-31"
    dest = f"docker://{htpasswd_registry.host}/denied:1"
    argv = _push_argv(store, app_closure, dest, tmp_path / "cache")
    result = _cli(*argv, "--creds", f"{USER}:{wrong}", env=env, cwd=tmp_path)
    assert result.returncode == 5, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("closurepack: error: ")
    assert htpasswd_registry.host in line
    assert "authentication failed" in line
    assert wrong not in line
    assert result.stdout == ""
    # without any credentials: one line saying how to give them
    result = _cli(*argv, env=env, cwd=tmp_path)
    assert result.returncode == 5
    (line,) = result.stderr.splitlines()
    assert "--creds" in line


def test_token_registry_push_and_pull_through_the_cli(
    token_registry: AuthRegistry,
    token_server: TokenServer,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
) -> None:
    env = _env(tmp_path)
    dest = f"docker://{token_registry.host}/tokened:1"
    creds = ["--creds", f"{USER}:{PASSWORD}"]
    argv = _push_argv(store, app_closure, dest, tmp_path / "cache")
    pushed = _cli(*argv, *creds, env=env, cwd=tmp_path)
    assert pushed.returncode == 0, pushed.stderr
    assert token_server.requests  # a token was asked for ...
    checked = _cli("verify", dest, *creds, env=env, cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert PASSWORD not in pushed.stderr + checked.stdout + checked.stderr
