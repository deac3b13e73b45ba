"""mdoc's quantized products: an int8 conv or matmul with its scales, tail and requantization.

    mdoc.qconv(x, x_scale, x_zero_point?, w, w_scale, w_zero_point?, bias?, residual?, y_scale?, y_zero_point?)
        {Conv's attributes, activation?, activation_params?}
    mdoc.qmatmul(a, a_scale, a_zero_point?, b, b_scale, b_zero_point?, bias?, residual?, y_scale?, y_zero_point?)
        {activation?, activation_params?}

Why ops: a QDQ model says "dequantize, compute in float, quantize"; an integer kernel
computes u8 x s8 -> s32 and applies the scales once on the accumulator. `fuse-quantized`
(passes/fuse_quantized.py) writes that decision into the IR, where `mdoc print` shows it
and the backend reads it without looking at neighbours; QLinearConv, QLinearMatMul and
onnxruntime's dynamic MatMulInteger blocks import onto the same two ops.

Semantics, exactly DequantizeLinear -> Conv / MatMul -> tail -> QuantizeLinear:

    xf = (x - x_zero_point) * x_scale                  per tensor (a scalar scale and zero point)
    wf = (w - w_zero_point) * w_scale                  per tensor or per output channel
                                                       (qconv: w's axis 0; qmatmul: b is [K, N], axis 1)
    t  = act(Conv(xf, wf) + bias + residual)           bias float32 per output channel, residual float32
                                                       of the result's shape, act of `mdoc.activations`
    y  = saturate(round(t / y_scale) + y_zero_point)   when y_scale is given (the result is u8 / s8,
                                                       the type of y_zero_point), else y = t (float32)

x is uint8 or int8, w int8 (constant); a's scale and zero point may be computed at run time
(dynamic quantization: DynamicQuantizeLinear's results). Export writes the expansion back
(DequantizeLinear, Conv / MatMul, Add, the activation, QuantizeLinear), which onnxruntime
reads as its own QDQ form.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from .activations import check_attrs
from .fused_ops import CONV_ATTRS, _activate, _eval_conv, _export_activation, applied_from_attrs
from .ops import OpDef, define_op
from .types import TensorType

# operand positions, shared by both ops
X, X_SCALE, X_ZP, W, W_SCALE, W_ZP, BIAS, RESIDUAL, Y_SCALE, Y_ZP = range(10)
OPERANDS = ("x", "x_scale", "x_zero_point", "w", "w_scale", "w_zero_point", "bias", "residual", "y_scale",
            "y_zero_point")
_ACT_ATTRS = {"activation": (str, bytes), "activation_params": list}


def weight_axis(op: str) -> int:
    """The axis of w that w_scale runs along when it is per channel."""
    return 0 if op == "mdoc.qconv" else 1


def _dtype(v):
    t = v.type if v is not None else None
    return t.dtype.numpy if isinstance(t, TensorType) else None


def _shape(v):
    t = v.type if v is not None else None
    return tuple(t.shape) if isinstance(t, TensorType) and t.shape is not None else None


def _check(node) -> str | None:
    x, w = node.input(X), node.input(W)
    if _dtype(x) not in (None, np.dtype(np.uint8), np.dtype(np.int8)):
        return f"operand 0 (x) has type {x.type.dtype.text}; quantized products read uint8 or int8"
    if _dtype(w) not in (None, np.dtype(np.int8)):
        return f"operand 3 (w) has type {w.type.dtype.text}; quantized weights are int8"
    for i in (X_SCALE, Y_SCALE):
        if node.input(i) is not None and _shape(node.input(i)) not in (None, (), (1,)):
            return f"operand {i} ({OPERANDS[i]}) has shape {list(_shape(node.input(i)))}; it must be a scalar"
    for i in (BIAS, RESIDUAL):
        if node.input(i) is not None and _dtype(node.input(i)) not in (None, np.dtype(np.float32)):
            return f"operand {i} ({OPERANDS[i]}) has type {node.input(i).type.dtype.text}; it must be float32"
    if (node.input(Y_SCALE) is None) != (node.input(Y_ZP) is None):
        return "y_scale and y_zero_point are given together (requantization) or not at all"
    out = node.outputs[0].type
    want = _dtype(node.input(Y_ZP)) if node.input(Y_ZP) is not None else np.dtype(np.float32)
    if isinstance(out, TensorType) and want is not None and out.dtype.numpy != want:
        return f"the result has type {out.dtype.text}; it must be {np.dtype(want).name}"
    res, shape = _shape(node.input(RESIDUAL)), _shape(node.outputs[0])
    if res is not None and shape is not None and res != shape:
        return f"residual has shape {list(res)}, the result {list(shape)}; they must be equal"
    return check_attrs(node.attrs)


def _dequantized(q, scale, zero, axis: int | None) -> np.ndarray:
    """(q - zero) * scale in float64; scale and zero point per tensor, or per index of `axis`."""
    def place(p):
        p = np.asarray(0 if p is None else p, np.float64)
        if p.size == 1:
            return p.reshape(())
        shape = [1] * q.ndim
        shape[axis] = -1
        return p.reshape(shape)
    return (q.astype(np.float64) - place(zero)) * place(scale)


def requantize(t: np.ndarray, y_scale, y_zero_point) -> np.ndarray:
    """QuantizeLinear of `t`: round half to even, saturate to y_zero_point's type."""
    info = np.iinfo(np.asarray(y_zero_point).dtype)
    q = np.rint(t / float(np.asarray(y_scale).reshape(()))) + int(np.asarray(y_zero_point).reshape(()))
    return np.clip(q, info.min, info.max).astype(np.asarray(y_zero_point).dtype)


