"""mdoc.matmul_nbits: a MatMul whose constant weight is stored block-quantized (int4 or int8), weights only.

    %y = mdoc.matmul_nbits(%a, %b, %scales, %zero_points?) {bits = 4, block_size = 32, k = 2048, n = 5632}

Why an op: large decoders spend their decode time reading weights, so the weight's
storage (bits, block size, zero points) is the decision that matters, and it must stay
visible in the IR (printed, tested as golden IR, exported, explained) down to the kernel
that reads it (`targets/relax/converters/weight_quant.py`).

Operands, in onnxruntime's MatMulNBits layout (so its models import without repacking):

- a: float [..., K];
- b: uint8 [N, k_blocks, block_size * bits / 8], k_blocks = ceil(K / block_size): column n's
  quantized values along K, block by block; with 4 bits, element 2i of a block sits in the
  low nibble of byte i and element 2i + 1 in its high nibble; the tail of the last block is
  padding;
- scales: float [N, k_blocks] (float16 scales may serve a float32 `a`: they halve the
  scales' bytes and are exact in float32);
- zero_points (optional): uint8 [N, ceil(k_blocks * bits / 8)], packed along the blocks as b
  is along K; absent, every block's zero point is 2^(bits - 1) (symmetric).

Meaning: W[k, n] = (q[n, k] - z[n, k // block_size]) * scales[n, k // block_size] for k < K,
and y = a @ W, in a's type (`evaluate` is the numpy reference).

Export (`_export`): com.microsoft MatMulNBits under `runtime_ops` (the operands as they are,
float16 scales cast to a's type); else, from opset 21, ONNX's blocked DequantizeLinear of an
int4/uint4 (int8/uint8) [K, N] weight (`block_size`, axis 0; the last block may be partial,
as the spec allows) and a MatMul; before opset 21, which has no int4 and no blocks, the
unpacking itself in ONNX ops (Mod, BitShift, Cast, Sub, Mul, Reshape, Slice, Transpose) over
the same packed bytes, so the file keeps their size.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from onnx import helper

from .ops import OpDef, define_op
from .types import TensorType, type_to_onnx

MS = "com.microsoft"
BITS = (4, 8)


# -- packing (numpy; the pass, the importer, the exporter and the kernels share it) ---------------
def k_blocks(k: int, block_size: int) -> int:
    return -(-k // block_size)


def pack_rows(q: np.ndarray, bits: int) -> np.ndarray:
    """uint8 values [..., L] (each < 2^bits) packed along the last axis: [..., ceil(L * bits / 8)]."""
    q = np.asarray(q, np.uint8)
    if bits == 8:
        return q.copy()
    if q.shape[-1] % 2:
        q = np.concatenate([q, np.zeros((*q.shape[:-1], 1), np.uint8)], axis=-1)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def unpack_rows(packed: np.ndarray, bits: int, length: int) -> np.ndarray:
    """The inverse of `pack_rows`: uint8 [..., length]."""
    packed = np.asarray(packed, np.uint8)
    if bits == 8:
        return packed[..., :length]
    both = np.stack([packed & 15, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)
    return both[..., :length]


def quantize_blocks(w: np.ndarray, bits: int, block_size: int, symmetric: bool,
                    scale_dtype=np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A float [K, N] weight as (b, scales, zero_points) in the operand layout above.

    Symmetric: scale = max|w| / (2^(bits-1) - 1) per block and q = round(w / scale) + 2^(bits-1)
    (the grid is symmetric around 0; the lowest code is unused). With zero points: the block's
    range widened to hold 0 on 2^bits - 1 steps, zero point round(-min / scale).
    float16 scales are used only where every scale is a normal float16 (else float32).
    """
    w = np.asarray(w, np.float32)
    k, n = w.shape
    kb = k_blocks(k, block_size)
    padded = np.zeros((kb * block_size, n), np.float32)
    padded[:k] = w
    blocks = padded.T.reshape(n, kb, block_size).astype(np.float64)
    top = (1 << bits) - 1
    if symmetric:
        half = 1 << (bits - 1)
        peak = np.abs(blocks).max(axis=-1)
        scale = np.where(peak > 0, peak / (half - 1), 1.0)
        zero = np.full((n, kb), half, np.float64)
    else:
        lo, hi = np.minimum(blocks.min(axis=-1), 0.0), np.maximum(blocks.max(axis=-1), 0.0)
        scale = np.where(hi > lo, (hi - lo) / top, 1.0)
        zero = np.clip(np.rint(-lo / scale), 0, top)
    scale = _narrow(scale, scale_dtype)
    q = np.clip(np.rint(blocks / scale.astype(np.float64)[..., None]) + zero[..., None], 0, top).astype(np.uint8)
    b = pack_rows(q, bits).reshape(n, kb, -1)
    zp = None if symmetric else pack_rows(zero.astype(np.uint8), bits)
    return b, scale, zp


