"""plan --html and diff --html: pages checked in a real headless chromium over DevTools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cdp import Page, chromium
from clistore import APP, TOOL, make_store, read_oci, run
from closurepack.htmlview import View, ViewLayer, ViewStack, render_html
from closurepack.plantable import human_size
from test_diff import APP2, NEWDEP, UPDATED

pytestmark = pytest.mark.integration

# What the page drew, per stack: its layers (visible ones only), their statuses and sizes, the
# stack's total as its label gives it, and the error box the page's own error hook fills.
_DRAWN = """(() => ({
  stacks: Array.from(document.querySelectorAll('.stack')).map(s => ({
    title: s.querySelector('h2').textContent,
    drawn: Array.from(s.querySelectorAll('.layer')).filter(l => l.offsetHeight > 0).length,
    statuses: Array.from(s.querySelectorAll('.layer')).map(l => l.dataset.status),
    sizes: Array.from(s.querySelectorAll('.layer')).map(l => Number(l.dataset.size)),
    total: Number(s.querySelector('.stack-total').dataset.bytes),
    label: s.querySelector('.stack-total').textContent,
  })),
  errors: document.getElementById('errors').textContent,
  ready: document.body.dataset.ready,
}))()"""


def _check_page(page: Page, html: Path, screenshot: Path) -> dict[str, Any]:
    page.open(html.as_uri())
    drawn: dict[str, Any] = page.evaluate(_DRAWN)
    assert drawn["ready"] == "yes"
    assert drawn["errors"] == ""
    assert page.console_errors() == []
    # nothing but the page itself is loaded: no network, no external fonts or scripts
    assert set(page.requested_urls()) <= {html.as_uri()}
    png = page.screenshot(screenshot)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 1000
    assert screenshot.stat().st_size == len(png)
    return drawn


def test_plan_html_draws_every_layer_of_every_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = make_store(tmp_path / "root", UPDATED)
    old = store.closure_file(tmp_path / "old.json", [APP])
    new = store.closure_file(tmp_path / "new.json", [APP2])
    tool = store.closure_file(tmp_path / "tool.json", [TOOL])
    dep = store.closure_file(tmp_path / "dep.json", [NEWDEP])  # shares newdep with new
    previous = tmp_path / "old.plan"
    status, _, err = run(
        ["plan", "--closure", old, "--strategy", "per-item", "-o", previous], capsys
    )
    assert status == 0, err
    html, plan_file = tmp_path / "plan.html", tmp_path / "new.plan"
    argv = ["plan", "--closure", new, "--closure", tool, "--closure", dep, "--strategy", "per-item"]
    status, _, err = run([*argv, "--previous", previous, "--html", html, "-o", plan_file], capsys)
    assert status == 0, err
    plan = json.loads(plan_file.read_text())

    with chromium(tmp_path) as page:
        drawn = _check_page(page, html, tmp_path / "plan.png")
        assert len(drawn["stacks"]) == len(plan["images"]) == 3
        all_paths = [tuple(la["paths"]) for im in plan["images"] for la in im["layers"]]
        for stack, image in zip(drawn["stacks"], plan["images"], strict=True):
            layers = image["layers"]
            assert stack["title"] == image["name"]
            assert stack["drawn"] == len(layers)
            assert stack["sizes"] == [la["size"] for la in layers]
            assert stack["total"] == sum(la["size"] for la in layers)
            assert stack["label"] == f"{len(layers)} layers, {human_size(stack['total'])}"
            expected = [
                "reused" if la.get("origin") == "previous"
                else "shared" if all_paths.count(tuple(la["paths"])) > 1
                else "new"
                for la in layers
            ]  # fmt: skip
            assert stack["statuses"] == expected
        assert {"reused", "shared", "new"} <= {s for st in drawn["stacks"] for s in st["statuses"]}
        # a click lists the layer's items (with their sizes, known from the closures)
        page.evaluate("document.querySelector('.stack .layer').click()")
        listed = page.evaluate(
            "Array.from(document.querySelectorAll('#details li'), e => e.textContent)"
        )
        first = plan["images"][0]["layers"][0]
        assert [line.split("  ")[0] for line in listed] == first["paths"]
        assert page.console_errors() == []


def test_diff_html_draws_both_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = make_store(tmp_path / "root", UPDATED)
    for name, root in (("old", APP), ("new", APP2)):
        closure = store.closure_file(tmp_path / f"{name}.json", [root])
        argv = ["build", "-q", "--closure", closure, "--store-root", store.root, "--no-cache"]
        status, _, err = run(
            [*argv, "--strategy", "per-item", "-o", f"oci:{tmp_path / name}"], capsys
        )
        assert status == 0, err
    html = tmp_path / "diff.html"
    argv = ["diff", "--json", "--html", html, f"oci:{tmp_path / 'old'}", f"oci:{tmp_path / 'new'}"]
    status, out, err = run(argv, capsys)
    assert status == 0, err
    result = json.loads(out)

    with chromium(tmp_path) as page:
        drawn = _check_page(page, html, tmp_path / "diff.png")
    old_stack, new_stack = drawn["stacks"]
    for stack, name in ((old_stack, "old"), (new_stack, "new")):
        sizes = [layer["size"] for layer in read_oci(tmp_path / name).manifest["layers"]]
        assert stack["drawn"] == len(sizes)
        assert stack["sizes"] == sizes
        assert stack["total"] == sum(sizes)
    assert new_stack["statuses"] == [
        la["status"] for la in result["layers"] if la["index"] is not None
    ]
    assert old_stack["statuses"].count("removed") == result["summary"]["removed"] == 1
    pulled = sum(
        s for s, st in zip(new_stack["sizes"], new_stack["statuses"], strict=True) if st != "kept"
    )
    assert pulled == result["pull_bytes"]


HOSTILE = "/nix/store/" + "a" * 32 + "-x</script><script>document.body.dataset.pwned='1'</script>"


def test_item_names_cannot_close_the_data_script(tmp_path: Path) -> None:
    view = View(
        "t</title><b>",
        (ViewStack("s</h2>", (ViewLayer(10, "new", ((HOSTILE, 10),)),)),),
        {"new": ("new", "#e8893a")},
    )
    page_text = render_html(view)
    assert HOSTILE not in page_text
    assert "</title><b>" not in page_text
    assert page_text.count("</script>") == 3  # the error hook, the data, the drawing script
    html = tmp_path / "hostile.html"
    html.write_text(page_text)
    with chromium(tmp_path) as page:
        _check_page(page, html, tmp_path / "hostile.png")
        assert page.evaluate("document.body.dataset.pwned || ''") == ""
        page.evaluate("document.querySelector('.layer').click()")
        listed = page.evaluate("document.querySelector('#details li').textContent")
        assert listed == f"{HOSTILE}  10 B"  # shown as text, not run
        assert page.evaluate("document.querySelectorAll('script').length") == 3


_NO_CHROMIUM = """
from cdp import chromium

def test_page(tmp_path):
    with chromium(tmp_path):
        pass
"""


@pytest.mark.parametrize(("required", "outcome"), [("1", "failed"), ("", "skipped")])
def test_a_missing_chromium_fails_when_tools_are_required(
    required: str, outcome: str, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOSUREPACK_REQUIRE_TOOLS", required)
    monkeypatch.setenv("PATH", str(pytester.path / "empty-bin"))  # no chromium on it
    pytester.makepyfile(test_inner=_NO_CHROMIUM)
    result = pytester.runpytest_inprocess("-p", "requiretools", "-rA")
    result.assert_outcomes(**{outcome: 1})
    result.stdout.fnmatch_lines(["*chromium is not installed*"])
