"""mdoc's fused products: a conv or a matmul with its elementwise tail, what `fuse-epilogue` produces.

    mdoc.conv(x, w, b?, residual?)          {Conv's attributes, activation?, activation_params?}
    mdoc.matmul(a, b, bias?, residual?)     {scale?, activation?, activation_params?}

Why ops: the tail a kernel applies in its register tile before the store (saving a pass
over the output per tail op) is a decision the IR shows, prints, exports and explains,
and the backend reads it from the op instead of looking ahead in the graph.

Semantics (the order the kernels apply them, `cpu_kernels.Epilogue`):

- conv: y = act(Conv(x, w, b) + residual), Conv with ONNX's attributes and meaning.
- matmul: y = act(MatMul(a, b) * scale + bias + residual); bias is a vector over the
  last axis, residual has the result's shape (no broadcasting).
- act is `activation` (a name of `mdoc.activations.ACTIVATIONS`) with its parameters
  `activation_params` (Clip's min and max, LeakyRelu's alpha, HardSigmoid's alpha and beta);
  no activation attribute: none.

Export: onnxruntime's contrib ops when asked (`runtime_ops`) and they can say it
(com.microsoft.FusedConv: Relu, Tanh, Sigmoid, LeakyRelu, Clip, HardSigmoid, its Z input
the residual; com.microsoft.FusedMatMul for the product and its scale; BiasGelu / FastGelu /
Gelu for a matmul's GELU with its bias), else the expansion:
Conv / MatMul then Mul, Add, Add and the activation's ONNX op.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from .activations import applied_from_attrs, check_attrs
from .ops import OpDef, define_op
from .types import TensorType

MS = "com.microsoft"
CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
_ACT_ATTRS = {"activation": (str, bytes), "activation_params": list}
# FusedConv's activation names (onnxruntime's MLAS activations) for mdoc's
_ORT_ACTIVATIONS = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "leaky_relu": "LeakyRelu", "clip": "Clip",
                    "hardsigmoid": "HardSigmoid"}


def _shape(v):
    t = v.type if v is not None else None
    return tuple(t.shape) if isinstance(t, TensorType) and t.shape is not None else None


def _f32_operands(node, names) -> str | None:
    for i, v in enumerate(node.inputs):
        if v is not None and isinstance(v.type, TensorType) and v.type.dtype.numpy != np.float32:
            return f"operand {i} ({names[i]}) has type {v.type.dtype.text}; fused products are float32"
    return None


def _residual_shape(node, i: int) -> str | None:
    res, out = _shape(node.input(i)), _shape(node.outputs[0])
    if res is not None and out is not None and res != out:
        return f"residual has shape {list(res)}, the result {list(out)}; they must be equal"
    return None


# -- the activation, shared ----------------------------------------------------------------
def _activate(node, y: np.ndarray) -> np.ndarray:
    act = applied_from_attrs(node.attrs)
    return y if act is None else act(y)


def _export_activation(node, e, x: str, out: list[str] | int) -> str:
    """The activation of `node` applied to `x`, written as ONNX into `out` (Identity when none); its name."""
    act = applied_from_attrs(node.attrs)
    dtype = np.float32
    if act is None:
        return e.emit("Identity", [x], out)[0]
    name, params = act.name, act.params
    simple = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "hardswish": "HardSwish"}
    if name in simple:
        return e.emit(simple[name], [x], out)[0]
    if name == "silu":
        return e.emit("Mul", [x, e.emit("Sigmoid", [x])[0]], out)[0]
    if name == "clip":
        return e.emit("Clip", [x, e.const(params[0], dtype), e.const(params[1], dtype)], out)[0]
    if name == "leaky_relu":
        return e.emit("LeakyRelu", [x], out, alpha=params[0])[0]
    if name == "hardsigmoid":
        return e.emit("HardSigmoid", [x], out, alpha=params[0], beta=params[1])[0]
    if e.opset >= 20:
        return e.emit("Gelu", [x], out, approximate="none" if name == "gelu" else "tanh")[0]
    if name == "gelu":  # 0.5 x (1 + erf(x / sqrt 2))
        (phi,) = e.emit("Erf", e.emit("Mul", [x, e.const(1.0 / math.sqrt(2.0), dtype)]))
    else:  # gelu_tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        (cube,) = e.emit("Mul", [e.emit("Mul", [x, x])[0], x])
        (inner,) = e.emit("Add", [x, e.emit("Mul", [cube, e.const(0.044715, dtype)])[0]])
        (phi,) = e.emit("Tanh", e.emit("Mul", [inner, e.const(math.sqrt(2.0 / math.pi), dtype)]))
    (half,) = e.emit("Mul", [x, e.const(0.5, dtype)])
    return e.emit("Mul", [half, e.emit("Add", [phi, e.const(1.0, dtype)])[0]], out)[0]


def _tail(node, e, y: str, parts: list[tuple[str, str]]) -> None:
    """Write `parts` ((op, operand) applied to y in order) and the activation, the last into the outputs."""
    act = applied_from_attrs(node.attrs)
    for k, (op, operand) in enumerate(parts):
        last = k == len(parts) - 1 and act is None
        (y,) = e.emit(op, [y, operand], e.outputs if last else 1)
    if act is not None or not parts:
        _export_activation(node, e, y, e.outputs)


# -- mdoc.conv -----------------------------------------------------------------------------
def _check_conv(node) -> str | None:
    return (_f32_operands(node, ("x", "w", "b", "residual")) or check_attrs(node.attrs)
            or _residual_shape(node, 3))


def _conv_proto_attrs(node) -> dict:
    return {k: v for k, v in node.attrs.items() if k in CONV_ATTRS}


def _eval_conv(node, arrays):
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    x, w, b, residual = (list(arrays) + [None, None])[:4]
    names = ["x", "w"] + (["b"] if b is not None else [])
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in _conv_proto_attrs(node).items()}
    conv = helper.make_node("Conv", names, ["y"], **attrs)
    graph = helper.make_graph([conv], "conv", [helper.make_tensor_value_info(n, 1, None) for n in names],
                              [helper.make_tensor_value_info("y", 1, None)])
    feeds = dict(zip(names, [x, w] + ([b] if b is not None else [])))
    (y,) = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])).run(None, feeds)
    y = y.astype(np.float64)
    if residual is not None:
        y = y + residual
    return [_activate(node, y).astype(np.float32)]


def _export_conv(node, e) -> None:
    x, w, b, residual = (e.inputs + ["", ""])[:4]
    act = applied_from_attrs(node.attrs)
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in _conv_proto_attrs(node).items()}
    if e.runtime_ops and (act is None or act.name in _ORT_ACTIVATIONS):
        extra = {"activation": _ORT_ACTIVATIONS[act.name]} if act is not None else {"activation": "Identity"}
        if act is not None and act.params:
            extra["activation_params"] = [float(p) for p in act.params]
        inputs = [x, w, b, residual] if residual else ([x, w, b] if b else [x, w])
        e.emit("FusedConv", inputs, e.outputs, domain=MS, **attrs, **extra)
        return
    (y,) = e.emit("Conv", [x, w, b] if b else [x, w], 1 if (residual or act is not None) else e.outputs, **attrs)
    if residual or act is not None:
        _tail(node, e, y, [("Add", residual)] if residual else [])


CONV = define_op(OpDef(
    "mdoc.conv", "act(Conv(x, w, b) + residual): a convolution with its fused elementwise tail",
    inputs=(2, 4), outputs=(1, 1),
    attrs={"auto_pad": (str, bytes), "dilations": list, "group": int, "kernel_shape": list, "pads": list,
           "strides": list, **_ACT_ATTRS},
    check=_check_conv, evaluate=_eval_conv, export=_export_conv))


# -- mdoc.matmul ---------------------------------------------------------------------------
def _check_matmul(node) -> str | None:
    reason = _f32_operands(node, ("a", "b", "bias", "residual")) or check_attrs(node.attrs) or _residual_shape(node, 3)
    if reason:
        return reason
    bias, out = _shape(node.input(2)), _shape(node.outputs[0])
    if bias is not None and out is not None and (len(bias) != 1 or bias[0] != out[-1]):
        return f"bias has shape {list(bias)}; it must be a vector over the last axis ({out[-1]})"
    return None


def _eval_matmul(node, arrays):
    a, b, bias, residual = (list(arrays) + [None, None])[:4]
    y = np.matmul(a.astype(np.float64), b.astype(np.float64))
    if "scale" in node.attrs:
        y = y * float(node.attrs["scale"])
    for extra in (bias, residual):
        if extra is not None:
            y = y + extra
    return [_activate(node, y).astype(np.float32)]


def _export_matmul(node, e) -> None:
    a, b, bias, residual = (e.inputs + ["", ""])[:4]
    scale = node.attrs.get("scale")
    fused_scale = scale is not None and e.runtime_ops  # onnxruntime's FusedMatMul takes it as alpha
    parts = [("Add", v) for v in (bias, residual) if v]
    if scale is not None and not fused_scale:
        parts.insert(0, ("Mul", e.const(float(scale), np.float32)))
    done = not parts and applied_from_attrs(node.attrs) is None  # the product is the node's output
    if fused_scale:
        (y,) = e.emit("FusedMatMul", [a, b], e.outputs if done else 1, domain=MS, alpha=float(scale))
    else:
        (y,) = e.emit("MatMul", [a, b], e.outputs if done else 1)
    if done:
        return
    act = applied_from_attrs(node.attrs)
    if e.runtime_ops and act is not None and act.name in ("gelu", "gelu_tanh") and not residual:
        # onnxruntime's GELUs take the bias: BiasGelu (erf) or FastGelu (tanh)
        parts = [p for p in parts if p[1] != bias]
        for k, (op, operand) in enumerate(parts):
            (y,) = e.emit(op, [y, operand])
        inputs = [y, bias] if bias else [y]
        op = "FastGelu" if act.name == "gelu_tanh" else ("BiasGelu" if bias else "Gelu")
        e.emit(op, inputs, e.outputs, domain=MS)
        return
    _tail(node, e, y, parts)


MATMUL = define_op(OpDef(
    "mdoc.matmul", "act(MatMul(a, b) * scale + bias + residual): a matrix product with its fused elementwise tail",
    inputs=(2, 4), outputs=(1, 1), attrs={"scale": (float, int), **_ACT_ATTRS},
    check=_check_matmul, evaluate=_eval_matmul, export=_export_matmul))


# -- mdoc.inverted_residual ----------------------------------------------------------------
# operands: x, then (weight, bias?) of the expand, depthwise and project convs, then the residual
IR_OPERANDS = ("x", "expand_weight", "expand_bias", "dw_weight", "dw_bias", "weight", "bias", "residual")
IR_STAGES = ("expand", "dw", "project")


def ir_conv_attrs(node, stage: str) -> dict:
    """The ONNX Conv attributes of one of the block's convs."""
    w = node.input(1 + 2 * IR_STAGES.index(stage))
    attrs = {"kernel_shape": [int(d) for d in w.type.shape[2:]]} if _shape(w) else {}
    if stage == "dw":
        attrs["group"] = int(_shape(w)[0]) if _shape(w) else 1
    for key in ("strides", "pads"):
        name = key if stage == "dw" else f"{stage}_{key}"
        if name in node.attrs:
            attrs[key] = list(node.attrs[name])
    return attrs


