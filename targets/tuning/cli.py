"""`mdoc tune MODEL -t TARGET (--trials N | --time-budget MIN)`: tune a model's kernels into a database.

A click command the core's `mdoc` group loads through the `mdoc.commands` entry point
(the core never imports `mdoc.targets` by name). The model goes through the same
optimization pipeline and lowering as `mdoc compile` with the same options, so the
kernels tuned here are the ones a later compile looks up.
"""

from __future__ import annotations

import sys

import click

from mdoc.api import optimize
from mdoc.cli_options import dim_option, emit_json, json_option, parse_dims
from mdoc.errors import MdocError
from mdoc.model_io import load_model
from mdoc.specialize import bind_dims

from ..presets import resolve_target
from .search import DEFAULT_CHUNK, Budget, Remote, TuneReport, tune
from .store import default_location


@click.command("tune", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path())
@click.option("-t", "--target", default="x86", show_default=True, help="Target preset or JSON (CPU targets).")
@click.option("--trials", type=int, metavar="N", help="Measured schedules in all, spread over the heavy kernels.")
@click.option("--time-budget", "minutes", type=float, metavar="MIN", help="Wall-clock minutes for the whole run.")
@click.option("--tuning-db", type=click.Path(file_okay=False),
              help="Database folder to write  [default: ~/.cache/mdoc/tuning/<target>/, which compile applies]")
@click.option("--rpc-tracker", metavar="HOST:PORT", help="Measure on a board through this TVM RPC tracker.")
@click.option("--rpc-key", metavar="KEY", help="The key the board's RPC server registered with the tracker.")
@click.option("--chunk", type=click.IntRange(1), default=DEFAULT_CHUNK, show_default=True,
              help="Trials per search round of one kernel.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the search.")
@click.option("-O", "level", type=click.IntRange(0, 3), default=2, show_default=True,
              help="Optimization level (as for compile: the kernels must match).")
@click.option("-p", "--pipeline", help="Textual pass pipeline instead of -O (as for compile).")
@click.option("--progress/--no-progress", default=None, help="Progress bar  [default: when stderr is a terminal]")
@dim_option
@json_option
def tune_cmd(model, target, trials, minutes, tuning_db, rpc_tracker, rpc_key, chunk, seed, level, pipeline,
             progress, dims, as_json) -> None:
    """Tune MODEL's kernels for TARGET; later `mdoc compile` runs apply them.

    First the register tiles of mdoc's hand-scheduled kernels are swept, the costliest
    kernel first; then MetaSchedule searches the generically scheduled rest, its budget
    split in proportion to each kernel's share of the latency.  A tuned tile or kernel is
    used only where it measured faster than mdoc's own.
    """
    budget = Budget(trials=trials, minutes=minutes)
    if pipeline and level != 2:
        raise MdocError("give either -O LEVEL or -p PIPELINE, not both")
    if rpc_key and not rpc_tracker:
        raise MdocError("--rpc-key needs --rpc-tracker HOST:PORT")
    remote = Remote.parse(rpc_tracker, rpc_key) if rpc_tracker else None
    spec = resolve_target(target)
    database = tuning_db or str(default_location(spec.tvm))
    ir = load_model(model)
    bind_dims(ir, parse_dims(dims), default=1)  # kernels are measured at concrete sizes
    optimize(ir, level=level, pipeline=pipeline)
    from ..tvm_backend import BACKEND

    kernels = BACKEND.kernels_for(spec)
    mod = BACKEND.lower(ir, spec, kernels)
    say = (lambda msg: None) if as_json else (lambda msg: click.echo(msg, err=True))
    show = sys.stderr.isatty() if progress is None else progress
    report = tune(mod, spec, database, budget, requests=getattr(kernels, "requests", None), remote=remote,
                  chunk=chunk, seed=seed, show_progress=show, say=say)
    if as_json:
        emit_json(report.as_json())
    else:
        click.echo(summary(report))


def summary(report: TuneReport) -> str:
    """The per-kernel table `mdoc tune` prints."""
    lines = [f"{'kernel':<44} {'calls':>5} {'mdoc us':>10} {'tuned us':>10} {'speedup':>8} {'trials':>6}"]
    for t in report.tiles:
        default = "-" if t.default_s is None else f"{t.default_s * 1e6:.1f}"
        best = "-" if t.tile is None else f"{t.best_s * 1e6:.1f}"
        speedup = "-" if t.speedup is None else f"{t.speedup:.2f}x"
        lines.append(f"{t.name[:44]:<44} {t.calls:>5} {default:>10} {best:>10} {speedup:>8} {t.trials:>6}"
                     + (f"  tile {t.tile}" if t.tile else ""))
    for r in report.results:
        default = "-" if r.task.default_s is None else f"{r.task.default_s * 1e6:.1f}"
        best = "-" if r.best_s is None else f"{r.best_s * 1e6:.1f}"
        speedup = "-" if r.speedup is None else f"{r.speedup:.2f}x"
        lines.append(f"{r.task.name[:44]:<44} {r.task.calls:>5} {default:>10} {best:>10} {speedup:>8} {r.trials:>6}")
    before, after = report.latency_s(False) * 1e3, report.latency_s(True) * 1e3
    lines.append(f"{report.trials} trials in {report.seconds / 60:.1f} min; kernels' time per call {before:.2f} ms "
                 f"with mdoc's schedules, {after:.2f} ms with the better of mdoc's and tuned")
    lines.append(f"database: {report.database}")
    return "\n".join(lines)
