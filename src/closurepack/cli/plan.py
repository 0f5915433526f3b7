"""``closurepack plan``: a layer plan as a table, JSON or an HTML picture."""

from __future__ import annotations

from pathlib import Path

import click

from closurepack.cli.options import closure_options, plan_options
from closurepack.errors import DestinationError

__all__ = [
    "plan_command",
]


@click.command("plan")
@closure_options
@plan_options
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
    from closurepack.plantable import format_plan_table
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
