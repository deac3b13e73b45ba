"""mdoc's transformer ops (and SiLU): what the fuse-* passes produce and the backend translates one to one.

    mdoc.layer_norm(x, gamma, beta?)                   {axis = -1, epsilon = 1e-05}
    mdoc.skip_layer_norm(x, skip, gamma, beta?, bias?) {epsilon = 1e-05}   -> (y, sum?)
    mdoc.gelu(x, bias?)                                {approximate = "none" | "tanh"}
    mdoc.attention(q, k, v, mask?)                     {num_heads = H, scale = s}
    mdoc.silu(x)
    mdoc.rms_norm(x, gamma)                            {epsilon = 1e-06}

Why ops and not a backend pattern: a fusion that the IR shows can be printed,
tested as golden IR, exported and explained (`mdoc opt --trace-rewrites`), and
every backend reads one op instead of re-finding nine.

Semantics (each op's `evaluate` is the numpy reference, and the export rule
writes the same computation as ONNX):

- layer_norm normalizes over the axes from `axis` to the last (ONNX
  LayerNormalization): (x - mean) / sqrt(var + epsilon) * gamma + beta.
- skip_layer_norm is layer_norm over the last axis of s = x + skip (+ bias);
  its optional second result is s itself, for models that read the residual
  sum again (onnxruntime's SkipLayerNormalization, output 3).
- gelu is x * Phi(x) of z = x (+ bias): exact (erf) or the tanh approximation.
- attention is multi-head scaled dot-product attention on merged heads:
  q [B, Sq, H*D], k [B, Sk, H*D], v [B, Sk, H*Dv] are split into `num_heads`
  heads, softmax(q k^T * scale + mask) v is computed per head (mask additive,
  broadcast to [B, H, Sq, Sk]), and the heads are merged back: [B, Sq, H*Dv].
- silu is x * sigmoid(x) (exported as that: ONNX's Swish needs opset 24).
- rms_norm is x / sqrt(mean(x^2) + epsilon) * gamma over the last axis (LLaMA's RMSNorm;
  RMSNormalization from opset 23, SimplifiedLayerNormalization under runtime_ops).

Export: the standard ONNX op where the model's opset has one
(LayerNormalization >= 17, Gelu >= 20, Attention >= 23), onnxruntime's contrib
op when asked (`runtime_ops`: SkipLayerNormalization, Gelu/BiasGelu/FastGelu,
MultiHeadAttention, domain com.microsoft), else the primitive expansion.
"""

from __future__ import annotations

import math

import numpy as np

from .ops import OpDef, define_op
from .types import TensorType

MS = "com.microsoft"
_ERF = np.frompyfunc(math.erf, 1, 1)


# -- shared pieces -----------------------------------------------------------------------
def _shape(v):
    t = v.type if v is not None else None
    return tuple(t.shape) if isinstance(t, TensorType) and t.shape is not None else None


def _dtype(node, i: int = 0):
    t = node.inputs[i].type
    return t.dtype.numpy if isinstance(t, TensorType) else np.dtype(np.float32)


def _float_operands(node, names: tuple[str, ...]) -> str | None:
    """The operands present must be floating point tensors of one dtype."""
    first = None
    for i, v in enumerate(node.inputs):
        if v is None or not isinstance(v.type, TensorType):
            continue
        if not v.type.dtype.is_float:
            return f"operand {i} ({names[min(i, len(names) - 1)]}) has type {v.type.dtype.text}; it must be a float"
        if first is None:
            first = v.type.dtype
        elif v.type.dtype is not first:
            return f"operand {i} ({names[min(i, len(names) - 1)]}) has type {v.type.dtype.text}, not {first.text}"
    return None


def _vector_over_last(node, i: int, name: str, axis_len) -> str | None:
    shape = _shape(node.input(i))
    if shape is None or not isinstance(axis_len, int):
        return None
    if not shape or shape[-1] != axis_len or any(d != 1 for d in shape[:-1] if isinstance(d, int)):
        return f"{name} has shape {list(shape)}; it must be a vector over the last axis ({axis_len})"
    return None


def _normalize(x: np.ndarray, axes: tuple[int, ...], epsilon: float) -> np.ndarray:
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x64 - mean) / np.sqrt(var + epsilon)


