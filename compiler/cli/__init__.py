"""The `mdoc` command: a thin click layer over the Python API.

Exit status: 0 success, 1 a comparison or check failed, 2 bad input or usage.
Every `MdocError` becomes one line on stderr (`mdoc: error: ...`); anything
else is a bug in mdoc and is reported as one line too (exit 3), with the
traceback only when MDOC_DEBUG=1.
"""

from __future__ import annotations

import os
import sys

import click

from ..errors import MdocError, VerifyError
from .commands import cli


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="mdoc", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("mdoc: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        click.echo(f"mdoc: error: {e.format_message()}", err=True)
        sys.exit(2)
    except MdocError as e:
        click.echo(f"mdoc: error: {e}", err=True)
        if isinstance(e, VerifyError) and e.context:
            click.echo(e.context, err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("mdoc: interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # a bug in mdoc: one line unless asked for more
        if os.environ.get("MDOC_DEBUG"):
            raise
        click.echo(f"mdoc: internal error: {type(e).__name__}: {' '.join(str(e).split())[:300]} "
                   "(set MDOC_DEBUG=1 for a traceback)", err=True)
        sys.exit(3)
