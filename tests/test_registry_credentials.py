"""lookup_credentials: --creds, --authfile, the containers auth.json and docker config.json files,
credential helpers (real scripts on PATH), key matching, and errors that never show a secret."""

from __future__ import annotations

import base64
import json
import traceback
from pathlib import Path
from typing import Any

import httpx
import pytest

from closurepack.errors import RegistryAuthError
from closurepack.registry import credhelper
from closurepack.registry.auth import RegistryAuth
from closurepack.registry.credentials import (
    Credentials,
    auth_file_paths,
    lookup_credentials,
    parse_creds,
    registry_keys,
)
from registry_auth_fixtures import PASSWORD, USER, AuthRegistry

SECRET = "s3cr3t-Zq8-NEVER-SHOWN"
HOST = "registry.example:5000"


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment whose every credential location is under tmp_path (none exists yet)."""
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "bin").mkdir()
    (tmp_path / "run").mkdir()
    return {
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin",
    }


def _write(path: Path, config: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    return path


def _helper(env: dict[str, str], name: str, script: str) -> Path:
    """A real credential helper ``docker-credential-NAME`` on the environment's PATH."""
    path = Path(env["PATH"].split(":")[0], f"docker-credential-{name}")
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


_GOOD_HELPER = f"""read server
case "$server" in
  {HOST}|127.0.0.1:*|https://index.docker.io/v1/)
    printf '{{"ServerURL":"%s","Username":"helper-user","Secret":"{SECRET}"}}' "$server" ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"""


def _assert_secret_free(exc: BaseException, secret: str = SECRET) -> None:
    text = "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)
    assert secret not in text
    assert "\n" not in str(exc)


# --- --creds --------------------------------------------------------------------------------------


def test_creds_win_over_every_file(env: dict[str, str], tmp_path: Path) -> None:
    authfile = _write(tmp_path / "auth.json", {"auths": {HOST: {"auth": _auth("file", "x")}}})
    got = lookup_credentials(HOST, creds="me:pa:ss", authfile=authfile, environ=env)
    assert got == Credentials("me", "pa:ss")


@pytest.mark.parametrize("creds", ["only-a-name", "name:", ":password", SECRET])
def test_creds_without_a_password_or_user_are_one_line_errors(creds: str) -> None:
    with pytest.raises(RegistryAuthError, match=r"^--creds: expected USER:PASSWORD") as info:
        parse_creds(creds)
    _assert_secret_free(info.value, creds)


def test_credentials_repr_and_str_hide_the_password() -> None:
    creds = Credentials("someone", SECRET)
    for text in (repr(creds), str(creds), f"{creds}", repr([creds])):
        assert SECRET not in text
        assert "someone" in text


# --- files and their order ------------------------------------------------------------------------


def test_nothing_anywhere_is_none(env: dict[str, str]) -> None:
    assert lookup_credentials(HOST, environ=env) is None


