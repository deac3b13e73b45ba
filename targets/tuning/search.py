"""`tune`: MetaSchedule search over a model's tasks, weighted by their share of the latency.

1. The tasks (`tasks.extract_tasks`) are the PrimFuncs mdoc would schedule generically.
2. mdoc's default schedule of every task is built and measured first, by the same
   builder and runner as the search; that is the baseline a tuned schedule must beat
   (`store.MARGIN`), and calls x baseline is the task's share of the latency.
3. The budget (`Budget`: trials, or minutes of wall time) is split over the tasks in
   proportion to that share (`tasks.allocate`); the cheap tail gets nothing when the
   budget is small. Each task is searched in rounds of `chunk` trials (MetaSchedule's
   evolutionary search with the XGBoost cost model, shared across tasks) until its
   trials or its time are spent; time left over by one task goes to the next.
4. Every measured schedule lands in the JSON database at once, so an interrupted run
   keeps what it measured.

Measurement runs here (`LocalRunner`) or on a board through TVM's RPC tracker
(`Remote`: `--rpc-tracker HOST:PORT --rpc-key KEY`), which is the only way to tune a
cross-compiled target such as aarch64.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import tvm
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
from tvm.ir.utils import derived_object

from mdoc.errors import MdocError

from ..artifact import host_arch
from ..cpu_description import CpuSpec
from ..cpu_kernels.request import KernelRequest
from ..presets import TargetSpec
from .store import TuningDatabase, task_module
from .tasks import Task, allocate, extract_tasks
from .tile_sweep import TileResult, sweep_tiles

DEFAULT_CHUNK = 32
# a task given less than this is not worth starting (one round of search and measurement)
MIN_TASK_SECONDS = 30.0


@dataclass(frozen=True)
class Budget:
    """How much search: `trials` measured schedules in all, or `minutes` of wall time (exactly one)."""

    trials: int | None = None
    minutes: float | None = None

    def __post_init__(self):
        if (self.trials is None) == (self.minutes is None):
            raise MdocError("give the tuning budget as --trials N or --time-budget MINUTES (exactly one)")
        if self.trials is not None and self.trials < 1:
            raise MdocError(f"--trials {self.trials}: must be at least 1")
        if self.minutes is not None and not (self.minutes > 0 and math.isfinite(self.minutes)):
            raise MdocError(f"--time-budget {self.minutes}: must be a positive number of minutes")

    @property
    def seconds(self) -> float:
        return math.inf if self.minutes is None else self.minutes * 60.0


@dataclass(frozen=True)
class Remote:
    """A TVM RPC tracker and the key under which the board's RPC server registered."""

    host: str
    port: int
    key: str
    timeout_s: float = 60.0

    @staticmethod
    def parse(tracker: str, key: str | None) -> "Remote":
        host, sep, port = tracker.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise MdocError(f"--rpc-tracker {tracker!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
        if not key:
            raise MdocError("--rpc-tracker needs --rpc-key KEY (the key the board's RPC server registered with)")
        return Remote(host, int(port), key)


@dataclass
class TaskResult:
    task: Task
    trials: int = 0
    best_s: float | None = None
    error: str | None = None  # the first build or run failure, for the report when nothing ran

    @property
    def speedup(self) -> float | None:
        if self.best_s is None or self.task.default_s is None:
            return None
        return self.task.default_s / self.best_s


@dataclass
class TuneReport:
    database: Path
    results: list[TaskResult] = field(default_factory=list)
    tiles: list[TileResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def trials(self) -> int:
        return sum(r.trials for r in self.results) + sum(r.trials for r in self.tiles)

    def latency_s(self, tuned: bool) -> float:
        """The kernels' summed time per model call: mdoc's defaults, or what a build now takes
        (the better of default and tuned schedules; a tile only where it won by MARGIN)."""
        total = 0.0
        for r in self.results:
            d = r.task.default_s
            if d is None:
                continue
            best = min(d, r.best_s) if tuned and r.best_s is not None else d
            total += r.task.calls * best
        for t in self.tiles:
            if t.default_s is not None:
                total += t.calls * (t.best_s if tuned and t.tile is not None else t.default_s)
        return total

    def as_json(self) -> dict:
        return {"database": str(self.database), "trials": self.trials, "seconds": round(self.seconds, 1),
                "tasks_latency_ms": {"mdoc_default": round(self.latency_s(False) * 1e3, 3),
                                     "tuned": round(self.latency_s(True) * 1e3, 3)},
                "tasks": [{"name": r.task.name, "calls": r.task.calls, "flops": r.task.flops,
                           "mdoc_default_us": _us(r.task.default_s), "tuned_us": _us(r.best_s),
                           "trials": r.trials} for r in self.results],
                "tiles": [{"name": t.name, "calls": t.calls, "mdoc_default_us": _us(t.default_s),
                           "tuned_us": _us(t.best_s), "tile": None if t.tile is None else list(t.tile),
                           "trials": t.trials, "from_database": t.reused} for t in self.tiles]}


def _us(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e6, 2)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _seconds(result) -> float | None:
    if result.error_msg or not result.run_secs:
        return None
    return sum(float(s) for s in result.run_secs) / len(result.run_secs)


def make_measurers(spec: TargetSpec, remote: Remote | None):
    """MetaSchedule's builder and runner for `spec`: local, or a board behind an RPC tracker."""
    from tvm.s_tir import meta_schedule as ms

    if spec.device != "cpu":
        raise MdocError(f"mdoc tune supports CPU targets; '{spec.name}' is {spec.device} "
                        "(CUDA builds use dlight's schedules)")
    if remote is None and spec.arch != host_arch():
        raise MdocError(f"target '{spec.name}' is for {spec.arch}: its kernels must be measured on the board; "
                        "give --rpc-tracker HOST:PORT --rpc-key KEY")
    # the runner's workers time kernels with as many threads as artifacts run with (TVM's runtime
    # takes half the cores on x86 unless told)
    os.environ.setdefault("TVM_NUM_THREADS", str(_cores()))
    cpu_tensor_intrinsics()
    builder_kw = {"initializer": cpu_tensor_intrinsics}
    if spec.cross_compiler:
        builder_kw = {"f_export": "mdoc.tuning.export_cross", "initializer": _cross_builder_worker}
    builder = ms.builder.LocalBuilder(max_workers=_cores(), timeout_sec=60.0, **builder_kw)
    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50, enable_cpu_cache_flush=False)
    if remote is None:
        runner = ms.runner.LocalRunner(timeout_sec=30.0, evaluator_config=evaluator)
    else:
        config = ms.runner.RPCConfig(tracker_host=remote.host, tracker_port=remote.port, tracker_key=remote.key,
                                     session_priority=1, session_timeout_sec=int(remote.timeout_s))
        runner = ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=1)
    return builder, runner


