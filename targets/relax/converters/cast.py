"""Cast, CastLike and BitCast between every ONNX element type, float8 / float4 / 2- and 4-bit ints included.

TVM computes with the usual numeric types; the others travel in a byte
(`mdoc.targets.storage`) and are converted here, bit for bit as onnx's
reference (ml_dtypes, `onnx.numpy_helper.saturate_cast` and `to_float8e8m0`):

* from float8 / float4: a lookup table of the 256 (16) codes, made with ml_dtypes;
* to float8 / float4: float32 bits rounded to nearest even in integer arithmetic
  (`_encode_float`), with the `saturate` rule (out of range and infinities
  clamp to the largest finite value) or without it (infinity where the type has
  one, NaN where it has none); the 'fnuz' types have no negative zero;
* to float8e8m0: the exponent of float32, rounded up, down or to nearest
  (`round_mode`);
* to int4 / int2: truncation toward zero, then wrap-around to the type's bits
  (as a C cast; QuantizeLinear saturates instead).

`convert` is the one entry point, shared with the quantization converters.
BitCast reads the same bits as another type of the same width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import relax, te, tirx

from mdoc.ir import Node
from mdoc.types import DType

from ..context import LowerCtx, SymTensor, is_static, is_stored, pdtype, prim, tvm_dtype
from ..registry import converter
from ._common import attr_str

R = relax.op


@dataclass(frozen=True)
class FloatFormat:
    """A small float type held as its code in a uint8."""

    man: int  # mantissa bits
    bias: int
    max_code: int  # code of the largest finite magnitude
    inf: int | None  # code of +infinity, None when the type has none
    nan: int  # code of NaN (or'ed with the sign bit unless `uz`)
    sign: int  # the sign bit
    uz: bool = False  # 'fnuz': no negative zero, a single NaN
    always_saturates: bool = False  # no NaN or infinity to overflow to (float4e2m1)


FORMATS = {
    DType.F8E4M3FN: FloatFormat(man=3, bias=7, max_code=0x7E, inf=None, nan=0x7F, sign=0x80),
    DType.F8E4M3FNUZ: FloatFormat(man=3, bias=8, max_code=0x7F, inf=None, nan=0x80, sign=0x80, uz=True),
    DType.F8E5M2: FloatFormat(man=2, bias=15, max_code=0x7B, inf=0x7C, nan=0x7E, sign=0x80),
    DType.F8E5M2FNUZ: FloatFormat(man=2, bias=16, max_code=0x7F, inf=None, nan=0x80, sign=0x80, uz=True),
    # ml_dtypes turns NaN into -0 (code 8) and clamps everything else
    DType.F4E2M1: FloatFormat(man=1, bias=1, max_code=0x7, inf=None, nan=0x8, sign=0x8, always_saturates=True),
}
SMALL_INTS = {DType.I4: (4, True), DType.I2: (2, True), DType.U4: (4, False), DType.U2: (2, False)}
_STORAGE_INT = {True: DType.I8, False: DType.U8}
_ROUND_MODES = ("up", "down", "nearest")


def _i32(v: int) -> tirx.PrimExpr:
    return tirx.IntImm("int32", v)


def _rne_shift(v: tirx.PrimExpr, s: tirx.PrimExpr) -> tirx.PrimExpr:
    """`v >> s` rounded to nearest, ties to even (int32 `v` >= 0, 1 <= s <= 30)."""
    return (v + ((_i32(1) << (s - 1)) - 1) + ((v >> s) & 1)) >> s


def _f32_bits(value: float) -> int:
    return int(np.array(value, np.float32).view(np.int32))


def _thresholds(dtype: DType, fmt: FloatFormat) -> tuple[int, int]:
    """float32 magnitude bits at and above which `dtype` overflows, and up to which it rounds to zero.

    Deciding both on the input (not on the rounded code) keeps every TIR expression
    below a tree of a few dozen nodes: the rounded code is used once.
    """
    table = np.arange(fmt.max_code + 1, dtype=np.uint8).view(dtype.numpy).astype(np.float64)
    top, below = table[fmt.max_code], table[fmt.max_code - 1]
    mid = _f32_bits(top + (top - below) / 2)  # exact: a few significant bits
    overflow = mid if fmt.max_code % 2 else mid + 1  # a tie rounds to the even code
    return overflow, _f32_bits(float(table[1]) / 2)  # half the smallest subnormal rounds to 0 (even)


def _encode_float(x: tirx.PrimExpr, dtype: DType, saturate: bool) -> tirx.PrimExpr:
    """The uint8 code of float32 `x` in float type `dtype`, rounded to nearest even."""
    fmt = FORMATS[dtype]
    overflow_at, zero_up_to = _thresholds(dtype, fmt)
    bits = tirx.reinterpret("int32", x)
    a = bits & 0x7FFFFFFF
    e = (a >> 23) - (127 - fmt.bias)  # the exponent field `x` has in the small format
    # normal: drop the low mantissa bits of the re-biased value (a carry bumps the exponent);
    # subnormal: shift the mantissa with its implicit bit further (float32 subnormals end at 0)
    src = tirx.Select(e >= 1, a - _i32((127 - fmt.bias) << 23), (a & 0x7FFFFF) | 0x800000)
    shift = tirx.Select(e >= 1, _i32(23 - fmt.man), tirx.min(_i32(24 - fmt.man) - e, _i32(30)))
    if saturate or fmt.always_saturates:
        too_big = fmt.max_code  # infinities too
    else:
        too_big = fmt.inf if fmt.inf is not None else fmt.nan
    mag = tirx.Select(a > 0x7F800000, _i32(fmt.nan),
                      tirx.Select(a >= overflow_at, _i32(too_big), _rne_shift(src, shift)))
    # 'fnuz' types have no negative zero, and their NaN (0x80) already is the sign bit
    negative = tirx.all(bits < 0, a > zero_up_to) if fmt.uz else bits < 0
    return tirx.Cast("uint8", mag | tirx.Select(negative, _i32(fmt.sign), _i32(0)))


def _encode_e8m0(x: tirx.PrimExpr, saturate: bool, round_mode: str) -> tirx.PrimExpr:
    """The float8e8m0 code of float32 `x`: its exponent, rounded as `to_float8e8m0` does."""
    bits = tirx.reinterpret("int32", x)
    exponent = (bits >> 23) & 0xFF
    if round_mode == "nearest":
        lsb = exponent > 0
        up = tirx.all((bits & 0x400000) != 0, tirx.any((bits & 0x200000) != 0, (bits & 0x1FFFFF) != 0, lsb))
    elif round_mode == "up":
        up = (bits & 0x7FFFFF) != 0
    else:
        up = tirx.IntImm("bool", 0)
    if saturate:
        up = tirx.all(up, exponent != 0xFE)
    code = tirx.Select(exponent == 0xFF, _i32(0xFF), (exponent + tirx.Select(up, _i32(1), _i32(0))) & 0xFF)
    return tirx.Cast("uint8", code)


def _elementwise(ctx: LowerCtx, x: relax.Expr, fn, name: str) -> relax.Expr:
    """`fn` (a TIR expression of one float32 element) applied to every element of `x`."""
    return ctx.emit(ctx.bb.call_te(lambda t: te.compute(t.shape, lambda *i: fn(t(*i)), name=name), x))


def _decode(ctx: LowerCtx, x: relax.Expr, src: DType) -> relax.Expr:
    """float32 values of the codes in `x` (uint8) of float type `src`, by table lookup."""
    codes = 16 if src is DType.F4E2M1 else 256
    table = np.arange(codes, dtype=np.uint8).view(src.numpy).astype(np.float32)
    return ctx.emit(R.take(relax.const(table), R.astype(x, "int32"), axis=0))


def _native(ctx: LowerCtx, x: relax.Expr, dtype: str) -> relax.Expr:
    src = str(x.ty.dtype)
    if src == dtype:
        return x
    if dtype == "bool":
        # any nonzero value is true (a plain conversion would truncate 0.5 to false)
        return ctx.emit(R.not_equal(x, relax.const(0, src)))
    return ctx.emit(R.astype(x, dtype))


def convert(ctx: LowerCtx, x: relax.Expr, src: DType, dst: DType, *, saturate: bool = True,
            round_mode: str = "up") -> relax.Expr:
    """`x` (held as `src` is held: `tvm_dtype(src)`) converted to `dst` (held as `tvm_dtype(dst)`)."""
    if src == dst:
        return x
    if src in FORMATS or src is DType.F8E8M0:
        x, src = _decode(ctx, x, src), DType.F32
    elif src in SMALL_INTS:
        src = _STORAGE_INT[SMALL_INTS[src][1]]  # the storage holds the value
    if dst in FORMATS:
        return _elementwise(ctx, _native(ctx, x, "float32"), lambda v: _encode_float(v, dst, saturate),
                            f"to_{dst.text}")
    if dst is DType.F8E8M0:
        return _elementwise(ctx, _native(ctx, x, "float32"), lambda v: _encode_e8m0(v, saturate, round_mode),
                            "to_f8e8m0")
    if dst in SMALL_INTS:
        return _native(ctx, _low_bits(ctx, _native(ctx, x, "int32"), *SMALL_INTS[dst]), tvm_dtype(dst))
    return _native(ctx, x, tvm_dtype(dst))


def _low_bits(ctx: LowerCtx, v: relax.Expr, bits: int, signed: bool) -> relax.Expr:
    """The low `bits` bits of int32 `v`, sign-extended when `signed`."""
    if signed:
        k = relax.const(32 - bits, "int32")
        return ctx.emit(R.right_shift(R.left_shift(v, k), k))
    return ctx.emit(R.bitwise_and(v, relax.const((1 << bits) - 1, "int32")))


def _cast_dim(v, src: str, dtype: str):
    """A shape value cast from `src` to the integer `dtype`: a number stays a number, and a cast
    back to the type an expression was cast from is dropped (tf2onnx's shape subgraphs go int64 ->
    int32 -> int64, and FuseTIR wants plain dims, not casts)."""
    if is_static(v):
        return int(np.array(int(v)).astype(dtype))
    v = prim(v, src)
    if isinstance(v, tirx.Cast) and pdtype(v.value) == dtype:
        return v.value
    return tirx.Cast(dtype, v)


def _cast(ctx: LowerCtx, node: Node, dst: DType, *, saturate: bool = True, round_mode: str = "up"):
    sym = ctx.sym(0)
    if sym is not None and not is_stored(dst):
        dtype = tvm_dtype(dst, f"{node.op} node '{node.name}'")
        array = sym.numpy()
        if array is not None:
            return SymTensor.from_array(array.astype(dtype))
        if dtype == "bool":
            return SymTensor(dtype, sym.shape, [tirx.NE(prim(v), prim(0)) for v in sym.values])
        if dtype.startswith(("int", "uint")):
            return SymTensor(dtype, sym.shape, [_cast_dim(v, sym.dtype, dtype) for v in sym.values])
        return SymTensor(dtype, sym.shape, [tirx.Cast(dtype, prim(v, sym.dtype)) for v in sym.values])
    src = ctx.input_type(0)
    if src is None:
        raise ctx.error("the input has no known element type")
    tvm_dtype(dst, f"{node.op} node '{node.name}'")  # refuses types with no TVM storage (strings)
    if round_mode not in _ROUND_MODES:
        raise ctx.error(f"round_mode '{round_mode}' is not one of {', '.join(_ROUND_MODES)}")
    return convert(ctx, ctx.input(0), src.dtype, dst, saturate=saturate, round_mode=round_mode)


_LEGACY_NAMES = {"FLOAT": 1, "UINT8": 2, "INT8": 3, "UINT16": 4, "INT16": 5, "INT32": 6, "INT64": 7,
                 "BOOL": 9, "FLOAT16": 10, "DOUBLE": 11, "UINT32": 12, "UINT64": 13}


def _options(ctx: LowerCtx) -> dict:
    return {"saturate": bool(ctx.attr("saturate", 1)), "round_mode": attr_str(ctx, "round_mode", "up")}


@converter("onnx.Cast", since=1)
def cast(ctx: LowerCtx, node: Node):
    to = ctx.attr("to")
    if isinstance(to, (bytes, str)):  # opset 1-5 spelled the type as a string
        to = _LEGACY_NAMES[to.decode() if isinstance(to, bytes) else to]
    return [_cast(ctx, node, DType.from_onnx(int(to)), **_options(ctx))]


@converter("onnx.BitCast", since=26)
def bit_cast(ctx: LowerCtx, node: Node):
    """The same bits read as another type of the same width (the small types: their low bits)."""
    src, dst = ctx.input_type(0), DType.from_onnx(int(ctx.attr("to")))
    if src is None:
        raise ctx.error("the input has no known element type")
    src = src.dtype
    if src.itemsize != dst.itemsize:
        raise ctx.error(f"BitCast from {src.text} to {dst.text}: the types must have the same width")
    x, out = ctx.input(0), tvm_dtype(dst, f"{node.op} node '{node.name}'")
    if src.itemsize < 1:  # 4 and 2 bits: the storage holds a value or a code; keep the low bits
        bits = int(src.itemsize * 8)
        v = _low_bits(ctx, _native(ctx, x, "int32"), bits, SMALL_INTS.get(dst, (bits, False))[1])
        return [_native(ctx, v, out)]
    if DType.BOOL in (src, dst):  # a bool's byte is 0 or 1
        return [_native(ctx, x, out)]
    if str(x.ty.dtype) == out:
        return [x]
    return [_elementwise(ctx, x, lambda v: tirx.reinterpret(out, v), "bitcast")]


@converter("onnx.CastLike", since=15)
def cast_like(ctx: LowerCtx, node: Node):
    like = ctx.input_type(1)
    if like is None:
        raise ctx.error("operand 1 (target_type) has no known element type")
    return [_cast(ctx, node, like.dtype, **_options(ctx))]