def test_explicit_authfile_must_exist(env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(RegistryAuthError) as info:
        lookup_credentials(HOST, authfile=missing, environ=env)
    assert str(info.value) == f"{missing}: no such auth file (given with --authfile)"
    with pytest.raises(RegistryAuthError) as info:
        lookup_credentials(HOST, authfile=tmp_path, environ=env)
    assert str(info.value) == f"{tmp_path}: is not a file (given with --authfile)"


def test_explicit_authfile_is_the_only_file_read(env: dict[str, str], tmp_path: Path) -> None:
    _write(Path(env["HOME"], ".docker/config.json"), {"auths": {HOST: {"auth": _auth("d", "p")}}})
    authfile = _write(
        tmp_path / "auth.json", {"auths": {"other.example": {"auth": _auth("a", "b")}}}
    )
    assert lookup_credentials(HOST, authfile=authfile, environ=env) is None
    assert lookup_credentials("other.example", authfile=authfile, environ=env) == Credentials(
        "a", "b"
    )


def test_registry_auth_file_replaces_the_default_files(env: dict[str, str], tmp_path: Path) -> None:
    _write(
        Path(env["XDG_RUNTIME_DIR"], "containers/auth.json"),
        {"auths": {HOST: {"auth": _auth("r", "1")}}},
    )
    chosen = _write(tmp_path / "chosen.json", {"auths": {HOST: {"auth": _auth("chosen", "2")}}})
    env["REGISTRY_AUTH_FILE"] = str(chosen)
    assert lookup_credentials(HOST, environ=env) == Credentials("chosen", "2")
    env["REGISTRY_AUTH_FILE"] = str(tmp_path / "missing.json")
    assert lookup_credentials(HOST, environ=env) is None


def test_default_files_in_order(env: dict[str, str], tmp_path: Path) -> None:
    runtime = Path(env["XDG_RUNTIME_DIR"], "containers/auth.json")
    config_home = Path(env["HOME"], ".config/containers/auth.json")
    docker = Path(env["HOME"], ".docker/config.json")
    assert auth_file_paths(env) == [runtime, config_home, docker]
    _write(docker, {"auths": {HOST: {"auth": _auth("docker", "3")}}})
    assert lookup_credentials(HOST, environ=env) == Credentials("docker", "3")
    # A file earlier in the order wins only when it has credentials for the registry.
    _write(config_home, {"auths": {"elsewhere.example": {"auth": _auth("x", "y")}}})
    assert lookup_credentials(HOST, environ=env) == Credentials("docker", "3")
    _write(config_home, {"auths": {HOST: {"auth": _auth("config", "2")}}})
    assert lookup_credentials(HOST, environ=env) == Credentials("config", "2")
    _write(runtime, {"auths": {HOST: {"auth": _auth("runtime", "1")}}})
    assert lookup_credentials(HOST, environ=env) == Credentials("runtime", "1")


def test_xdg_config_home_and_docker_config_move_their_files(tmp_path: Path) -> None:
    env = {
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        "DOCKER_CONFIG": str(tmp_path / "dock"),
    }
    uid_runtime = auth_file_paths(env)[0]
    assert uid_runtime.parent.parent == Path("/run/containers")
    assert auth_file_paths(env)[1:] == [
        tmp_path / "cfg/containers/auth.json",
        tmp_path / "dock/config.json",
    ]
    _write(tmp_path / "dock/config.json", {"auths": {HOST: {"username": "u", "password": "p"}}})
    env["XDG_RUNTIME_DIR"] = str(tmp_path / "run")
    assert lookup_credentials(HOST, environ=env) == Credentials("u", "p")


# --- keys -----------------------------------------------------------------------------------------


def test_registry_keys_go_from_most_to_least_specific() -> None:
    assert registry_keys("Quay.IO/ns/team/app") == [
        "quay.io/ns/team/app",
        "quay.io/ns/team",
        "quay.io/ns",
        "quay.io",
    ]
    assert registry_keys("index.docker.io/library/busybox") == [
        "docker.io/library/busybox",
        "docker.io/library",
        "docker.io",
    ]
    assert registry_keys("https://localhost:5000/") == ["localhost:5000"]


def test_the_most_specific_key_wins(env: dict[str, str], tmp_path: Path) -> None:
    authfile = _write(
        tmp_path / "auth.json",
        {
            "auths": {
                "quay.io": {"auth": _auth("host", "1")},
                "quay.io/ns": {"auth": _auth("namespace", "2")},
                "quay.io/ns/app": {"auth": _auth("repo", "3")},
            }
        },
    )
    found = lookup_credentials("quay.io/ns/app", authfile=authfile, environ=env)
    assert found == Credentials("repo", "3")
    found = lookup_credentials("quay.io/ns/other", authfile=authfile, environ=env)
    assert found == Credentials("namespace", "2")
    assert lookup_credentials("quay.io/x/y", authfile=authfile, environ=env) == Credentials(
        "host", "1"
    )
    assert lookup_credentials("quay.io", authfile=authfile, environ=env) == Credentials("host", "1")


def test_legacy_url_keys_and_docker_hub_aliases(env: dict[str, str], tmp_path: Path) -> None:
    authfile = _write(
        tmp_path / "config.json",
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": _auth("hub", "1")},
                "http://old.example:5000/v1/": {"auth": _auth("old", "2")},
                "https://both.example/v1/": {"auth": _auth("legacy", "3")},
                "both.example": {"auth": _auth("plain", "4")},
            }
        },
    )
    for name in ("docker.io", "registry-1.docker.io", "index.docker.io/library/busybox"):
        assert lookup_credentials(name, authfile=authfile, environ=env) == Credentials("hub", "1")
    assert lookup_credentials(
        "old.example:5000/a/b", authfile=authfile, environ=env
    ) == Credentials("old", "2")
    assert lookup_credentials("both.example", authfile=authfile, environ=env) == Credentials(
        "plain", "4"
    )


def test_an_empty_entry_holds_nothing(env: dict[str, str], tmp_path: Path) -> None:
    authfile = _write(tmp_path / "config.json", {"auths": {HOST: {}, "x.example": {"auth": ""}}})
    assert lookup_credentials(HOST, authfile=authfile, environ=env) is None
    assert lookup_credentials("x.example", authfile=authfile, environ=env) is None


# --- credential helpers ---------------------------------------------------------------------------


def test_cred_helper_for_the_host(env: dict[str, str], tmp_path: Path) -> None:
    _helper(env, "test", _GOOD_HELPER)
    authfile = _write(
        tmp_path / "config.json",
        {"credHelpers": {HOST: "test"}, "auths": {HOST: {"auth": _auth("file", "x")}}},
    )
    assert lookup_credentials(HOST, authfile=authfile, environ=env) == Credentials(
        "helper-user", SECRET
    )


