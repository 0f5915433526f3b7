"""Earlier plans and images as planning input (``--previous``): their layers count as existing."""

from __future__ import annotations

import json
from pathlib import Path

from closurepack.errors import InputError, PlanError
from closurepack.image import layer_paths_from_config
from closurepack.plan import ImagePlan, LayerPlan, PlannedLayer
from closurepack.readback import read_raw

__all__ = ["load_previous", "plan_from_image_config"]


def plan_from_image_config(config: dict[str, object], *, source: str) -> LayerPlan:
    """The store layers an image records (``dev.closurepack.layers``), bottom first.

    Layers without store items (base image, customisation) are left out. An image that was not
    built by closurepack records nothing: that is a PlanError naming it.
    """
    recorded = layer_paths_from_config(config)
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids", []) if isinstance(rootfs, dict) else []
    layers = tuple(
        PlannedLayer(tuple(sorted(recorded[d])), 0, "previous")
        for d in diff_ids
        if isinstance(d, str) and recorded.get(d)
    )
    if not layers:
        raise PlanError(f"{source}: the image records no store layers (not built by closurepack?)")
    store_dir = layers[0].paths[0].rsplit("/", 1)[0]
    return LayerPlan((ImagePlan(layers, name=source),), store_dir=store_dir, strategy="previous")


def load_previous(spec: str) -> LayerPlan:
    """Read ``spec``: a plan file (JSON from ``closurepack plan --json``), or an image
    (``docker-archive:``, ``oci:``, ``oci-archive:``; a bare path to a tar is read as an archive).
    """
    path = Path(spec)
    if path.is_file():
        with path.open("rb") as handle:
            head = handle.read(1).lstrip()
        if head in (b"{", b"[", b" ", b"\n"):
            try:
                text = path.read_bytes()
            except OSError as exc:
                raise PlanError(f"{spec}: cannot read: {exc.strerror}") from exc
            return LayerPlan.from_json(text, source=spec)
        if ":" not in spec:
            spec = f"docker-archive:{spec}"
    raw = read_raw(spec)
    try:
        config = json.loads(raw.config_bytes)
    except ValueError as exc:
        raise InputError(f"{spec}: the image config is not JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise InputError(f"{spec}: the image config is not a JSON object")
    return plan_from_image_config(config, source=spec)
