"""Push records: a re-push of an unchanged image found by its inputs, checked with one request.

After a successful ``build -o docker://...`` the layer cache keeps, under ``pushes/<key>``, the
digest of the manifest pushed. The key is a sha256 over everything that decides the image:
every option of the command that can change a byte of it (destination and tags included; not
``--jobs``, ``--quiet``, the cache's own settings or the registry's credentials and TLS), the
bytes of the ``--closure``/``--plan`` files, ``SOURCE_DATE_EPOCH``, the host's machine (the
default architecture), and a fingerprint of the code that builds it: the size and mtime of
every file of this package and of the codec libraries (a new closurepack, zstandard or ISA-L
makes new keys). Layer keys and plans are functions of these, so they are covered.

The next build with the same key reads each tag's manifest (:func:`registry.tagged.read_tag`:
the digest the registry declares must be that of the bytes it sent) and, when every tag holds
the recorded digest, stops there: no closure loaded, no plan, no cache lookup, no layer. That
trusts the registry to hold the blobs of a manifest it serves, as it did when it took it; a blob
deleted since under a tag that stays is not seen. With ``--cache-verify full`` (check
everything, trust nothing recorded) the shortcut also checks every blob the manifest names with
a ``HEAD`` (several at a time), and builds when one is missing. Anything else (no record, no
such tag, the tag moved, a blob missing, an answer not trusted, any failure) falls back to the
whole build, which HEADs every blob, uploads what is missing and records again.

Inputs that are not files of the command line, or can change behind the same spelling, make
no record: store paths (asked of a live store), standard input, ``--from``, ``--previous``,
``--cache-from``/``--cache-to``, ``--sbom``, ``--platform``, ``--extra``,
``--fakeroot-script``, a store database with ``--plan``, and ``--no-cache``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import json
import logging
import os
import platform
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from closurepack import __version__
from closurepack.cachedir import default_cache_dir
from closurepack.codestamps import file_stamps, package_stamps
from closurepack.digest import Digest
from closurepack.errors import ClosurepackError, RegistryAuthError, RegistryError
from closurepack.options import warn_no_command
from closurepack.registry import RegistryOptions, is_registry_reference, parse_reference, push_tags

if TYPE_CHECKING:
    from closurepack.registry.client import RegistryClient

__all__ = ["RECORDS_DIR", "PushRecord"]

_log = logging.getLogger(__name__)

#: The records' directory under the layer cache.
RECORDS_DIR = "pushes"
#: Options that never change the image's bytes (how it is built, cached, shown or sent).
_IGNORED = frozenset(
    {
        "jobs", "quiet", "cache_dir", "cache_max_size", "cache_verify",
        "tls_verify", "no_tls_verify", "cert_dir", "creds", "authfile", "insecure_registries",
    }
)  # fmt: skip
#: Options whose input may change behind the same spelling: no record when any is given.
_UNRECORDED = (
    "store_paths", "from_image", "previous", "cache_from", "cache_to", "sbom_formats",
    "sbom_out", "platforms", "extra", "fakeroot_script", "no_cache",
)  # fmt: skip
#: Files whose bytes are part of the key.
_INPUT_FILES = ("closure_files", "plan_file")
#: Libraries that make the layers' bytes (their files, not imported, are fingerprinted).
_CODECS = ("zstandard", "isal", "pyfastcdc", "fastcrc")
_STDIN = Path("-")


@dataclass(frozen=True)
class PushRecord:
    """The record a ``build`` to ``dest`` would read and write (see the module doc)."""

    path: Path
    dest: str
    tags: tuple[str, ...]
    #: Whether the image has an Entrypoint or a Cmd (no --from: exactly when one was given).
    has_command: bool
    #: Whether the shortcut HEADs every blob of the manifest too (``--cache-verify full``).
    check_blobs: bool = False

    @classmethod
    def for_build(cls, options: Mapping[str, object]) -> PushRecord | None:
        """The record of a build with these command-line ``options`` (the build command's
        keyword arguments by name); None when it is no registry push or cannot have one."""
        dest = options.get("dest")
        if not isinstance(dest, str) or not is_registry_reference(dest):
            return None
        if any(options.get(name) for name in _UNRECORDED):
            return None
        if options.get("plan_file") is not None and (
            options.get("nix_db") or options.get("guix_db")
        ):
            return None  # the database is then asked of the store
        try:
            ref = parse_reference(dest, for_push=True)
            tags = tuple(push_tags(ref, [str(t) for t in _sequence(options.get("tag"))]))
            key = _key(options)
        except (ClosurepackError, OSError, ValueError):
            return None  # the build itself says what is wrong
        if key is None:
            return None
        cache_dir = options.get("cache_dir")
        root = Path(cache_dir) if isinstance(cache_dir, (str, Path)) else default_cache_dir()
        has_command = bool(options.get("entrypoint") or options.get("cmd"))
        check_blobs = options.get("cache_verify") == "full"
        return cls(
            root / RECORDS_DIR / key, dest, tags or (ref.reference,), has_command, check_blobs
        )

    def recorded(self) -> Digest | None:
        """The manifest digest recorded, or None."""
        try:
            return Digest.parse(self.path.read_text().strip())
        except (OSError, ValueError, ClosurepackError):
            return None

    def unchanged(self, registry: RegistryOptions) -> str | None:
        """``REPO@DIGEST`` when every tag of the destination holds the recorded manifest (one
        manifest ``GET`` per tag after the ping) and, with :attr:`check_blobs`, the repository
        every blob it names (a ``HEAD`` per blob, several at a time); None when the build must
        run (it then uploads what is missing). Only a registry that cannot be reached or
        refuses the credentials raises: the push would fail so too."""
        digest = self.recorded()
        if digest is None:
            return None
        # the HTTP stack, only now that there is something to ask
        from closurepack.registry.client import open_client  # noqa: PLC0415
        from closurepack.registry.tagged import read_tag  # noqa: PLC0415

        ref = parse_reference(self.dest, for_push=True)
        # (a registry that cannot be reached fails here as the push would)
        with open_client(ref, registry, [f"repository:{ref.repository}:pull"]) as client:
            blobs: Mapping[Digest, int] = {}
            for tag in self.tags:
                state = read_tag(client, tag)
                if not (state.known and state.digest == digest):
                    _log.info("%s:%s does not hold %s: building", ref.name, tag, digest)
                    return None
                blobs = state.blobs  # the same manifest for every tag
            if self.check_blobs and not _holds_every_blob(client, ref.name, digest, blobs):
                return None
        if not self.has_command:
            warn_no_command(self.dest)
        return f"{ref.name}@{digest}"

    def save(self, pushed: str) -> None:
        """Record the manifest digest of ``pushed`` (``REPO@DIGEST``, what the build returned).
        Best effort: a record that cannot be written only costs a build next time."""
        from closurepack._fs import atomic_write  # noqa: PLC0415 - loaded by the build by now

        with contextlib.suppress(OSError, ValueError, ClosurepackError):
            digest = Digest.parse(pushed.rpartition("@")[2])
            # only into a cache the build used: never a directory it could not make (a
            # missing home, as in a Nix build)
            self.path.parent.mkdir(exist_ok=True)
            with atomic_write(self.path, fsync=False) as out:
                out.write(f"{digest}\n".encode())


def _sequence(value: object) -> Sequence[object]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return value
    return (value,)


def _key(options: Mapping[str, object]) -> str | None:
    """The key over ``options`` and what they name (see the module doc); None when a file
    input is standard input."""
    given: dict[str, object] = {}
    files: dict[str, list[str]] = {}
    for name in sorted(options):
        if name in _IGNORED:
            continue
        value = options[name]
        if name in _INPUT_FILES:
            paths = [Path(str(p)) for p in _sequence(value)]
            if _STDIN in paths:
                return None
            files[name] = [_file_digest(p) for p in paths]
            value = [str(p.resolve()) for p in paths]
        elif isinstance(value, Path):
            value = str(value.resolve())
        elif isinstance(value, (list, tuple)):
            value = [str(v) for v in value]
        given[name] = value
    obj = {
        "kind": "closurepack-push-record",
        "version": __version__,
        "code": _code_fingerprint(),
        "machine": platform.machine(),
        "source_date_epoch": os.environ.get("SOURCE_DATE_EPOCH"),
        "options": given,
        "files": files,
    }
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _file_digest(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _holds_every_blob(
    client: RegistryClient, name: str, digest: Digest, blobs: Mapping[Digest, int]
) -> bool:
    """Whether the repository answers ``HEAD`` for every one of ``blobs`` (the manifest
    ``digest``'s); a manifest naming none is not one of our pushes (build again)."""
    from closurepack.registry.blobs import missing_blobs  # noqa: PLC0415

    if not blobs:
        _log.info("%s names no blobs to check: building", digest)
        return False
    try:
        missing = missing_blobs(client, blobs)
    except RegistryAuthError:
        raise
    except RegistryError as exc:
        _log.info("%s: building", exc)
        return False
    if missing:
        _log.info(
            "%s lacks %d blob(s) of %s (%s): building", name, len(missing), digest,
            ", ".join(map(str, missing[:3])) + (", ..." if len(missing) > 3 else ""),
        )  # fmt: skip
        return False
    return True


def _code_fingerprint() -> str:
    """Size and mtime (ns) of every file of this package and of the codec libraries."""
    stamps = list(package_stamps())
    roots: list[Path] = []
    for name in _CODECS:
        # (the path finder alone: importlib.util is not loaded for this)
        spec = importlib.machinery.PathFinder.find_spec(name)
        if spec is not None and spec.origin:
            origin = Path(spec.origin)
            roots.append(origin.parent if origin.name == "__init__.py" else origin)
    for root in roots:
        if root.is_dir():
            stamps += file_stamps(str(root))
        else:
            st = root.stat()
            if stat.S_ISREG(st.st_mode):
                stamps.append(f"{root} {st.st_size} {st.st_mtime_ns}")
    return hashlib.sha256("\n".join(stamps).encode()).hexdigest()
