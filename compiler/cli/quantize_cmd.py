"""`mdoc quantize MODEL -o OUT --calib DATA`: static int8 (QDQ) from calibration samples."""

from __future__ import annotations

import sys

import click
from tqdm import tqdm

from ..calibration import METHODS, load_samples
from ..model_io import SUFFIXES, load_model, save_model
from ..errors import MdocError
from ..quantize import quantize_static
from .group import cli, emit_json, json_option


@cli.command("quantize")
@click.argument("model", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .onnx (QDQ) or .mdir.")
@click.option("--calib", "calib", required=True, type=click.Path(),
              help=".npz of samples stacked along a first axis, keyed by input name, or a folder of .npz files.")
@click.option("--method", type=click.Choice(METHODS), default="minmax", show_default=True,
              help="How an observed activation's range is chosen.")
@click.option("--percentile", type=click.FloatRange(50, 100), default=99.99, show_default=True,
              help="For --method percentile: the percentile kept at each end.")
@click.option("--per-channel/--per-tensor", default=True, show_default=True, help="Weight scales per output channel.")
@click.option("--activations", type=click.Choice(["u8", "s8"]), default="u8", show_default=True,
              help="Activation type (affine, with a zero point).")
@click.option("--exclude", default="", metavar="NODE,...", help="Nodes to keep in float.")
@json_option
def quantize_cmd(model, output, calib, method, percentile, per_channel, activations, exclude, as_json) -> None:
    """Quantize MODEL to int8: Conv, MatMul and Gemm read int8 activations and weights (QDQ form)."""
    if not output.endswith(SUFFIXES):
        raise MdocError(f"{output}: unknown output format (use {' or '.join(SUFFIXES)})")
    m = load_model(model)
    samples = load_samples(calib, m)
    with tqdm(total=len(samples), desc="calibrate", file=sys.stderr, leave=False,
              disable=as_json or not sys.stderr.isatty()) as bar:
        summary = quantize_static(m, samples, method=method, percentile=percentile, activations=activations,
                                  per_channel=per_channel, exclude=tuple(n for n in exclude.split(",") if n),
                                  progress=lambda k: bar.update(k - bar.n))
    save_model(m, output)
    summary = {"output": output, "samples": len(samples), "method": method, **summary}
    if as_json:
        emit_json(summary)
        return
    ratio = summary["quantized_weight_bytes"] / max(summary["weight_bytes"], 1)
    click.echo(f"wrote {output}: {summary['quantized_ops']} ops on int8 weights, {summary['observers']} activations "
               f"calibrated on {len(samples)} samples ({method}); weights {summary['weight_bytes'] / 1e6:.2f} MB -> "
               f"{summary['quantized_weight_bytes'] / 1e6:.2f} MB ({ratio:.2f}x)")
