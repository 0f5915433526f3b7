"""``closurepack diff OLD NEW``: what an update ships, layer by layer and item by item.

Each side is an image (``docker-archive:``, ``oci:``, ``oci-archive:``, ``docker://``; a bare
directory is read as an OCI layout, a bare tar as a docker-archive) or a plan file (JSON from
``closurepack plan --json``). A plan with several images needs a selector (index or name, as
``build --image``); a plan with one image needs none.

How the two sides are compared:

- A layer is identified by its ``diff_id`` when both sides are images, otherwise by its set of
  store items (layers are reproducible: the same items make the same layer). A NEW layer whose
  identity OLD has is **kept**. A NEW layer OLD lacks is **changed** when it holds the
  counterpart of an item of an OLD layer that is gone (it replaces that layer), otherwise
  **added**; layers without store items (customisation, base image) are paired in order. An
  OLD layer that is gone and that no changed layer replaces is **removed**.
- The **pull** is what a user of OLD downloads to get NEW: the sizes of NEW's layers OLD lacks
  (compressed blob sizes for an image, the items' NAR sizes for a plan). Beside it, the pull
  under classic Docker's rule (a layer is reused only when every layer below it is the same:
  its ChainID), which is NEW's layers above the longest common bottom run.
- Store items (from plans, or from the ``dev.closurepack.layers`` label closurepack writes):
  an item of NEW whose path OLD has is kept; an added and a removed item of the same name are
  one **changed** item (the rules are in :mod:`closurepack.storenames`).
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from closurepack.errors import SourceError
from closurepack.plan import LayerPlan
from closurepack.plantable import human_size, plural
from closurepack.platforms import Platform
from closurepack.readback import read_image
from closurepack.registry import RegistryOptions, is_registry_reference
from closurepack.storenames import match_renamed, split_name
from closurepack.workflow import select_image

__all__ = [
    "DIFF_FORMAT",
    "DiffLayer",
    "DiffResult",
    "ItemChange",
    "Side",
    "SideLayer",
    "diff_sides",
    "diff_specs",
    "format_diff",
    "load_side",
]

DIFF_FORMAT = "closurepack-diff"
_TRANSPORTS = ("docker-archive:", "oci:", "oci-archive:", "docker://")


@dataclass(frozen=True)
class SideLayer:
    """One layer of a side: its store items (sorted), size, and diff_id/digest for an image."""

    paths: tuple[str, ...]
    size: int
    diff_id: str | None = None
    digest: str | None = None


@dataclass(frozen=True)
class Side:
    """One side of a diff: an image (``kind`` "image", compressed sizes) or a plan's image
    (``kind`` "plan", NAR sizes); layers bottom first."""

    source: str
    kind: str
    layers: tuple[SideLayer, ...]

    @property
    def paths(self) -> set[str]:
        return {p for layer in self.layers for p in layer.paths}

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)


@dataclass(frozen=True)
class DiffLayer:
    """A layer of NEW (``index``) or, when removed, of OLD (``old_index``), with its status:
    kept, changed, added (NEW's) or removed (OLD's). ``replaces`` lists the OLD layers a
    changed layer takes the place of; ``old_index`` is OLD's position of a kept layer."""

    status: str
    size: int
    paths: tuple[str, ...]
    index: int | None = None
    old_index: int | None = None
    replaces: tuple[int, ...] = ()
    diff_id: str | None = None

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "size": self.size,
            "paths": list(self.paths),
            "index": self.index,
            "old_index": self.old_index,
            "replaces": list(self.replaces),
            "diff_id": self.diff_id,
        }


@dataclass(frozen=True)
class ItemChange:
    """An item of OLD replaced by one of NEW: ``name`` without version, both paths and
    versions (equal versions: the same name, rebuilt with a new hash)."""

    name: str
    old_path: str
    new_path: str
    old_version: str
    new_version: str

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "old_path": self.old_path,
            "new_path": self.new_path,
            "old_version": self.old_version,
            "new_version": self.new_version,
        }