def ir_activation_attrs(node, stage: str) -> dict:
    """One conv's `activation` / `activation_params` (as an mdoc.conv holds them)."""
    return {k: node.attrs[f"{stage}_{k}"] for k in ("activation", "activation_params") if f"{stage}_{k}" in node.attrs}


def _check_inverted_residual(node) -> str | None:
    reason = _f32_operands(node, IR_OPERANDS) or _residual_shape(node, 7)
    for stage in IR_STAGES:
        reason = reason or check_attrs(ir_activation_attrs(node, stage))
    return reason


def _eval_inverted_residual(node, arrays):
    arrays = list(arrays) + [None] * (8 - len(arrays))
    y = arrays[0]
    for k, stage in enumerate(IR_STAGES):
        conv = SimpleNamespace(attrs={**ir_conv_attrs(node, stage), **ir_activation_attrs(node, stage)})
        residual = arrays[7] if stage == "project" else None
        (y,) = _eval_conv(conv, [y, arrays[1 + 2 * k], arrays[2 + 2 * k], residual])
    return [y]


def _export_inverted_residual(node, e) -> None:
    names = (e.inputs + [""] * 8)[:8]
    y = names[0]
    for k, stage in enumerate(IR_STAGES):
        attrs = ir_conv_attrs(node, stage)
        act = applied_from_attrs(ir_activation_attrs(node, stage))
        residual = names[7] if stage == "project" else ""
        last = stage == "project"
        w, b = names[1 + 2 * k], names[2 + 2 * k]
        done = not residual and act is None
        (y,) = e.emit("Conv", [y, w, b] if b else [y, w], e.outputs if last and done else 1, **attrs)
        if residual:
            (y,) = e.emit("Add", [y, residual], e.outputs if last and act is None else 1)
        if act is not None:
            y = _export_activation(SimpleNamespace(attrs=ir_activation_attrs(node, stage)), e, y,
                                   e.outputs if last else 1)


INVERTED_RESIDUAL = define_op(OpDef(
    "mdoc.inverted_residual",
    "a conv, a depthwise conv and a 1x1 conv, each with its activation, the last with a residual: one kernel",
    inputs=(4, 8), outputs=(1, 1),
    attrs={"expand_strides": list, "expand_pads": list, "strides": list, "pads": list,
           **{f"{s}_{k}": t for s in IR_STAGES for k, t in _ACT_ATTRS.items()}},
    check=_check_inverted_residual, evaluate=_eval_inverted_residual, export=_export_inverted_residual))
