"""``closurepack build-layer`` and ``assemble``: layers as build units, then an image of them."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import click

from closurepack.cli.options import (
    MTIME_OPTION,
    PERMS_OPTION,
    codec_options,
    customisation_options,
    format_option,
    image_config_options,
    registry_options,
    shared_cache_options,
    store_owner_options,
    store_root_option,
)
from closurepack.cli.parsing import (
    parse_perms,
    parse_time,
    split_image_options,
    split_registry_options,
)

__all__ = [
    "assemble_command",
    "build_layer_command",
]


@click.command("build-layer")
@click.argument("store_paths", nargs=-1, metavar="[STORE_PATH]...")
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="A plan from `closurepack plan --json` ('-': standard input); give --layer too.",
)
@click.option("--image", "image_selector", help="Which image of the plan: index or name.")
@click.option("--layer", "layer_index", type=int, help="Which layer of the image (0 = bottom).")
@store_root_option
@click.option(
    "-o",
    "--output",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Directory for the blob and layer.json (created if missing).",
)
@codec_options
@MTIME_OPTION
@PERMS_OPTION
@store_owner_options
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
    from closurepack.layerjob import LayerChoice, build_one_layer

    descriptor = build_one_layer(
        LayerChoice(
            store_paths=store_paths,
            plan_file=plan_file,
            image_selector=image_selector,
            layer_index=layer_index,
            store_root=store_root,
        ),
        out_dir=out_dir,
        compression=compression,
        level=level,
        mtime=parse_time(mtime, option="--mtime"),
        perms=parse_perms(perms, uid, gid),
    )
    click.echo(str(descriptor))


@click.command("assemble")
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
    codec_options, what="Compression of the customisation layer (the others are as built)."
)
@click.option(
    "-q", "--quiet", is_flag=True, help="Accepted as in build (assemble shows no progress)."
)
@shared_cache_options
@image_config_options
@customisation_options
@format_option
@registry_options
def assemble_command(**kwargs: Any) -> None:
    """Make an image from layer descriptors written by `build-layer` (bottom layer first)."""
    from closurepack.layerjob import assemble_from_descriptors

    registry = split_registry_options(kwargs)
    image, options = split_image_options(kwargs)
    options.pop("quiet")
    click.echo(assemble_from_descriptors(**options, image=image, registry=registry))
