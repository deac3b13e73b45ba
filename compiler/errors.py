"""mdoc's exceptions: every problem a user can cause is one of these, with a one-line message.

The CLI turns `MdocError` into `mdoc: error: <message>` and exit status 2, and
`CheckFailed` into exit status 1; nothing a user feeds in should surface as a
traceback. Messages say what happened, where (file, node, op) and, when it helps,
how to fix it.
"""

from __future__ import annotations


class MdocError(Exception):
    """Bad input or usage: the message is one line that names the problem."""

    exit_code = 2


class CheckFailed(MdocError):
    """A comparison or check ran and failed (outputs differ, verification of results)."""

    exit_code = 1


class VerifyError(MdocError):
    """The IR breaks one of its rules; the message names the node, its op and the rule."""

    def __init__(self, message: str, context: str = ""):
        super().__init__(message)
        self.context = context

    def __str__(self) -> str:
        return self.args[0]


class ParseError(MdocError):
    """The textual IR could not be read; the message names the line and column."""
