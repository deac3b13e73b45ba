"""TVM's own log lines, kept off the terminal while mdoc lowers and builds, and kept for `--verbose`.

TVM's C++ code logs with LOG(WARNING) straight to file descriptor 2 ("Warning: Fast
mode segfaults when there are out-of-bounds indices", "BlockBuilder destroyed with
remaining blocks!"), and its only switch, TVM_LOG_DEBUG, adds lines rather than
removing them. So mdoc points fd 2 at a file around each TVM call
(`NativeLog.capture`); what was collected goes into the artifact (`build.log`)
or, when the build fails, into a file that the error names, and `mdoc compile
--verbose` prints it. Python's own `sys.stderr` writes to fd 2 as well and is
captured with it, so nothing mdoc reports to the user may be written inside a
capture.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


class NativeLog:
    """What TVM wrote to fd 2 during one compile, across several `capture()` blocks."""

    def __init__(self):
        self._file = tempfile.TemporaryFile()

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Send fd 2 (TVM's C++ log, and Python's stderr) to this log until the block ends.

        Should TVM crash the process meanwhile (a segfault in a pass), `faulthandler` reports it
        on the real stderr, so the user does not see the build end without a word.
        """
        sys.stderr.flush()
        saved = os.dup(2)
        terminal = os.fdopen(saved, "w", closefd=False)
        was_enabled = faulthandler.is_enabled()
        try:
            os.dup2(self._file.fileno(), 2)
            faulthandler.enable(file=terminal)
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            if not was_enabled:
                faulthandler.disable()
            elif sys.__stderr__ is not None:  # (where it reported before is not recorded: fd 2 then)
                faulthandler.enable(file=sys.__stderr__)
            terminal.close()
            os.close(saved)

    def text(self) -> str:
        self._file.seek(0)
        return self._file.read().decode(errors="replace")

    def write(self, path: Path) -> bool:
        """Write the log to `path` when it holds anything; whether it did."""
        text = self.text()
        if text:
            Path(path).write_text(text)
        return bool(text)

    def keep(self) -> str | None:
        """The log in a file of its own that outlives the compile (for an error to name), or None if empty."""
        text = self.text()
        if not text:
            return None
        fd, path = tempfile.mkstemp(prefix="mdoc-tvm-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path

    def close(self) -> None:
        self._file.close()
