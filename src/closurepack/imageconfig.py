"""The image config's fields (entrypoint, env, ports, architecture, ...), validated as given:
:class:`ImageConfig`, and the host's architecture in OCI names."""

from __future__ import annotations

import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from closurepack.errors import OptionError

__all__ = [
    "LAYERS_LABEL",
    "ImageConfig",
    "host_architecture",
]

#: Label recording which store items each layer holds: canonical JSON, diff_id -> [store paths].
LAYERS_LABEL = "dev.closurepack.layers"

# platform.machine() names -> OCI/Go architecture names (and ARM variant where it matters).
_ARCH_ALIASES: dict[str, tuple[str, str]] = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", ""),
    "arm64": ("arm64", ""),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armv5tel": ("arm", "v5"),
    "i386": ("386", ""),
    "i486": ("386", ""),
    "i586": ("386", ""),
    "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""),
    "ppc64": ("ppc64", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
    "mips64": ("mips64", ""),
    "loongarch64": ("loong64", ""),
}
_OCI_ARCHES = {a for a, _ in _ARCH_ALIASES.values()} | {"arm", "mips", "mipsle", "mips64le", "wasm"}

# Docker refuses only '=' and whitespace in a name (and NUL cannot be stored).
_ENV_KEY = re.compile(r"[^=\s\0]+")
_PORT = re.compile(r"(\d{1,5})(?:/(tcp|udp|sctp))?", re.IGNORECASE)
_SIGNAL = re.compile(r"SIG[A-Z0-9+-]+|[0-9]{1,2}")


def host_architecture() -> tuple[str, str]:
    """The host's (architecture, variant) in OCI names, e.g. ``("amd64", "")``."""
    machine = platform.machine().lower()
    return _ARCH_ALIASES.get(machine, (machine, ""))


def _arch_default() -> str:
    arch, variant = host_architecture()
    return f"{arch}/{variant}" if variant else arch


@dataclass(frozen=True, kw_only=True)
class ImageConfig:
    """What goes into the image config besides the layers; ``None`` means "inherit from base".

    ``architecture`` takes OCI names (``amd64``, ``arm64``, ``arm/v7``) or machine names
    (``x86_64``, ``aarch64``), which are mapped. ``created`` is seconds since the epoch.
    """

    architecture: str = field(default_factory=_arch_default)
    os: str = "linux"
    created: int = 1
    entrypoint: Sequence[str] | None = None
    cmd: Sequence[str] | None = None
    env: Sequence[str] = ()
    working_dir: str | None = None
    user: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    exposed_ports: Sequence[str] = ()
    volumes: Sequence[str] = ()
    stop_signal: str | None = None

    def __post_init__(self) -> None:
        # Accept platform spellings too: "linux/arm64/v8" -> "arm64/v8".
        spelled = self.architecture.lower().removeprefix(f"{self.os}/")
        arch, _, variant = spelled.partition("/")
        if arch in _ARCH_ALIASES and not variant:
            arch, variant = _ARCH_ALIASES[arch]
        if arch not in _OCI_ARCHES:
            raise OptionError(f"--arch {self.architecture!r}: unknown architecture")
        object.__setattr__(self, "architecture", f"{arch}/{variant}" if variant else arch)
        if not self.os or not self.os.isalnum():
            raise OptionError(f"--os {self.os!r}: invalid operating system name")
        if not isinstance(self.created, int) or isinstance(self.created, bool):
            raise OptionError(f"created time {self.created!r}: must be an integer epoch")
        if not 0 <= self.created < 253402300800:
            raise OptionError(f"created time {self.created}: out of range")
        for name in ("entrypoint", "cmd"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, str):
                    raise OptionError(f"--{name} {value!r}: must be a list of arguments")
                object.__setattr__(self, name, tuple(value))
        for item in self.env:
            key, sep, _ = item.partition("=")
            if not sep or not _ENV_KEY.fullmatch(key):
                raise OptionError(
                    f"--env {item!r}: expected KEY=VALUE, the KEY without spaces or '='"
                )
        object.__setattr__(self, "env", tuple(self.env))
        if self.working_dir is not None and not self.working_dir.startswith("/"):
            raise OptionError(f"--workdir {self.working_dir!r}: must be an absolute path")
        if self.user is not None and (not self.user or any(c.isspace() for c in self.user)):
            raise OptionError(f"--user {self.user!r}: expected USER[:GROUP] without spaces")
        for key, value in self.labels.items():
            if not key or not isinstance(value, str):
                raise OptionError(f"--label {key!r}: expected KEY=VALUE")
            if key == LAYERS_LABEL:
                raise OptionError(f"--label {key}: reserved for closurepack's own use")
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))
        object.__setattr__(self, "exposed_ports", tuple(_port(p) for p in self.exposed_ports))
        for volume in self.volumes:
            if not volume.startswith("/"):
                raise OptionError(f"--volume {volume!r}: must be an absolute path")
        object.__setattr__(self, "volumes", tuple(self.volumes))
        if self.stop_signal is not None and not _SIGNAL.fullmatch(self.stop_signal):
            raise OptionError(f"--stop-signal {self.stop_signal!r}: expected e.g. SIGTERM or 15")

    @property
    def arch(self) -> str:
        return self.architecture.partition("/")[0]

    @property
    def variant(self) -> str:
        return self.architecture.partition("/")[2]


def _port(text: str) -> str:
    match = _PORT.fullmatch(text)
    if not match or not 1 <= int(match.group(1)) <= 65535:
        raise OptionError(f"--expose {text!r}: expected PORT or PORT/tcp|udp|sctp (1-65535)")
    return f"{int(match.group(1))}/{(match.group(2) or 'tcp').lower()}"  # 80/UDP, as Docker
