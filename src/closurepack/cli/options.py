"""The command-line options several commands share, as click decorators (no logic: their
values are turned into the library's option objects by :mod:`closurepack.cli.parsing`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

__all__ = [
    "MTIME_OPTION",
    "PERMS_OPTION",
    "closure_options",
    "codec_options",
    "customisation_options",
    "format_option",
    "image_config_options",
    "layer_options",
    "plan_options",
    "platform_option",
    "registry_options",
    "shared_cache_options",
    "store_owner_options",
    "store_root_option",
]


F = TypeVar("F", bound=Callable[..., Any])


store_root_option = click.option(
    "--store-root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Read store files from DIR/<store dir>/... (as Nix chroot stores do).",
)


def closure_options(func: F) -> F:
    """Options shared by every command that reads a closure."""
    func = click.argument("store_paths", nargs=-1, metavar="[STORE_PATH]...")(func)
    func = click.option(
        "--closure",
        "closure_files",
        multiple=True,
        type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
        help="A graph file (nix path-info --json, exportReferencesGraph JSON or text), '-' for"
        " standard input. Repeat for several images planned together.",
    )(func)
    return store_root_option(func)


def plan_options(func: F) -> F:
    func = click.option(
        "--strategy",
        default=None,
        help="Layering strategy name, a JSON pipeline, or @FILE holding one (default: stable).",
    )(func)
    func = click.option(
        "--max-layers",
        type=int,
        default=None,
        help="At most N layers in the image (1-127, default 100), counting the customisation"
        " layer and the --from image's layers.",
    )(func)
    func = click.option(
        "--min-layer-size",
        default=None,
        metavar="SIZE",
        help="Fold layers smaller than SIZE (e.g. 100K, 1M; 0 for none) into the layer they"
        " cost least in (default 256K).",
    )(func)
    return click.option(
        "--previous",
        multiple=True,
        help="A plan file or image whose layers count as existing (reused as they are).",
    )(func)


MTIME_OPTION = click.option(
    "--mtime",
    help="The mtime of every file in the layers: seconds since the epoch or an RFC 3339 date"
    " (default 1, as in a real store; SOURCE_DATE_EPOCH does not change it).",
)


def image_config_options(func: F) -> F:
    options = [
        click.option("--entrypoint", help="Entrypoint: a JSON array or a shell-quoted string."),
        click.option("--cmd", help="Cmd: a JSON array or a shell-quoted string."),
        click.option("--env", multiple=True, help="K=V environment variable (repeatable)."),
        click.option("--workdir", help="Working directory."),
        click.option("--user", help="User (name, uid, name:group or uid:gid)."),
        click.option("--label", multiple=True, help="K=V label (repeatable)."),
        click.option("--expose", multiple=True, help="PORT[/PROTO] to expose (repeatable)."),
        click.option("--volume", multiple=True, help="Volume directory (repeatable)."),
        click.option("--stop-signal", help="Stop signal, e.g. SIGTERM."),
        click.option(
            "--created",
            help="Creation time of the image and its history: seconds since the epoch, an RFC"
            " 3339 date, or 'now' (default: SOURCE_DATE_EPOCH, else 1). Changes no layer.",
        ),
        MTIME_OPTION,
        click.option("--arch", help="Architecture (default: the host's), e.g. amd64, arm64."),
        click.option(
            "--tag",
            multiple=True,
            help="NAME:TAG naming the image (repeatable; default: the image's name, :latest).",
        ),
        click.option("--from", "from_image", help="Put this image's layers underneath."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def codec_options(func: F, *, what: str = "Layer compression.") -> F:
    """--compression and --level, shared by every command that compresses a layer."""
    func = click.option("--level", type=int, help="Compression level (codec specific).")(func)
    return click.option(
        "--compression",
        type=click.Choice(["gzip", "zstd", "zstd:chunked", "none"]),
        default="gzip",
        show_default=True,
        help=what,
    )(func)


def layer_options(func: F) -> F:
    func = codec_options(func)
    options = [
        click.option("--jobs", type=int, help="Layers built at a time (default: CPU count)."),
        click.option(
            "--cache-dir",
            type=click.Path(file_okay=False, path_type=Path),
            help="Layer cache (default: $XDG_CACHE_HOME/closurepack).",
        ),
        click.option(
            "--cache-max-size",
            default="20G",  # closurepack.cache.DEFAULT_MAX_SIZE (not imported: --help stays fast)
            show_default=True,
            help="Evict least recently used cache entries beyond SIZE (e.g. 500M, 20G; "
            "'none' for no limit).",
        ),
        click.option(
            "--cache-verify",
            type=click.Choice(["auto", "full"]),
            default="auto",
            show_default=True,
            help="How cached layers are checked before reuse: size, and the digest when the "
            "blob changed since it was last hashed (auto); or the digest every time (full; a "
            "recorded re-push then also checks every blob is still in the registry).",
        ),
        click.option("--no-cache", is_flag=True, help="Build every layer; use no cache."),
        click.option("-q", "--quiet", is_flag=True, help="No progress on stderr."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def customisation_options(func: F) -> F:
    options = [
        click.option(
            "--symlink", multiple=True, help="LINK=TARGET symlink in the image (repeatable)."
        ),
        click.option(
            "--extra",
            multiple=True,
            metavar="DIR[:UID:GID]",
            help="Copy this directory's tree into the image root, modes kept, every entry owned"
            " by UID:GID (default 0:0) (repeatable).",
        ),
        click.option("--no-tmp", is_flag=True, help="Do not add /tmp (mode 1777)."),
        PERMS_OPTION,
        click.option(
            "--fakeroot-script",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Run this shell script under fakeroot in a copy of the customisation tree (its"
            " working directory); what it leaves, owners included, is the customisation layer.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


PERMS_OPTION = click.option(
    "--perms",
    multiple=True,
    metavar="REGEX=MODE[:UID:GID]",
    help="Entries whose whole absolute path in the image REGEX matches get octal MODE (and the"
    " owner UID:GID); repeatable, later rules win.",
)


def store_owner_options(func: F) -> F:
    """--uid and --gid: the owner of the whole store (nix2container's nixUid/nixGid)."""
    func = click.option("--gid", help="Group of /nix (/gnu) and everything below it.")(func)
    return click.option("--uid", help="Owner of /nix (/gnu) and everything below it.")(func)


def registry_options(func: F) -> F:
    """How registries (``docker://HOST/REPO[:TAG]``) are reached, skopeo's spellings."""
    options = [
        click.option(
            "--tls-verify",
            type=click.BOOL,
            is_flag=False,
            flag_value=True,
            default=None,
            metavar="[=BOOL]",
            help="Verify registry TLS certificates (default); --tls-verify=false does not,"
            " and allows plain HTTP.",
        ),
        click.option("--no-tls-verify", is_flag=True, help="The same as --tls-verify=false."),
        click.option(
            "--cert-dir",
            type=click.Path(exists=True, file_okay=False, path_type=Path),
            help="Registry TLS: *.crt CA files, NAME.cert + NAME.key client certificate.",
        ),
        click.option(
            "--creds", metavar="USER[:PASS]", help="Registry credentials (asked for no more)."
        ),
        click.option(
            "--authfile",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Registry credentials file (containers-auth.json / Docker config.json).",
        ),
        click.option(
            "--insecure-registry",
            "insecure_registries",
            multiple=True,
            metavar="HOST[:PORT]",
            help="Reach this registry without TLS verification, or over HTTP (repeatable).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


format_option = click.option(
    "--format",
    "manifest_format",
    type=click.Choice(["oci", "docker"]),
    default="oci",
    show_default=True,
    help="Manifest pushed to a docker:// registry: OCI, or Docker's image manifest V2 schema 2.",
)


def shared_cache_options(func: F) -> F:
    """--cache-from and --cache-to (a registry as a shared layer cache), for build and
    assemble."""
    func = click.option(
        "--cache-to",
        metavar="docker://HOST/REPO[:TAG]",
        help="Afterwards, publish the image's layers to this shared layer cache.",
    )(func)
    return click.option(
        "--cache-from",
        multiple=True,
        metavar="docker://HOST/REPO[:TAG]",
        help="Take layers from this shared layer cache instead of building or uploading them"
        " (repeatable; default tag closurepack-cache).",
    )(func)


def platform_option(what: str) -> Callable[[F], F]:
    return click.option(
        "--platform",
        "platform_text",
        metavar="OS/ARCH[/VARIANT]",
        help=f"Of a multi-platform image, {what}.",
    )
