"""`mdoc distill STUDENT --teacher MODEL --calib DATA -o OUT`: layer-wise distillation of a pruned or int8 model."""

from __future__ import annotations

import sys

import click

from ..calibration import load_samples
from ..cli_options import emit_json, json_option
from ..distill import INT8_MODES, distill
from ..errors import MdocError
from ..model_io import SUFFIXES, load_model, save_model
from .group import cli


@cli.command("distill")
@click.argument("student", type=click.Path())
@click.option("--teacher", required=True, type=click.Path(), help="The original model (before pruning or quantization).")
@click.option("--calib", required=True, type=click.Path(), help="Samples to fit on (.npz or folder, as for `mdoc quantize`).")
@click.option("--eval", "eval_data", type=click.Path(), default=None,
              help="Held-out samples for the accuracy before and after (default: the calibration samples).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .onnx or .mdir.")
@click.option("--ridge", type=click.FloatRange(0, min_open=True), default=1e-2, show_default=True,
              help="Ridge penalty towards the student's weights, relative to the mean diagonal of the normal matrix.")
@click.option("--int8", type=click.Choice(INT8_MODES), default="bias", show_default=True,
              help="For int8 layers: bias correction, a per-channel scale and offset, or least squares rounded to "
                   "their int8 grid.")
@json_option
def distill_cmd(student, teacher, calib, eval_data, output, ridge, int8, as_json) -> None:
    """Re-fit STUDENT's pruned layers (least squares) and int8 layers (bias correction) to the teacher's activations."""
    if not output.endswith(SUFFIXES):
        raise MdocError(f"{output}: unknown output format (use {' or '.join(SUFFIXES)})")
    s, t = load_model(student), load_model(teacher)
    samples = load_samples(calib, t)
    held_out = load_samples(eval_data, t) if eval_data else None
    progress = None if as_json or not sys.stderr.isatty() else (lambda name: click.echo(f"fitting {name}", err=True))
    fitted, report = distill(s, t, samples, eval_samples=held_out, ridge=ridge, int8=int8,
                              progress=progress)
    save_model(fitted, output)
    report = {"output": output, **report}
    if as_json:
        emit_json(report)
        return
    for row in report["layers"]:
        click.echo(f"  {row['layer']} ({row['mode']}): error {row['error_before']:.4f} -> {row['error_after']:.4f}")
    b, a = report["accuracy_before"], report["accuracy_after"]
    click.echo(f"wrote {output}: {len(report['layers'])} layers fitted on {report['samples']} samples; accuracy against "
               f"the teacher on {report['held_out']} held-out samples {b:.4f} -> {a:.4f} "
               f"({report['gap_closed']:.0%} of the gap to 1 closed)")
