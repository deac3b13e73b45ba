"""`mdoc prune MODEL -o OUT --channels RATIO`: structured pruning (channels, heads) and magnitude sparsity."""

from __future__ import annotations

import click

from ..backends import list_targets
from ..bench import interleaved
from ..calibration import load_samples
from ..cli_options import emit_json, json_option
from ..errors import MdocError
from ..model_io import SUFFIXES, load_model, save_model
from ..onnx_export import export_model
from ..pass_manager import PassManager, parse_pipeline
from ..pruning.api import prune_model
from ..pruning.importance import CRITERIA
from ..pruning.sparsity import sparsify
from ..tensors import random_inputs
from .group import cli


@cli.command("prune")
@click.argument("model", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .onnx or .mdir.")
@click.option("--channels", type=click.FloatRange(0, 1, max_open=True), default=0.0,
              help="Share of each channel group's output channels to remove (Conv, Gemm, MatMul).")
@click.option("--heads", type=click.FloatRange(0, 1, max_open=True), default=0.0,
              help="Share of each attention's heads to remove.")
@click.option("--criterion", type=click.Choice(CRITERIA), default="l1", show_default=True,
              help="How channels are ranked; 'activation' needs --calib.")
@click.option("--round-to", type=click.IntRange(1), default=None,
              help="Round kept channel counts to a multiple of this (default: the --target's vector width, else 1).")
@click.option("-t", "--target", default=None, help="Round kept channels to this target's vector width (x86, ...).")
@click.option("--calib", type=click.Path(), default=None, help="Samples (.npz or folder, as for `mdoc quantize`).")
@click.option("--eval", "eval_data", type=click.Path(), default=None,
              help="Held-out samples for the accuracy (default: the calibration samples).")
@click.option("--max-drop", type=click.FloatRange(0, 1), default=None,
              help="Accuracy budget: the largest 1 - accuracy allowed; the costliest groups are restored until it holds.")
@click.option("--exclude", default="", metavar="NODE,...", help="Layers whose groups keep every channel.")
@click.option("--sparsity", type=click.FloatRange(0, 1, max_open=True), default=0.0,
              help="Then zero this share of each layer's smallest weights (shapes unchanged).")
@click.option("--pattern", default="", metavar="N:M",
              help="Zero N of every M consecutive weights (2:4) instead of a share of each layer's.")
@click.option("--time", "timed", is_flag=True, help="Time the model before and after in onnxruntime, interleaved.")
@json_option
def prune_cmd(model, output, channels, heads, criterion, round_to, target, calib, eval_data, max_drop, exclude,
              sparsity, pattern, timed, as_json) -> None:
    """Prune MODEL: whole channels and heads out of its layers, so the compiled model runs faster."""
    if not output.endswith(SUFFIXES):
        raise MdocError(f"{output}: unknown output format (use {' or '.join(SUFFIXES)})")
    if round_to is None:
        round_to = vector_width(target) if target else 1
    m = load_model(model)
    samples = load_samples(calib, m) if calib else None
    held_out = load_samples(eval_data, m) if eval_data else None
    original = export_model(m)
    if channels or heads:
        pruned, report = prune_model(m, channels=channels, heads=heads, criterion=criterion, round_to=round_to,
                                     exclude=tuple(n for n in exclude.split(",") if n), samples=samples,
                                     max_drop=max_drop, eval_samples=held_out)
    elif sparsity or pattern:
        pruned, report = m, {}
    else:
        raise MdocError("nothing to do: give --channels, --heads or --sparsity a ratio above 0")
    if sparsity or pattern:
        report["sparsity"] = {"zeroed": sparsify(pruned.graph, sparsity, pattern), "pattern": pattern or None}
        PassManager(parse_pipeline("dce")).run(pruned)  # the dense weights it replaced
    save_model(pruned, output)
    report = {"output": output, "round_to": round_to, **report}
    if timed:
        report["latency_ms"] = _latency(pruned, original, export_model(pruned), samples or held_out)
    if as_json:
        emit_json(report)
        return
    _print(report)


def vector_width(target: str) -> int:
    """The fp32 lanes of a target's CPU description (read through the target registry, not imported)."""
    spec = list_targets().get(target)
    if spec is None:
        raise MdocError(f"unknown target '{target}' (see `mdoc targets`)")
    cpu = getattr(spec, "cpu", None)
    if cpu is None:
        raise MdocError(f"target '{target}' has no CPU description to round channels to; give --round-to")
    return int(cpu.lanes)


def _latency(model, before, after, samples) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    sessions = {k: ort.InferenceSession(p.SerializeToString(), options, providers=["CPUExecutionProvider"])
                for k, p in (("before", before), ("after", after))}
    feeds = samples[0] if samples else random_inputs(model)
    times = interleaved({k: (lambda s=s: s.run(None, feeds)) for k, s in sessions.items()}, rounds=5, calls=3)
    return {k: round(t.median_ms, 3) for k, t in times.items()}


def _print(report: dict) -> None:
    b, a = report.get("before"), report.get("after")
    for g in report.get("groups", []):
        unit = "heads" if "heads" in g else "channels"
        n = g[unit]
        why = f" (kept whole: {g['kept_whole']})" if "kept_whole" in g else ""
        layers = ", ".join(g["layers"][:3]) + (f" +{len(g['layers']) - 3}" if len(g["layers"]) > 3 else "")
        click.echo(f"  {layers}: {unit} {n} -> {g['kept']}{why}")
    for row in report.get("layers", []):
        (p0, p1), (f0, f1) = row["parameters"], row["flops"]
        click.echo(f"  layer {row['layer']}: weight {row['weight'][0]} -> {row['weight'][1]}, "
                   f"params {p0} -> {p1}" + (f", FLOPs {f0} -> {f1}" if f0 is not None and f1 is not None else ""))
    if b and a:
        click.echo(f"wrote {report['output']}: parameters {b['parameters']} -> {a['parameters']} "
                   f"({a['parameters'] / b['parameters']:.2f}x), FLOPs {b['flops']} -> {a['flops']} "
                   f"({a['flops'] / max(b['flops'], 1):.2f}x), file {b['bytes'] / 1e6:.2f} MB -> "
                   f"{a['bytes'] / 1e6:.2f} MB; kept counts rounded to {report['round_to']}")
    else:
        click.echo(f"wrote {report['output']}")
    if "sparsity" in report:
        click.echo(f"sparsity: {report['sparsity']['zeroed']} weights zeroed")
    if "accuracy" in report:
        extra = ""
        if "max_drop" in report:
            back = ", ".join(f"{r['group']} (+{r['alone']:.4f})" for r in report["restored"]) or "none"
            extra = f" (budget {1 - report['max_drop']:.4f}{'' if report['within_budget'] else ', NOT met'}); " \
                    f"restored: {back}"
        click.echo(f"accuracy {report['accuracy']:.4f} against the unpruned model{extra}")
    if "latency_ms" in report:
        t = report["latency_ms"]
        click.echo(f"onnxruntime latency {t['before']:.3f} ms -> {t['after']:.3f} ms "
                   f"({t['before'] / t['after']:.2f}x faster)")
