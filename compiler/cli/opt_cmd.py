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
from ..rewrite import RewritePass, get_rule, trace_rewrites
from ..rewrite import explain as explain_rule
from ..tensors import random_inputs
from ..cli_options import dim_option, emit_json, json_option, parse_dims
from .group import cli


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
@click.option("--explain", "explain_rules", default=None, metavar="RULE,...",
              help="After the pipeline, say where each rule (or each rule of a fuse-* pass) would still fire "
                   "and why its nearest candidates do not match (stderr).")
@click.option("--onnx-runtime-ops", "runtime_ops", is_flag=True,
              help="Write mdoc's fused ops as onnxruntime contrib ops (com.microsoft) where one exists.")
@dim_option
@json_option
def opt_cmd(input, output, level, pipeline, plugins, before, after, print_ir_after_all, verify_each, timing,
            check_each, rtol, atol, report, trace, explain_rules, runtime_ops, dims, as_json) -> None:
    """Optimize INPUT and write OUTPUT (.onnx or .mdir, by extension)."""
    if not output.endswith(SUFFIXES):
        raise MdocError(f"{output}: unknown output format (use {' or '.join(SUFFIXES)})")
    if runtime_ops and not output.endswith(".onnx"):
        raise MdocError(f"{output}: --onnx-runtime-ops applies to .onnx output only")
    if level is not None and pipeline:
        raise MdocError("give either -O LEVEL or -p PIPELINE, not both")
    for p in plugins:
        load_plugin(p)
    explained = rules_to_explain(explain_rules) if explain_rules is not None else []
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
    # traced always: the report counts the applications of each rule; lines are shown with --trace-rewrites
    explain = [r for r in (trace or "").split(",") if r.strip()]
    write = (lambda line: click.echo(line, err=True)) if trace is not None else (lambda line: None)
    with trace_rewrites(write=write, explain=explain) as rewrites:
        records = manager.run(model)
    for rule in explained:
        for line in explain_rule(model.graph, rule, model):
            click.echo(f"rule {rule}: {line}", err=True)
    save_model(model, output, runtime_ops=runtime_ops)
    if report:
        write_report(report, input, snapshots, records, rules=rewrites.fired)
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


def rules_to_explain(text: str) -> list[str]:
    """Rule names from `--explain`: a rule's name, or a rewrite pass's name for all of its rules."""
    from ..pass_manager import PASSES, load_passes

    load_passes()
    names = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        cls = PASSES.get(item)
        if cls is not None and issubclass(cls, RewritePass) and cls.rule_names:
            names += [r if isinstance(r, str) else r.name for r in cls.rule_names]
        else:
            names.append(get_rule(item).name)  # an unknown name is a one-line error listing the rules
    if not names:
        raise MdocError("--explain needs a rule or pass name (see `mdoc passes`)")
    return names
