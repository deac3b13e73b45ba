"""`mdoc compare A B`: do two models (or a model and an artifact) give the same outputs?"""

from __future__ import annotations

import click

from ..compare import compare_models
from ..errors import CheckFailed
from ..cli_options import dim_option, emit_json, json_option, parse_dims
from .group import cli


@cli.command("compare")
@click.argument("model_a", type=click.Path())
@click.argument("model_b", type=click.Path())
@click.option("--inputs", type=click.Path(dir_okay=False), help=".npz of inputs keyed by name (default: seeded random).")
@click.option("--rtol", type=float, default=1e-4, show_default=True)
@click.option("--atol", type=float, default=1e-5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@dim_option
@json_option
def compare_cmd(model_a, model_b, inputs, rtol, atol, seed, dims, as_json) -> None:
    """Run MODEL_A and MODEL_B on the same inputs and report the largest differences per output.

    Exit status 1 when any output differs beyond tolerance.
    """
    diffs = compare_models(model_a, model_b, inputs=inputs, rtol=rtol, atol=atol, seed=seed, dims=parse_dims(dims))
    failed = [d for d in diffs if not d.ok]
    if as_json:
        emit_json({"ok": not failed, "rtol": rtol, "atol": atol,
                   "outputs": [d.__dict__ for d in diffs]})
    else:
        for d in diffs:
            status = "ok  " if d.ok else "DIFF"
            note = f"  ({d.note})" if d.note else ""
            click.echo(f"{status} {d.name}: max abs {d.max_abs:.3g}, max rel {d.max_rel:.3g}{note}")
    if failed:
        raise CheckFailed(f"{len(failed)} of {len(diffs)} outputs differ beyond rtol {rtol}, atol {atol}: "
                          + ", ".join(d.name for d in failed))
