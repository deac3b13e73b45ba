"""Pass instruments for `mdoc opt`: print the IR around passes and stop at the first pass that drifts.

They hook `PassManager` before and after each pass, so passes themselves stay
unaware of debugging; what they collect also feeds `--timing` and `--report`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import CheckFailed
from .ir import Model
from .onnx_export import export_model
from .pass_manager import GraphPass, Instrument, PassRecord
from .printer import print_model
from .reference import compare_outputs, run_onnxruntime
from .report import graph_dot
from .stats import model_stats


@dataclass
class PrintIR(Instrument):
    """--print-ir-before / --print-ir-after / --print-ir-after-all (to `write`, stderr in the CLI)."""

    before_names: frozenset[str] = frozenset()
    after_names: frozenset[str] = frozenset()
    after_all: bool = False
    write: Callable[[str], None] = print

    def before(self, p: GraphPass, model: Model) -> None:
        if p.name in self.before_names:
            self.write(f"# ----- IR before {p.spec()} -----\n{print_model(model)}")

    def after(self, p: GraphPass, model: Model, record: PassRecord) -> None:
        if self.after_all or p.name in self.after_names:
            self.write(f"# ----- IR after {p.spec()} -----\n{print_model(model)}")


@dataclass
class CheckEach(Instrument):
    """--check-each: run onnxruntime after every pass and stop at the first whose outputs drift."""

    feeds: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    rtol: float = 1e-4
    atol: float = 1e-5

    def after(self, p: GraphPass, model: Model, record: PassRecord) -> None:
        actual = run_onnxruntime(export_model(model), self.feeds)
        diffs = compare_outputs(self.expected, actual, self.rtol, self.atol)
        record.drift = max(d.max_abs for d in diffs) if diffs else 0.0
        bad = [d for d in diffs if not d.ok]
        if bad:
            worst = max(bad, key=lambda d: d.max_abs)
            raise CheckFailed(f"outputs drift after pass '{p.spec()}': output '{worst.name}' differs by "
                              f"{worst.max_abs:.3g} (rtol {self.rtol}, atol {self.atol}){' ' + worst.note if worst.note else ''}")


@dataclass
class Snapshots(Instrument):
    """Collects, for --report, the graph drawn before the first pass and after the last, and each pass's op changes."""

    dot_before: str | None = None
    dot_after: str | None = None
    changes: list[dict[str, int]] = field(default_factory=list)
    records: list[PassRecord] = field(default_factory=list)
    ops_after: dict[str, int] = field(default_factory=dict)  # the op histogram after the last pass
    _ops: dict[str, int] = field(default_factory=dict)

    def before(self, p: GraphPass, model: Model) -> None:
        if self.dot_before is None:
            self.dot_before = graph_dot(model.graph)
        self._ops = model_stats(model).ops

    def after(self, p: GraphPass, model: Model, record: PassRecord) -> None:
        ops = model_stats(model).ops
        delta = {op: ops.get(op, 0) - self._ops.get(op, 0) for op in set(ops) | set(self._ops)}
        self.changes.append({op: d for op, d in sorted(delta.items()) if d})
        self.ops_after = ops
        self.records.append(record)
        self.dot_after = graph_dot(model.graph)