def test_creds_store_after_the_auths_entries(env: dict[str, str], tmp_path: Path) -> None:
    _helper(env, "test", _GOOD_HELPER)
    authfile = _write(
        tmp_path / "config.json",
        {"credsStore": "test", "auths": {"file.example": {"auth": _auth("file", "x")}}},
    )
    assert lookup_credentials("file.example", authfile=authfile, environ=env) == Credentials(
        "file", "x"
    )
    assert lookup_credentials(HOST, authfile=authfile, environ=env) == Credentials(
        "helper-user", SECRET
    )
    # Docker Hub is asked for under docker's own name for it.
    assert lookup_credentials("docker.io", authfile=authfile, environ=env) == Credentials(
        "helper-user", SECRET
    )
    # The helper's "credentials not found" answer is no credentials.
    assert lookup_credentials("unknown.example", authfile=authfile, environ=env) is None


def test_a_missing_helper_program_is_skipped(env: dict[str, str], tmp_path: Path) -> None:
    authfile = _write(
        tmp_path / "config.json",
        {"credHelpers": {HOST: "absent"}, "credsStore": "desktop", "auths": {}},
    )
    assert lookup_credentials(HOST, authfile=authfile, environ=env) is None
    _write(Path(env["HOME"], ".docker/config.json"), {"credsStore": "absent"})
    _write(
        Path(env["HOME"], ".config/containers/auth.json"),
        {"auths": {HOST: {"auth": _auth("a", "b")}}},
    )
    assert lookup_credentials(HOST, environ=env) == Credentials("a", "b")


# --- errors, none of which may show a secret ------------------------------------------------------