def cpu_tensor_intrinsics() -> None:
    """Register only the CPU tensor intrinsics (x86, ARM), not all of `tvm.s_tir.tensor_intrin`.

    MetaSchedule imports that package in every TuneContext and in every build of every
    builder worker (a fresh process pool per round); its CUDA and ROCm intrinsics alone
    take 18 s of CPU to register (40 s wall on this shared 2-core machine), for nothing on
    a CPU target. The package is entered into `sys.modules` without running its
    `__init__`, and its CPU submodules are imported; any other submodule can still be
    imported by name later (`import tvm.s_tir.tensor_intrin.cuda`).
    """
    import importlib
    import importlib.util
    import sys

    import tvm.s_tir

    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        package = importlib.util.module_from_spec(importlib.util.find_spec(name))
        sys.modules[name] = package
        tvm.s_tir.tensor_intrin = package
    for sub in ("x86", "arm_cpu"):
        importlib.import_module(f"{name}.{sub}")


def _cross_builder_worker() -> None:
    """Runs in each builder worker: CPU intrinsics, and an export that links with the aarch64 cross compiler."""
    import tempfile

    cpu_tensor_intrinsics()

    import tvm_ffi

    @tvm_ffi.register_global_func("mdoc.tuning.export_cross", override=True)
    def export_cross(mod) -> str:
        from tvm.support import cc

        path = os.path.join(tempfile.mkdtemp(prefix="mdoc-tune-"), "tvm_tmp_mod.so")
        mod.export_library(path, fcompile=cc.cross_compiler("aarch64-linux-gnu-gcc"))
        return path


