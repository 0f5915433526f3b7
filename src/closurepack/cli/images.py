"""``closurepack copy``, ``verify``, ``inspect`` and ``diff``: commands over images that exist."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from closurepack.cli.options import platform_option, registry_options
from closurepack.cli.parsing import optional_platform, split_registry_options

__all__ = [
    "copy_command",
    "diff_command",
    "inspect_command",
    "verify_command",
]


@click.command("copy")
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
@click.option(
    "--no-artifacts",
    is_flag=True,
    help="Leave behind the artifacts (SBOMs) that refer to the image (default: copied with it"
    " to oci:, oci-archive: and docker://).",
)
@platform_option("copy only this platform's image (default: every platform's, and the index)")
@registry_options
def copy_command(
    source: str,
    dest: str,
    tag: tuple[str, ...],
    platform_text: str | None,
    no_artifacts: bool,
    **kwargs: Any,
) -> None:
    """Copy an image between any two transports (oci:, oci-archive:, docker-archive:,
    docker://; DEST may be '-'), layer blobs byte for byte, reusing what DEST holds."""
    from closurepack.copying import CopyOptions, copy_image

    options = CopyOptions(
        tags=tag,
        manifest_format=kwargs.pop("manifest_format"),
        registry=split_registry_options(kwargs),
        platform=optional_platform(platform_text),
        carry_artifacts=not no_artifacts,
    )
    digest = copy_image(source, dest, options=options)
    click.echo(digest, err=dest == "-")  # standard output holds the archive


@click.command("verify")
@click.argument("image")
@platform_option("verify only this platform's image (default: every platform's)")
@registry_options
def verify_command(image: str, platform_text: str | None, **kwargs: Any) -> None:
    """Recompute every digest, diff_id and size of an image; list every mismatch."""
    from closurepack.errors import ImageError
    from closurepack.plantable import plural
    from closurepack.validate import verify_image

    problems = verify_image(
        image, registry=split_registry_options(kwargs), platform=optional_platform(platform_text)
    )
    for problem in problems:
        click.echo(f"{image}: {problem}", err=True)
    if problems:
        raise ImageError(f"{image}: {plural(len(problems), 'problem')} found")
    click.echo(f"{image}: ok")


@click.command("inspect")
@click.argument("image")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@platform_option("the image shown besides the platforms (default: the host's)")
@registry_options
def inspect_command(image: str, as_json: bool, platform_text: str | None, **kwargs: Any) -> None:
    """Show an image's layers, sizes and the store items in each (and the platforms of a
    multi-platform image)."""
    from closurepack.validate import format_inspection, inspect_image

    info = inspect_image(
        image, registry=split_registry_options(kwargs), platform=optional_platform(platform_text)
    )
    if as_json:
        click.echo(json.dumps(info, indent=1, sort_keys=True))
    else:
        click.echo(format_inspection(info))


@click.command("diff")
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
@platform_option("the image compared, on both sides (default: the host's)")
@registry_options
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
        registry=split_registry_options(kwargs),
        platform=optional_platform(platform_text),
    )
    if html_file is not None:
        from closurepack.htmlview import diff_view, write_html

        write_html(html_file, diff_view(result))
    if as_json:
        click.echo(json.dumps(result.to_json_obj(), indent=1, sort_keys=True))
    else:
        click.echo(format_diff(result))
