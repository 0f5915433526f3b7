"""The layer plan: plain data saying which store items go in which layer, with a JSON round trip.

The JSON form is a contract other tools rely on::

    {"format": "closurepack-plan", "version": 1, "store_dir": "/nix/store",
     "strategy": "auto", "max_layers": 100,
     "images": [{"name": "app", "roots": ["/nix/store/...-app"],
                 "layers": [{"paths": ["/nix/store/...-glibc"], "size": 123}, ...]}]}

Only ``store_dir`` and ``images[].layers[].paths`` are required when reading; everything else
is metadata. Every path (and root) must be an item directly in ``store_dir``
(``<store_dir>/<name>``): a plan names store items, never other files. Layers are listed
bottom first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from closurepack.errors import ClosureError, PlanError
from closurepack.graph import split_store_path

__all__ = [
    "MAX_LAYERS_LIMIT",
    "PLAN_FORMAT",
    "PLAN_VERSION",
    "ImagePlan",
    "LayerPlan",
    "PlannedLayer",
    "check_max_layers",
]

PLAN_FORMAT = "closurepack-plan"
PLAN_VERSION = 1
# overlayfs stacks at most 128 lower layers; Docker refuses images of more than 125 layers.
MAX_LAYERS_LIMIT = 127


def check_max_layers(value: int) -> int:
    """Return ``value`` if it is a valid layer limit (1..127), else raise PlanError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LAYERS_LIMIT:
        raise PlanError(
            f"--max-layers must be between 1 and {MAX_LAYERS_LIMIT} (overlayfs stacks at most"
            f" 128 layers), not {value!r}"
        )
    return value


@dataclass(frozen=True)
class PlannedLayer:
    """One layer: the store items it holds (sorted) and their total NAR size."""

    paths: tuple[str, ...]
    size: int = 0
    #: Where the layer came from: "" for a fresh layer, or a note such as "previous" when it
    #: was reused as-is from an earlier plan or image.
    origin: str = ""

    def to_json_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"paths": list(self.paths), "size": self.size}
        if self.origin:
            obj["origin"] = self.origin
        return obj


@dataclass(frozen=True)
class ImagePlan:
    """The layers of one image, bottom first, with the roots it was planned from."""

    layers: tuple[PlannedLayer, ...]
    name: str | None = None
    roots: tuple[str, ...] = ()

    @property
    def paths(self) -> tuple[str, ...]:
        """Every store path of the image, in layer order."""
        return tuple(p for layer in self.layers for p in layer.paths)

    def to_json_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"layers": [layer.to_json_obj() for layer in self.layers]}
        if self.name is not None:
            obj["name"] = self.name
        if self.roots:
            obj["roots"] = list(self.roots)
        return obj


@dataclass(frozen=True)
class LayerPlan:
    """A whole plan: one :class:`ImagePlan` per closure, planned together."""

    images: tuple[ImagePlan, ...]
    store_dir: str = "/nix/store"
    strategy: str = ""
    max_layers: int = 0
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def to_json_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "store_dir": self.store_dir,
            "strategy": self.strategy,
            "max_layers": self.max_layers,
            "images": [image.to_json_obj() for image in self.images],
        }
        if self.metadata:
            obj["metadata"] = dict(self.metadata)
        return obj

    def to_json(self, *, indent: int | None = None) -> str:
        """Serialise to JSON (sorted keys; compact unless ``indent``)."""
        separators = (",", ":") if indent is None else (",", ": ")
        return json.dumps(self.to_json_obj(), sort_keys=True, indent=indent, separators=separators)

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "<plan>") -> LayerPlan:
        """Parse and validate a plan; errors name ``source`` and the offending entry."""
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise PlanError(f"{source}: not valid JSON: {exc}") from exc
        return cls.from_json_obj(obj, source=source)

    @classmethod
    def from_json_obj(cls, obj: Any, *, source: str = "<plan>") -> LayerPlan:
        if not isinstance(obj, dict) or not isinstance(obj.get("images"), list):
            raise PlanError(f"{source}: not a layer plan (expected an object with 'images')")
        version = obj.get("version", PLAN_VERSION)
        if version != PLAN_VERSION:
            raise PlanError(f"{source}: unsupported plan version {version!r}")
        store_dir = obj.get("store_dir")
        if store_dir is None:
            raise PlanError(f"{source}: no 'store_dir' (the store directory of its paths)")
        _check_store_dir(store_dir, source=source)
        images = tuple(
            _image_from_json(image, store_dir=store_dir, source=f"{source}: images[{i}]")
            for i, image in enumerate(obj["images"])
        )
        max_layers = obj.get("max_layers", 0)
        strategy = obj.get("strategy", "")
        if not isinstance(max_layers, int) or not isinstance(strategy, str):
            raise PlanError(f"{source}: 'max_layers' must be a number and 'strategy' a string")
        metadata = obj.get("metadata", {})
        if not isinstance(metadata, dict):
            raise PlanError(f"{source}: 'metadata' must be an object")
        return cls(images, store_dir, strategy, max_layers, metadata)


def _check_store_dir(store_dir: object, *, source: str) -> None:
    """PlanError unless ``store_dir`` is an absolute, normalised directory (not ``/``)."""
    parts = store_dir.split("/") if isinstance(store_dir, str) else []
    if (
        len(parts) < 2
        or parts[0] != ""
        or any(part in ("", ".", "..") or "\0" in part for part in parts[1:])
    ):
        raise PlanError(
            f"{source}: 'store_dir' must be an absolute directory such as /nix/store,"
            f" not {store_dir!r}"
        )


def _check_item(path: Any, *, store_dir: str, where: str) -> None:
    """PlanError unless ``path`` is an item directly in ``store_dir``."""
    try:
        item_dir, _ = split_store_path(path, where=where)
    except ClosureError as exc:
        raise PlanError(str(exc)) from exc
    if item_dir != store_dir:
        raise PlanError(f"{where}: {path} is not an item of the store {store_dir}")


def _image_from_json(obj: Any, *, store_dir: str, source: str) -> ImagePlan:
    if not isinstance(obj, dict) or not isinstance(obj.get("layers"), list):
        raise PlanError(f"{source}: expected an object with 'layers'")
    layers: list[PlannedLayer] = []
    seen: set[str] = set()
    for i, layer in enumerate(obj["layers"]):
        where = f"{source}.layers[{i}]"
        if not isinstance(layer, dict) or not isinstance(layer.get("paths"), list):
            raise PlanError(f"{where}: expected an object with 'paths'")
        paths = layer["paths"]
        if not paths:
            raise PlanError(f"{where}: empty layer")
        for path in paths:
            _check_item(path, store_dir=store_dir, where=where)
            if path in seen:
                raise PlanError(f"{where}: {path} is in more than one layer")
            seen.add(path)
        size = layer.get("size", 0)
        origin = layer.get("origin", "")
        if not isinstance(size, int) or size < 0 or not isinstance(origin, str):
            raise PlanError(f"{where}: invalid 'size' or 'origin'")
        layers.append(PlannedLayer(tuple(sorted(paths)), size, origin))
    name = obj.get("name")
    roots = obj.get("roots", [])
    if name is not None and not isinstance(name, str):
        raise PlanError(f"{source}: 'name' must be a string")
    if not isinstance(roots, list) or not all(isinstance(root, str) for root in roots):
        raise PlanError(f"{source}: 'roots' must be a list of store paths")
    for root in roots:
        _check_item(root, store_dir=store_dir, where=f"{source}.roots")
    return ImagePlan(tuple(layers), name, tuple(roots))