def _narrow(scale: np.ndarray, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype == np.float16:
        info = np.finfo(np.float16)
        if np.all((scale >= info.tiny) & (scale <= info.max)):
            return scale.astype(np.float16)
    return scale.astype(np.float32)


def zero_points_of(node, zp: np.ndarray | None) -> np.ndarray:
    """Every block's zero point, uint8 [N, k_blocks] (2^(bits - 1) where the operand is absent)."""
    return zero_points_of_array(zp, int(node.attrs["bits"]), int(node.attrs["n"]),
                                k_blocks(int(node.attrs["k"]), int(node.attrs["block_size"])))


def zero_points_of_array(zp: np.ndarray | None, bits: int, n: int, kb: int) -> np.ndarray:
    if zp is None:
        return np.full((n, kb), 1 << (bits - 1), np.uint8)
    return unpack_rows(np.asarray(zp).reshape(n, -1), bits, kb)


def dequantize(node, b: np.ndarray, scales: np.ndarray, zp: np.ndarray | None) -> np.ndarray:
    """W, float32 [K, N]: the weight the op multiplies by."""
    bits, bs, k, n = (int(node.attrs[a]) for a in ("bits", "block_size", "k", "n"))
    kb = k_blocks(k, bs)
    q = unpack_rows(np.asarray(b).reshape(n, kb, -1), bits, bs).astype(np.float32)
    z = zero_points_of(node, zp).astype(np.float32)
    w = (q - z[..., None]) * np.asarray(scales, np.float32).reshape(n, kb)[..., None]
    return np.ascontiguousarray(w.reshape(n, kb * bs)[:, :k].T)


def weight_bytes(b: np.ndarray, scales: np.ndarray, zp: np.ndarray | None) -> int:
    return b.nbytes + scales.nbytes + (zp.nbytes if zp is not None else 0)


# -- the op --------------------------------------------------------------------------------------
def _shape(v):
    t = v.type if v is not None else None
    return tuple(t.shape) if isinstance(t, TensorType) and t.shape is not None else None


def _check(node) -> str | None:
    attrs = node.attrs
    bits, bs, k, n = (attrs.get(a) for a in ("bits", "block_size", "k", "n"))
    if bits not in BITS:
        return f"bits = {bits}; expected 4 or 8"
    if not isinstance(bs, int) or bs < 16 or bs & (bs - 1):
        return f"block_size = {bs}; expected a power of 2, at least 16"
    if not isinstance(k, int) or not isinstance(n, int) or k < 1 or n < 1:
        return f"k = {k}, n = {n}; expected positive sizes"
    kb = k_blocks(k, bs)
    a, b, s = (node.input(i) for i in range(3))
    zp = node.input(3) if len(node.inputs) > 3 else None
    if isinstance(a.type, TensorType) and not a.type.dtype.is_float:
        return f"operand 0 (a) has type {a.type.dtype.text}; it must be a float"
    ashape = _shape(a)
    if ashape is not None and (not ashape or (isinstance(ashape[-1], int) and ashape[-1] != k)):
        return f"operand 0 (a) has shape {list(ashape)}; its last dim must be k = {k}"
    for i, v, want, dtype in ((1, b, (n, kb, bs * bits // 8), "uint8"), (3, zp, (n, -(-kb * bits // 8)), "uint8")):
        if v is None or not isinstance(v.type, TensorType):
            continue
        name = "b" if i == 1 else "zero_points"
        if v.type.dtype.text != "u8":
            return f"operand {i} ({name}) has type {v.type.dtype.text}; it must be u8"
        shape = _shape(v)
        size = int(np.prod(want))
        if shape is not None and shape != want and (len(shape) != 1 or shape[0] != size):
            return f"operand {i} ({name}) has shape {list(shape)}; expected {list(want)} (or [{size}])"
    if isinstance(s.type, TensorType):
        if not s.type.dtype.is_float:
            return f"operand 2 (scales) has type {s.type.dtype.text}; it must be a float"
        shape = _shape(s)
        if shape is not None and shape != (n, kb) and shape != (n * kb,):
            return f"operand 2 (scales) has shape {list(shape)}; expected [{n}, {kb}]"
    return None


def _evaluate(node, arrays):
    a, b, scales = arrays[:3]
    zp = arrays[3] if len(arrays) > 3 else None
    w = dequantize(node, b, scales, zp)
    return [np.matmul(a.astype(np.float32), w).astype(a.dtype)]


def _float_name(t) -> str:
    return t.dtype.text if isinstance(t, TensorType) else "f32"


def _export(node, e) -> None:
    a_type, s_type = node.input(0).type, node.input(2).type
    a, b, scales = e.inputs[:3]
    zp = e.inputs[3] if len(e.inputs) > 3 else ""
    bits, bs, k, n = (int(node.attrs[x]) for x in ("bits", "block_size", "k", "n"))
    a_dtype = _onnx_float(a_type)
    if e.runtime_ops:
        if _float_name(s_type) != _float_name(a_type):  # MatMulNBits takes scales of a's type only
            if node.input(2).const_value is not None:  # widened in the file, so importers see a constant
                e.supersede(2)
                scales = e.weight(np.asarray(node.input(2).const_value), _numpy_float(a_dtype))
            else:
                (scales,) = e.emit("Cast", [scales], to=a_dtype)
        e.emit("MatMulNBits", [a, b, scales] + ([zp] if zp else []), e.outputs, domain=MS,
               K=k, N=n, bits=bits, block_size=bs)
        return
    if e.opset >= 21 and node.input(1).const_value is not None and node.input(2).const_value is not None:
        _export_dequantize_linear(node, e, a, a_dtype)
        return
    if _float_name(s_type) != _float_name(a_type):
        (scales,) = e.emit("Cast", [scales], to=a_dtype)
    _export_unpacking(node, e, a, b, scales, zp, a_dtype)


def _onnx_float(t) -> int:
    tp = type_to_onnx(t) if isinstance(t, TensorType) else None
    return tp.tensor_type.elem_type if tp is not None else 1


def _export_dequantize_linear(node, e, a: str, a_dtype: int) -> None:
    """Blocked DequantizeLinear (opset 21) of the [K, N] weight, then MatMul."""
    bits, bs, k, n = (int(node.attrs[x]) for x in ("bits", "block_size", "k", "n"))
    kb = k_blocks(k, bs)
    b = node.input(1).const_value
    zp = node.input(3).const_value if len(node.inputs) > 3 and node.input(3) is not None else None
    scales = np.asarray(node.input(2).const_value).reshape(n, kb)
    q = unpack_rows(np.asarray(b).reshape(n, kb, -1), bits, bs).reshape(n, kb * bs)[:, :k].T
    if zp is None:  # symmetric: the signed values, no zero point
        signed = q.astype(np.int16) - (1 << (bits - 1))
        weight = signed.astype(ml_dtypes.int4 if bits == 4 else np.int8)
        zero = None
    else:
        weight = q.astype(ml_dtypes.uint4) if bits == 4 else q
        zero = zero_points_of(node, zp).T
        zero = zero.astype(ml_dtypes.uint4) if bits == 4 else zero
    s = e.weight(np.ascontiguousarray(scales.T), scales.dtype)
    if scales.dtype != _numpy_float(a_dtype):  # dequantize in a's type: float16 products would round
        (s,) = e.emit("Cast", [s], to=a_dtype)
    inputs = [e.weight(np.ascontiguousarray(weight), weight.dtype), s]
    if zero is not None:
        inputs.append(e.weight(np.ascontiguousarray(zero), zero.dtype))
    for i in range(1, len(node.inputs)):  # the packed operands are written again in this layout
        e.supersede(i)
    (w,) = e.emit("DequantizeLinear", inputs, axis=0, block_size=bs)
    e.emit("MatMul", [a, w], e.outputs)


def _numpy_float(elem_type: int):
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def _export_unpacking(node, e, a: str, b: str, scales: str, zp: str, a_dtype: int) -> None:
    """Any opset from 13: the nibbles unpacked by ONNX ops from the packed bytes themselves."""
    bits, bs, k, n = (int(node.attrs[x]) for x in ("bits", "block_size", "k", "n"))
    kb = k_blocks(k, bs)

    def shape(*dims):
        return e.const(list(dims), np.int64)

    def unpacked(packed: str, length: int, count: int, rows: list[int]) -> str:
        """uint8 values [*rows, length] of `packed` bytes ([*rows, count])."""
        if bits == 8:
            return packed
        (lo,) = e.emit("Mod", [packed, e.const(16, np.uint8)])
        (hi,) = e.emit("BitShift", [packed, e.const(4, np.uint8)], direction="RIGHT")
        parts = [e.emit("Reshape", [x, shape(*rows, count, 1)])[0] for x in (lo, hi)]
        (both,) = e.emit("Concat", parts, axis=-1)
        (flat,) = e.emit("Reshape", [both, shape(*rows, count * 2)])
        if count * 2 == length:
            return flat
        return e.emit("Slice", [flat, shape(0), shape(length), shape(len(rows))])[0]

    (q,) = e.emit("Cast", [unpacked(b, bs, bs * bits // 8, [n, kb])], to=a_dtype)
    if zp:
        zcount = -(-kb * bits // 8)
        (z,) = e.emit("Cast", [unpacked(e.emit("Reshape", [zp, shape(n, zcount)])[0], kb, zcount, [n])], to=a_dtype)
        (z,) = e.emit("Reshape", [z, shape(n, kb, 1)])
    else:
        z = e.const(float(1 << (bits - 1)), _numpy_float(a_dtype))
    (s,) = e.emit("Reshape", [scales, shape(n, kb, 1)])
    (w,) = e.emit("Mul", [e.emit("Sub", [q, z])[0], s])
    (w,) = e.emit("Reshape", [w, shape(n, kb * bs)])
    if kb * bs != k:
        (w,) = e.emit("Slice", [w, shape(0), shape(k), shape(1)])
    (w,) = e.emit("Transpose", [w], perm=[1, 0])
    e.emit("MatMul", [a, w], e.outputs)


MATMUL_NBITS = define_op(OpDef(
    "mdoc.matmul_nbits", "a @ W with W stored block-quantized (4 or 8 bits, MatMulNBits layout), weights only",
    inputs=(3, 4), outputs=(1, 1), attrs={"bits": int, "block_size": int, "k": int, "n": int},
    required=("bits", "block_size", "k", "n"), check=_check, evaluate=_evaluate, export=_export))
