"""`mdoc passes`: every registered pass with its one-line description and options."""

from __future__ import annotations

import click

from ..pass_manager import OPT_LEVELS, load_passes, load_plugin
from ..cli_options import emit_json, json_option
from .group import cli


@cli.command("passes")
@click.option("--plugin", "plugins", multiple=True, type=click.Path(dir_okay=False), help="Load passes from a Python file.")
@json_option
def passes_cmd(plugins: tuple[str, ...], as_json: bool) -> None:
    """List the passes a pipeline can name, and what -O0..-O3 run."""
    for p in plugins:
        load_plugin(p)
    passes = load_passes()
    if as_json:
        emit_json({"passes": [{"name": n, "summary": c.summary(), "module": c.__module__,
                               "options": [{"name": o, "type": t, "default": d} for o, t, d in c.options()]}
                              for n, c in sorted(passes.items())],
                   "levels": {f"-O{k}": v for k, v in OPT_LEVELS.items()}})
        return
    for name, cls in sorted(passes.items()):
        click.echo(f"{name:<24} {cls.summary()}")
        for opt, t, default in cls.options():
            click.echo(f"{'':<26}{opt}: {t} = {default}")
    click.echo("")
    for level, text in OPT_LEVELS.items():
        click.echo(f"-O{level}: {text or '(nothing)'}")
