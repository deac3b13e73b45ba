"""`mdoc zoo list` and `mdoc zoo build NAME -o FILE`: the reference models mdoc ships builders for."""

from __future__ import annotations

import click

from ..errors import MdocError
from ..onnx_export import save_onnx
from ..cli_options import emit_json, json_option
from .group import cli


@cli.group("zoo")
def zoo() -> None:
    """Reference models built from code with seeded weights (no downloads)."""


@zoo.command("list")
@json_option
def zoo_list(as_json: bool) -> None:
    """List the models `mdoc zoo build` can write."""
    from mdoc.models import ZOO

    if as_json:
        emit_json([{"name": e.name, "description": e.description} for e in ZOO.values()])
        return
    width = max(len(n) for n in ZOO)
    for e in ZOO.values():
        click.echo(f"{e.name:<{width}}  {e.description}")


@zoo.command("build")
@click.argument("name")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the .onnx file.")
def zoo_build(name: str, output: str) -> None:
    """Build zoo model NAME at its default size and write it as ONNX."""
    from mdoc.models import ZOO, build

    if name not in ZOO:
        raise MdocError(f"no zoo model '{name}' (available: {', '.join(ZOO)})")
    save_onnx(build(name), output)
    click.echo(f"wrote {output}")
