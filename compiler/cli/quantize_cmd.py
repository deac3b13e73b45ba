"""`mdoc quantize MODEL -o OUT --calib DATA`: static int8 (QDQ) from calibration samples; `--dynamic`: MatMul / Gemm
with activation scales found at run time (no samples)."""

from __future__ import annotations

import sys

import click
from tqdm import tqdm

from ..calibration import METHODS, load_samples
from ..cli_options import emit_json, json_option
from ..model_io import SUFFIXES, load_model, save_model
from ..errors import MdocError
from ..quantize import quantize_dynamic, quantize_static
from .group import cli


@cli.command("quantize")
@click.argument("model", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .onnx (QDQ) or .mdir.")
@click.option("--calib", "calib", default=None, type=click.Path(),
              help=".npz of samples stacked along a first axis, keyed by input name, or a folder of .npz files.")
@click.option("--dynamic", is_flag=True, help="Dynamic int8 for MatMul / Gemm (transformers): weights int8, each "
                                               "activation quantized per call from its min and max; no --calib.")
@click.option("--method", type=click.Choice(METHODS), default="minmax", show_default=True,
              help="How an observed activation's range is chosen.")
@click.option("--percentile", type=click.FloatRange(50, 100), default=99.99, show_default=True,
              help="For --method percentile: the percentile kept at each end.")
@click.option("--per-channel/--per-tensor", default=True, show_default=True, help="Weight scales per output channel.")
@click.option("--activations", type=click.Choice(["u8", "s8"]), default="u8", show_default=True,
              help="Activation type (affine, with a zero point).")
@click.option("--exclude", default="", metavar="NODE,...", help="Nodes to keep in float.")
@click.option("--max-drop", type=click.FloatRange(0, 1), default=None,
              help="Accuracy guard: the largest 1 - accuracy allowed (centered cosine of every output against the "
                   "float model's); the ops that cost the most go back to float until it holds.")
@click.option("--eval", "eval_data", type=click.Path(), default=None,
              help="Held-out samples for --max-drop, like --calib (default: the calibration samples).")
@json_option
def quantize_cmd(model, output, calib, dynamic, method, percentile, per_channel, activations, exclude, max_drop,
                 eval_data, as_json) -> None:
    """Quantize MODEL to int8: Conv, MatMul and Gemm read int8 activations and weights (QDQ form)."""
    if not output.endswith(SUFFIXES):
        raise MdocError(f"{output}: unknown output format (use {' or '.join(SUFFIXES)})")
    if dynamic == (calib is not None):
        raise MdocError("mdoc quantize: give --calib DATA (static int8) or --dynamic (no samples), not both or neither")
    m = load_model(model)
    if dynamic:
        quantized, summary = quantize_dynamic(m, per_channel=per_channel, exclude=tuple(n for n in exclude.split(",") if n))
        save_model(quantized, output)
        summary = {"output": output, "method": "dynamic", **summary}
        if as_json:
            emit_json(summary)
        else:
            click.echo(f"wrote {output}: {summary['quantized_ops']} MatMul / Gemm on int8 weights, activations "
                       f"quantized at run time; weights {summary['weight_bytes'] / 1e6:.2f} MB -> "
                       f"{summary['quantized_weight_bytes'] / 1e6:.2f} MB")
        return
    samples = load_samples(calib, m)
    held_out = load_samples(eval_data, m) if eval_data else None
    with tqdm(total=len(samples), desc="calibrate", file=sys.stderr, leave=False,
              disable=as_json or not sys.stderr.isatty()) as bar:
        quantized, summary = quantize_static(m, samples, method=method, percentile=percentile,
                                             activations=activations, per_channel=per_channel,
                                             exclude=tuple(n for n in exclude.split(",") if n), max_drop=max_drop,
                                             eval_samples=held_out, progress=lambda k: bar.update(k - bar.n))
    save_model(quantized, output)
    summary = {"output": output, "samples": len(samples), "method": method, **summary}
    if as_json:
        emit_json(summary)
        return
    ratio = summary["quantized_weight_bytes"] / max(summary["weight_bytes"], 1)
    click.echo(f"wrote {output}: {summary['quantized_ops']} ops on int8 weights, {summary['observers']} activations "
               f"calibrated on {len(samples)} samples ({method}); weights {summary['weight_bytes'] / 1e6:.2f} MB -> "
               f"{summary['quantized_weight_bytes'] / 1e6:.2f} MB ({ratio:.2f}x)")
    if max_drop is not None:
        kept = ", ".join(f"{f['node']} (+{f['alone']:.4f})" for f in summary["fp32_fallback"]) or "none"
        click.echo(f"accuracy {summary['accuracy']:.4f} (budget {1 - max_drop:.4f}"
                   f"{'' if summary['within_budget'] else ', NOT met with every op in float'}); kept in float: {kept}")
