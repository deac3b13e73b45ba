"""The optional converters: import them only when a foreign file arrives, keep their chatter and tracebacks in.

TensorFlow and PyTorch take seconds to import and are optional extras, so nothing
imports them at mdoc's startup. When one is missing the user gets the install
command in one line; while one runs, its progress prints and C++ logs are held
back (shown with MDOC_DEBUG=1), and its exceptions become one `MdocError` line
that names the file, because a model an exporter cannot handle is bad input,
not a bug in mdoc.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import tempfile
import warnings
from types import ModuleType

from ..errors import MdocError

INSTALL = {
    "tensorflow": "pip install 'mdoc[tensorflow]'",
    # torch comes only from its pinned CPU wheel; never let the extra's resolver pick one.
    "torch": "pip install torch==2.13.0 && pip install 'mdoc[torch]'",
}


def require(where: str, what: str, extra: str, *modules: str) -> list[ModuleType]:
    """Import `modules`, or refuse in one line saying which extra installs them."""
    if extra == "tensorflow":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    loaded = []
    for name in modules:
        try:
            with _quiet():  # TensorFlow logs from C++ as it loads
                loaded.append(importlib.import_module(name))
        except ImportError:
            raise MdocError(f"{where}: reading a {what} needs the optional '{name}' package: "
                            f"{INSTALL[extra]}") from None
    return loaded


@contextlib.contextmanager
def converting(where: str, tool: str):
    """Run an exporter quietly; its failure becomes one line naming `where` and the deepest cause."""
    try:
        with _quiet():
            yield
    except MdocError:
        raise
    except (Exception, SystemExit) as e:  # exporters raise anything, even SystemExit
        if os.environ.get("MDOC_DEBUG"):
            raise
        raise MdocError(f"{where}: {tool} could not convert it: {summary(e)}") from None


def summary(e: BaseException) -> str:
    """The first meaningful line of the innermost cause, at most 300 characters."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [line.strip() for line in str(e).splitlines() if line.strip() and not line.startswith("#")]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300].rstrip(": ")


@contextlib.contextmanager
def _quiet():
    """Send stdout/stderr (Python's and the C++ libraries' file descriptors) to a scratch file."""
    if os.environ.get("MDOC_DEBUG"):
        yield
        return
    loggers = [logging.getLogger(n) for n in ("tf2onnx", "tensorflow", "absl", "torch", "onnxscript")]
    levels = [lg.level for lg in loggers]
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
