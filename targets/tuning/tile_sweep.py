"""Measure every tile of `tile_space` for a model's hand-scheduled kernels and keep the fastest.

Why: in a model lowered with the CPU kernel strategy nearly all the time is in the
hand-scheduled kernels (convs, matmuls), which MetaSchedule cannot tune: their schedules
are written, not searched.  What can be searched is their register tile, and the spaces
are small enough to sweep.

Each candidate is built, run on the same random inputs as the builder's own tile (the
baseline) and must give the same output (rtol 1e-4: only the summation order may differ),
then timed the way it runs inside a model: one call at a time, its first input (the
activation the previous layer just wrote) left in cache, its weights and output flushed
(TVM's `cache_flush_cpu_non_first_arg`).  A hot loop over one layer keeps its weights in
L2 and favours tiles that a model run would not.  After the sweep the baseline and the
best tile are timed again, alternately, and the tile is recorded only if it still wins by
`store.MARGIN`: the machine's load drifts over a sweep of minutes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import tvm

from ..cpu_kernels import CpuSpec, Kernel
from ..cpu_kernels.request import KernelRequest
from .store import MARGIN, TuningDatabase, chosen_tile
from .tile_space import tile_space

RTOL, ATOL = 1e-4, 1e-5
REPEATS = 30  # single timed calls per measurement (median)


@dataclass
class TileResult:
    """The sweep of one kernel request."""

    request: KernelRequest
    calls: int
    name: str = ""
    default_s: float | None = None
    best_s: float | None = None  # the best tile's time (None: none measured)
    tile: tuple[int, ...] | None = None  # the best tile, when it beat the default by MARGIN
    trials: int = 0
    error: str | None = None  # the first failure, for the report
    reused: bool = False  # taken from the database, not swept again

    @property
    def speedup(self) -> float | None:
        if self.tile is None or not self.default_s or not self.best_s:
            return None
        return self.default_s / self.best_s

    @property
    def cost(self) -> float:
        return self.calls * (self.default_s or 0.0)


class _Bench:
    """One built kernel with its inputs bound, timed like a layer of a model."""

    def __init__(self, kernel: Kernel, spec: CpuSpec, logical: dict[str, np.ndarray]):
        self.kernel = kernel
        module = tvm.compile(kernel.module(), spec.tvm_target()).jit()
        self.fn = module[kernel.name]
        self.timer = module.time_evaluator(kernel.name, tvm.cpu(), number=1, repeat=REPEATS,
                                           f_preproc="cache_flush_cpu_non_first_arg")
        args = []
        for p in kernel.inputs:
            value = logical[p.name] if p.name in logical else np.zeros(p.shape, p.dtype)
            if p.name in kernel.packers:
                value = kernel.packers[p.name](value)
            args.append(tvm.runtime.tensor(np.ascontiguousarray(value, p.dtype)))
        args.append(tvm.runtime.tensor(np.zeros(kernel.output.shape, kernel.output.dtype)))
        self.args = args

    def output(self) -> np.ndarray:
        self.fn(*self.args)
        return self.args[-1].numpy()

    def seconds(self) -> float:
        return float(np.median(self.timer(*self.args).results))


def logical_inputs(kernel: Kernel, request: KernelRequest, seed: int = 0) -> dict[str, np.ndarray]:
    """Random values for the kernel's inputs in their logical layout (a packed weight by the
    shape the request names), the same for every tile of one request."""
    rng = np.random.default_rng(seed)
    values = {}
    for p in kernel.inputs:
        shape = kernel.logical_shapes.get(p.name, tuple(request.args[1])) if p.name in kernel.packers else p.shape
        values[p.name] = rng.uniform(-1.0, 1.0, shape).astype(p.dtype)
    return values


def sweep_tiles(requests: Mapping[KernelRequest, int], spec: CpuSpec, db: TuningDatabase, *,
                deadline: float, max_trials: float, say: Callable[[str], None] = lambda msg: None,
                advance: Callable[[int, TileResult], None] = lambda n, r: None) -> list[TileResult]:
    """Sweep the tiles of every request that has a space (the costliest first), recording the
    winners in `db`; stops at `deadline` (perf_counter seconds) or after `max_trials` tiles."""
    results = []
    for request, calls in requests.items():
        if tile_space(request, spec):
            results.append(TileResult(request, calls))
    for r in results:  # the baselines first: they order the sweep
        known = db.tile_records.get(r.request.key)
        if known is not None:  # swept by an earlier run
            r.name, r.default_s, r.best_s, r.reused = known["kernel"], known["mdoc_default_s"], known["tuned_s"], True
            r.tile = chosen_tile(known)
            continue
        try:
            kernel = r.request.build(spec)
            r.name = kernel.name
            r.default_s = _Bench(kernel, spec, logical_inputs(kernel, r.request)).seconds()
        except Exception as exc:  # noqa: BLE001  (a kernel that does not build here is left alone)
            r.error = _first_line(exc)
    results.sort(key=lambda r: -r.cost)
    trials = 0
    for r in results:
        if r.reused or r.default_s is None or time.perf_counter() >= deadline or trials >= max_trials:
            continue
        space = tile_space(r.request, spec)
        say(f"tiles of {r.name} ({r.calls} call{'s' if r.calls > 1 else ''}, {r.default_s * 1e6:.0f} us): "
            f"{len(space)} candidates")
        trials += _sweep_one(r, space, spec, db, deadline, max_trials - trials, advance)
    return results


def _sweep_one(r: TileResult, space, spec: CpuSpec, db: TuningDatabase, deadline: float, max_trials: float,
               advance) -> int:
    kernel = r.request.build(spec)
    logical = logical_inputs(kernel, r.request)
    baseline = _Bench(kernel, spec, logical)
    expected = baseline.output()
    best: tuple[float, tuple, _Bench] | None = None
    tried = 0
    for tile in space:
        if time.perf_counter() >= deadline or tried >= max_trials:
            break
        tried += 1
        try:
            bench = _Bench(r.request.build(spec, tile), spec, logical)
            if not np.allclose(bench.output(), expected, rtol=RTOL, atol=ATOL):
                raise AssertionError(f"tile {tile} gives a different output")
            seconds = bench.seconds()
        except Exception as exc:  # noqa: BLE001  (an illegal or wrong tile is skipped, never fatal)
            r.error = r.error or f"tile {tile}: {_first_line(exc)}"
            continue
        finally:
            r.trials += 1
            advance(1, r)
        if best is None or seconds < best[0]:
            best = (seconds, tile, bench)
    if best is None:
        return tried
    # the two again, alternately: a tile must still win once the load has had time to change
    base_s, tuned_s = [], []
    for _ in range(3):
        base_s.append(baseline.seconds())
        tuned_s.append(best[2].seconds())
    r.default_s, r.best_s = float(np.median(base_s)), float(np.median(tuned_s))
    if r.best_s < r.default_s * MARGIN:
        r.tile = best[1]
    db.record_tile(r.request.key, r.name, r.tile, r.best_s, r.default_s)
    return tried


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:200]
