"""onnxruntime as the reference oracle: run an ONNX model and compare two sets of outputs.

Tests, `mdoc compare` and `--check-each` all judge mdoc against onnxruntime with
the same code, so "equal" means one thing everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx

from .errors import MdocError


def run_onnxruntime(model: onnx.ModelProto | str | os.PathLike, feeds: dict[str, np.ndarray],
                    threads: int = 0, optimize: bool = True) -> dict[str, np.ndarray]:
    """Outputs by name; a path is loaded by onnxruntime itself, so external data works.

    `optimize=False` turns off onnxruntime's own graph rewrites, so two models that
    mean the same op by op give bit-identical outputs (its fusions depend on how much
    shape information a file carries).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
        session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds)))
    except Exception as e:  # onnxruntime raises its own untyped errors
        name = model.graph.name if isinstance(model, onnx.ModelProto) else str(model)
        raise MdocError(f"onnxruntime cannot run model '{name}': {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    return " ".join(str(e).split())[:400]


@dataclass(frozen=True)
class Difference:
    name: str
    max_abs: float
    max_rel: float
    ok: bool
    note: str = ""


def compare_outputs(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray],
                    rtol: float = 1e-4, atol: float = 1e-5) -> list[Difference]:
    """Per output: largest absolute and relative differences, and whether they are within tolerance."""
    diffs = []
    for name, a in expected.items():
        if name not in actual:
            diffs.append(Difference(name, float("inf"), float("inf"), False, "missing"))
            continue
        b = np.asarray(actual[name])
        a = np.asarray(a)
        if a.shape != b.shape:
            diffs.append(Difference(name, float("inf"), float("inf"), False, f"shape {list(b.shape)} != {list(a.shape)}"))
            continue
        if a.dtype.kind in "fc" or b.dtype.kind in "fc":
            af, bf = a.astype(np.float64), b.astype(np.float64)
            finite = np.isfinite(af) & np.isfinite(bf)
            specials_ok = np.array_equal(np.where(finite, 0, af), np.where(finite, 0, bf), equal_nan=True)
            err, ref = np.abs(af - bf)[finite], np.abs(af)[finite]
            ok = specials_ok and bool(np.all(err <= atol + rtol * ref))
            max_abs = float(err.max()) if err.size else 0.0
            max_rel = float((err / np.maximum(ref, 1e-30)).max()) if err.size else 0.0
            diffs.append(Difference(name, max_abs, max_rel, ok, "" if specials_ok else "nan/inf positions differ"))
        else:
            equal = np.array_equal(a, b)
            mism = float(np.count_nonzero(a != b)) if a.size else 0.0
            diffs.append(Difference(name, mism, 0.0, equal, "" if equal else f"{int(mism)} elements differ"))
    return diffs
