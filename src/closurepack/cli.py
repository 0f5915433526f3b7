"""The ``closurepack`` command: thin commands over the library; errors become exit codes here."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from closurepack import __version__
from closurepack.errors import ClosurepackError, DestinationError
from closurepack.options import parse_command, parse_created, parse_key_values

if TYPE_CHECKING:
    from closurepack.registry import RegistryOptions
    from closurepack.workflow import ImageOptions

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
        type=click.Path(dir_okay=False, path_type=Path),
        help="A graph file (nix path-info --json, exportReferencesGraph JSON or text). "
        "Repeat for several images planned together.",
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
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write JSON to FILE."
)
def plan_command(
    store_paths: tuple[str, ...],
    closure_files: tuple[Path, ...],
    store_root: Path | None,
    strategy: str | None,
    max_layers: int | None,
    previous: tuple[str, ...],
    as_json: bool,
    output: Path | None,
) -> None:
    """Compute a layer plan: which store items go in which layer."""
    from closurepack._fs import atomic_write
    from closurepack.planner import format_plan_table
    from closurepack.workflow import image_names, load_closures, make_plan

    closures = load_closures(
        store_paths=store_paths, closure_files=closure_files, store_root=store_root
    )
    names = image_names(store_paths=store_paths, closure_files=closure_files)
    plan = make_plan(
        closures, strategy=strategy, max_layers=max_layers, previous=previous, names=names
    )
    if output is not None:
        try:
            with atomic_write(output) as handle:
                handle.write(plan.to_json(indent=1).encode() + b"\n")
        except OSError as exc:
            raise DestinationError(f"{output}: cannot write the plan: {exc.strerror}") from exc
    elif as_json:
        click.echo(plan.to_json(indent=1))
    else:
        click.echo(format_plan_table(plan, closures))


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
            help="Creation time: seconds since the epoch, an RFC 3339 date, or 'now' "
            "(default: SOURCE_DATE_EPOCH, else 1).",
        ),
        click.option("--arch", help="Architecture (default: the host's), e.g. amd64, arm64."),
        click.option("--tag", help="NAME:TAG recorded in the image (docker-archive RepoTags)."),
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
        type=click.Choice(["gzip", "zstd", "none"]),
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
            default="20G",
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
            type=click.Path(exists=True, file_okay=False, path_type=Path),
            help="Copy this directory's tree into the image root (repeatable).",
        ),
        click.option("--no-tmp", is_flag=True, help="Do not add /tmp (mode 1777)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


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


@cli.command("build")
@_closure_options
@_plan_options
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Build this plan (from `closurepack plan --json`) instead of planning.",
)
@click.option("--image", "image_selector", help="Which image of the plan: index or name.")
@click.option(
    "-o",
    "--output",
    "dest",
    required=True,
    help="Destination, e.g. oci:DIR[:TAG] or docker://HOST/REPO[:TAG] (pushed as it builds).",
)
@_layer_options
@_image_config_options
@_customisation_options
@_format_option
@_registry_options
def build_command(**kwargs: Any) -> None:
    """Build an image from a closure (or a plan) and write it to a destination."""
    from closurepack.workflow import build_image

    registry = _split_registry_options(kwargs)
    image, options = _split_image_options(kwargs)
    quiet = options.pop("quiet")
    with _progress_reporter(enabled=not quiet) as progress:
        digest = build_image(**options, image=image, registry=registry, progress=progress)
    if options["dest"] != "-":
        click.echo(digest)
    elif not quiet:  # standard output holds the archive: the digest must not follow it there
        click.echo(digest, err=True)


@cli.command("build-layer")
@click.argument("store_paths", nargs=-1, metavar="[STORE_PATH]...")
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A plan from `closurepack plan --json`; give --layer too.",
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
@click.option(
    "--created",
    help="File mtimes: seconds since the epoch or an RFC 3339 date (default: SOURCE_DATE_EPOCH,"
    " else 1).",
)
def build_layer_command(
    store_paths: tuple[str, ...],
    plan_file: Path | None,
    image_selector: str | None,
    layer_index: int | None,
    store_root: Path | None,
    out_dir: Path,
    compression: str,
    level: int | None,
    created: str | None,
) -> None:
    """Build one layer (blob + JSON descriptor) into a directory, for `assemble` to use."""
    from closurepack.workflow import build_one_layer

    descriptor = build_one_layer(
        store_paths=store_paths,
        plan_file=plan_file,
        image_selector=image_selector,
        layer_index=layer_index,
        store_root=store_root,
        out_dir=out_dir,
        compression=compression,
        level=level,
        created=parse_created(created) if created else None,
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
@_image_config_options
@_customisation_options
@_format_option
@_registry_options
def assemble_command(**kwargs: Any) -> None:
    """Make an image from layer descriptors written by `build-layer` (bottom layer first)."""
    from closurepack.workflow import assemble_from_descriptors

    registry = _split_registry_options(kwargs)
    image, options = _split_image_options(kwargs)
    options.pop("quiet")
    click.echo(assemble_from_descriptors(**options, image=image, registry=registry))


@cli.command("verify")
@click.argument("image")
@_registry_options
def verify_command(image: str, **kwargs: Any) -> None:
    """Recompute every digest, diff_id and size of an image; list every mismatch."""
    from closurepack.errors import ImageError
    from closurepack.validate import verify_image

    problems = verify_image(image, registry=_split_registry_options(kwargs))
    for problem in problems:
        click.echo(f"{image}: {problem}", err=True)
    if problems:
        raise ImageError(f"{image}: {len(problems)} problem(s) found")
    click.echo(f"{image}: ok")


@cli.command("inspect")
@click.argument("image")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_registry_options
def inspect_command(image: str, as_json: bool, **kwargs: Any) -> None:
    """Show an image's layers, sizes and the store items in each."""
    from closurepack.validate import format_inspection, inspect_image

    info = inspect_image(image, registry=_split_registry_options(kwargs))
    if as_json:
        click.echo(json.dumps(info, indent=1, sort_keys=True))
    else:
        click.echo(format_inspection(info))