def measure_defaults(tasks: list[Task], db: TuningDatabase, target, cpu: CpuSpec, builder, runner) -> None:
    """Build and time mdoc's default schedule of every task (reusing the database's baselines)."""
    from tvm.s_tir import meta_schedule as ms

    from ..relax.schedule import ScheduleCPU

    todo = []
    for task in tasks:
        task.default_s = db.baseline(task.mod)
        if task.default_s is None:
            todo.append(task)
    if not todo:
        return
    with target:  # (the pass edits the module it is given: each gets a fresh one)
        scheduled = [ScheduleCPU(cpu)(task_module(t.func)) for t in todo]
    built = builder.build([ms.builder.BuilderInput(m, target) for m in scheduled])
    inputs, waiting = [], []
    for task, b in zip(todo, built):
        if b.error_msg is None:
            inputs.append(ms.runner.RunnerInput(b.artifact_path, "cpu", ms.arg_info.ArgInfo.from_prim_func(task.func)))
            waiting.append(task)
    for task, future in zip(waiting, runner.run(inputs)):
        task.default_s = _seconds(future.result())
        if task.default_s is not None:
            db.record_baseline(task.mod, task.name, task.default_s)
    measured = [t for t in tasks if t.default_s is not None]
    if len(measured) < len(tasks) and measured:  # price the unmeasured ones by FLOPs at the measured rate
        rate = sum(t.default_s for t in measured) / sum(t.flops for t in measured)
        for t in tasks:
            if t.default_s is None:
                t.estimate_s = t.flops * rate


def tune(mod: tvm.IRModule, spec: TargetSpec, database_dir: str | os.PathLike, budget: Budget, *,
         requests: Mapping[KernelRequest, int] | None = None, remote: Remote | None = None,
         chunk: int = DEFAULT_CHUNK, seed: int | None = 0, show_progress: bool = False,
         say=lambda msg: None) -> TuneReport:
    """Tune a lowered module `mod` (from `relax.lower.lower`) into the database at `database_dir`:
    first the register tiles of the hand-scheduled kernels it was lowered with (`requests`,
    from `CpuKernels.requests`: they hold nearly all of the time), then MetaSchedule on the
    generically scheduled rest with what is left of the budget."""
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    start = time.perf_counter()
    deadline = start + budget.seconds
    target = tvm.target.Target(spec.tvm)
    builder, runner = make_measurers(spec, remote)
    db = TuningDatabase(database_dir, spec.tvm, create=True)
    report = TuneReport(Path(database_dir))
    progress = _Progress(budget, budget.trials, show_progress)
    try:
        if requests and remote is not None:
            say("the hand-scheduled kernels' tiles are swept on this machine only: skipped with --rpc-tracker")
        elif requests:
            say(f"{len(requests)} hand-scheduled kernels; measuring their tiles")
            report.tiles = sweep_tiles(requests, spec.cpu, db, deadline=deadline,
                                       max_trials=budget.trials or math.inf, say=say, advance=progress.advance)
        _tune_tasks(mod, spec, db, budget, report, deadline, builder, runner, target, chunk, seed, progress, say)
    finally:
        progress.close()
    report.seconds = time.perf_counter() - start
    return report


