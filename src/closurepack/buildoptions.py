"""The options of a build, by concern: what the image is made of (:class:`BuildInput`) and how
its layers are made (:class:`LayerOptions`); where it goes is the destination string with
:class:`~closurepack.jobsetup.ImageOptions` and :class:`~closurepack.registry.RegistryOptions`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from closurepack.errors import OptionError
from closurepack.plan import check_max_layers
from closurepack.sbomoptions import SbomOptions

__all__ = [
    "BuildInput",
    "LayerOptions",
]


def _freeze(options: object, *names: str) -> None:
    """Store the sequences ``names`` of a frozen dataclass as tuples (callers may pass lists)."""
    for name in names:
        value: Sequence[object] = getattr(options, name)
        object.__setattr__(options, name, tuple(value))


@dataclasses.dataclass(frozen=True, kw_only=True)
class BuildInput:
    """What the image is made of: a closure (``store_paths`` and/or ``closure_files``, read
    under ``store_root``), one per platform (``platforms``: ``OS/ARCH[/VARIANT]=CLOSURE`` each,
    see :mod:`closurepack.multiarch`), or a ``plan_file``; ``image_selector`` picks one image
    of several. A closure is planned with ``strategy``, ``max_layers``, ``min_layer_size`` and
    the ``previous`` plans or images; ``max_layers`` bounds the whole image (the ``--from``
    layers, the store layers and the customisation layer; default: the plan file's limit, else
    :data:`closurepack.workflow.DEFAULT_MAX_LAYERS`).

    ``store_db`` puts a Nix or Guix store database registering the image's items in the
    customisation layer (see :mod:`closurepack.storedb`); ``sbom`` asks for SBOMs of the
    closure, attached to the image and/or written to files.
    """

    store_paths: Sequence[str] = ()
    closure_files: Sequence[Path] = ()
    store_root: Path | None = None
    platforms: Sequence[str] = ()
    plan_file: Path | None = None
    image_selector: str | None = None
    strategy: str | None = None
    max_layers: int | None = None
    min_layer_size: str | int | None = None
    previous: Sequence[str] = ()
    store_db: Literal["nix", "guix"] | None = None
    sbom: SbomOptions = SbomOptions()

    def __post_init__(self) -> None:
        _freeze(self, "store_paths", "closure_files", "platforms", "previous")
        if self.max_layers is not None:
            check_max_layers(self.max_layers)
        if self.store_db is not None:
            from closurepack.storedb import STORE_DBS  # noqa: PLC0415 - sqlite3: for --nix-db only

            if self.store_db not in STORE_DBS:
                raise OptionError(
                    f"store database {self.store_db!r}: expected one of {sorted(STORE_DBS)}"
                )


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerOptions:
    """How the layers are made: the codec (``compression``, ``level``), ``jobs`` layers at a
    time (default: the CPU count), through the local cache (``cache_dir``, default the user's;
    none with ``no_cache``) of at most ``cache_max_size`` and checked on every hit as
    ``cache_verify`` says, and the registry layer caches shared by builders (``cache_from``
    read before the build, ``cache_to`` written after it; see
    :mod:`closurepack.registry.layercache`)."""

    compression: str = "gzip"
    level: int | None = None
    jobs: int | None = None
    cache_dir: Path | None = None
    cache_max_size: str | int | None = None
    cache_verify: Literal["auto", "full"] = "auto"
    no_cache: bool = False
    cache_from: Sequence[str] = ()
    cache_to: str | None = None

    def __post_init__(self) -> None:
        _freeze(self, "cache_from")
        if self.jobs is not None and self.jobs < 1:
            raise OptionError(f"--jobs must be at least 1, not {self.jobs}")
