"""`mdoc run ARTIFACT`: execute a compiled artifact on given or seeded inputs and report latency."""

from __future__ import annotations

import statistics
import time

import click
import numpy as np

from ..backends import load_artifact
from ..errors import MdocError
from ..tensors import load_npz, random_tensors, save_npz
from ..cli_options import emit_json, json_option
from .group import cli


@cli.command("run")
@click.argument("artifact", type=click.Path(file_okay=False))
@click.option("--inputs", type=click.Path(dir_okay=False), help=".npz of inputs keyed by name (default: seeded random).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write outputs to this .npz.")
@click.option("--repeat", type=click.IntRange(1), default=10, show_default=True, help="Timed runs after a warm-up.")
@click.option("--seed", type=int, default=0, show_default=True)
@json_option
def run_cmd(artifact, inputs, output, repeat, seed, as_json) -> None:
    """Run ARTIFACT and print its outputs' shapes and the median latency."""
    run = load_artifact(artifact)
    feeds = load_npz(inputs) if inputs else random_tensors(
        [(i["name"], i["dtype"], [d if isinstance(d, int) else 1 for d in i["shape"]]) for i in run.manifest["inputs"]], seed)
    outs = run(**feeds)  # also the warm-up
    times = []
    for _ in range(repeat):  # whole calls, as a caller of mdoc.load(ARTIFACT) sees them
        start = time.perf_counter()
        run(**feeds)
        times.append(time.perf_counter() - start)
    if output:
        save_npz(output, outs)
    median = statistics.median(times) * 1000
    if as_json:
        emit_json({"latency_ms": {"median": median, "min": min(times) * 1000, "runs": len(times)},
                   "outputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in outs.items()}})
        return
    for name, v in outs.items():
        values = v.astype(np.float64)  # ml_dtypes' float8 / int4 too: their own mean() is not a number
        finite = values[np.isfinite(values)]
        summary = f"mean {finite.mean():.4g}, std {finite.std():.4g}" if finite.size else "empty"
        click.echo(f"{name}: {v.dtype}{list(v.shape)}  {summary}")
    click.echo(f"latency: median {median:.3f} ms, min {min(times) * 1000:.3f} ms over {len(times)} runs")
    if not outs:
        raise MdocError(f"{artifact}: produced no outputs")
