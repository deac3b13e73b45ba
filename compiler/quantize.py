"""Static int8 quantization of a model: observe, calibrate, write QDQ (what `mdoc quantize` runs).

Three IR-to-IR steps, each visible with `mdoc print` between them:

1. a light cleanup (shapes, constants, BatchNormalization folded into the convs: the
   folded weights are the ones to quantize), no fusion into mdoc ops;
2. `insert-observers`: an mdoc.observe on each activation of a Conv / MatMul / Gemm;
3. calibration on the samples (`calibration.calibrate`), then `quantize-static`: Q/DQ
   pairs for the activations, per-channel symmetric int8 weights.

The result is a QDQ model that onnxruntime runs as it is and that mdoc's own
pipeline compiles (`mdoc compile OUT.onnx`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .calibration import calibrate
from .ir import Model
from .pass_manager import PassManager, make_pass, parse_pipeline

PREPARE = "infer-shapes,fold-constants{max-bytes=0},simplify,fuse-conv-bn,fuse-conv-affine,cse,dce"
CLEANUP = "fold-constants{max-bytes=0},cse,dce"


def quantize_static(model: Model, samples: list[dict[str, np.ndarray]], *, method: str = "minmax",
                    percentile: float = 99.99, activations: str = "u8", per_channel: bool = True,
                    exclude: tuple[str, ...] = (), progress: Callable[[int], None] | None = None) -> dict:
    """Quantize `model` in place; a summary: observers calibrated, weights quantized, weight bytes before/after."""
    PassManager(parse_pipeline(PREPARE)).run(model)
    before = _weight_bytes(model)
    PassManager([make_pass("insert-observers", {"exclude": ";".join(exclude)})]).run(model)
    observed = calibrate(model, samples, method, percentile, progress)
    PassManager([make_pass("quantize-static", {"activations": activations, "per-channel": str(per_channel)})]).run(model)
    PassManager(parse_pipeline(CLEANUP)).run(model)
    return {"observers": observed, "quantized_ops": _count(model, "onnx.DequantizeLinear") - observed,
            "weight_bytes": before, "quantized_weight_bytes": _weight_bytes(model)}


def _weight_bytes(model: Model) -> int:
    return sum(v.const_value.nbytes for n in model.graph for v in n.outputs if v.const_value is not None)


def _count(model: Model, op: str) -> int:
    return sum(1 for n in model.graph if n.op == op)
