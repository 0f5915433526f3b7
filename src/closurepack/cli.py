"""The ``closurepack`` command: thin commands over the library; errors become exit codes here."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import click

from closurepack import __version__
from closurepack.errors import ClosurepackError, DestinationError
from closurepack.options import parse_command, parse_created, parse_extra, parse_key_values

if TYPE_CHECKING:
    from closurepack.jobsetup import ImageOptions
    from closurepack.registry import RegistryOptions

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])


_store_root_option = click.option(
    "--store-root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Read store files from DIR/<store dir>/... (as Nix chroot stores do).",
)


def _closure_options(func: F) -> F:
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
    return _store_root_option(func)


def _plan_options(func: F) -> F:
    func = click.option(
        "--strategy",
        default=None,
        help="Layering strategy name, a JSON pipeline, or @FILE holding one (default: auto).",
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="closurepack")
def cli() -> None:
    """Turn a Nix or Guix store closure into reproducible multi-layer container images."""


@cli.command("plan")
@_closure_options
@_plan_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Write the JSON plan to FILE ('-': standard output).",
)
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a self-contained HTML picture of the layer stacks to FILE.",
)
def plan_command(
    store_paths: tuple[str, ...],
    closure_files: tuple[Path, ...],
    store_root: Path | None,
    strategy: str | None,
    max_layers: int | None,
    min_layer_size: str | None,
    previous: tuple[str, ...],
    as_json: bool,
    output: Path | None,
    html_file: Path | None,
) -> None:
    """Compute a layer plan: which store items go in which layer."""
    from closurepack._fs import atomic_write
    from closurepack.planner import format_plan_table
    from closurepack.workflow import image_names, load_closures, make_plan

    closures = load_closures(
        store_paths=store_paths, closure_files=closure_files, store_root=store_root
    )
    names = image_names(store_paths=store_paths, closure_files=closure_files, store_root=store_root)
    plan = make_plan(
        closures,
        strategy=strategy,
        max_layers=max_layers,
        previous=previous,
        names=names,
        min_layer_size=min_layer_size,
    )
    if html_file is not None:
        from closurepack.htmlview import plan_view, write_html

        sizes = {p: item.nar_size for closure in closures for p, item in closure.items.items()}
        write_html(html_file, plan_view(plan, sizes))
    if output is not None and output != Path("-"):
        try:
            with atomic_write(output) as handle:
                handle.write(plan.to_json(indent=1).encode() + b"\n")
        except OSError as exc:
            raise DestinationError(f"{output}: cannot write the plan: {exc.strerror}") from exc
    elif as_json or output is not None:
        click.echo(plan.to_json(indent=1))
    else:
        click.echo(format_plan_table(plan, closures))


_MTIME_OPTION = click.option(
    "--mtime",
    help="The mtime of every file in the layers: seconds since the epoch or an RFC 3339 date"
    " (default 1, as in a real store; SOURCE_DATE_EPOCH does not change it).",
)


def _image_config_options(func: F) -> F:
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
        _MTIME_OPTION,
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


def _codec_options(func: F, *, what: str = "Layer compression.") -> F:
    """--compression and --level, shared by every command that compresses a layer."""
    func = click.option("--level", type=int, help="Compression level (codec specific).")(func)
    return click.option(
        "--compression",
        type=click.Choice(["gzip", "zstd", "zstd:chunked", "none"]),
        default="gzip",
        show_default=True,
        help=what,
    )(func)


def _layer_options(func: F) -> F:
    func = _codec_options(func)
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
            "blob changed since it was last hashed (auto); or the digest every time (full).",
        ),
        click.option("--no-cache", is_flag=True, help="Build every layer; use no cache."),
        click.option("-q", "--quiet", is_flag=True, help="No progress on stderr."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _customisation_options(func: F) -> F:
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
        _PERMS_OPTION,
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


_PERMS_OPTION = click.option(
    "--perms",
    multiple=True,
    metavar="REGEX=MODE[:UID:GID]",
    help="Entries whose whole absolute path in the image REGEX matches get octal MODE (and the"
    " owner UID:GID); repeatable, later rules win.",
)


def _store_owner_options(func: F) -> F:
    """--uid and --gid: the owner of the whole store (nix2container's nixUid/nixGid)."""
    func = click.option("--gid", help="Group of /nix (/gnu) and everything below it.")(func)
    return click.option("--uid", help="Owner of /nix (/gnu) and everything below it.")(func)


def _registry_options(func: F) -> F:
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


_REGISTRY_OPTIONS = (
    "tls_verify", "no_tls_verify", "cert_dir", "creds", "authfile", "insecure_registries",
)  # fmt: skip


def _split_registry_options(kwargs: dict[str, Any]) -> RegistryOptions:
    """Take the registry options out of ``kwargs`` (in place) as one RegistryOptions."""
    from closurepack.errors import OptionError
    from closurepack.registry import RegistryOptions

    values = {name: kwargs.pop(name) for name in _REGISTRY_OPTIONS}
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


_format_option = click.option(
    "--format",
    "manifest_format",
    type=click.Choice(["oci", "docker"]),
    default="oci",
    show_default=True,
    help="Manifest pushed to a docker:// registry: OCI, or Docker's image manifest V2 schema 2.",
)


def _shared_cache_options(func: F) -> F:
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


@cli.command("build")
@_closure_options
@_plan_options
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="Build this plan (from `closurepack plan --json`; '-': standard input) instead of"
    " planning.",
)
@click.option("--image", "image_selector", help="Which image of the plan: index or name.")
@click.option(
    "--platform",
    "platforms",
    multiple=True,
    metavar="OS/ARCH[/VARIANT]=CLOSURE",
    help="One image of a multi-platform image (an OCI index; a Docker manifest list with"
    " --format docker) from this store path or graph file (repeatable; instead of store"
    " paths, --closure and --plan).",
)
@click.option(
    "-o",
    "--output",
    "dest",
    required=True,
    help="Destination, e.g. oci:DIR[:TAG] or docker://HOST/REPO[:TAG] (pushed as it builds).",
)
@_shared_cache_options
@click.option(
    "--sbom",
    "sbom_formats",
    multiple=True,
    type=click.Choice(["spdx", "cyclonedx"]),
    help="Make an SBOM of the closure (SPDX 2.3 or CycloneDX 1.6 JSON; repeat for both),"
    " attached to oci:, oci-archive: and docker:// images as an OCI artifact.",
)
@click.option(
    "--sbom-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the SBOM to FILE (both formats: FILE's stem + .spdx.json and .cdx.json).",
)
@_layer_options
@_image_config_options
@_customisation_options
@click.option(
    "--nix-db",
    is_flag=True,
    help="Register the image's store items in /nix/var/nix/db/db.sqlite (as nix-store"
    " --load-db), so Nix works inside the container.",
)
@click.option(
    "--guix-db",
    is_flag=True,
    help="The same for Guix: /var/guix/db/db.sqlite (tested against its schema only).",
)
@_store_owner_options
@_format_option
@_registry_options
def build_command(**kwargs: Any) -> None:
    """Build an image from a closure (or a plan) and write it to a destination."""
    from closurepack.pushrecord import PushRecord

    record = PushRecord.for_build(kwargs)  # before anything heavy is imported
    registry = _split_registry_options(kwargs)
    if record is not None and (pushed := record.unchanged(registry)) is not None:
        click.echo(pushed)  # the tags hold this build's image already: nothing to do
        return

    from closurepack.buildjob import build_image
    from closurepack.errors import OptionError
    from closurepack.sbom import SbomOptions

    nix_db, guix_db = kwargs.pop("nix_db"), kwargs.pop("guix_db")
    if nix_db and guix_db:
        raise OptionError("--nix-db and --guix-db: an image holds the items of one store")
    store_db: Literal["nix", "guix"] | None = "nix" if nix_db else "guix" if guix_db else None
    sbom = SbomOptions(formats=kwargs.pop("sbom_formats"), out=kwargs.pop("sbom_out"))
    image, options = _split_image_options(kwargs)
    quiet = options.pop("quiet")
    with _progress_reporter(enabled=not quiet) as progress:
        digest = build_image(
            **options,
            image=image,
            registry=registry,
            progress=progress,
            store_db=store_db,
            sbom=sbom,
        )
    if record is not None:
        record.save(digest)
    if options["dest"] != "-":
        click.echo(digest)
    elif not quiet:  # standard output holds the archive: the digest must not follow it there
        click.echo(digest, err=True)


