"""The shared options' values, as click passes them, turned into the library's option objects."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from closurepack.options import parse_command, parse_created, parse_extra, parse_key_values

if TYPE_CHECKING:
    from closurepack.jobsetup import ImageOptions
    from closurepack.registry import RegistryOptions

__all__ = [
    "IMAGE_OPTIONS",
    "LAYER_OPTIONS",
    "REGISTRY_OPTIONS",
    "optional_platform",
    "parse_perms",
    "parse_time",
    "split_image_options",
    "split_registry_options",
]


REGISTRY_OPTIONS = (
    "tls_verify", "no_tls_verify", "cert_dir", "creds", "authfile", "insecure_registries",
)  # fmt: skip


def split_registry_options(kwargs: dict[str, Any]) -> RegistryOptions:
    """Take the registry options out of ``kwargs`` (in place) as one RegistryOptions."""
    from closurepack.errors import OptionError
    from closurepack.registry import RegistryOptions

    values = {name: kwargs.pop(name) for name in REGISTRY_OPTIONS}
    if values["no_tls_verify"] and values["tls_verify"]:
        raise OptionError("--tls-verify and --no-tls-verify contradict each other")
    verify = not values["no_tls_verify"] and values["tls_verify"] is not False
    return RegistryOptions(
        tls_verify=verify,
        cert_dir=values["cert_dir"],
        insecure_hosts=tuple(values["insecure_registries"]),
        creds=values["creds"],
        authfile=values["authfile"],
    )


LAYER_OPTIONS = (
    "compression", "level", "jobs", "cache_dir", "cache_max_size", "cache_verify", "no_cache",
    "cache_from", "cache_to",
)  # fmt: skip


IMAGE_OPTIONS = (
    "tag", "created", "mtime", "arch", "entrypoint", "cmd", "env", "workdir", "user", "label",
    "expose", "volume", "stop_signal", "symlink", "extra", "no_tmp", "from_image",
    "manifest_format", "perms", "fakeroot_script", "uid", "gid",
)  # fmt: skip


def parse_perms(rules: Sequence[str], uid: str | None, gid: str | None) -> Any:
    """--perms, --uid and --gid as one closurepack.perms.Perms (None when none is given)."""
    from closurepack.perms import Perms, parse_perm, parse_store_owner

    perms = Perms(tuple(map(parse_perm, rules)), parse_store_owner(uid, gid))
    return None if perms.is_empty else perms


def split_image_options(kwargs: dict[str, Any]) -> tuple[ImageOptions, dict[str, Any]]:
    """Take the options shared by build and assemble out of ``kwargs``, parsed and typed."""
    from closurepack.customisation import ExtraTree
    from closurepack.jobsetup import ImageOptions

    rest = {k: v for k, v in kwargs.items() if k not in IMAGE_OPTIONS}
    options = ImageOptions(
        tags=tuple(kwargs["tag"]),
        created=parse_time(kwargs["created"], option="--created"),
        mtime=parse_time(kwargs["mtime"], option="--mtime"),
        arch=kwargs["arch"],
        entrypoint=parse_command(kwargs["entrypoint"], option="--entrypoint"),
        cmd=parse_command(kwargs["cmd"], option="--cmd"),
        env=tuple(kwargs["env"]),
        workdir=kwargs["workdir"],
        user=kwargs["user"],
        labels=parse_key_values(kwargs["label"], option="--label"),
        expose=tuple(kwargs["expose"]),
        volumes=tuple(kwargs["volume"]),
        stop_signal=kwargs["stop_signal"],
        symlinks=parse_key_values(kwargs["symlink"], option="--symlink"),
        extra_dirs=tuple(ExtraTree(*parse_extra(value)) for value in kwargs["extra"]),
        tmp=not kwargs["no_tmp"],
        from_image=kwargs["from_image"],
        manifest_format=kwargs["manifest_format"],
        perms=parse_perms(kwargs["perms"], kwargs.get("uid"), kwargs.get("gid")),
        fakeroot_script=kwargs["fakeroot_script"],
    )
    return options, rest


def parse_time(value: str | None, *, option: str) -> int | None:
    """``--created``/``--mtime``: None when not given; an empty value is refused."""
    return None if value is None else parse_created(value, option=option)


def optional_platform(text: str | None) -> Any:
    """``--platform OS/ARCH[/VARIANT]`` parsed (None when not given)."""
    from closurepack.platforms import parse_platform

    return None if text is None else parse_platform(text)
