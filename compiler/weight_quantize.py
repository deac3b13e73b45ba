"""Weight-only quantization of a model (what `mdoc quantize --weights int4|int8` runs): no calibration data.

A light cleanup (shapes, constants), then `quantize-weights` (MatMul / Gemm with constant
weights -> mdoc.matmul_nbits) and dce, each visible with `mdoc print`. The summary reports
the weight bytes honestly: the float weights of the MatMuls quantized against what replaced
them (packed codes, scales, zero points), and the whole model's constants before and after.
"""

from __future__ import annotations

import numpy as np

from .ir import Model
from .pass_manager import PassManager, make_pass, parse_pipeline
from .weight_quant_ops import MATMUL_NBITS

PREPARE = "infer-shapes,fold-weight-dequant,fold-constants{max-bytes=0},simplify,cse,dce"


def quantize_weights(model: Model, *, bits: int = 4, block_size: int = 32, symmetric: bool = True,
                     scale_type: str = "f16", exclude: tuple[str, ...] = (),
                     min_elements: int = 16384) -> tuple[Model, dict]:
    """The model with block-quantized MatMul weights, and a summary of what changed."""
    PassManager(parse_pipeline(PREPARE)).run(model)
    before_total = constant_bytes(model)
    already = {id(n) for n in model.graph if n.op == MATMUL_NBITS.name}
    options = {"bits": str(bits), "block-size": str(block_size), "symmetric": str(symmetric).lower(),
               "scale-type": scale_type, "min-elements": str(min_elements), "exclude": ";".join(exclude)}
    PassManager([make_pass("quantize-weights", options), make_pass("dce")]).run(model)
    ops = [n for n in model.graph if n.op == MATMUL_NBITS.name and id(n) not in already]
    float_bytes = sum(int(n.attrs["k"]) * int(n.attrs["n"]) * np.dtype(n.input(0).type.dtype.numpy).itemsize
                      for n in ops)
    packed_bytes = sum(v.const_value.nbytes for n in ops for v in n.inputs[1:] if v is not None)
    return model, {"quantized_ops": len(ops), "bits": bits, "block_size": block_size, "symmetric": symmetric,
                   "matmul_weight_bytes": float_bytes, "quantized_matmul_weight_bytes": packed_bytes,
                   "weight_bytes": before_total, "quantized_weight_bytes": constant_bytes(model)}


def constant_bytes(model: Model) -> int:
    return sum(v.const_value.nbytes for n in model.graph for v in n.outputs if v.const_value is not None)
