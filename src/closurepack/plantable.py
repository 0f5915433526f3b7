"""Human-readable text for plans: sizes, counts, the per-image layer table of `closurepack plan`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from closurepack.graph import Closure, StoreItem
from closurepack.plan import LayerPlan

__all__ = [
    "format_plan_table",
    "human_size",
    "plural",
]


def human_size(size: int) -> str:
    """``1536`` -> ``1.5 KiB``; bytes below 1 KiB are shown as they are."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def format_plan_table(plan: LayerPlan, closures: Sequence[Closure], *, largest: int = 3) -> str:
    """A human-readable table per image: layer number, items, size, the largest items' names."""
    items = {path: item for closure in closures for path, item in closure.items.items()}
    kept = (
        " (one kept for the customisation layer)"
        if plan.max_layers > 1
        else " (no room for a customisation layer)"
    )
    lines = [f"strategy {plan.strategy or '?'}, max {plural(plan.max_layers, 'layer')}{kept}"]
    for number, image in enumerate(plan.images):
        total = sum(layer.size for layer in image.layers)
        title = image.name or (image.roots[0].rsplit("/", 1)[-1] if image.roots else "")
        lines.append("")
        items_count = sum(len(layer.paths) for layer in image.layers)
        lines.append(
            f"image {number}{f' {title}' if title else ''}:"
            f" {plural(len(image.layers), 'store layer')}, {plural(items_count, 'item')},"
            f" {human_size(total)}"
        )
        lines.append(f"{'layer':>5}  {'items':>5}  {'size':>10}  largest items")
        for index, layer in enumerate(image.layers, 1):
            top = sorted(layer.paths, key=lambda p: (-_size(items, p), p))[:largest]
            names = ", ".join(_package_name(items, p) for p in top)
            if len(layer.paths) > largest:
                names += ", ..."
            if layer.origin:
                names += f"  [{layer.origin}]"
            lines.append(
                f"{index:>5}  {len(layer.paths):>5}  {human_size(layer.size):>10}  {names}"
            )
    return "\n".join(lines)


def plural(number: int, noun: str) -> str:
    """``1 layer``, ``2 layers``: counts in human output."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _size(items: Mapping[str, StoreItem], path: str) -> int:
    item = items.get(path)
    return item.nar_size if item is not None else 0


def _package_name(items: Mapping[str, StoreItem], path: str) -> str:
    item = items.get(path)
    return item.package_name if item is not None else path.rsplit("/", 1)[-1]
