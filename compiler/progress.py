"""A progress bar over the named steps of a long job (compile, tune), on stderr when it is a terminal."""

from __future__ import annotations

import sys

from tqdm import tqdm


class Steps:
    """`with Steps(names) as step: step("build"); ...` advances one bar through the named steps."""

    def __init__(self, names: list[str], show: bool | None = None):
        self.names = names
        self.show = sys.stderr.isatty() if show is None else show
        self.bar = None
        self.done = 0

    def __enter__(self) -> "Steps":
        if self.show:
            self.bar = tqdm(total=len(self.names), file=sys.stderr, leave=False,
                            bar_format="{desc:<18} {bar} {n_fmt}/{total_fmt} [{elapsed}]")
        return self

    def __call__(self, name: str) -> None:
        if self.bar is None:
            return
        index = self.names.index(name) if name in self.names else self.done
        self.bar.update(index - self.bar.n)
        self.bar.set_description_str(name)
        self.done = index

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.update(len(self.names) - self.bar.n)
            self.bar.close()
