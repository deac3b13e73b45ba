"""The `mdoc` command: a thin click layer over the Python API.

Exit status: 0 success, 1 a comparison or check failed, 2 bad input or usage.
Every `MdocError` becomes one line on stderr (`mdoc: error: ...`); an
`InternalError` (a stage mdoc can name failed where it should not have) and
anything else are bugs in mdoc, reported as one line too (exit 3) that asks for
a report, with the traceback only when MDOC_DEBUG=1.
"""

from __future__ import annotations

import os
import sys

import click

from ..errors import InternalError, MdocError, VerifyError
from .commands import cli

REPORT = "this is a bug in mdoc: please report it with the model (MDOC_DEBUG=1 shows the traceback)"


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
    except InternalError as e:
        if os.environ.get("MDOC_DEBUG"):
            raise
        click.echo(f"mdoc: internal error: {e}; {REPORT}", err=True)
        sys.exit(e.exit_code)
    except MdocError as e:
        click.echo(f"mdoc: error: {e}", err=True)
        if isinstance(e, VerifyError) and e.context and (e.after_pass or os.environ.get("MDOC_DEBUG")):
            click.echo(e.context, err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("mdoc: interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # a bug in mdoc: one line unless asked for more
        if os.environ.get("MDOC_DEBUG"):
            raise
        click.echo(f"mdoc: internal error: {type(e).__name__}: {' '.join(str(e).split())[:300]}; {REPORT}",
                   err=True)
        sys.exit(3)