def _layer_norm_onnx(e, x: str, gamma: str, beta: str, axis: int, rank: int | None, epsilon: float,
                     out: list[str], dtype) -> None:
    """LayerNormalization (opset >= 17, or any opset in onnxruntime, which defines it from opset 1 on),
    else ReduceMean/Sub/Mul/ReduceMean/Add/Sqrt/Div/Mul/Add."""
    if e.opset >= 17 or e.runtime_ops:
        e.emit("LayerNormalization", [x, gamma] + ([beta] if beta else []), out, axis=axis, epsilon=float(epsilon))
        return
    axes = [-1] if rank is None else list(range(axis % rank, rank))  # the verifier wants the rank for axis != -1
    (mean,) = e.emit("ReduceMean", [x], axes=axes, keepdims=1)
    (d,) = e.emit("Sub", [x, mean])
    (var,) = e.emit("ReduceMean", e.emit("Mul", [d, d]), axes=axes, keepdims=1)
    (std,) = e.emit("Sqrt", e.emit("Add", [var, e.const(epsilon, dtype)]))
    (scaled,) = e.emit("Mul", [e.emit("Div", [d, std])[0], gamma])
    if beta:
        e.emit("Add", [scaled, beta], out)
    else:
        e.emit("Identity", [scaled], out)


# -- mdoc.layer_norm -------------------------------------------------------------------
def _check_layer_norm(node) -> str | None:
    reason = _float_operands(node, ("x", "gamma", "beta"))
    if reason:
        return reason
    shape = _shape(node.inputs[0])
    axis = int(node.attrs.get("axis", -1))
    if shape is not None and not -len(shape) <= axis < len(shape):
        return f"axis {axis} is out of range for x of rank {len(shape)}"
    if shape is None and axis != -1:
        return f"axis {axis} needs x's rank to be known"
    if shape is not None and axis in (-1, len(shape) - 1):
        for i, name in ((1, "gamma"), (2, "beta")):
            if node.input(i) is not None and (reason := _vector_over_last(node, i, name, shape[-1])):
                return reason
    return None


def _eval_layer_norm(node, arrays):
    x, gamma, beta = (list(arrays) + [None, None])[:3]
    axis = int(node.attrs.get("axis", -1)) % x.ndim
    y = _normalize(x, tuple(range(axis, x.ndim)), float(node.attrs.get("epsilon", 1e-5))) * gamma
    if beta is not None:
        y = y + beta
    return [y.astype(x.dtype)]


def _export_layer_norm(node, e) -> None:
    shape = _shape(node.inputs[0])
    x, gamma, beta = (e.inputs + ["", ""])[:3]
    _layer_norm_onnx(e, x, gamma, beta, int(node.attrs.get("axis", -1)), len(shape) if shape else None,
                     float(node.attrs.get("epsilon", 1e-5)), e.outputs, _dtype(node))


LAYER_NORM = define_op(OpDef(
    "mdoc.layer_norm", "LayerNorm over the axes from `axis` on: (x - mean) / sqrt(var + epsilon) * gamma + beta",
    inputs=(2, 3), outputs=(1, 1), attrs={"axis": int, "epsilon": (float, int)},
    check=_check_layer_norm, evaluate=_eval_layer_norm, export=_export_layer_norm))


# -- mdoc.skip_layer_norm --------------------------------------------------------------
def _check_skip_layer_norm(node) -> str | None:
    reason = _float_operands(node, ("x", "skip", "gamma", "beta", "bias"))
    if reason:
        return reason
    shape = _shape(node.inputs[0])
    if shape is not None and shape:
        for i, name in ((2, "gamma"), (3, "beta"), (4, "bias")):
            if node.input(i) is not None and (reason := _vector_over_last(node, i, name, shape[-1])):
                return reason
    return None


def _eval_skip_layer_norm(node, arrays):
    x, skip, gamma, beta, bias = (list(arrays) + [None] * 3)[:5]
    s = x + skip if bias is None else x + skip + bias
    y = _normalize(s, (s.ndim - 1,), float(node.attrs.get("epsilon", 1e-5))) * gamma
    if beta is not None:
        y = y + beta
    return [y.astype(x.dtype), s.astype(x.dtype)][:len(node.outputs)]