@dataclass(frozen=True)
class DiffResult:
    """Everything :func:`diff_sides` found (see the module docstring for the rules)."""

    old: Side
    new: Side
    layers: tuple[DiffLayer, ...]
    pull_bytes: int
    pull_bytes_chain: int
    items_added: tuple[str, ...]
    items_removed: tuple[str, ...]
    items_changed: tuple[ItemChange, ...]
    items_kept: int

    def count(self, status: str) -> int:
        return sum(1 for layer in self.layers if layer.status == status)

    @property
    def size_kind(self) -> str:
        """``compressed`` when NEW is an image, ``nar`` (the items' NAR sizes) for a plan."""
        return "compressed" if self.new.kind == "image" else "nar"

    def to_json_obj(self) -> dict[str, Any]:
        def side(s: Side) -> dict[str, Any]:
            return {"source": s.source, "kind": s.kind, "layers": len(s.layers), "size": s.size}

        return {
            "format": DIFF_FORMAT,
            "version": 1,
            "old": side(self.old),
            "new": side(self.new),
            "size_kind": self.size_kind,
            "summary": {
                status: self.count(status) for status in ("kept", "changed", "added", "removed")
            },
            "pull_bytes": self.pull_bytes,
            "pull_bytes_chain": self.pull_bytes_chain,
            "layers": [layer.to_json_obj() for layer in self.layers],
            "items": {
                "added": list(self.items_added),
                "removed": list(self.items_removed),
                "changed": [change.to_json_obj() for change in self.items_changed],
                "kept": self.items_kept,
            },
        }


def load_side(
    spec: str,
    *,
    selector: str | None = None,
    registry: RegistryOptions | None = None,
    platform: Platform | None = None,
) -> Side:
    """Read one side: an image (any transport the readers take; of a multi-platform image,
    the one for ``platform``, by default the host's) or a plan file."""
    if spec.startswith(_TRANSPORTS) or is_registry_reference(spec):
        return _image_side(spec, registry, platform=platform)
    path = Path(spec)
    if path.is_dir():
        return _image_side(f"oci:{spec}", registry, source=spec, platform=platform)
    if not path.is_file():
        raise SourceError(f"{spec}: no such plan file or image")
    try:
        with path.open("rb") as handle:
            head = handle.read(512)
            text = head + handle.read() if head.lstrip()[:1] in (b"{", b"[") else b""
    except OSError as exc:
        raise SourceError(f"{spec}: cannot read: {exc.strerror}") from exc
    if text:
        plan = LayerPlan.from_json(text, source=spec)
        image = select_image(plan, selector, source=spec)
        layers = tuple(SideLayer(layer.paths, layer.size) for layer in image.layers)
        return Side(spec, "plan", layers)
    kind = _archive_kind(path, spec)
    return _image_side(f"{kind}:{spec}", registry, source=spec, platform=platform)