@cli.command("build-layer")
@click.argument("store_paths", nargs=-1, metavar="[STORE_PATH]...")
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="A plan from `closurepack plan --json` ('-': standard input); give --layer too.",
)
@click.option("--image", "image_selector", help="Which image of the plan: index or name.")
@click.option("--layer", "layer_index", type=int, help="Which layer of the image (0 = bottom).")
@_store_root_option
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Directory for the blob and layer.json (created if missing).",
)
@_codec_options
@_MTIME_OPTION
@_PERMS_OPTION
@_store_owner_options
def build_layer_command(
    store_paths: tuple[str, ...],
    plan_file: Path | None,
    image_selector: str | None,
    layer_index: int | None,
    store_root: Path | None,
    out_dir: Path,
    compression: str,
    level: int | None,
    mtime: str | None,
    perms: tuple[str, ...],
    uid: str | None,
    gid: str | None,
) -> None:
    """Build one layer (blob + JSON descriptor) into a directory, for `assemble` to use."""
    from closurepack.layerjob import build_one_layer

    descriptor = build_one_layer(
        store_paths=store_paths,
        plan_file=plan_file,
        image_selector=image_selector,
        layer_index=layer_index,
        store_root=store_root,
        out_dir=out_dir,
        compression=compression,
        level=level,
        mtime=_parse_time(mtime, option="--mtime"),
        perms=_parse_perms(perms, uid, gid),
    )
    click.echo(str(descriptor))


