"""`mdoc quantize MODEL -o OUT --calib DATA`: static int8 (QDQ) from calibration samples; `--dynamic`: MatMul / Gemm
with activation scales found at run time (no samples); `--weights int4|int8`: weight-only block quantization of the
MatMuls (no samples)."""

from __future__ import annotations

import sys

import click
from tqdm import tqdm

from ..calibration import METHODS, load_samples
from ..cli_options import emit_json, json_option
from ..model_io import SUFFIXES, load_model, save_model
from ..errors import MdocError
from ..quantize import quantize_dynamic, quantize_static
from ..weight_quantize import quantize_weights
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
@click.option("--weights", type=click.Choice(["int4", "int8"]), default=None,
              help="Weight-only: MatMul / Gemm weights block-quantized, activations float; no --calib.")
@click.option("--block-size", type=int, default=32, show_default=True, help="For --weights: values per scale, along K.")
@click.option("--symmetric/--zero-point", default=True, show_default=True,
              help="For --weights: no zero points, or one per block.")
@click.option("--scale-type", type=click.Choice(["f16", "f32"]), default="f16", show_default=True,
              help="For --weights: the scales' type (float16 where every scale fits one).")
@click.option("--onnx-runtime-ops", "runtime_ops", is_flag=True,
              help="For --weights: write com.microsoft MatMulNBits (else DequantizeLinear with block_size); its "
                   "scales have the activations' type, so --scale-type is f32 then.")
@json_option
def quantize_cmd(model, output, calib, dynamic, method, percentile, per_channel, activations, exclude, max_drop,
                 eval_data, weights, block_size, symmetric, scale_type, runtime_ops, as_json) -> None:
    """Quantize MODEL to int8 (QDQ, from --calib samples; --dynamic: activation scales at run time) or its MatMul
    weights to int4 / int8 (--weights)."""
    if not output.endswith(SUFFIXES):
        raise MdocError(f"{output}: unknown output format (use {' or '.join(SUFFIXES)})")
    if sum((calib is not None, dynamic, weights is not None)) != 1:
        raise MdocError("mdoc quantize: give one of --calib DATA (static int8), --dynamic (no samples) and "
                        "--weights int4|int8 (weight-only)")
    m = load_model(model)
    if weights:
        _weights_only(m, output, weights, block_size, symmetric, scale_type, exclude, runtime_ops, as_json)
        return
    if dynamic:
        _dynamic(m, output, per_channel, exclude, as_json)
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


def _weights_only(m, output, weights, block_size, symmetric, scale_type, exclude, runtime_ops, as_json) -> None:
    if runtime_ops:
        scale_type = "f32"  # what MatMulNBits stores: the report counts the bytes the file holds
    quantized, summary = quantize_weights(m, bits=4 if weights == "int4" else 8, block_size=block_size,
                                          symmetric=symmetric, scale_type=scale_type,
                                          exclude=tuple(n for n in exclude.split(",") if n))
    save_model(quantized, output, runtime_ops=runtime_ops)
    summary = {"output": output, **summary}
    if as_json:
        emit_json(summary)
        return
    mm = summary["quantized_matmul_weight_bytes"] / max(summary["matmul_weight_bytes"], 1)
    total = summary["quantized_weight_bytes"] / max(summary["weight_bytes"], 1)
    click.echo(f"wrote {output}: {summary['quantized_ops']} MatMuls on {weights} weights (block {block_size}, "
               f"{'symmetric' if symmetric else 'zero points'}, {scale_type} scales); their weights "
               f"{summary['matmul_weight_bytes'] / 1e6:.2f} MB -> {summary['quantized_matmul_weight_bytes'] / 1e6:.2f} MB "
               f"({mm:.3f}x); all weights {summary['weight_bytes'] / 1e6:.2f} MB -> "
               f"{summary['quantized_weight_bytes'] / 1e6:.2f} MB ({total:.3f}x)")


def _dynamic(m, output, per_channel, exclude, as_json) -> None:
    quantized, summary = quantize_dynamic(m, per_channel=per_channel, exclude=tuple(n for n in exclude.split(",") if n))
    save_model(quantized, output)
    summary = {"output": output, "method": "dynamic", **summary}
    if as_json:
        emit_json(summary)
        return
    click.echo(f"wrote {output}: {summary['quantized_ops']} MatMul / Gemm on int8 weights, activations "
               f"quantized at run time; weights {summary['weight_bytes'] / 1e6:.2f} MB -> "
               f"{summary['quantized_weight_bytes'] / 1e6:.2f} MB")
