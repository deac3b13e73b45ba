"""`mdoc opt INPUT -o OUTPUT`: run a pass pipeline, reading and writing .onnx or .mdir by extension."""

from __future__ import annotations

import click

from ..errors import MdocError
from ..instruments import CheckEach, PrintIR, Snapshots
from ..model_io import SUFFIXES, load_model, save_model
from ..onnx_export import export_model
from ..pass_manager import PassManager, load_plugin, parse_pipeline, pipeline_for_level
from ..reference import run_onnxruntime
from ..report import write_report
from ..rewrite import trace_rewrites
from ..tensors import random_inputs
from .group import cli, dim_option, emit_json, json_option, parse_dims


@cli.command("opt")
@click.argument("input", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .onnx or .mdir.")
@click.option("-O", "level", type=click.IntRange(0, 3), default=None, help="Named pipeline -O0..-O3 (default -O2).")
@click.option("-p", "--pipeline", help='Textual pipeline, e.g. "fold-constants{max-bytes=4096},dce".')
@click.option("--plugin", "plugins", multiple=True, type=click.Path(dir_okay=False), help="Load passes/rules from a Python file.")
@click.option("--print-ir-before", "before", multiple=True, metavar="PASS", help="Print the IR before PASS (stderr).")
@click.option("--print-ir-after", "after", multiple=True, metavar="PASS", help="Print the IR after PASS (stderr).")
@click.option("--print-ir-after-all", is_flag=True, help="Print the IR after every pass (stderr).")
@click.option("--verify-each/--no-verify", default=True, show_default=True, help="Verify the IR after every pass.")
@click.option("--timing", is_flag=True, help="Time, node count and parameter bytes per pass.")
@click.option("--check-each", is_flag=True, help="Run onnxruntime after every pass; stop at the first that drifts.")
@click.option("--rtol", type=float, default=1e-4, show_default=True, help="Tolerance for --check-each.")
@click.option("--atol", type=float, default=1e-5, show_default=True, help="Tolerance for --check-each.")
@click.option("--report", type=click.Path(dir_okay=False), help="Write an HTML report of what each pass did.")
@click.option("--trace-rewrites", "trace", is_flag=False, flag_value="", default=None, metavar="[RULE,...]",
              help="Show every rewrite that fires; with rule names, also their nearest misses and why.")
@dim_option
@json_option
def opt_cmd(input, output, level, pipeline, plugins, before, after, print_ir_after_all, verify_each, timing,
            check_each, rtol, atol, report, trace, dims, as_json) -> None:
    """Optimize INPUT and write OUTPUT (.onnx or .mdir, by extension)."""
    if not output.endswith(SUFFIXES):
        raise MdocError(f"{output}: unknown output format (use {' or '.join(SUFFIXES)})")
    if level is not None and pipeline:
        raise MdocError("give either -O LEVEL or -p PIPELINE, not both")
    for p in plugins:
        load_plugin(p)
    passes = parse_pipeline(pipeline) if pipeline else pipeline_for_level(2 if level is None else level)
    model = load_model(input)
    instruments = []
    if before or after or print_ir_after_all:
        instruments.append(PrintIR(frozenset(before), frozenset(after), print_ir_after_all,
                                   lambda text: click.echo(text, err=True)))
    if check_each:
        feeds = random_inputs(model, dims=parse_dims(dims))
        instruments.append(CheckEach(feeds, run_onnxruntime(export_model(model), feeds), rtol, atol))
    snapshots = Snapshots() if report else None
    if snapshots:
        instruments.append(snapshots)
    manager = PassManager(passes, verify_each=verify_each, instruments=instruments)
    if trace is None:
        records = manager.run(model)
    else:
        explain = [r for r in trace.split(",") if r.strip()]
        with trace_rewrites(write=lambda line: click.echo(line, err=True), explain=explain):
            records = manager.run(model)
    save_model(model, output)
    if report:
        write_report(report, input, snapshots, records)
    if as_json:
        emit_json({"output": output, "passes": [r.__dict__ for r in records]})
        return
    if timing:
        click.echo(f"{'pass':<36}{'changed':>8}{'ms':>10}{'nodes':>16}{'param bytes':>26}")
        for r in records:
            click.echo(f"{r.name:<36}{'yes' if r.changed else 'no':>8}{r.seconds * 1000:>10.1f}"
                       f"{f'{r.nodes_before}->{r.nodes_after}':>16}{f'{r.bytes_before}->{r.bytes_after}':>26}")
        click.echo(f"total {sum(r.seconds for r in records) * 1000:.1f} ms")
    click.echo(f"wrote {output}")