def _archive_kind(path: Path, spec: str) -> str:
    """``docker-archive`` or ``oci-archive`` for a bare tar (an OCI archive has an index.json
    and no manifest.json); SourceError when ``path`` is no tar."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            names = {name.removeprefix("./") for name in tar.getnames()}
    except (OSError, tarfile.TarError) as exc:
        raise SourceError(f"{spec}: neither a plan (JSON) nor an image archive (tar)") from exc
    return (
        "oci-archive"
        if "index.json" in names and "manifest.json" not in names
        else ("docker-archive")
    )


def _image_side(
    spec: str,
    registry: RegistryOptions | None,
    *,
    source: str = "",
    platform: Platform | None = None,
) -> Side:
    image = read_image(spec, registry=registry, platform=platform)
    layers = tuple(
        SideLayer(tuple(sorted(layer.paths)), layer.size, str(layer.diff_id), str(layer.digest))
        for layer in image.layers
    )
    return Side(source or spec, "image", layers)


def diff_specs(
    old: str,
    new: str,
    *,
    old_selector: str | None = None,
    new_selector: str | None = None,
    registry: RegistryOptions | None = None,
    platform: Platform | None = None,
) -> DiffResult:
    """Read both sides and compare them (of a multi-platform image, the image for
    ``platform``, by default the host's)."""
    return diff_sides(
        load_side(old, selector=old_selector, registry=registry, platform=platform),
        load_side(new, selector=new_selector, registry=registry, platform=platform),
    )


def _key(layer: SideLayer, *, by_digest: bool) -> object:
    if by_digest:
        return layer.diff_id
    return frozenset(layer.paths) if layer.paths else None


def diff_sides(old: Side, new: Side) -> DiffResult:
    """Compare two sides (the rules are in the module docstring)."""
    by_digest = old.kind == "image" and new.kind == "image"
    old_keys = [_key(layer, by_digest=by_digest) for layer in old.layers]
    new_keys = [_key(layer, by_digest=by_digest) for layer in new.layers]
    old_position = {k: i for i, k in reversed(list(enumerate(old_keys))) if k is not None}
    kept_old = {old_position[k] for k in new_keys if k in old_position}

    old_paths, new_paths = old.paths, new.paths
    changes = []
    for old_path, new_path in match_renamed(
        sorted(old_paths - new_paths), sorted(new_paths - old_paths)
    ):
        name, old_version = split_name(old_path)
        changes.append(ItemChange(name, old_path, new_path, old_version, split_name(new_path)[1]))
    counterpart = {c.new_path: c.old_path for c in changes} | {p: p for p in new_paths & old_paths}
    old_layer_of = {p: i for i, layer in enumerate(old.layers) for p in layer.paths}
    gone_itemless = [
        i for i, layer in enumerate(old.layers) if i not in kept_old and not layer.paths
    ]

    layers: list[DiffLayer] = []
    replaced: set[int] = set()
    for index, (layer, key) in enumerate(zip(new.layers, new_keys, strict=True)):
        replaces: tuple[int, ...] = ()
        old_index: int | None = None
        if key in old_position:
            status, old_index = "kept", old_position[key]
        else:
            if layer.paths:
                found = {old_layer_of[counterpart[p]] for p in layer.paths if p in counterpart}
                replaces = tuple(sorted(found - kept_old))
            else:
                replaces = (gone_itemless.pop(0),) if gone_itemless else ()
            status = "changed" if replaces else "added"
            replaced.update(replaces)
        layers.append(
            DiffLayer(status, layer.size, layer.paths, index, old_index, replaces, layer.diff_id)
        )
    for position, layer in enumerate(old.layers):
        if position not in kept_old and position not in replaced:
            layers.append(
                DiffLayer("removed", layer.size, layer.paths, None, position, (), layer.diff_id)
            )

    pull = sum(
        layer.size
        for layer, key in zip(new.layers, new_keys, strict=True)
        if key not in old_position
    )
    common = 0
    while (
        common < min(len(old_keys), len(new_keys))
        and new_keys[common] is not None
        and new_keys[common] == old_keys[common]
    ):
        common += 1
    changed_old = {c.old_path for c in changes}
    changed_new = {c.new_path for c in changes}
    return DiffResult(
        old=old,
        new=new,
        layers=tuple(layers),
        pull_bytes=pull,
        pull_bytes_chain=sum(layer.size for layer in new.layers[common:]),
        items_added=tuple(sorted(new_paths - old_paths - changed_new)),
        items_removed=tuple(sorted(old_paths - new_paths - changed_old)),
        items_changed=tuple(changes),
        items_kept=len(new_paths & old_paths),
    )


def format_diff(result: DiffResult) -> str:
    """The text table ``closurepack diff`` prints (sizes in binary units)."""
    unit = "compressed" if result.size_kind == "compressed" else "NAR"
    lines = []
    for label, side in (("old", result.old), ("new", result.new)):
        lines.append(
            f"{label}  {side.source} ({side.kind}): {plural(len(side.layers), 'layer')},"
            f" {human_size(side.size)}"
        )
    counts = ", ".join(f"{result.count(s)} {s}" for s in ("kept", "changed", "added", "removed"))
    pulled = sum(1 for layer in result.layers if layer.status in ("changed", "added"))
    lines += [
        f"layers  {counts}",
        f"pull    {human_size(result.pull_bytes)} {unit} ({pulled} of"
        f" {plural(len(result.new.layers), 'layer')}) for a user of old to get new;"
        f" {human_size(result.pull_bytes_chain)} under Docker's ChainID rule",
        f"items   {len(result.items_changed)} changed, {len(result.items_added)} added,"
        f" {len(result.items_removed)} removed, {result.items_kept} kept",
        "",
        f"{'new':>4}  {'old':>4}  {'status':<8} {'size':>10}  items",
    ]
    for layer in result.layers:
        new = "" if layer.index is None else str(layer.index)
        old = layer.old_index if layer.old_index is not None else ",".join(map(str, layer.replaces))
        names = ", ".join(_after_hash(p) for p in layer.paths[:3])
        if len(layer.paths) > 3:
            names += f", ... ({len(layer.paths)})"
        lines.append(
            f"{new:>4}  {old!s:>4}  {layer.status:<8} {human_size(layer.size):>10}  {names or '-'}"
        )
    if result.items_changed:
        lines += ["", "changed items:"]
        for change in result.items_changed:
            if change.old_version != change.new_version:
                lines.append(f"  {change.name}: {change.old_version} -> {change.new_version}")
            else:
                lines.append(f"  {change.name}: {change.old_version or '-'} (rebuilt)")
    for title, paths in (("added", result.items_added), ("removed", result.items_removed)):
        if paths:
            lines += ["", f"{title} items:", *(f"  {p}" for p in paths)]
    return "\n".join(lines)


def _after_hash(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return base.split("-", 1)[1] if "-" in base else base