@cli.command("assemble")
@click.argument(
    "descriptors", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path)
)
@click.option(
    "-o",
    "--output",
    "dest",
    required=True,
    help="Destination, e.g. oci:DIR[:TAG] or docker://HOST/REPO[:TAG].",
)
@functools.partial(
    _codec_options, what="Compression of the customisation layer (the others are as built)."
)
@click.option(
    "-q", "--quiet", is_flag=True, help="Accepted as in build (assemble shows no progress)."
)
@_shared_cache_options
@_image_config_options
@_customisation_options
@_format_option
@_registry_options
def assemble_command(**kwargs: Any) -> None:
    """Make an image from layer descriptors written by `build-layer` (bottom layer first)."""
    from closurepack.layerjob import assemble_from_descriptors

    registry = _split_registry_options(kwargs)
    image, options = _split_image_options(kwargs)
    options.pop("quiet")
    click.echo(assemble_from_descriptors(**options, image=image, registry=registry))


def _platform_option(what: str) -> Callable[[F], F]:
    return click.option(
        "--platform",
        "platform_text",
        metavar="OS/ARCH[/VARIANT]",
        help=f"Of a multi-platform image, {what}.",
    )


def _platform(text: str | None) -> Any:
    """``--platform OS/ARCH[/VARIANT]`` parsed (None when not given)."""
    from closurepack.platforms import parse_platform

    return None if text is None else parse_platform(text)


@cli.command("copy")
@click.argument("source", metavar="SRC")
@click.argument("dest", metavar="DEST")
@click.option(
    "--tag",
    multiple=True,
    help="NAME:TAG naming the copy (repeatable; for oci:, oci-archive: and docker:// the TAG).",
)
@click.option(
    "--format",
    "manifest_format",
    type=click.Choice(["oci", "docker"]),
    default=None,
    help="Manifest pushed to a docker:// destination (default: the source's; OCI when the"
    " source has none).",
)
@_platform_option("copy only this platform's image (default: every platform's, and the index)")
@_registry_options
def copy_command(
    source: str, dest: str, tag: tuple[str, ...], platform_text: str | None, **kwargs: Any
) -> None:
    """Copy an image between any two transports (oci:, oci-archive:, docker-archive:,
    docker://; DEST may be '-'), layer blobs byte for byte, reusing what DEST holds."""
    from closurepack.copying import CopyOptions, copy_image

    options = CopyOptions(
        tags=tag,
        manifest_format=kwargs.pop("manifest_format"),
        registry=_split_registry_options(kwargs),
        platform=_platform(platform_text),
    )
    digest = copy_image(source, dest, options=options)
    click.echo(digest, err=dest == "-")  # standard output holds the archive


@cli.command("verify")
@click.argument("image")
@_platform_option("verify only this platform's image (default: every platform's)")
@_registry_options
def verify_command(image: str, platform_text: str | None, **kwargs: Any) -> None:
    """Recompute every digest, diff_id and size of an image; list every mismatch."""
    from closurepack.errors import ImageError
    from closurepack.planner import plural
    from closurepack.validate import verify_image

    problems = verify_image(
        image, registry=_split_registry_options(kwargs), platform=_platform(platform_text)
    )
    for problem in problems:
        click.echo(f"{image}: {problem}", err=True)
    if problems:
        raise ImageError(f"{image}: {plural(len(problems), 'problem')} found")
    click.echo(f"{image}: ok")


