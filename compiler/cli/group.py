"""The root `mdoc` click group and options shared by several commands."""

from __future__ import annotations

import json
from importlib import metadata

import click

from .. import __version__


class PluginGroup(click.Group):
    """The root group, plus commands other packages add through the `mdoc.commands` entry-point group.

    Those are loaded only when named, so `mdoc --help` stays fast and the core never
    imports `mdoc.tooling` (where `mdoc conformance` lives) by name.
    """

    @staticmethod
    def _entry_points() -> dict[str, metadata.EntryPoint]:
        return {ep.name: ep for ep in metadata.entry_points(group="mdoc.commands")}

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self._entry_points()))

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None and (ep := self._entry_points().get(name)) is not None:
            command = ep.load()
        return command


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mdoc")
def cli() -> None:
    """mdoc: optimize ONNX models and compile them for x86, ARM and CUDA through TVM."""


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
