"""``build -o docker://HOST/REPO:TAG --tag ...`` pushes the manifest under every tag, after every
blob, against the real registry (its own access log counts the requests; skopeo reads each
tag back); a --tag naming another repository is refused before anything is built or sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clistore import Store, run
from closurepack.errors import OptionError
from closurepack.registry import parse_reference, push_tags
from registry_fixtures import Registry
from runtimes import require_tool, run_tool


def _build(
    store: Store, closure: Path, dest: str, capsys: pytest.CaptureFixture[str], *extra: object
) -> tuple[int, str, str]:
    argv = ["build", "--closure", closure, "--store-root", store.root, "--no-cache",
            "--cmd", "/bin/app", "-q", "-o", dest, *extra]  # fmt: skip
    return run([str(a) for a in argv], capsys)


def test_push_tags_reads_bare_tags_and_names_of_the_repository() -> None:
    ref = parse_reference("docker://127.0.0.1:5000/team/app:1")
    tags = ["latest", "team/app:v2", "127.0.0.1:5000/team/app:v3", "1", "V4"]
    assert push_tags(ref, tags) == ("1", "latest", "v2", "v3", "V4")
    assert push_tags(parse_reference("docker://127.0.0.1:5000/app"), []) == ("latest",)
    hub = parse_reference("docker://docker.io/nginx:1")
    assert push_tags(hub, ["nginx:2", "library/nginx:3", "docker.io/library/nginx:4"]) == (
        "1",
        "2",
        "3",
        "4",
    )


@pytest.mark.parametrize(
    ("tag", "must_say"),
    [
        ("other:1", "'other:1': a push to 127.0.0.1:5000/app tags that repository only"),
        ("team/app:1", "copy the image to 127.0.0.1:5000/team/app with skopeo copy"),
        ("localhost:5000/app:1", "copy the image to localhost:5000/app"),
        ("-bad", "'-bad': invalid tag"),
        ("app:-x", "'app:-x': invalid tag '-x'"),
        ("app:", "'app:': "),
    ],
)
def test_push_tags_refuses_other_repositories_and_bad_tags(tag: str, must_say: str) -> None:
    ref = parse_reference("docker://127.0.0.1:5000/app:1")
    with pytest.raises(OptionError) as info:
        push_tags(ref, [tag])
    assert str(info.value).startswith("--tag ")
    assert must_say in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.integration
def test_every_tag_is_pushed_once_after_every_blob(
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    require_tool("skopeo")
    host = registry.host
    status, out, err = _build(
        store, app_closure, f"docker://{host}/app:1", capsys,
        "--tag", "latest", "--tag", "app:v2", "--tag", f"{host}/app:v3", "--tag", "1",
    )  # fmt: skip
    assert status == 0, err
    name, _, digest = out.strip().partition("@")
    assert name == f"{host}/app"
    requests = registry.requests()
    puts = [r for r in requests if r.method == "PUT" and "/manifests/" in r.path]
    assert [(r.path, r.status) for r in puts] == [
        (f"/v2/app/manifests/{tag}", 201) for tag in ("1", "latest", "v2", "v3")
    ]
    last_blob = max(
        i for i, r in enumerate(requests) if "/blobs/uploads" in r.path and r.method != "GET"
    )
    assert last_blob < requests.index(puts[0])
    for tag in ("1", "latest", "v2", "v3"):
        info = json.loads(
            run_tool("skopeo", "inspect", "--tls-verify=false", f"docker://{host}/app:{tag}")
        )
        assert info["Digest"] == digest, tag
    tags = json.loads(run_tool("skopeo", "list-tags", "--tls-verify=false", f"docker://{host}/app"))
    assert sorted(tags["Tags"]) == ["1", "latest", "v2", "v3"]


@pytest.mark.integration
def test_a_tag_in_another_repository_is_refused_before_anything_is_sent(
    registry: Registry,
    store: Store,
    app_closure: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = registry.mark()
    dest = f"docker://{registry.host}/app:1"
    status, out, err = _build(store, app_closure, dest, capsys, "--tag", "other:2")
    assert status == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "--tag 'other:2'" in lines[0]
    assert f"copy the image to {registry.host}/other" in lines[0]
    assert registry.requests(before) == []