@cli.command("inspect")
@click.argument("image")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_platform_option("the image shown besides the platforms (default: the host's)")
@_registry_options
def inspect_command(image: str, as_json: bool, platform_text: str | None, **kwargs: Any) -> None:
    """Show an image's layers, sizes and the store items in each (and the platforms of a
    multi-platform image)."""
    from closurepack.validate import format_inspection, inspect_image

    info = inspect_image(
        image, registry=_split_registry_options(kwargs), platform=_platform(platform_text)
    )
    if as_json:
        click.echo(json.dumps(info, indent=1, sort_keys=True))
    else:
        click.echo(format_inspection(info))


@cli.command("diff")
@click.argument("old")
@click.argument("new")
@click.option(
    "--image",
    "image_selector",
    help="Which image of a plan with several (index or name); applies to both sides.",
)
@click.option("--old-image", "old_selector", help="Which image of OLD's plan (default: --image).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a self-contained HTML picture of both layer stacks to FILE.",
)
@_platform_option("the image compared, on both sides (default: the host's)")
@_registry_options
def diff_command(
    old: str,
    new: str,
    image_selector: str | None,
    old_selector: str | None,
    as_json: bool,
    html_file: Path | None,
    platform_text: str | None,
    **kwargs: Any,
) -> None:
    """Compare two images or plans: layers kept, changed, added, removed; what a pull costs."""
    from closurepack.diff import diff_specs, format_diff

    result = diff_specs(
        old,
        new,
        old_selector=old_selector or image_selector,
        new_selector=image_selector,
        registry=_split_registry_options(kwargs),
        platform=_platform(platform_text),
    )
    if html_file is not None:
        from closurepack.htmlview import diff_view, write_html

        write_html(html_file, diff_view(result))
    if as_json:
        click.echo(json.dumps(result.to_json_obj(), indent=1, sort_keys=True))
    else:
        click.echo(format_diff(result))


@cli.group("cache")
def cache_group() -> None:
    """Show, prune or clear the layer cache (safe while builds use it)."""


_cache_dir_option = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Layer cache (default: $XDG_CACHE_HOME/closurepack).",
)


def _echo_report(report: Any, *, as_json: bool = False) -> None:
    if as_json:
        click.echo(json.dumps(report.to_json_obj(), sort_keys=True, separators=(",", ":")))
    else:
        click.echo(report.summary())


@cache_group.command("du")
@_cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print one line of JSON.")
def cache_du_command(cache_dir: Path | None, as_json: bool) -> None:
    """Entries, total size and the size limit of the cache."""
    from closurepack.cacheadmin import cache_usage

    _echo_report(cache_usage(cache_dir), as_json=as_json)


@cache_group.command("prune")
@_cache_dir_option
@click.option(
    "--max-size",
    help="Evict least recently used entries down to SIZE (e.g. 500M; default: 20G, the"
    " builds' default --cache-max-size).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one line of JSON.")
def cache_prune_command(cache_dir: Path | None, max_size: str | None, as_json: bool) -> None:
    """Evict least recently used entries until the cache fits a size."""
    from closurepack.cacheadmin import prune_cache

    _echo_report(prune_cache(cache_dir, max_size=max_size), as_json=as_json)


@cache_group.command("clear")
@_cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print one line of JSON.")
def cache_clear_command(cache_dir: Path | None, as_json: bool) -> None:
    """Remove every entry (those running builds use stay)."""
    from closurepack.cacheadmin import clear_cache

    _echo_report(clear_cache(cache_dir), as_json=as_json)


_IMAGE_OPTIONS = (
    "tag", "created", "mtime", "arch", "entrypoint", "cmd", "env", "workdir", "user", "label",
    "expose", "volume", "stop_signal", "symlink", "extra", "no_tmp", "from_image",
    "manifest_format", "perms", "fakeroot_script", "uid", "gid",
)  # fmt: skip


def _parse_perms(rules: Sequence[str], uid: str | None, gid: str | None) -> Any:
    """--perms, --uid and --gid as one closurepack.perms.Perms (None when none is given)."""
    from closurepack.perms import Perms, parse_perm, parse_store_owner

    perms = Perms(tuple(map(parse_perm, rules)), parse_store_owner(uid, gid))
    return None if perms.is_empty else perms


