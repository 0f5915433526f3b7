"""How closurepack talks to registries: TLS, credentials, retries and upload sizes."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from closurepack.errors import OptionError

__all__ = ["RegistryOptions", "is_loopback"]

_MIB = 1 << 20


@dataclass(frozen=True, kw_only=True)
class RegistryOptions:
    """Options of the registry transport (validated at construction).

    TLS is verified against the system trust store unless ``tls_verify`` is false or the host
    is in ``insecure_hosts``; ``cert_dir`` works as skopeo's ``--cert-dir``: its ``*.crt``
    files are trusted CAs, a ``NAME.cert`` + ``NAME.key`` pair is the client certificate.
    Plain HTTP is used only for loopback hosts and insecure ones, when HTTPS does not answer.

    ``creds`` (``USER[:PASS]``) and ``authfile`` are handed to the credential lookup.
    ``blob_record`` is the JSON file remembering which repositories hold which blobs (for
    cross-repository mounts); ``None`` remembers nothing.
    """

    tls_verify: bool = True
    cert_dir: Path | None = None
    insecure_hosts: tuple[str, ...] = ()
    creds: str | None = field(default=None, repr=False)
    authfile: Path | None = None
    #: Tries after the first one, for connection errors, 5xx and 429 answers.
    retries: int = 4
    #: First pause between tries in seconds; doubled each time, at most ``max_backoff``.
    backoff: float = 0.5
    max_backoff: float = 30.0
    #: Seconds without progress on a connection before it counts as broken.
    timeout: float = 120.0
    #: Blobs pushed at a time.
    jobs: int = 4
    #: Blobs up to this size go in one PUT; larger ones in PATCH chunks of ``chunk_size``.
    monolithic_limit: int = 64 * _MIB
    chunk_size: int = 32 * _MIB
    blob_record: Path | None = None

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise OptionError(f"registry retries must be 0 or more, not {self.retries}")
        if self.jobs < 1:
            raise OptionError(f"registry jobs must be at least 1, not {self.jobs}")
        if self.chunk_size < 1 or self.monolithic_limit < 0:
            raise OptionError("registry chunk size must be positive")
        if self.cert_dir is not None and not self.cert_dir.is_dir():
            raise OptionError(f"--cert-dir {self.cert_dir}: no such directory")
        object.__setattr__(self, "insecure_hosts", tuple(self.insecure_hosts))

    def insecure(self, host: str) -> bool:
        """Whether TLS certificates of ``host`` go unchecked (and plain HTTP may be used)."""
        return not self.tls_verify or host in self.insecure_hosts

    def plain_http_allowed(self, host: str) -> bool:
        return self.insecure(host) or is_loopback(host)


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1, with or without a port."""
    name = host
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
