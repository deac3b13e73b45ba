"""The root `mdoc` click group (the options commands share are in `mdoc.cli_options`)."""

from __future__ import annotations

from importlib import metadata

import click

from ..version import __version__


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
