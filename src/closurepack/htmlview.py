"""One self-contained HTML page drawing layer stacks (``plan --html``, ``diff --html``).

The page needs no network: CSS, script and data are inline. The data is JSON in a
``<script type="application/json">`` element with ``<``, ``>`` and ``&`` written as JSON
``\\u`` escapes, so no item name can close the element; the script builds every element with
``textContent``, never markup. Each stack is drawn bottom layer at the bottom, each layer's
height proportional to its bytes (at least a few pixels, so every layer is visible), coloured by
its status; hovering shows a layer's items, clicking lists them below the picture.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from closurepack._fs import atomic_write
from closurepack.diff import DiffResult
from closurepack.errors import DestinationError
from closurepack.plan import LayerPlan

__all__ = [
    "DIFF_LEGEND",
    "PLAN_LEGEND",
    "View",
    "ViewLayer",
    "ViewStack",
    "diff_view",
    "plan_view",
    "render_html",
    "write_html",
]

#: status -> (label, colour) of a plan's layers.
PLAN_LEGEND: Mapping[str, tuple[str, str]] = {
    "reused": ("reused from --previous", "#2e9d57"),
    "shared": ("shared with other images", "#3b7dd8"),
    "new": ("new", "#e8893a"),
}
#: status -> (label, colour) of a diff's layers.
DIFF_LEGEND: Mapping[str, tuple[str, str]] = {
    "kept": ("kept from old", "#2e9d57"),
    "changed": ("changed", "#d64545"),
    "added": ("added", "#e8893a"),
    "removed": ("removed", "#9a9a9a"),
}


@dataclass(frozen=True)
class ViewLayer:
    """A layer as drawn: its bytes, status (a legend key) and items (path -> size or None)."""

    size: int
    status: str
    items: tuple[tuple[str, int | None], ...]
    note: str = ""


@dataclass(frozen=True)
class ViewStack:
    """One image's layers, bottom first."""

    title: str
    layers: tuple[ViewLayer, ...]


@dataclass(frozen=True)
class View:
    """A whole page: a title, summary lines, a legend and the stacks side by side."""

    title: str
    stacks: tuple[ViewStack, ...]
    legend: Mapping[str, tuple[str, str]]
    summary: tuple[str, ...] = ()
    size_kind: str = "nar"

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "summary": list(self.summary),
            "size_kind": self.size_kind,
            "legend": {k: {"label": v[0], "colour": v[1]} for k, v in self.legend.items()},
            "stacks": [
                {
                    "title": stack.title,
                    "size": sum(layer.size for layer in stack.layers),
                    "layers": [
                        {
                            "size": layer.size,
                            "status": layer.status,
                            "note": layer.note,
                            "items": [{"path": p, "size": s} for p, s in layer.items],
                        }
                        for layer in stack.layers
                    ],
                }
                for stack in self.stacks
            ],
        }


def plan_view(plan: LayerPlan, sizes: Mapping[str, int] | None = None) -> View:
    """A plan's images: layers reused from ``--previous`` (origin), shared with another image
    of the plan (the same items), or new; ``sizes`` gives item NAR sizes where known."""
    known = sizes or {}
    images_of: Counter[tuple[str, ...]] = Counter(
        layer.paths
        for image in plan.images
        for layer in {la.paths: la for la in image.layers}.values()
    )
    stacks = []
    for number, image in enumerate(plan.images):
        layers = []
        for layer in image.layers:
            if layer.origin == "previous":
                status = "reused"
            elif images_of[layer.paths] > 1:
                status = "shared"
            else:
                status = "new"
            items = tuple((p, known.get(p)) for p in layer.paths)
            layers.append(ViewLayer(layer.size, status, items))
        stacks.append(ViewStack(image.name or f"image {number}", tuple(layers)))
    summary = (
        f"strategy {plan.strategy or '?'}, max {plan.max_layers} layers,"
        f" {len(plan.images)} image(s)",
    )
    return View("closurepack plan", tuple(stacks), PLAN_LEGEND, summary, "nar")


def diff_view(result: DiffResult) -> View:
    """OLD's stack (layers kept, replaced by a changed one, or removed) beside NEW's (kept,
    changed, added), with the pull and item counts as the summary."""
    kept_old = {layer.old_index for layer in result.layers if layer.status == "kept"}
    replaced = {i for layer in result.layers for i in layer.replaces}
    old_layers = []
    for index, layer in enumerate(result.old.layers):
        status = "kept" if index in kept_old else "changed" if index in replaced else "removed"
        old_layers.append(ViewLayer(layer.size, status, tuple((p, None) for p in layer.paths)))
    new_layers = [
        ViewLayer(
            layer.size,
            layer.status,
            tuple((p, None) for p in layer.paths),
            f"replaces old layer {', '.join(map(str, layer.replaces))}" if layer.replaces else "",
        )
        for layer in result.layers
        if layer.index is not None
    ]
    counts = ", ".join(f"{result.count(s)} {s}" for s in ("kept", "changed", "added", "removed"))
    summary = (
        f"old: {result.old.source}",
        f"new: {result.new.source}",
        f"layers: {counts}",
        f"pull: {result.pull_bytes} bytes ({result.size_kind}) for a user of old to get new;"
        f" {result.pull_bytes_chain} under Docker's ChainID rule",
        f"items: {len(result.items_changed)} changed, {len(result.items_added)} added,"
        f" {len(result.items_removed)} removed, {result.items_kept} kept",
    )
    stacks = (
        ViewStack(f"old: {result.old.source}", tuple(old_layers)),
        ViewStack(f"new: {result.new.source}", tuple(new_layers)),
    )
    return View("closurepack diff", stacks, DIFF_LEGEND, summary, result.size_kind)


