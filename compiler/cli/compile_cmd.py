"""`mdoc compile MODEL -t TARGET -o OUT` and `mdoc targets`: build a deployable artifact."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..api import compile as compile_model
from ..backends import BUILD_LOG, MANIFEST, list_targets
from ..errors import MdocError
from ..pass_manager import OPT_LEVELS, load_plugin
from ..pruning.api import prune_pipeline
from ..specialize import parse_binding, parse_shape
from ..cli_options import dim_option, emit_json, json_option, parse_dims
from .group import cli
from .prune_cmd import vector_width


@cli.command("compile")
@click.argument("model", type=click.Path())
@click.option("-t", "--target", default="x86", show_default=True,
              help="Preset (x86, x86-avx2, x86-avx512, aarch64, rpi4, rpi5, jetson-orin-cpu, cuda, ...) or JSON.")
@click.option("-o", "--output", required=True, type=click.Path(), help="Artifact folder to write.")
@click.option("-O", "level", type=click.IntRange(0, 3), default=2, show_default=True, help="Optimization level.")
@click.option("-p", "--pipeline", help="Textual pass pipeline instead of -O.")
@click.option("--prune", "prune_ratio", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="First remove this share of channels (prune-channels, l1, rounded to the target's vector width).")
@click.option("--arch", help="CUDA architecture, e.g. sm_87 (CUDA targets only).")
@click.option("--plugin", "plugins", multiple=True, type=click.Path(dir_okay=False), help="Load passes from a file.")
@click.option("--tuning-db", type=click.Path(file_okay=False),
              help="Tuning database from `mdoc tune`  [default: the target's database in ~/.cache/mdoc/tuning, "
                   "when there is one]")
@click.option("--no-tuning", is_flag=True, help="Ignore tuning databases; mdoc's default kernels only.")
@dim_option
@click.option("--shape", "shapes", multiple=True, metavar="INPUT=DIMS",
              help="Specialize an input's dims, e.g. image=1x3x480x640 (? keeps a dim symbolic).")
@click.option("--bind", "binds", multiple=True, metavar="NAME=VALUES",
              help="Bind graph input NAME to a constant: comma-separated numbers or @FILE.npy.")
@click.option("-v", "--verbose", is_flag=True,
              help="Print TVM's own log of the build (kept in the artifact's build.log) on stderr.")
@json_option
def compile_cmd(model, target, output, level, pipeline, prune_ratio, arch, plugins, tuning_db, no_tuning, dims, shapes, binds,
                verbose, as_json) -> None:
    """Optimize MODEL and compile it for TARGET into the artifact folder OUTPUT.

    Symbolic input dims stay symbolic: the artifact takes every size the model
    declares. --dim NAME=SIZE fixes a symbol, --shape INPUT=1x3x224x224 an input's
    dims, where a static kernel is worth it. Inputs that decide the structure of the computation (a Reduce's axes, Split's
    sizes, ...) are bound to values with --bind NAME=VALUES; they leave the
    artifact's inputs. Kernels tuned with `mdoc tune` are applied where they
    measured faster than mdoc's defaults. TVM's own log lines are kept off the
    terminal: in the artifact's build.log, or, when the build fails, in a file the
    error names; --verbose prints them.
    """
    for p in plugins:
        load_plugin(p)
    if pipeline and level != 2:
        raise MdocError("give either -O LEVEL or -p PIPELINE, not both")
    if tuning_db and no_tuning:
        raise MdocError("give either --tuning-db DIR or --no-tuning, not both")
    inputs = dict(parse_binding(b) for b in binds)
    if prune_ratio:
        pipeline = prune_pipeline(prune_ratio, vector_width(target)) + "," + (pipeline or OPT_LEVELS[level])
    try:
        path = compile_model(model, target, output, opt_level=level, pipeline=pipeline, dims=parse_dims(dims),
                             shapes=dict(parse_shape(s) for s in shapes), inputs=inputs, arch=arch,
                             tuning_db=False if no_tuning else tuning_db)
    except MdocError as e:
        if verbose and e.log:
            _echo_log(Path(e.log))
        raise
    if verbose:
        _echo_log(Path(path) / BUILD_LOG)
    manifest = json.loads((Path(path) / MANIFEST).read_text())
    tuning, generic = manifest.get("tuning"), manifest.get("generic_kernels", [])
    chosen = manifest.get("kernels", {})
    if as_json:
        emit_json({"artifact": str(path), "dynamic_dims": manifest.get("dynamic_dims", {}),
                   **({"tuning": tuning} if tuning else {}), **({"generic_kernels": generic} if generic else {}),
                   **({"kernels": chosen} if chosen else {})})
        return
    if chosen:
        families = manifest.get("kernel_families", {})
        click.echo(f"{len(chosen)} nodes on mdoc's kernels: "
                   + ", ".join(f"{family} {n}" for family, n in families.items())
                   + " (manifest.json's \"kernels\" says which node got which)")
    if generic:
        click.echo(f"{len(generic)} node{'s' if len(generic) > 1 else ''} took generic kernels for dims known only at "
                   f"run time ({generic[0]}{', ...' if len(generic) > 1 else ''}; manifest.json lists them; "
                   "--shape or --dim specializes)")
    if tuning:
        click.echo(f"applied {tuning['applied']} tuned kernels and {len(tuning.get('tiles', []))} tuned tiles "
                   f"from {tuning['database']} ({tuning['kept_mdoc_default']} kept mdoc's faster default)")
    click.echo(f"wrote {path}")


def _echo_log(path: Path) -> None:
    """TVM's log of a build on stderr, framed so it is not mistaken for mdoc's own lines."""
    text = path.read_text() if path.is_file() else ""
    click.echo(f"-- TVM's log ({path}) --" if text else "-- TVM logged nothing --", err=True)
    if text:
        click.echo(text.rstrip("\n"), err=True)
        click.echo("-- end of TVM's log --", err=True)


@cli.command("targets")
@json_option
def targets_cmd(as_json: bool) -> None:
    """List the target presets."""
    presets = list_targets()
    if as_json:
        emit_json({n: {"description": p.description, "tvm": p.tvm} for n, p in presets.items()})
        return
    for name, p in presets.items():
        click.echo(f"{name:<18} {p.description}")
