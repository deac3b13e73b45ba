"""Latency of a compiled model against onnxruntime, measured fairly on a small machine.

Both runtimes keep their thread pools spinning for a while after a call, so on
two cores back-to-back timing makes them fight and the numbers swing by tens of
percent. Each timed block is therefore preceded by an idle gap, the two sides
are interleaved round by round after a warm-up, and medians are reported.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np


@dataclass
class Timing:
    name: str
    median_ms: float
    min_ms: float
    samples: int


def time_block(fn: Callable[[], object], calls: int) -> float:
    """Seconds per call over one block of `calls` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def interleaved(candidates: dict[str, Callable[[], object]], rounds: int = 10, calls: int | Mapping[str, int] = 5,
                warmup: int = 3, gap: float = 0.5, rounds_of: Mapping[str, int] | None = None) -> dict[str, Timing]:
    """Median per-call latency of each candidate, timed in interleaved rounds with idle gaps.

    `calls` may differ per candidate (a name -> calls mapping), so that a fast and a slow
    candidate both fill a block of similar length; `rounds_of` caps the rounds of a slow
    candidate (it takes part in the first N rounds only), so that it does not dominate the run.
    """
    per_call = calls if isinstance(calls, Mapping) else {name: calls for name in candidates}
    cap = rounds_of or {}
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for r in range(rounds):
        for name, fn in candidates.items():
            if r >= max(1, cap.get(name, rounds)):
                continue
            time.sleep(gap)
            samples[name].append(time_block(fn, per_call[name]))
    return {name: Timing(name, statistics.median(s) * 1000, min(s) * 1000, len(s)) for name, s in samples.items()}


def ort_session(model_path: str, threads: int = 0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])


def max_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) if a[k].size else 0.0
               for k in a)