def _export_skip_layer_norm(node, e) -> None:
    x, skip, gamma, beta, bias = (e.inputs + [""] * 3)[:5]
    eps = float(node.attrs.get("epsilon", 1e-5))
    if e.runtime_ops:
        outs = e.outputs[:1] + (["", "", e.outputs[1]] if len(e.outputs) > 1 else [])
        e.emit("SkipLayerNormalization", [x, skip, gamma, beta, bias], outs, domain=MS, epsilon=eps)
        return
    total = e.outputs[1:2] or 1  # the sum keeps its name when the model reads it
    (s,) = e.emit("Add", [x, skip], 1 if bias else total)
    if bias:
        (s,) = e.emit("Add", [s, bias], total)
    shape = _shape(node.inputs[0])
    _layer_norm_onnx(e, s, gamma, beta, -1, len(shape) if shape else None, eps, e.outputs[:1], _dtype(node))


SKIP_LAYER_NORM = define_op(OpDef(
    "mdoc.skip_layer_norm", "LayerNorm over the last axis of x + skip (+ bias); result 1 is that sum",
    inputs=(3, 5), outputs=(1, 2), attrs={"epsilon": (float, int)},
    check=_check_skip_layer_norm, evaluate=_eval_skip_layer_norm, export=_export_skip_layer_norm))


# -- mdoc.gelu -------------------------------------------------------------------------
GELU_MODES = ("none", "tanh")
TANH_C = math.sqrt(2.0 / math.pi)


def _mode(node) -> str:
    mode = node.attrs.get("approximate", "none")
    return mode.decode() if isinstance(mode, bytes) else str(mode)


def _check_gelu(node) -> str | None:
    if _mode(node) not in GELU_MODES:
        return f"approximate = '{_mode(node)}'; it must be 'none' or 'tanh'"
    reason = _float_operands(node, ("x", "bias"))
    if reason:
        return reason
    shape = _shape(node.inputs[0])
    if node.input(1) is not None and shape:
        return _vector_over_last(node, 1, "bias", shape[-1])
    return None


def _eval_gelu(node, arrays):
    x = arrays[0]
    z = x.astype(np.float64) if arrays[1:] == [] or arrays[1] is None else x.astype(np.float64) + arrays[1]
    if _mode(node) == "tanh":
        y = 0.5 * z * (1.0 + np.tanh(TANH_C * (z + 0.044715 * z ** 3)))
    else:
        y = 0.5 * z * (1.0 + _ERF(z / math.sqrt(2.0)).astype(np.float64))
    return [y.astype(x.dtype)]


def _export_gelu(node, e) -> None:
    x, bias = (e.inputs + [""])[:2]
    mode, dtype = _mode(node), _dtype(node)
    if e.runtime_ops:
        if mode == "tanh":
            e.emit("FastGelu", [x, bias] if bias else [x], e.outputs, domain=MS)
        elif bias:
            e.emit("BiasGelu", [x, bias], e.outputs, domain=MS)
        else:
            e.emit("Gelu", [x], e.outputs, domain=MS)
        return
    z = e.emit("Add", [x, bias])[0] if bias else x
    if e.opset >= 20:
        e.emit("Gelu", [z], e.outputs, approximate=mode)
        return
    if mode == "tanh":  # 0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))
        (cube,) = e.emit("Mul", [e.emit("Mul", [z, z])[0], z])
        (inner,) = e.emit("Add", [z, e.emit("Mul", [cube, e.const(0.044715, dtype)])[0]])
        (phi,) = e.emit("Tanh", e.emit("Mul", [inner, e.const(TANH_C, dtype)]))
    else:  # 0.5 z (1 + erf(z / sqrt 2))
        (phi,) = e.emit("Erf", e.emit("Mul", [z, e.const(1.0 / math.sqrt(2.0), dtype)]))
    (half,) = e.emit("Mul", [z, e.const(0.5, dtype)])
    e.emit("Mul", [half, e.emit("Add", [phi, e.const(1.0, dtype)])[0]], e.outputs)