def _script_json(obj: Any) -> str:
    """JSON safe inside a <script> element: no ``<``, ``>`` or ``&`` appear literally."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(view: View) -> str:
    """The page for ``view`` (one string, nothing external)."""
    title = view.title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _PAGE.format(title=title, data=_script_json(view.to_json_obj()), css=_CSS, js=_JS)


def write_html(path: Path, view: View) -> None:
    """Write the page atomically; an unwritable ``path`` is a DestinationError naming it."""
    try:
        with atomic_write(path) as handle:
            handle.write(render_html(view).encode())
    except OSError as exc:
        raise DestinationError(f"{path}: cannot write the HTML page: {exc.strerror}") from exc


def _join(lines: Sequence[str]) -> str:
    return "\n".join(lines)


_PAGE = _join(
    [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">',
        "<title>{title}</title>",
        "<script>window.addEventListener('error', function (e) {{"
        " var box = document.getElementById('errors');"
        " if (box) {{ box.textContent += 'error: ' + e.message + '\\n'; }} }});</script>",
        "<style>{css}</style>",
        "</head><body>",
        '<h1 id="title"></h1><pre id="summary"></pre><div id="legend"></div>',
        '<div id="stacks"></div><div id="details"><p>Click a layer to list its items.</p></div>',
        '<pre id="errors"></pre>',
        '<script type="application/json" id="data">{data}</script>',
        "<script>{js}</script>",
        "</body></html>",
        "",
    ]
)

_CSS = (
    "body{font-family:sans-serif;margin:1.5em;color:#222}"
    "h1{font-size:1.3em}#summary{color:#444}"
    "#legend span{display:inline-block;margin-right:1.2em}"
    "#legend i{display:inline-block;width:1em;height:1em;margin-right:.3em;vertical-align:middle}"
    "#stacks{display:flex;gap:3em;align-items:flex-end;margin:1em 0}"
    ".stack{width:16em}.stack h2{font-size:1em;word-break:break-all}"
    ".column{display:flex;flex-direction:column-reverse;border-left:1px solid #888}"
    ".layer{box-sizing:border-box;border-bottom:1px solid #fff;cursor:pointer;"
    "color:#fff;font-size:11px;overflow:hidden;white-space:nowrap;padding-left:.3em}"
    ".layer:hover,.layer.selected{outline:2px solid #222}"
    "#details li{font-family:monospace}#errors{color:#b00}"
)

_JS = r"""
(function () {
  var data = JSON.parse(document.getElementById('data').textContent);
  var HEIGHT = 480, MIN = 4;
  function human(n) {
    var units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'], v = n, i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return i === 0 ? n + ' B' : v.toFixed(1) + ' ' + units[i];
  }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function base(path) { return path.slice(path.lastIndexOf('/') + 1); }
  function short(path) {
    var name = base(path), dash = name.indexOf('-');
    return dash < 0 ? name : name.slice(dash + 1);
  }
  document.title = data.title;
  document.getElementById('title').textContent = data.title;
  document.getElementById('summary').textContent = data.summary.join('\n');
  var legend = document.getElementById('legend');
  Object.keys(data.legend).forEach(function (key) {
    var span = el('span', 'legend-' + key), swatch = el('i');
    swatch.style.background = data.legend[key].colour;
    span.appendChild(swatch);
    span.appendChild(document.createTextNode(data.legend[key].label));
    legend.appendChild(span);
  });
  var largest = 1;
  data.stacks.forEach(function (s) {
    var total = s.layers.reduce(function (a, l) { return a + l.size; }, 0);
    largest = Math.max(largest, total);
  });
  var details = document.getElementById('details'), selected = null;
  function show(stack, index, layer, node) {
    if (selected) { selected.classList.remove('selected'); }
    selected = node;
    node.classList.add('selected');
    details.textContent = '';
    details.appendChild(el('h3', '', stack.title + ', layer ' + index + ': ' +
      data.legend[layer.status].label + ', ' + human(layer.size) + ', ' +
      layer.items.length + ' items' + (layer.note ? ' (' + layer.note + ')' : '')));
    var list = el('ul', 'items');
    layer.items.forEach(function (item) {
      var size = item.size === null ? '' : '  ' + human(item.size);
      list.appendChild(el('li', '', item.path + size));
    });
    details.appendChild(list);
  }
  var stacks = document.getElementById('stacks');
  data.stacks.forEach(function (stack) {
    var box = el('div', 'stack'), total = 0;
    var column = el('div', 'column');
    stack.layers.forEach(function (layer, index) {
      total += layer.size;
      var node = el('div', 'layer', layer.items.length ? short(layer.items[0].path) : '');
      node.style.height = Math.max(MIN, Math.round(layer.size / largest * HEIGHT)) + 'px';
      node.style.background = data.legend[layer.status].colour;
      node.dataset.size = String(layer.size);
      node.dataset.status = layer.status;
      node.dataset.index = String(index);
      var names = layer.items.map(function (i) { return short(i.path); });
      node.title = 'layer ' + index + ' (' + data.legend[layer.status].label + '), ' +
        human(layer.size) + '\n' + names.join('\n');
      node.addEventListener('click', function () { show(stack, index, layer, node); });
      column.appendChild(node);
    });
    box.appendChild(el('h2', '', stack.title));
    var label = el('p', 'stack-total', stack.layers.length + ' layers, ' + human(total));
    label.dataset.bytes = String(total);
    label.dataset.layers = String(stack.layers.length);
    box.appendChild(label);
    box.appendChild(column);
    stacks.appendChild(box);
  });
  document.body.dataset.ready = 'yes';
})();
"""
