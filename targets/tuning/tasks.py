"""Tuning tasks: the PrimFuncs of a model that mdoc schedules generically, and where the budget goes.

Tasks come from the module as `build` sees it just before mdoc's generic CPU schedule
(`relax.build.optimize(..., schedule=False)`): legalized, folded, fused. Hand-written
kernels (marked `mdoc.scheduled`) are not tasks. Structurally equal PrimFuncs are one
task, called as many times as the model calls any of them.

A task's cost is its share of the model's latency: calls x the measured time of mdoc's
default schedule (calls x FLOPs until that is measured). `allocate` gives a budget
(trials or seconds) to tasks in proportion to cost, leaving out the cheapest until each
task it keeps gets at least a useful minimum: a small budget goes where it matters.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import tvm
from tvm import relax, tirx

from .store import task_module, workload_key

SCHEDULED_ATTRS = ("mdoc.scheduled", "tir.is_scheduled", "tirx.is_scheduled")


@dataclass
class Task:
    name: str
    func: tirx.PrimFunc  # unscheduled, as the build has it before mdoc's schedule
    mod: tvm.IRModule  # the workload MetaSchedule tunes
    calls: int
    flops: float
    default_s: float | None = None  # mdoc's default schedule, measured
    estimate_s: float | None = None  # priced by FLOPs where the measurement failed

    @property
    def cost(self) -> float:
        """Time per model call (calls x seconds), or calls x FLOPs before anything is measured."""
        seconds = self.default_s if self.default_s is not None else self.estimate_s
        return self.calls * (seconds if seconds is not None else self.flops)


def is_scheduled(func: tirx.PrimFunc) -> bool:
    attrs = func.attrs or {}
    return any(k in attrs and bool(attrs[k]) for k in SCHEDULED_ATTRS)


def call_counts(mod: tvm.IRModule) -> Counter:
    """How many times the Relax functions of `mod` call each PrimFunc (by name) with call_tir."""
    call_tir = tvm.ir.Op.get("relax.call_tir")
    counts: Counter = Counter()

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir) and isinstance(expr.args[0], tvm.ir.GlobalVar):
            counts[expr.args[0].name_hint] += 1

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    return counts


def extract_tasks(mod: tvm.IRModule, target: dict) -> list[Task]:
    """The tunable tasks of a lowered module (from `relax.lower.lower`), most expensive first by FLOPs."""
    from tvm.s_tir.analysis import estimate_tir_flops

    from ..relax.build import optimize

    fused = optimize(mod, target, schedule=False)
    counts = call_counts(fused)
    tasks: dict[str, Task] = {}
    for gv, func in fused.functions_items():
        if not isinstance(func, tirx.PrimFunc) or is_scheduled(func) or not counts[gv.name_hint]:
            continue
        tmod = task_module(func)
        key = workload_key(tmod)
        if key in tasks:
            tasks[key].calls += counts[gv.name_hint]
            continue
        try:
            flops = float(estimate_tir_flops(tmod))
        except Exception:  # noqa: BLE001  (ops it cannot count still get a nonzero cost)
            flops = 1.0
        tasks[key] = Task(gv.name_hint, func, tmod, counts[gv.name_hint], max(flops, 1.0))
    return sorted(tasks.values(), key=lambda t: -t.cost)


def allocate(costs: list[float], total: float, minimum: float) -> list[float]:
    """Split `total` over the first tasks in proportion to `costs` (sorted, largest first).

    The cheapest tasks are left out (given 0) until every task kept gets at least
    `minimum`; the most expensive task always gets something.
    """
    keep = len(costs)
    while keep > 1 and (sum(costs[:keep]) <= 0 or total * costs[keep - 1] / sum(costs[:keep]) < minimum):
        keep -= 1
    if keep <= 1:
        return [float(total)] + [0.0] * (len(costs) - 1) if costs else []
    weight = sum(costs[:keep])
    return [total * c / weight for c in costs[:keep]] + [0.0] * (len(costs) - keep)
