"""`mdoc print MODEL`: the textual IR of a model, to stdout or to a `.mdir` file."""

from __future__ import annotations

import click

from ..model_io import load_model, save_model
from ..printer import print_model
from .group import cli


@cli.command("print")
@click.argument("model", type=click.Path())
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write a .mdir file (weights beside it).")
def print_cmd(model: str, output: str | None) -> None:
    """Print MODEL as mdoc IR text (large constants shown as resources)."""
    m = load_model(model)
    if output:
        save_model(m, output)
    else:
        click.echo(print_model(m), nl=False)
