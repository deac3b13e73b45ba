"""`mdoc bench MODEL -t TARGET`: compile, then time mdoc against onnxruntime in the same run."""

from __future__ import annotations

import os
import tempfile
import time

import click

from ..api import compile as compile_model
from ..backends import load_artifact
from ..bench import interleaved, max_difference, ort_session
from ..convert import convert_to_onnx, detect_format, write_onnx
from ..errors import CheckFailed
from ..model_io import load_model
from ..reference import compare_outputs
from ..specialize import bind_dims
from ..tensors import random_inputs
from ..cli_options import dim_option, emit_json, json_option, parse_dims
from .group import cli


@cli.command("bench")
@click.argument("model", type=click.Path())
@click.option("-t", "--target", default="x86", show_default=True, help="Target preset or JSON (a CPU target).")
@click.option("-O", "level", type=click.IntRange(0, 3), default=2, show_default=True)
@click.option("--rounds", type=click.IntRange(1), default=10, show_default=True, help="Interleaved timed rounds.")
@click.option("--calls", type=click.IntRange(1), default=5, show_default=True, help="Calls per timed block.")
@click.option("--threads", type=int, default=0, help="onnxruntime intra-op threads (default: all cores).")
@click.option("--rtol", type=float, default=1e-3, show_default=True)
@click.option("--atol", type=float, default=1e-4, show_default=True)
@dim_option
@json_option
def bench_cmd(model, target, level, rounds, calls, threads, rtol, atol, dims, as_json) -> None:
    """Compile MODEL for TARGET and report median latency of mdoc and onnxruntime, their ratio and agreement.

    Both run at one shape: symbolic dims take the --dim sizes (1 when not given), and the
    artifact is specialized to them, as a deployment at that shape would be.
    """
    dims = parse_dims(dims)
    with tempfile.TemporaryDirectory(prefix="mdoc-bench-") as tmp:
        source = model
        if detect_format(model) is not None:  # convert a TensorFlow/PyTorch file once, for both engines
            source = str(write_onnx(convert_to_onnx(model), os.path.join(tmp, "model.onnx")))
        ir = load_model(source)
        bound = bind_dims(ir, dims, default=1)
        feeds = random_inputs(ir, dims=bound)
        start = time.perf_counter()
        artifact = compile_model(source, target, os.path.join(tmp, "artifact"), opt_level=level, dims=bound)
        compile_s = time.perf_counter() - start
        run = load_artifact(artifact)
        session = ort_session(source, threads)
        names = [o.name for o in session.get_outputs()]
        expected = dict(zip(names, session.run(names, feeds)))
        got = run(**feeds)
        diffs = compare_outputs(expected, got, rtol, atol)
        timings = interleaved({"onnxruntime": lambda: session.run(names, feeds), "mdoc": lambda: run(**feeds)},
                              rounds=rounds, calls=calls)
    ratio = timings["mdoc"].median_ms / timings["onnxruntime"].median_ms
    agree = all(d.ok for d in diffs)
    result = {"model": model, "target": target, "opt_level": level, "compile_s": compile_s,
              "onnxruntime_ms": timings["onnxruntime"].median_ms, "mdoc_ms": timings["mdoc"].median_ms,
              "ratio": ratio, "max_abs_diff": max_difference(expected, got), "agrees": agree}
    if as_json:
        emit_json(result)
    else:
        click.echo(f"model {model}  target {target}  -O{level}  compile {compile_s:.1f} s")
        click.echo(f"onnxruntime  median {timings['onnxruntime'].median_ms:8.3f} ms")
        click.echo(f"mdoc         median {timings['mdoc'].median_ms:8.3f} ms   ({ratio:.2f}x onnxruntime)")
        click.echo(f"agreement    max abs diff {result['max_abs_diff']:.3g} "
                   f"({'within' if agree else 'BEYOND'} rtol {rtol}, atol {atol})")
    if not agree:
        raise CheckFailed(f"{model}: mdoc's outputs differ from onnxruntime's beyond rtol {rtol}, atol {atol}")