def _finish(node, t: np.ndarray, arrays) -> list[np.ndarray]:
    if arrays[Y_SCALE] is None:
        return [t.astype(np.float32)]
    return [requantize(t, arrays[Y_SCALE], arrays[Y_ZP])]


def _operands(arrays) -> list:
    return list(arrays) + [None] * (10 - len(arrays))


def _eval_qconv(node, arrays):
    a = _operands(arrays)
    xf = _dequantized(a[X], a[X_SCALE], a[X_ZP], None).astype(np.float32)
    wf = _dequantized(a[W], a[W_SCALE], a[W_ZP], 0).astype(np.float32)
    conv = SimpleNamespace(attrs={k: v for k, v in node.attrs.items() if k in CONV_ATTRS or k.startswith("activation")})
    (t,) = _eval_conv(conv, [xf, wf, a[BIAS], a[RESIDUAL]])
    return _finish(node, t.astype(np.float64), a)


def _eval_qmatmul(node, arrays):
    a = _operands(arrays)
    t = np.matmul(_dequantized(a[X], a[X_SCALE], a[X_ZP], None), _dequantized(a[W], a[W_SCALE], a[W_ZP], 1))
    for extra in (a[BIAS], a[RESIDUAL]):
        if extra is not None:
            t = t + extra
    return _finish(node, _activate(node, t), a)


def _export(node, e) -> None:
    names = (e.inputs + [""] * 10)[:10]
    (xf,) = e.emit("DequantizeLinear", names[X:X_ZP + 1] if names[X_ZP] else names[X:X_SCALE + 1])
    axis = weight_axis(node.op) if (_shape(node.input(W_SCALE)) or ()) not in ((), (1,)) else None
    w_in = names[W:W_ZP + 1] if names[W_ZP] else names[W:W_SCALE + 1]
    (wf,) = e.emit("DequantizeLinear", w_in, axis=axis)
    requant = bool(names[Y_SCALE])
    act = applied_from_attrs(node.attrs)
    parts = [n for n in (names[RESIDUAL],) if n]
    if node.op == "mdoc.qconv":
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in node.attrs.items() if k in CONV_ATTRS}
        inputs = [xf, wf] + ([names[BIAS]] if names[BIAS] else [])
    else:
        attrs, inputs = {}, [xf, wf]
        parts = [n for n in (names[BIAS],) if n] + parts
    last = not parts and act is None and not requant
    (y,) = e.emit("Conv" if node.op == "mdoc.qconv" else "MatMul", inputs, e.outputs if last else 1, **attrs)
    for k, operand in enumerate(parts):
        done = k == len(parts) - 1 and act is None and not requant
        (y,) = e.emit("Add", [y, operand], e.outputs if done else 1)
    if act is not None:
        y = _export_activation(node, e, y, 1 if requant else e.outputs)
    if requant:
        e.emit("QuantizeLinear", [y, names[Y_SCALE], names[Y_ZP]], e.outputs)


_ATTRS = {"auto_pad": (str, bytes), "dilations": list, "group": int, "kernel_shape": list, "pads": list,
          "strides": list, **_ACT_ATTRS}

QCONV = define_op(OpDef(
    "mdoc.qconv", "an int8 convolution (u8/s8 x s8 -> s32) with scales, bias, residual, activation and requantization",
    inputs=(5, 10), outputs=(1, 1), attrs=_ATTRS, check=_check, evaluate=_eval_qconv, export=_export))

QMATMUL = define_op(OpDef(
    "mdoc.qmatmul", "an int8 matrix product (u8/s8 x s8 -> s32) with scales, bias, residual, activation and "
                    "requantization", inputs=(5, 10), outputs=(1, 1), attrs=_ACT_ATTRS, check=_check,
    evaluate=_eval_qmatmul, export=_export))

QUANTIZED_PRODUCTS = (QCONV.name, QMATMUL.name)
