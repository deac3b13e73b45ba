"""Options and output helpers that every command line of mdoc shares: the core's `mdoc` group and
commands that other packages add (`mdoc tune` in `mdoc.targets`).

Why a module of its own, outside `mdoc.cli`: a target's command must not import the CLI
(the arrows of ARCHITECTURE.md point from the CLI down, never back), yet its `--dim` and
`--json` must read the same as the core's.
"""

from __future__ import annotations

import json

import click


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def parse_dims(items: tuple[str, ...]) -> dict[str, int]:
    """`--dim N=4 --dim S=128` -> {"N": 4, "S": 128}."""
    dims = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not value.strip().isdigit():
            raise click.BadParameter(f"'{item}' is not NAME=SIZE", param_hint="--dim")
        dims[name.strip()] = int(value)
    return dims


dim_option = click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE",
                          help="Size for a symbolic input dimension.")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