GELU = define_op(OpDef(
    "mdoc.gelu", "GELU of x (+ bias): exact (erf) or the tanh approximation",
    inputs=(1, 2), outputs=(1, 1), attrs={"approximate": (str, bytes)},
    check=_check_gelu, evaluate=_eval_gelu, export=_export_gelu))


# -- mdoc.attention --------------------------------------------------------------------
def _check_attention(node) -> str | None:
    heads = node.attrs.get("num_heads")
    if not isinstance(heads, int) or heads < 1:
        return f"num_heads = {heads!r}; it must be a positive int"
    reason = _float_operands(node, ("q", "k", "v", "mask"))
    if reason:
        return reason
    shapes = [_shape(node.input(i)) for i in range(3)]
    for name, shape in zip("qkv", shapes):
        if shape is None:
            continue
        if len(shape) != 3:
            return f"{name} has rank {len(shape)}; attention takes [batch, seq, heads * head_dim]"
        if isinstance(shape[-1], int) and shape[-1] % heads:
            return f"{name}'s last dim {shape[-1]} is not a multiple of num_heads = {heads}"
    q, k, v = shapes
    if q and k and all(isinstance(d, int) for d in (q[-1], k[-1])) and q[-1] != k[-1]:
        return f"q's last dim {q[-1]} differs from k's {k[-1]}"
    if k and v and all(isinstance(d, int) for d in (k[1], v[1])) and k[1] != v[1]:
        return f"k has {k[1]} positions and v {v[1]}"
    mask = _shape(node.input(3))
    if mask is not None and len(mask) > 4:
        return f"mask has rank {len(mask)}; it must broadcast to [batch, heads, q_seq, k_seq]"
    return None