def _tune_tasks(mod, spec, db, budget, report, deadline, builder, runner, target, chunk, seed, progress, say) -> None:
    """MetaSchedule over the generically scheduled tasks, with the budget the tile sweep left."""
    from tvm.s_tir import meta_schedule as ms

    tasks = extract_tasks(mod, spec.tvm)
    trials = None if budget.trials is None else budget.trials - sum(t.trials for t in report.tiles)
    if not tasks:
        say("no generically scheduled kernels: MetaSchedule has nothing to tune")
        return
    if (trials is not None and trials <= 0) or deadline - time.perf_counter() < MIN_TASK_SECONDS:
        say("the tile sweep took the budget: MetaSchedule is not started")
        return
    say(f"{len(tasks)} tasks; measuring mdoc's default schedule of each")
    measure_defaults(tasks, db, target, spec.cpu, builder, runner)
    tasks.sort(key=lambda t: -t.cost)
    report.results = [TaskResult(t) for t in tasks]
    if trials is not None:
        plan = [int(n) for n in allocate([t.cost for t in tasks], trials, min(chunk, trials))]
    else:
        left = max(0.0, deadline - time.perf_counter())
        plan = allocate([t.cost for t in tasks], left, min(MIN_TASK_SECONDS, left))
    kept = sum(1 for p in plan if p > 0)
    share = sum(t.cost for t in tasks[:kept]) / (sum(t.cost for t in tasks) or 1.0)
    say(f"budget to {kept} of {len(tasks)} tasks ({share:.0%} of the time of mdoc's default kernels)")

    cost_model = ms.cost_model.CostModel.create("xgb", num_tuning_cores=_cores())
    carry = 0.0  # seconds a task left unused, handed to the next
    for index, (result, part) in enumerate(zip(report.results, plan)):
        if part <= 0 or time.perf_counter() >= deadline:
            break
        progress.task(result.task.name, index, kept)
        task_end = time.perf_counter() + part + carry if budget.trials is None else math.inf
        trials_left = int(part) if budget.trials is not None else math.inf
        while trials_left > 0:
            round_start = time.perf_counter()
            n = int(min(chunk, trials_left))
            measured = _search(result, n, target, db, builder, runner, cost_model, seed, progress)
            trials_left -= n
            took = time.perf_counter() - round_start
            # stop when nothing new was measured (space exhausted) or the next round would overrun
            if not measured or round_start + 2 * took > min(task_end, deadline):
                break
        if budget.trials is None:
            carry = max(0.0, task_end - time.perf_counter())


def _search(result: TaskResult, trials: int, target, db, builder, runner, cost_model, seed, progress) -> int:
    """One round of MetaSchedule search on one task; returns how many schedules it measured."""
    from tvm.s_tir import meta_schedule as ms

    counter = _Counter(result, progress)
    context = ms.TuneContext(mod=result.task.mod, target=target, space_generator="post-order-apply",
                             search_strategy="evolutionary", task_name=result.task.name,
                             rand_state=-1 if seed is None else seed + result.trials, num_threads=_cores())
    callbacks = ms.measure_callback.MeasureCallback.create("default") + [counter]
    ms.tune_tasks(tasks=[context.clone()], task_weights=[1.0], work_dir=str(db.path), max_trials_global=trials,
                  num_trials_per_iter=trials, builder=builder, runner=runner, database=db.ms,
                  cost_model=cost_model, measure_callbacks=callbacks, task_scheduler="round-robin")
    return counter.measured


@derived_object
class _Counter(PyMeasureCallback):
    """Counts measured schedules, keeps the task's best time, and moves the progress bar."""

    def __init__(self, result: TaskResult, progress: "_Progress"):
        self.result, self.progress, self.measured = result, progress, 0

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        for b, r in zip(builder_results, runner_results):
            seconds = _seconds(r)
            if seconds is not None and (self.result.best_s is None or seconds < self.result.best_s):
                self.result.best_s = seconds
            elif seconds is None and self.result.error is None:
                self.result.error = (b.error_msg or r.error_msg or "no time measured").strip()
        self.measured += len(runner_results)
        self.result.trials += len(runner_results)
        self.progress.advance(len(runner_results), self.result)


class _Progress:
    """A tqdm bar over trials (--trials) or seconds (--time-budget), on stderr."""

    def __init__(self, budget: Budget, total_trials: int | None, show: bool):
        self.bar = None
        self.start = time.perf_counter()
        self.by_time = budget.trials is None
        if show:
            from tqdm import tqdm

            total = round(budget.seconds) if self.by_time else total_trials
            unit = "s" if self.by_time else "trial"
            self.bar = tqdm(total=total, unit=unit, leave=False, dynamic_ncols=True)

    def task(self, name: str, index: int, count: int) -> None:
        if self.bar is not None:
            self.bar.set_description_str(f"task {index + 1}/{count} {name[:32]}")

    def advance(self, trials: int, result: TaskResult) -> None:
        if self.bar is None:
            return
        if self.by_time:
            self.bar.n = min(self.bar.total, round(time.perf_counter() - self.start))
            self.bar.refresh()
        else:
            self.bar.update(trials)
        if result.speedup is not None:
            self.bar.set_postfix_str(f"best {result.speedup:.2f}x mdoc default")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