def _split_image_options(kwargs: dict[str, Any]) -> tuple[ImageOptions, dict[str, Any]]:
    """Take the options shared by build and assemble out of ``kwargs``, parsed and typed."""
    from closurepack.customisation import ExtraTree
    from closurepack.jobsetup import ImageOptions

    rest = {k: v for k, v in kwargs.items() if k not in _IMAGE_OPTIONS}
    options = ImageOptions(
        tags=tuple(kwargs["tag"]),
        created=_parse_time(kwargs["created"], option="--created"),
        mtime=_parse_time(kwargs["mtime"], option="--mtime"),
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
        perms=_parse_perms(kwargs["perms"], kwargs.get("uid"), kwargs.get("gid")),
        fakeroot_script=kwargs["fakeroot_script"],
    )
    return options, rest


def _parse_time(value: str | None, *, option: str) -> int | None:
    """``--created``/``--mtime``: None when not given; an empty value is refused."""
    return None if value is None else parse_created(value, option=option)


def _layer_line(event: Any) -> str:
    """One layer's progress line: ``layer 2/5: 0123456789ab 1.2 MiB (cached) in 0.0s``."""
    from closurepack.planner import human_size

    cached = " (cached)" if event.cached else ""
    return (
        f"layer {event.index + 1}/{event.total}: {event.layer.digest.hex[:12]}"
        f" {human_size(event.layer.size)}{cached} in {event.seconds:.1f}s"
    )


@contextlib.contextmanager
def _progress_reporter(*, enabled: bool) -> Iterator[Callable[[Any], None] | None]:
    """A rich progress bar on stderr (per layer, bytes per second) when stderr is a terminal;
    otherwise (a CI log, a Nix build) one plain line per layer, never an escape code."""
    if not enabled:
        yield None
        return
    if not sys.stderr.isatty():

        def plain(event: Any) -> None:
            click.echo(_layer_line(event), err=True)

        yield plain
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("layers {task.fields[done]}/{task.fields[layers]}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("build", total=None, done=0, layers="?")
        finished = 0

        def report(event: Any) -> None:
            nonlocal finished
            finished += 1
            bar.update(
                task,
                total=event.total_size or None,
                advance=event.planned_size,
                done=finished,
                layers=event.total,
            )
            bar.console.print(_layer_line(event), highlight=False)

        yield report


def _one_line(exc: click.ClickException) -> str:
    """Click's usage errors as one line: the command, the message and where help is."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        return f"{ctx.command_path}: {message} (see {ctx.command_path} --help)"
    return message


class _WarningLine(logging.Handler):
    """The library's warnings as one ``closurepack: warning: ...`` line each on stderr (the
    stream of the moment, so that redirections made after setup are honoured)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"closurepack: warning: {_single_line(record.getMessage())}", err=True)


def _show_warnings() -> None:
    logger = logging.getLogger("closurepack")
    if not any(isinstance(h, _WarningLine) for h in logger.handlers):
        logger.addHandler(_WarningLine(logging.WARNING))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    # httpx loads its own command line (rich's console, pygments) when they are installed, a
    # fifth of a registry push's start-up; closurepack never runs it, and without the module
    # httpx defines a stub (its documented fallback).
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    _show_warnings()
    try:
        status = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="closurepack",
            standalone_mode=False,
        )
    except ClosurepackError as exc:
        if isinstance(exc.__cause__, BrokenPipeError):
            return _broken_pipe()
        click.echo(f"closurepack: error: {_single_line(str(exc))}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("closurepack: interrupted", err=True)
        return 130
    except click.exceptions.NoArgsIsHelpError as exc:
        # plain `closurepack` (or a group without its command): the usage, as --help shows it
        click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message(), err=True)
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"closurepack: error: {_one_line(exc)}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("closurepack: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return _broken_pipe()
    except OSError as exc:
        # A safety net: the library wraps the OSErrors it expects; any other one is still a
        # problem of the machine or the input (a full disk, a vanished file), not a crash.
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"closurepack: error: {where}{exc.strerror or exc}", err=True)
        return 1
    except RecursionError:
        # Only absurdly nested JSON gets here (the parsers of closures, plans and pipelines
        # name their file themselves): still bad input, not a crash.
        click.echo("closurepack: error: an input is nested too deeply to read", err=True)
        return 2
    return status if isinstance(status, int) else 0


def _single_line(message: str) -> str:
    """Messages quoting a tool's output may span lines: join them with '; '."""
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


def _broken_pipe() -> int:
    """The reader went away (``closurepack build -o - | head``): not our error. Quietly give
    the status a shell reports for SIGPIPE; stdout goes to /dev/null so that Python's final
    flush cannot complain either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
