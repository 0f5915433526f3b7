"""Earlier plans and images as planning input (``--previous``): their layers count as existing."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from closurepack.errors import InputError, PlanError
from closurepack.image import layer_paths_from_config
from closurepack.plan import ImagePlan, LayerPlan, PlannedLayer
from closurepack.registry import RegistryOptions
from closurepack.transports import read_raw

__all__ = ["load_previous", "plan_from_image_config"]


def plan_from_image_config(config: dict[str, object], *, source: str) -> LayerPlan:
    """The store layers an image records (``dev.closurepack.layers``), bottom first.

    Layers without store items (base image, customisation) are left out. An image that was not
    built by closurepack records nothing: that is a PlanError naming it.
    """
    recorded = layer_paths_from_config(config)
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):  # null, a number...: nothing recorded
        diff_ids = []
    layers = tuple(
        PlannedLayer(tuple(sorted(recorded[d])), 0, "previous")
        for d in diff_ids
        if isinstance(d, str) and recorded.get(d)
    )
    if not layers:
        raise PlanError(f"{source}: the image records no store layers (not built by closurepack?)")
    store_dir = layers[0].paths[0].rsplit("/", 1)[0]
    return LayerPlan((ImagePlan(layers, name=source),), store_dir=store_dir, strategy="previous")


def load_previous(spec: str, *, registry: RegistryOptions | None = None) -> LayerPlan:
    """Read ``spec``: a plan file (JSON from ``closurepack plan --json``), or an image
    (``docker-archive:``, ``oci:``, ``oci-archive:``, ``docker://``; a bare path to a tar is
    read as a docker-archive, a bare directory as an OCI layout).

    A bare path that is neither, or does not exist, is a PlanError naming it.
    """
    path = Path(spec)
    bare = not spec.startswith(_TRANSPORTS)
    if bare:
        if path.is_dir():
            spec = f"oci:{spec}"
        elif path.is_file():
            try:
                with path.open("rb") as handle:
                    head = handle.read(512)
                    is_json = head.lstrip()[:1] in (b"{", b"[")
                    text = head + handle.read() if is_json else b""
            except OSError as exc:
                raise PlanError(f"--previous {spec}: cannot read: {exc.strerror}") from exc
            if is_json:
                return LayerPlan.from_json(text, source=spec)
            if not _looks_like_tar(path):
                raise PlanError(
                    f"--previous {spec}: neither a plan (JSON) nor an image archive (tar)"
                )
            spec = f"docker-archive:{spec}"
        else:
            raise PlanError(f"--previous {spec}: no such plan file or image")
    raw = read_raw(spec, registry=registry)
    try:
        config = json.loads(raw.config_bytes)
    except (ValueError, RecursionError) as exc:
        raise InputError(f"{spec}: the image config is not JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise InputError(f"{spec}: the image config is not a JSON object")
    return plan_from_image_config(config, source=spec)


_TRANSPORTS = ("docker-archive:", "oci:", "oci-archive:", "docker://")


def _looks_like_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False
