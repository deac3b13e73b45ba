"""Calibration: run a model with observers on sample inputs and write each observer's range.

The observers (`mdoc.observe`, placed by insert-observers) are exported as ONNX
Identity ops whose results become extra graph outputs; onnxruntime runs the model on
every sample, one at a time, and each observer's values are reduced to a range:

- ``minmax``: the smallest and largest value seen (what onnxruntime's MinMax
  calibrator does); exact for the calibration data, but one outlier stretches the
  grid for every other value;
- ``percentile``: the 100 - p and p percentiles of all values seen (p = 99.99 by
  default), which clips the rare outliers instead;
- ``entropy``: the symmetric threshold whose 128-level quantization of the histogram
  of |values| loses the least information (smallest KL divergence from the clipped
  histogram), as TensorRT's entropy calibrator and onnxruntime's
  CalibrationMethod.Entropy choose it: it clips outliers only where they cost less
  than the coarser grid they would force on everything else.

Samples: an ``.npz`` keyed by input name whose arrays stack the samples along a new
first axis (or along the batch axis, when the array has the input's rank), or a
folder of such files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from .errors import MdocError
from .ir import Model, Node
from .quant_ops import OBSERVE
from .tensors import load_npz
from .types import TensorType

METHODS = ("minmax", "percentile", "entropy")
_KEPT = 1 << 18  # values kept per observer and sample for percentiles (a uniform subsample)


def observers(model: Model) -> list[Node]:
    return [n for n in model.graph if n.op == OBSERVE.name]


def load_samples(path: str | os.PathLike, model: Model) -> list[dict[str, np.ndarray]]:
    """The calibration samples in `path` (an .npz or a folder of them), each a feed dict for `model`."""
    path = Path(path)
    files = sorted(path.glob("*.npz")) if path.is_dir() else [path]
    if not files:
        raise MdocError(f"{path}: no .npz files to calibrate with")
    inputs = {v.name: v for v in model.graph.inputs}
    samples: list[dict[str, np.ndarray]] = []
    for f in files:
        arrays = load_npz(f)
        missing = sorted(set(inputs) - set(arrays))
        if missing:
            raise MdocError(f"{f}: no array for input{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                            f"(it has {', '.join(sorted(arrays)) or 'none'})")
        counts = {name: _count(f, name, arrays[name], inputs[name]) for name in inputs}
        if len(set(counts.values())) > 1:
            raise MdocError(f"{f}: the inputs hold different numbers of samples ({counts})")
        n = next(iter(counts.values()), 0)
        for k in range(n):
            samples.append({name: _sample(arrays[name], inputs[name], k) for name in inputs})
    return samples


def _count(f: Path, name: str, array: np.ndarray, value) -> int:
    rank = value.type.rank if isinstance(value.type, TensorType) else None
    if rank is None or array.ndim == rank + 1:
        return array.shape[0]
    if array.ndim == rank:
        return array.shape[0] if rank else 1
    raise MdocError(f"{f}: '{name}' has shape {list(array.shape)}; input '{name}' has rank {rank}, so the "
                    f"samples need rank {rank + 1} (stacked) or {rank} (along the batch axis)")


def _sample(array: np.ndarray, value, k: int) -> np.ndarray:
    rank = value.type.rank if isinstance(value.type, TensorType) else array.ndim - 1
    return np.ascontiguousarray(array[k] if array.ndim == rank + 1 else array[k:k + 1])


def calibrate(model: Model, samples: list[dict[str, np.ndarray]], method: str = "minmax",
              percentile: float = 99.99, progress: Callable[[int], None] | None = None) -> int:
    """Write `min` and `max` on every observer of `model` from its values over `samples`; how many observers."""
    if method not in METHODS:
        raise MdocError(f"calibration method '{method}' is not one of {', '.join(METHODS)}")
    obs = observers(model)
    if not obs:
        return 0
    if not samples:
        raise MdocError("calibration needs at least one sample")
    ranges = [_Range(method, percentile) for _ in obs]
    for outputs in _observed(model, obs, samples, progress):
        for r, values in zip(ranges, outputs):
            r.add(values)
    for node, r in zip(obs, ranges):
        node.attrs["min"], node.attrs["max"] = r.result()
    return len(obs)


def _observed(model: Model, obs: list[Node], samples, progress) -> Iterator[list[np.ndarray]]:
    """Per sample, the values each observer sees (onnxruntime runs the exported model)."""
    import onnx
    import onnxruntime as ort

    from .onnx_export import export_model

    names: dict = {}
    proto = export_model(model, names)
    wanted = [names[n.output] for n in obs]
    for name in wanted:
        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime's own error, in one line
        raise MdocError(f"calibration: onnxruntime cannot load the model: {str(e).splitlines()[0]}") from None
    for k, feeds in enumerate(samples):
        try:
            yield session.run(wanted, feeds)
        except Exception as e:  # noqa: BLE001
            raise MdocError(f"calibration sample {k}: onnxruntime failed: {str(e).splitlines()[0]}") from None
        if progress is not None:
            progress(k + 1)


class _Range:
    def __init__(self, method: str, percentile: float):
        self.method, self.percentile = method, percentile
        self.lo, self.hi = np.inf, -np.inf
        self.kept: list[np.ndarray] = []

    def add(self, values: np.ndarray) -> None:
        flat = np.asarray(values, np.float32).reshape(-1)
        if flat.size == 0:
            return
        self.lo, self.hi = min(self.lo, float(flat.min())), max(self.hi, float(flat.max()))
        if self.method in ("percentile", "entropy"):
            step = max(1, flat.size // _KEPT)
            self.kept.append(flat[::step])

    def result(self) -> tuple[float, float]:
        if self.lo > self.hi:
            return 0.0, 0.0
        if self.method == "percentile":
            values = np.concatenate(self.kept)
            return (float(np.percentile(values, 100.0 - self.percentile)),
                    float(np.percentile(values, self.percentile)))
        if self.method == "entropy":
            t = entropy_threshold(np.abs(np.concatenate(self.kept)))
            return max(self.lo, -t), min(self.hi, t)
        return self.lo, self.hi


def entropy_threshold(magnitudes: np.ndarray, bins: int = 2048, levels: int = 128) -> float:
    """The clipping threshold for `magnitudes` (|values|) with the least KL divergence (TensorRT's search)."""
    top = float(magnitudes.max()) if magnitudes.size else 0.0
    if top <= 0.0:
        return 0.0
    hist, edges = np.histogram(magnitudes, bins=bins, range=(0.0, top))
    hist = hist.astype(np.float64)
    best, best_i = np.inf, bins
    for i in range(levels, bins + 1):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        q = _requantized(hist[:i], levels)
        mask = p > 0
        if not mask.any():
            continue
        pn, qn = p / p.sum(), q / max(q.sum(), 1e-30)
        kl = float(np.sum(pn[mask] * np.log(pn[mask] / np.maximum(qn[mask], 1e-30))))
        if kl < best:
            best, best_i = kl, i
    return float(edges[best_i])


def _requantized(hist: np.ndarray, levels: int) -> np.ndarray:
    """`hist` merged into `levels` chunks, each chunk's mass spread evenly over its nonzero bins."""
    chunk = np.floor(np.arange(hist.size) * levels / hist.size).astype(np.int64)
    nonzero = hist > 0
    mass = np.bincount(chunk, weights=hist, minlength=levels)
    count = np.bincount(chunk, weights=nonzero.astype(np.float64), minlength=levels)
    return np.where(nonzero, mass[chunk] / np.maximum(count[chunk], 1.0), 0.0)
