"""mdoc's exceptions: every problem a user can cause is one of these, with a one-line message.

The CLI turns `MdocError` into `mdoc: error: <message>` and exit status 2,
`CheckFailed` into exit status 1 and `InternalError` (a failure mdoc can place but
should not have: a TVM pass that rejects what mdoc built) into exit status 3;
nothing a user feeds in should surface as a traceback. Messages say what happened,
where (file, node, op) and, when it helps, how to fix it.
"""

from __future__ import annotations

import re


def one_line(text: str) -> str:
    """`text` with its control characters escaped (a newline as `\\n`): a message that quotes a name from the
    input (a node, a value, a tensor of a request) stays one line whatever bytes the name holds."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], text)


class MdocError(Exception):
    """Bad input or usage: the message is one line that names the problem."""

    exit_code = 2
    log: str | None = None  # a file holding TVM's log from when it happened (see `with_log`)

    def __init__(self, message="", *args):
        super().__init__(one_line(message) if isinstance(message, str) else message, *args)


class CheckFailed(MdocError):
    """A comparison or check ran and failed (outputs differ, verification of results)."""

    exit_code = 1


class VerifyError(MdocError):
    """The IR breaks one of its rules; the message names the node, its op and the rule.

    `after_pass` names the pass that broke it: then the few lines of `context` help
    whoever wrote the pass, and the CLI prints them; a model that arrives broken is
    bad input, reported in one line.
    """

    def __init__(self, message: str, context: str = "", after_pass: str | None = None):
        super().__init__(message)
        self.context = context
        self.after_pass = after_pass

    def __str__(self) -> str:
        return self.args[0]


class ParseError(MdocError):
    """The textual IR could not be read; the message names the line and column."""


class InternalError(MdocError):
    """A bug in mdoc, or in TVM on what mdoc gave it, placed by the stage that failed (node, op, TVM pass).

    Exit status 3: the user cannot fix it by changing the input, only report it.
    """

    exit_code = 3


def with_log(error: MdocError, log: str | None) -> MdocError:
    """`error` with the path of the native (TVM) log captured while it happened appended to its line.

    The message stays one line; `error.log` keeps the path for `--verbose`, which prints the log.
    """
    if log:
        error.args = (f"{error.args[0]} (TVM's log: {log})", *error.args[1:])
        error.log = log
    return error


def first_line(e: BaseException, limit: int = 300, message: str | None = None) -> str:
    """`Type: first non-empty line of the message` (at most `limit` characters), for one-line reports;
    `message` replaces `str(e)` (a cleaned-up version of it)."""
    line = next((ln.strip() for ln in (str(e) if message is None else message).splitlines() if ln.strip()), "")
    text = f"{type(e).__name__}: {line}" if line else type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