_IMAGE_OPTIONS = (
    "tag", "created", "arch", "entrypoint", "cmd", "env", "workdir", "user", "label", "expose",
    "volume", "stop_signal", "symlink", "extra", "no_tmp", "from_image", "manifest_format",
)  # fmt: skip


def _split_image_options(kwargs: dict[str, Any]) -> tuple[ImageOptions, dict[str, Any]]:
    """Take the options shared by build and assemble out of ``kwargs``, parsed and typed."""
    from closurepack.workflow import ImageOptions

    rest = {k: v for k, v in kwargs.items() if k not in _IMAGE_OPTIONS}
    options = ImageOptions(
        tag=kwargs["tag"],
        created=parse_created(kwargs["created"]) if kwargs["created"] else None,
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
        extra_dirs=tuple(kwargs["extra"]),
        tmp=not kwargs["no_tmp"],
        from_image=kwargs["from_image"],
        manifest_format=kwargs["manifest_format"],
    )
    return options, rest


@contextlib.contextmanager
def _progress_reporter(*, enabled: bool) -> Iterator[Callable[[Any], None] | None]:
    """A rich progress bar on stderr (per layer, bytes per second) when stderr is a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
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
        DownloadColumn(),
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
            cached = " (cached)" if event.cached else ""
            bar.console.print(
                f"layer {event.index + 1}/{event.total}: {event.layer.digest.hex[:12]}"
                f" {event.layer.size / 1e6:.1f} MB{cached} in {event.seconds:.1f}s",
                highlight=False,
            )

        yield report


def _one_line(exc: click.ClickException) -> str:
    """Click's usage errors as one line: the command, the message and where help is."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        return f"{ctx.command_path}: {message} (see {ctx.command_path} --help)"
    return message


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
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
