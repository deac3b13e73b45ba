"""`mdoc inspect MODEL`: what is in a model, at a glance or as JSON."""

from __future__ import annotations

import click

from ..model_io import load_model
from ..stats import model_stats
from ..cli_options import emit_json, json_option
from .group import cli


@cli.command("inspect")
@click.argument("model", type=click.Path())
@json_option
def inspect_cmd(model: str, as_json: bool) -> None:
    """Inputs, outputs, opsets, op histogram, parameters and FLOPs of MODEL (.onnx or .mdir)."""
    stats = model_stats(load_model(model))
    if as_json:
        emit_json(stats.as_dict())
        return
    click.echo(f"model: {model}")
    click.echo("opsets: " + ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in sorted(stats.opsets.items())))
    for title, items in (("inputs", stats.inputs), ("outputs", stats.outputs)):
        click.echo(f"{title}:")
        for name, t in items:
            click.echo(f"  {name}: {t}")
    click.echo(f"nodes: {stats.nodes}")
    for op, n in stats.ops.items():
        click.echo(f"  {n:6d}  {op}")
    click.echo(f"parameters: {stats.parameters:,} ({_bytes(stats.parameter_bytes)})")
    flops = f"{stats.flops / 1e9:.3f} GFLOPs (symbolic dims as 1)"
    if stats.flops_unknown:
        flops += f" (not counted, shapes unknown: {', '.join(stats.flops_unknown)})"
    click.echo(f"flops: {flops}")


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)
