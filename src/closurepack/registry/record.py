"""Where blobs were seen: ``CACHE/registry-blobs.json`` maps registry -> digest -> repositories.

A push asks it which other repository of the same registry holds a blob, to mount the blob from
there instead of uploading it. It is a hint only (a mount that fails is followed by an upload),
so a missing or unreadable file is an empty record. Updates are read-modify-write under an
exclusive ``flock`` and land atomically (temp file + rename).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from closurepack._fs import atomic_write
from closurepack.digest import Digest

__all__ = ["RECORD_NAME", "BlobRecord"]

#: The file's name in the cache directory.
RECORD_NAME = "registry-blobs.json"
_FORMAT = "closurepack-registry-blobs-1"
#: Repositories kept per blob (most recent first) and blobs kept per registry (most recent).
_REPOS_PER_BLOB = 8
_BLOBS_PER_REGISTRY = 20000

_log = logging.getLogger(__name__)


class BlobRecord:
    """The record at ``path`` (``None``: remember nothing). Thread-safe."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._warned = False  # an unreadable record is said once, not at every blob

    def repositories(self, registry: str, digest: Digest) -> list[str]:
        """Repositories of ``registry`` where ``digest`` was seen, most recent first."""
        if self.path is None:
            return []
        entry = self._load().get(registry, {}).get(str(digest), [])
        return [r for r in entry if isinstance(r, str)]

    def add(self, registry: str, repository: str, digests: Iterable[Digest]) -> None:
        """Remember that ``repository`` of ``registry`` holds ``digests``."""
        wanted = [str(d) for d in digests]
        if self.path is None or not wanted:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._locked():
                data = self._load()
                blobs = data.setdefault(registry, {})
                for digest in wanted:
                    repos = [r for r in blobs.pop(digest, []) if r != repository]
                    blobs[digest] = [repository, *repos][:_REPOS_PER_BLOB]
                for digest in list(blobs)[: max(0, len(blobs) - _BLOBS_PER_REGISTRY)]:
                    del blobs[digest]
                body = {"format": _FORMAT, "registries": data}
                with atomic_write(self.path, fsync=False) as handle:
                    handle.write(json.dumps(body, sort_keys=False).encode() + b"\n")
        except OSError as exc:  # a hint only: a push does not fail for it
            _log.warning("%s: cannot update the blob record: %s", self.path, exc)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        assert self.path is not None
        lock_path = self.path.with_name(self.path.name + ".lock")
        with self._lock, lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load(self) -> dict[str, dict[str, list[str]]]:
        assert self.path is not None
        try:
            obj: Any = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, RecursionError) as exc:
            if not self._warned:
                self._warned = True
                _log.warning("%s: unreadable blob record, starting afresh: %s", self.path, exc)
            return {}
        registries = obj.get("registries") if isinstance(obj, dict) else None
        if not isinstance(registries, dict) or obj.get("format") != _FORMAT:
            return {}
        return {
            str(reg): {str(d): list(r) for d, r in blobs.items() if isinstance(r, list)}
            for reg, blobs in registries.items()
            if isinstance(blobs, dict)
        }