def _eval_attention(node, arrays):
    q, k, v = arrays[:3]
    mask = arrays[3] if len(arrays) > 3 else None
    h = int(node.attrs["num_heads"])

    def heads(t):  # [B, S, H*D] -> [B, H, S, D]
        b, s, hd = t.shape
        return t.astype(np.float64).reshape(b, s, h, hd // h).transpose(0, 2, 1, 3)

    scores = heads(q) @ heads(k).transpose(0, 1, 3, 2) * float(node.attrs["scale"])
    if mask is not None:
        scores = scores + mask
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = scores / scores.sum(axis=-1, keepdims=True)
    out = (probs @ heads(v)).transpose(0, 2, 1, 3)
    return [out.reshape(out.shape[0], out.shape[1], -1).astype(q.dtype)]


def _export_attention(node, e) -> None:
    q, k, v, mask = (e.inputs + [""])[:4]
    heads, scale, dtype = int(node.attrs["num_heads"]), float(node.attrs["scale"]), _dtype(node)
    if e.runtime_ops or e.opset >= 23:
        bias = _full_mask(node, e, mask, q, k) if mask else ""
        if e.runtime_ops:
            e.emit("MultiHeadAttention", [q, k, v, "", "", bias] if bias else [q, k, v], e.outputs, domain=MS,
                   num_heads=heads, scale=scale)
        else:
            e.emit("Attention", [q, k, v, bias] if bias else [q, k, v], e.outputs, q_num_heads=heads,
                   kv_num_heads=heads, scale=scale)
        return
    split = e.const([0, 0, heads, -1], np.int64)

    def to_heads(t, perm):
        return e.emit("Transpose", e.emit("Reshape", [t, split]), perm=perm)[0]

    (scores,) = e.emit("MatMul", [to_heads(q, [0, 2, 1, 3]), to_heads(k, [0, 2, 3, 1])])
    (scores,) = e.emit("Mul", [scores, e.const(scale, dtype)])
    if mask:
        (scores,) = e.emit("Add", [scores, mask])
    (probs,) = e.emit("Softmax", [scores], axis=3)
    (ctx,) = e.emit("Transpose", e.emit("MatMul", [probs, to_heads(v, [0, 2, 1, 3])]), perm=[0, 2, 1, 3])
    e.emit("Reshape", [ctx, e.const([0, 0, -1], np.int64)], e.outputs)


def _full_mask(node, e, mask: str, q: str, k: str) -> str:
    """onnxruntime's MultiHeadAttention and Attention broadcast a mask over batch and heads only (ONNX's
    Attention allows more): give it rank 4 and expand its query and key axes first."""
    shape = _shape(node.input(3))
    rank = len(shape) if shape is not None else 4
    if rank < 4:
        (mask,) = e.emit("Unsqueeze", [mask, e.const(list(range(4 - rank)), np.int64)])
    if shape is not None and len(shape) == 4 and _shape(node.inputs[0]) is not None:
        q_len, k_len = _shape(node.inputs[0])[1], _shape(node.inputs[1])[1]
        if shape[2] == q_len and shape[3] == k_len and isinstance(q_len, int) and isinstance(k_len, int):
            return mask
    pieces = [e.emit("Slice", [e.emit("Shape", [mask])[0], e.const([0], np.int64), e.const([2], np.int64)])[0]]
    for t in (q, k):
        pieces.append(e.emit("Slice", [e.emit("Shape", [t])[0], e.const([1], np.int64), e.const([2], np.int64)])[0])
    return e.emit("Expand", [mask, e.emit("Concat", pieces, axis=0)[0]])[0]


ATTENTION = define_op(OpDef(
    "mdoc.attention", "multi-head softmax(q k^T * scale + mask) v on merged heads [batch, seq, heads * dim]",
    inputs=(3, 4), outputs=(1, 1), attrs={"num_heads": int, "scale": (float, int)}, required=("num_heads", "scale"),
    check=_check_attention, evaluate=_eval_attention, export=_export_attention))


# -- mdoc.silu -------------------------------------------------------------------------
def _eval_silu(node, arrays):
    x = arrays[0].astype(np.float64)
    return [(x / (1.0 + np.exp(-x))).astype(arrays[0].dtype)]


def _export_silu(node, e) -> None:
    (s,) = e.emit("Sigmoid", [e.inputs[0]])
    e.emit("Mul", [e.inputs[0], s], e.outputs)


SILU = define_op(OpDef(
    "mdoc.silu", "SiLU (swish): x * sigmoid(x)", inputs=(1, 1), outputs=(1, 1),
    check=lambda node: _float_operands(node, ("x",)), evaluate=_eval_silu, export=_export_silu))


# -- mdoc.rms_norm ---------------------------------------------------------------------
def _check_rms_norm(node) -> str | None:
    reason = _float_operands(node, ("x", "gamma"))
    if reason:
        return reason
    shape = _shape(node.inputs[0])
    if shape is not None and (reason := _vector_over_last(node, 1, "gamma", shape[-1])):
        return reason
    return None


def _eval_rms_norm(node, arrays):
    x, gamma = arrays
    x64 = x.astype(np.float64)
    ms = (x64 * x64).mean(axis=-1, keepdims=True)
    return [(x64 / np.sqrt(ms + float(node.attrs.get("epsilon", 1e-6))) * gamma).astype(x.dtype)]


def _export_rms_norm(node, e) -> None:
    x, gamma = e.inputs[:2]
    eps = float(node.attrs.get("epsilon", 1e-6))
    if e.opset >= 23:
        e.emit("RMSNormalization", [x, gamma], e.outputs, axis=-1, epsilon=eps)
    elif e.runtime_ops:
        e.emit("SimplifiedLayerNormalization", [x, gamma], e.outputs, axis=-1, epsilon=eps)
    else:
        (sq,) = e.emit("Mul", [x, x])
        (ms,) = (e.emit("ReduceMean", [sq, e.const([-1], np.int64)], keepdims=1) if e.opset >= 18
                 else e.emit("ReduceMean", [sq], axes=[-1], keepdims=1))
        (inv,) = e.emit("Reciprocal", e.emit("Sqrt", e.emit("Add", [ms, e.const(eps, _dtype(node))])))
        e.emit("Mul", [e.emit("Mul", [x, inv])[0], gamma], e.outputs)


RMS_NORM = define_op(OpDef(
    "mdoc.rms_norm", "RMSNorm over the last axis: x / sqrt(mean(x^2) + epsilon) * gamma",
    inputs=(2, 2), outputs=(1, 1), attrs={"epsilon": (float, int)},
    check=_check_rms_norm, evaluate=_eval_rms_norm, export=_export_rms_norm))
