"""``--sbom`` and ``--sbom-out`` as the build takes them: every build reads these options,
so they live apart from :mod:`closurepack.sbom`, which only a build with ``--sbom`` imports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from closurepack.errors import OptionError

__all__ = [
    "FORMATS",
    "SbomOptions",
]

#: The formats of ``--sbom``, and the file-name part each gets when both are written.
FORMATS = {"spdx": "spdx", "cyclonedx": "cdx"}


@dataclass(frozen=True, kw_only=True)
class SbomOptions:
    """``--sbom FORMAT`` (each once, in the order given) and ``--sbom-out FILE``."""

    formats: tuple[str, ...] = ()
    out: Path | None = None

    def __post_init__(self) -> None:
        for name in self.formats:
            if name not in FORMATS:
                raise OptionError(f"--sbom {name!r}: expected spdx or cyclonedx")
        object.__setattr__(self, "formats", tuple(dict.fromkeys(self.formats)))
        if self.out is not None and not self.formats:
            raise OptionError("--sbom-out needs --sbom spdx or --sbom cyclonedx")

    @property
    def enabled(self) -> bool:
        return bool(self.formats)

    def out_paths(self) -> dict[str, Path]:
        """Where ``--sbom-out FILE`` puts each format: FILE itself for one format; for both,
        FILE without a ``.json`` suffix, then ``.spdx.json`` and ``.cdx.json``."""
        if self.out is None:
            return {}
        if len(self.formats) == 1:
            return {self.formats[0]: self.out}
        stem = self.out.name.removesuffix(".json")
        return {f: self.out.with_name(f"{stem}.{FORMATS[f]}.json") for f in self.formats}
