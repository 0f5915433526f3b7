"""``closurepack build``: a closure (or a plan) to an image at a destination."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click

from closurepack.cli.options import (
    closure_options,
    customisation_options,
    format_option,
    image_config_options,
    layer_options,
    plan_options,
    registry_options,
    shared_cache_options,
    store_owner_options,
)
from closurepack.cli.parsing import LAYER_OPTIONS, split_image_options, split_registry_options
from closurepack.cli.progress import progress_reporter

if TYPE_CHECKING:
    from closurepack.pushrecord import PushRecord

__all__ = [
    "build_command",
]


@click.command("build")
@closure_options
@plan_options
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
@shared_cache_options
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
@layer_options
@image_config_options
@customisation_options
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
@store_owner_options
@format_option
@registry_options
def build_command(**kwargs: Any) -> None:
    """Build an image from a closure (or a plan) and write it to a destination."""
    from closurepack.registry import is_registry_reference

    record: PushRecord | None = None
    if is_registry_reference(str(kwargs.get("dest"))):  # only a push can have a record
        from closurepack.pushrecord import PushRecord

        record = PushRecord.for_build(kwargs)  # before anything heavy is imported
    registry = split_registry_options(kwargs)
    if record is not None and (pushed := record.unchanged(registry)) is not None:
        click.echo(pushed)  # the tags hold this build's image already: nothing to do
        return

    from closurepack.buildjob import build_image
    from closurepack.buildoptions import BuildInput, LayerOptions
    from closurepack.errors import OptionError
    from closurepack.sbomoptions import SbomOptions

    nix_db, guix_db = kwargs.pop("nix_db"), kwargs.pop("guix_db")
    if nix_db and guix_db:
        raise OptionError("--nix-db and --guix-db: an image holds the items of one store")
    store_db: Literal["nix", "guix"] | None = "nix" if nix_db else "guix" if guix_db else None
    sbom = SbomOptions(formats=kwargs.pop("sbom_formats"), out=kwargs.pop("sbom_out"))
    image, options = split_image_options(kwargs)
    quiet, dest = options.pop("quiet"), options.pop("dest")
    layers = LayerOptions(**{name: options.pop(name) for name in LAYER_OPTIONS})
    build_input = BuildInput(**options, store_db=store_db, sbom=sbom)
    with progress_reporter(enabled=not quiet) as progress:
        digest = build_image(
            build_input,
            dest=dest,
            layer_options=layers,
            image=image,
            registry=registry,
            progress=progress,
        )
    if record is not None:
        record.save(digest)
    if dest != "-":
        click.echo(digest)
    elif not quiet:  # standard output holds the archive: the digest must not follow it there
        click.echo(digest, err=True)
