"""Static int8 quantization of a model: observe, calibrate, write QDQ (what `mdoc quantize` runs).

IR-to-IR steps, each visible with `mdoc print` between them:

1. a light cleanup (shapes, constants, BatchNormalization folded into the convs: the
   folded weights are the ones to quantize), no fusion into mdoc ops;
2. `insert-observers`: an mdoc.observe on each activation of a Conv / MatMul / Gemm;
3. calibration on the samples (`calibration.calibrate`), then `quantize-static`: Q/DQ
   pairs for the activations, per-channel symmetric int8 weights.

The result is a QDQ model that onnxruntime runs as it is and that mdoc's own
pipeline compiles (`mdoc compile OUT.onnx`).

Accuracy guard (`max_drop`): the quantized model's outputs are compared with the float
model's on held-out samples (`accuracy`: the cosine similarity of each output after
subtracting its mean over the samples, so that a constant offset shared by every input
does not hide an error). While 1 - accuracy exceeds the budget, the op whose return to
float gains the most goes back to float, one at a time; the ranking is measured once,
each op alone in float. Calibration runs once: the ranges are reused for every trial.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .calibration import calibrate, observers
from .errors import MdocError
from .ir import Model
from .onnx_export import export_model
from .onnx_import import import_model
from .pass_manager import PassManager, make_pass, parse_pipeline

PREPARE = "infer-shapes,fold-constants{max-bytes=0},simplify,fuse-conv-bn,fuse-conv-affine,cse,dce"
CLEANUP = "fold-constants{max-bytes=0},cse,dce"


def quantize_static(model: Model, samples: list[dict[str, np.ndarray]], *, method: str = "minmax",
                    percentile: float = 99.99, activations: str = "u8", per_channel: bool = True,
                    exclude: tuple[str, ...] = (), max_drop: float | None = None,
                    eval_samples: list[dict[str, np.ndarray]] | None = None,
                    progress: Callable[[int], None] | None = None) -> tuple[Model, dict]:
    """The quantized model and a summary (observers calibrated, ops quantized, weight bytes, the
    accuracy and the ops the guard kept in float)."""
    PassManager(parse_pipeline(PREPARE)).run(model)
    prepared = export_model(model)
    ranges = _ranges(import_model(prepared), samples, method, percentile, progress)
    options = {"activations": activations, "per-channel": str(per_channel)}
    kept = list(exclude)
    result = _build(prepared, kept, ranges, options)
    summary = {"observers": len(ranges), "weight_bytes": _weight_bytes(model)}
    if max_drop is not None:
        held_out = eval_samples or samples
        reference = outputs_on(prepared, held_out)
        score = accuracy(outputs_on(export_model(result), held_out), reference)
        fallback: list[dict] = []
        if 1 - score > max_drop:
            gains = sorted(((accuracy(outputs_on(export_model(_build(prepared, kept + [name], ranges, options)), held_out),
                                      reference) - score, name) for name in _quantized_ops(result)), reverse=True)
            for gain, name in gains:
                if 1 - score <= max_drop:
                    break
                kept.append(name)
                result = _build(prepared, kept, ranges, options)
                new = accuracy(outputs_on(export_model(result), held_out), reference)
                fallback.append({"node": name, "alone": round(gain, 6), "accuracy": round(new, 6)})
                score = new
        summary.update(accuracy=score, max_drop=max_drop, fp32_fallback=fallback,
                       within_budget=1 - score <= max_drop)
    summary.update(quantized_ops=len(_quantized_ops(result)), quantized_weight_bytes=_weight_bytes(result))
    return result, summary


def quantize_dynamic(model: Model, *, per_channel: bool = True, exclude: tuple[str, ...] = ()) -> tuple[Model, dict]:
    """Dynamic int8 (`quantize-dynamic`): MatMul / Gemm with constant weights on int8 weights and activations
    quantized per call; no calibration. The model and a summary (ops quantized, weight bytes)."""
    PassManager(parse_pipeline(PREPARE)).run(model)
    summary = {"weight_bytes": _weight_bytes(model)}
    options = {"per-channel": str(per_channel), "exclude": ";".join(exclude)}
    PassManager([make_pass("quantize-dynamic", options)]).run(model)
    PassManager(parse_pipeline(CLEANUP)).run(model)
    summary.update(quantized_ops=sum(n.op == "onnx.MatMulInteger" for n in model.graph),
                   quantized_weight_bytes=_weight_bytes(model))
    return model, summary


def accuracy(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    """The smallest, over the outputs, cosine similarity of `got` and `want` after centering each over
    the samples (axis 0 stacks them)."""
    scores = []
    for g, w in zip(got, want):
        g, w = g.astype(np.float64) - g.mean(axis=0), w.astype(np.float64) - w.mean(axis=0)
        norm = np.linalg.norm(g) * np.linalg.norm(w)
        scores.append(float(np.sum(g * w) / norm) if norm > 0 else float(np.allclose(g, w)))
    return min(scores)


def _ranges(model: Model, samples, method, percentile, progress) -> dict[str, tuple[float, float]]:
    """Each observed activation's range, by the activation's name."""
    PassManager([make_pass("insert-observers")]).run(model)
    calibrate(model, samples, method, percentile, progress)
    return {n.input(0).name: (n.attrs["min"], n.attrs["max"]) for n in observers(model)}


def _build(prepared, exclude: list[str], ranges: dict, options: dict) -> Model:
    """The prepared model quantized but for the nodes in `exclude`, with calibrated `ranges`."""
    model = import_model(prepared)
    PassManager([make_pass("insert-observers", {"exclude": ";".join(exclude)})]).run(model)
    for node in observers(model):
        node.attrs["min"], node.attrs["max"] = ranges[node.input(0).name]
    PassManager([make_pass("quantize-static", options)]).run(model)
    PassManager(parse_pipeline(CLEANUP)).run(model)
    return model


def _quantized_ops(model: Model) -> list[str]:
    """Names of the nodes that read an int8 weight (quantize-static's DequantizeLinear of a constant)."""
    names = []
    for node in model.graph:
        w = node.input(1) if len(node.inputs) > 1 else None
        p = w.producer() if w is not None else None
        if p is not None and p.op == "onnx.DequantizeLinear" and p.input(0).const_value is not None:
            names.append(node.name)
    return names


def outputs_on(proto, samples) -> list[np.ndarray]:
    """The model's outputs on every sample (onnxruntime), stacked along a new first axis."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        runs = [session.run(None, feeds) for feeds in samples]
    except Exception as e:  # noqa: BLE001 - onnxruntime's own error, in one line
        raise MdocError(f"accuracy check: onnxruntime failed: {str(e).splitlines()[0]}") from None
    return [np.stack([r[k] for r in runs]) for k in range(len(runs[0]))]


def _weight_bytes(model: Model) -> int:
    return sum(v.const_value.nbytes for n in model.graph for v in n.outputs if v.const_value is not None)