def _error_cases(env: dict[str, str], tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Name -> (auth file, expected start of the message); each file holds SECRET somewhere."""
    _helper(env, "fails", 'echo "keyring is locked" >&2; exit 3\n')
    _helper(env, "nonsense", f"echo 'Secret: {SECRET}'\n")
    _helper(env, "nouser", f'echo \'{{"Username":"","Secret":"{SECRET}"}}\'\n')
    _helper(env, "token", f'echo \'{{"Username":"<token>","Secret":"{SECRET}"}}\'\n')
    _helper(env, "list", f"echo '[\"{SECRET}\"]'\n")
    cases = {
        "bad-json": (
            '{"auths": {"' + HOST + '": {"auth": "' + SECRET + '"',
            "auth file is not valid JSON",
        ),
        "not-object": (json.dumps([SECRET]), "auth file is not a JSON object"),
        "auths-not-object": (json.dumps({"auths": [SECRET]}), "auths is not a JSON object"),
        "entry-not-object": (json.dumps({"auths": {HOST: SECRET}}), f"auths['{HOST}'] is not"),
        "bad-base64": (
            json.dumps({"auths": {HOST: {"auth": SECRET + "!"}}}),
            f"auths['{HOST}'].auth is not base64",
        ),
        "no-colon": (
            json.dumps({"auths": {HOST: {"auth": base64.b64encode(SECRET.encode()).decode()}}}),
            f"auths['{HOST}'].auth is not base64 of USER:PASSWORD",
        ),
        "not-utf8": (
            json.dumps(
                {"auths": {HOST: {"auth": base64.b64encode(b"u:\xff" + SECRET.encode()).decode()}}}
            ),
            "auths",
        ),
        "auth-not-string": (
            json.dumps({"auths": {HOST: {"auth": [SECRET]}}}),
            f"auths['{HOST}'].auth is not a string",
        ),
        "password-only": (
            json.dumps({"auths": {HOST: {"password": SECRET}}}),
            f"auths['{HOST}']: has a username or a password",
        ),
        "password-not-string": (
            json.dumps({"auths": {HOST: {"username": "u", "password": [SECRET]}}}),
            f"auths['{HOST}']: username and password must",
        ),
        "identitytoken": (
            json.dumps({"auths": {HOST: {"identitytoken": SECRET}}}),
            f"auths['{HOST}'] holds an identitytoken",
        ),
        "helpers-not-strings": (
            json.dumps({"credHelpers": {HOST: [SECRET]}}),
            "credHelpers is not an object",
        ),
        "store-not-string": (json.dumps({"credsStore": [SECRET]}), "credsStore is not a string"),
        "helper-name": (
            json.dumps({"credsStore": "../" + SECRET}),
            "credsStore: credential helper",
        ),
        "helper-fails": (
            json.dumps({"credsStore": "fails"}),
            "credsStore: docker-credential-fails get",
        ),
        "helper-nonsense": (
            json.dumps({"credsStore": "nonsense"}),
            "credsStore: docker-credential-nonsense get",
        ),
        "helper-no-user": (
            json.dumps({"credsStore": "nouser"}),
            "credsStore: docker-credential-nouser",
        ),
        "helper-token": (
            json.dumps({"credHelpers": {HOST: "token"}}),
            f"credHelpers['{HOST}']: docker-credential-token",
        ),
        "helper-list": (json.dumps({"credsStore": "list"}), "credsStore: docker-credential-list"),
    }
    files = {}
    for name, (text, message) in cases.items():
        files[name] = (_write(tmp_path / f"{name}.json", text), message)
    return files


ERROR_CASES = [
    "bad-json",
    "not-object",
    "auths-not-object",
    "entry-not-object",
    "bad-base64",
    "no-colon",
    "not-utf8",
    "auth-not-string",
    "password-only",
    "password-not-string",
    "identitytoken",
    "helpers-not-strings",
    "store-not-string",
    "helper-name",
    "helper-fails",
    "helper-nonsense",
    "helper-no-user",
    "helper-token",
    "helper-list",
]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_bad_auth_files_are_one_line_errors_without_the_secret(
    case: str, env: dict[str, str], tmp_path: Path
) -> None:
    path, message = _error_cases(env, tmp_path)[case]
    with pytest.raises(RegistryAuthError) as info:
        lookup_credentials(HOST, authfile=path, environ=env)
    assert str(info.value).startswith(f"{path}: {message}")
    _assert_secret_free(info.value)


def test_the_same_errors_from_a_default_file(env: dict[str, str], tmp_path: Path) -> None:
    path, _ = _error_cases(env, tmp_path)["bad-json"]
    docker = Path(env["HOME"], ".docker/config.json")
    docker.parent.mkdir()
    path.rename(docker)
    with pytest.raises(RegistryAuthError) as info:
        lookup_credentials(HOST, environ=env)
    assert str(info.value).startswith(f"{docker}: auth file is not valid JSON (line 1 column ")


def test_a_failing_helper_says_what_it_said(env: dict[str, str], tmp_path: Path) -> None:
    path, _ = _error_cases(env, tmp_path)["helper-fails"]
    with pytest.raises(RegistryAuthError) as info:
        lookup_credentials(HOST, authfile=path, environ=env)
    assert str(info.value) == (
        f"{path}: credsStore: docker-credential-fails get {HOST} failed with exit status 3: "
        "keyring is locked"
    )


def test_a_hanging_helper_is_stopped(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(credhelper, "HELPER_TIMEOUT", 0.3)
    _helper(env, "slow", "exec sleep 10\n")
    path = _write(tmp_path / "config.json", {"credsStore": "slow"})
    with pytest.raises(RegistryAuthError, match=r"did not answer in 0\.3 s$"):
        lookup_credentials(HOST, authfile=path, environ=env)


def test_an_unreadable_auth_file_names_it(env: dict[str, str], tmp_path: Path) -> None:
    directory = tmp_path / "dir.json"
    directory.mkdir()
    env["REGISTRY_AUTH_FILE"] = str(directory)
    assert lookup_credentials(HOST, environ=env) is None  # not a file: nothing there
    big = _write(tmp_path / "big.json", " " * (5 << 20))
    with pytest.raises(RegistryAuthError, match=r"auth file is larger than 4 MiB$"):
        lookup_credentials(HOST, authfile=big, environ=env)


# --- found credentials used against a real registry -----------------------------------------------


def _get_v2(registry: AuthRegistry, credentials: Credentials | None) -> int:
    with httpx.Client(auth=RegistryAuth(credentials, ["repository:app:pull"])) as client:
        return client.get(f"{registry.url}/v2/").status_code


@pytest.mark.integration
@pytest.mark.parametrize("where", ["REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "HOME", "helper"])
def test_credentials_found_in_each_place_open_the_registry(
    where: str, env: dict[str, str], tmp_path: Path, htpasswd_registry: AuthRegistry
) -> None:
    host = htpasswd_registry.host
    entry = {"auths": {host: {"auth": _auth(USER, PASSWORD)}}}
    if where == "REGISTRY_AUTH_FILE":
        env["REGISTRY_AUTH_FILE"] = str(_write(tmp_path / "podman-auth.json", entry))
    elif where == "XDG_RUNTIME_DIR":
        _write(Path(env["XDG_RUNTIME_DIR"], "containers/auth.json"), entry)
    elif where == "HOME":
        _write(Path(env["HOME"], ".docker/config.json"), entry)
    else:
        _helper(env, "test", _GOOD_HELPER.replace("helper-user", USER).replace(SECRET, PASSWORD))
        _write(Path(env["HOME"], ".docker/config.json"), {"credHelpers": {host: "test"}})
    found = lookup_credentials(f"{host}/app", environ=env)
    assert found == Credentials(USER, PASSWORD)
    assert _get_v2(htpasswd_registry, found) == 200
