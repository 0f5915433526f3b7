"""The one exception tree of closurepack; the CLI alone maps it to messages and exit codes.

::

    ClosurepackError                 root: anything closurepack itself reports
    ├── InputError                   bad input from the user (exit 2)
    │   ├── ClosureError             unparsable or invalid closure / graph file, bad store path
    │   ├── PlanError                invalid plan file or strategy, bad --max-layers
    │   ├── OptionError              invalid command-line option value (--env, --expose, ...)
    │   └── SourceError              an image to read (--from, --previous, inspect, verify) is
    │                                missing, unreadable or not of the kind named
    ├── StoreError                   a store item cannot be read or holds an unsupported file (3)
    ├── ToolError                    an external tool (nix, guix) failed or is missing (3)
    ├── CacheError                   the layer cache cannot be used (3)
    ├── ImageError                   an image is malformed or fails verification (4)
    └── DestinationError             an image cannot be written to a destination (5)
        └── RegistryError            a registry refused, failed or answered nonsense (5)
            └── RegistryAuthError    credentials missing, wrong or unusable for a registry (5)

Every message is one line that names the file, line or item at fault.
"""

from __future__ import annotations

__all__ = [
    "CacheError",
    "ClosureError",
    "ClosurepackError",
    "DestinationError",
    "ImageError",
    "InputError",
    "OptionError",
    "PlanError",
    "RegistryAuthError",
    "RegistryError",
    "SourceError",
    "StoreError",
    "ToolError",
]


class ClosurepackError(Exception):
    """Root of every error closurepack raises on purpose."""

    exit_code = 1

    def __str__(self) -> str:
        # One line whatever the message quotes (a tool's output, a name holding a line break
        # from the input): its lines joined with "; ", as the CLI prints them.
        message = super().__str__()
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        return message if lines == [message] else "; ".join(lines)


class InputError(ClosurepackError):
    """The user's input (files, arguments) is wrong."""

    exit_code = 2


class ClosureError(InputError):
    """A closure or graph file is unparsable, or the graph it describes is invalid."""


class PlanError(InputError):
    """A layer plan, strategy or layer limit is invalid."""


class OptionError(InputError):
    """A command-line option has an invalid value."""


class SourceError(InputError):
    """An image to read (``--from``, ``--previous``, ``inspect``, ``verify``) is missing,
    unreadable, or not of the kind its name says; a malformed one is an ImageError."""


class StoreError(ClosurepackError):
    """A store item cannot be read, or contains a file that cannot go in an image."""

    exit_code = 3


class ToolError(ClosurepackError):
    """An external tool such as ``nix`` or ``guix`` failed or is not installed."""

    exit_code = 3


class CacheError(ClosurepackError):
    """The layer cache cannot be used."""

    exit_code = 3


class ImageError(ClosurepackError):
    """An image is malformed or fails verification."""

    exit_code = 4


class DestinationError(ClosurepackError):
    """An image cannot be written to a destination (reading one is a SourceError)."""

    exit_code = 5


class RegistryError(DestinationError):
    """A registry refused a request, failed after retries, or answered something invalid."""


class RegistryAuthError(RegistryError):
    """Credentials for a registry are missing, wrong, or cannot be used."""
