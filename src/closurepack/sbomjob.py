"""``build --sbom``: the SBOM of the image a build makes, checked and hashed before any layer
is built, attached where the destination holds artifacts and written to ``--sbom-out``."""

from __future__ import annotations

from pathlib import Path

from closurepack.artifacts import Attachment
from closurepack.errors import DestinationError, OptionError
from closurepack.graph import Closure
from closurepack.image import Image
from closurepack.sbom import (
    SbomOptions,
    SbomSubject,
    item_hashes,
    sbom_attachments,
    write_sbom_files,
)
from closurepack.sources.narhash import NarDigests
from closurepack.transports import attaches_artifacts
from closurepack.transports._files import probe_writable

__all__ = ["SbomJob"]


class SbomJob:
    """The SBOM of one build: made from ``closure`` (every item's NAR hash found or computed
    now, by ``digests``, which the build's store database shares, so that a problem shows
    before the build), for the image written to ``dest``."""

    def __init__(
        self,
        options: SbomOptions,
        closure: Closure,
        *,
        name: str | None,
        dest: str,
        digests: NarDigests,
    ) -> None:
        self.options = options
        self.attached = attaches_artifacts(dest)
        if not self.attached and options.out is None:
            raise OptionError(
                f"--sbom: {dest} cannot hold an attached SBOM (oci:, oci-archive: and docker://"
                " can); give --sbom-out FILE to write it beside the image"
            )
        for path in options.out_paths().values():
            _check_out_path(path)
        self._closure = closure
        self._name = name or "image"
        # a narHash that cannot be read, or an item without one whose files are missing,
        # fails here, before the build
        self._hashes = item_hashes(closure, digests)
        self.documents: list[Attachment] = []

    def attachments(self, image: Image) -> list[Attachment]:
        """The SBOMs of ``image``, in the order of ``--sbom``; the ones to attach (none where
        the destination holds no artifacts)."""
        subject = SbomSubject(self._name, image.config_digest, image.created_epoch)
        self.documents = sbom_attachments(
            self._closure, subject, formats=self.options.formats, hashes=self._hashes
        )
        return self.documents if self.attached else []

    def write_files(self) -> list[Path]:
        """Write the ``--sbom-out`` files (after the image is written)."""
        return write_sbom_files(self.documents, self.options)


def _check_out_path(path: Path) -> None:
    """A DestinationError now, before the build, when ``--sbom-out`` cannot be written."""
    if path.is_dir():
        raise DestinationError(f"--sbom-out {path}: is a directory, expected a file path")
    if not path.parent.is_dir():
        raise DestinationError(f"--sbom-out {path}: cannot write: no directory {path.parent}")
    probe_writable(path.parent, path)
