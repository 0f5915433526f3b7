"""A re-push repairs an image whose blob was deleted from the registry (issue 7).

A registry keeps a tag after one of its manifest's blobs is deleted (``DELETE
/v2/NAME/blobs/DIGEST``, allowed by the fixture's ``storage: delete: enabled: true``): pulls
of the image then fail. A whole push (no push record), and the record's shortcut with
``--cache-verify full``, check every blob the manifest names with ``HEAD``, upload the missing
one and keep the tag; the default shortcut trusts the tag's manifest and does not see it. What
was uploaded is read from the registry's own access log; that the image works again is checked
by skopeo copying it and by our verify reading every blob back."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import pytest

from clistore import Store, build_app, run
from closurepack.mediatypes import MediaType
from closurepack.validate import inspect_image, verify_image
from registry_fixtures import Registry, Request
from runtimes import require_tool, run_tool

pytestmark = pytest.mark.integration

_UPLOADED = re.compile(r"[?&]digest=(sha256)(?::|%3A)([0-9a-f]{64})")


@pytest.fixture(autouse=True)
def _no_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


def _uploaded(requests: list[Request]) -> list[str]:
    """The digests of the blob uploads the registry finished (``PUT ...?digest=``), in order."""
    found = []
    for request in requests:
        match = _UPLOADED.search(request.path)
        if request.method == "PUT" and "/blobs/uploads/" in request.path and match:
            found.append(f"{match[1]}:{match[2]}")
    return found


def _skopeo_copy(registry: Registry, layout: Path) -> subprocess.CompletedProcess[str]:
    argv = [require_tool("skopeo"), "copy", "--quiet", "--src-tls-verify=false",
            f"docker://{registry.host}/app:1", f"oci:{layout}:copy"]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)


#: The re-push through the record's shortcut (the first push's cache), told to check the blobs;
#: and a whole push (a fresh cache, so no record).
_REPUSHES = pytest.mark.parametrize(
    ("cache", "extra"),
    [("c", ("--cache-verify", "full")), ("fresh", ())],
    ids=["record", "no-record"],
)


@_REPUSHES
def test_a_deleted_layer_blob_is_uploaded_again_and_the_tag_kept(
    cache: str,
    extra: tuple[str, ...],
    registry: Registry,
    *,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dest = f"docker://{registry.host}/app:1"
    first = build_app(store, app_closure, dest, capsys, cache=tmp_path / "c")
    layers = inspect_image(dest)["layers"]
    victim = str(max(layers, key=lambda la: int(la["size"]))["digest"])
    blob_url = f"http://{registry.host}/v2/app/blobs/{victim}"
    gone = httpx.delete(blob_url)
    assert gone.status_code == 202, gone.text
    assert httpx.head(blob_url).status_code == 404
    # the tag stays, the image is broken: a pull fails
    oci = {"Accept": str(MediaType.OCI_MANIFEST)}
    assert httpx.head(f"http://{registry.host}/v2/app/manifests/1", headers=oci).status_code == 200
    broken = _skopeo_copy(registry, tmp_path / "broken")
    assert broken.returncode != 0
    assert victim.removeprefix("sha256:") in broken.stderr

    mark = registry.mark()
    again = build_app(store, app_closure, dest, capsys, *extra, cache=tmp_path / cache)
    assert again == first
    later = registry.requests(mark)
    assert _uploaded(later) == [victim]  # that blob and nothing else
    assert [r for r in later if r.method == "PUT" and "/manifests/" in r.path] == []
    assert httpx.head(blob_url).status_code == 200

    repaired = _skopeo_copy(registry, tmp_path / "copied")
    assert repaired.returncode == 0, repaired.stderr
    status, out, err = run(["verify", f"oci:{tmp_path / 'copied'}:copy"], capsys)
    assert (status, out.strip().endswith(": ok")) == (0, True), err
    assert verify_image(dest) == []

    # now whole again, the next re-push takes the shortcut: nothing uploaded, nothing built
    mark = registry.mark()
    assert build_app(store, app_closure, dest, capsys, *extra, cache=tmp_path / cache) == first
    assert _uploaded(registry.requests(mark)) == []


@_REPUSHES
def test_a_deleted_config_blob_is_uploaded_again(
    cache: str,
    extra: tuple[str, ...],
    *,
    registry: Registry,
    store: Store,
    app_closure: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dest = f"docker://{registry.host}/app:1"
    first = build_app(store, app_closure, dest, capsys, cache=tmp_path / "c")
    config = str(inspect_image(dest)["config_digest"])
    gone = httpx.delete(f"http://{registry.host}/v2/app/blobs/{config}")
    assert gone.status_code == 202, gone.text
    mark = registry.mark()
    assert build_app(store, app_closure, dest, capsys, *extra, cache=tmp_path / cache) == first
    assert _uploaded(registry.requests(mark)) == [config]
    run_tool("skopeo", "inspect", "--tls-verify=false", f"docker://{registry.host}/app:1")
    assert verify_image(dest) == []
