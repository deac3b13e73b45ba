"""mdoc.matmul_nbits: a MatMul on block-quantized weights, lowered to one fused kernel.

On CPU targets with FMA vectors (`CpuKernels`, float32 activations) the product is
`cpu_kernels.matmul_nbits`: the packed int4 / int8 bytes are repacked once at compile time
into the kernel's column-block layout and dequantized in registers inside the k loop, so a
decode step reads each packed weight once. Elsewhere (other targets, float16 activations)
a dequantizing TE stage feeds a Relax matmul: correct and still packed in the artifact, but
it writes the float weight each call.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, te, tirx

from mdoc.ir import Node
from mdoc.weight_quant_ops import k_blocks

from ...cpu_kernels.common import flat_spatial, is_symbolic
from ...cpu_kernels.matmul_nbits import matmul_nbits as nbits_kernel, pack_weights
from ..context import LowerCtx, reshaped
from ..registry import converter

R = relax.op


@converter("mdoc.matmul_nbits", since=1)
def matmul_nbits(ctx: LowerCtx, node: Node):
    bits, bs, k, n = (int(node.attrs[x]) for x in ("bits", "block_size", "k", "n"))
    consts = [ctx.const(i) if ctx.has_input(i) else None for i in (1, 2, 3)]
    for i, (c, what) in enumerate(zip(consts[:2], ("the packed weight", "the scales")), start=1):
        if c is None:
            raise ctx.need_const(i, what)
    if ctx.has_input(3) and consts[2] is None:
        raise ctx.need_const(3, "the zero points")
    b, scales, zp = consts
    a = ctx.input(0)
    dims = ctx.shape(0)
    spec = getattr(ctx.kernels, "spec", None)
    if spec is not None and spec.fma_vectors and str(a.ty.dtype) == "float32" and dims:
        return [_fused(ctx, node, a, dims, b, scales, zp, spec)]
    return [_dequantize_then_matmul(ctx, a, b, scales, zp, bits, bs, k, n)]


def _fused(ctx: LowerCtx, node: Node, a, dims, b, scales, zp, spec):
    bits, bs, k, n = (int(node.attrs[x]) for x in ("bits", "block_size", "k", "n"))
    m = flat_spatial(dims[:-1])
    scale_dtype = "float16" if np.asarray(scales).dtype == np.float16 else "float32"
    kernel = nbits_kernel(m if not is_symbolic(m) else "m", k, n, bits=bits, block_size=bs,
                          zero_points=zp is not None, scale_dtype=scale_dtype, spec=spec)
    packed = pack_weights(kernel, b, np.asarray(scales, scale_dtype), zp, bits=bits, block_size=bs, k=k, n=n)
    chosen = getattr(ctx.kernels, "chosen", None)
    if chosen is not None:  # the compile report's kernel list
        chosen.setdefault(f"{node.op} '{node.name}'", []).append(kernel.name)
    gv = ctx.add_kernel(kernel.func, kernel.name)
    a2 = reshaped(ctx, a, (m, k))
    y = ctx.emit(relax.call_tir(gv, [a2, *(relax.const(p) for p in packed)], relax.TensorType((m, n), "float32")))
    return reshaped(ctx, y, (*dims[:-1], n))


def _dequantize_then_matmul(ctx: LowerCtx, a, b, scales, zp, bits: int, bs: int, k: int, n: int):
    """W [K, N] computed by a TE stage from the packed operands, then a Relax matmul."""
    kb = k_blocks(k, bs)
    qb = relax.const(np.ascontiguousarray(np.asarray(b, np.uint8).reshape(n, kb, -1)))
    sc = relax.const(np.ascontiguousarray(np.asarray(scales).reshape(n, kb)))
    zc = relax.const(np.ascontiguousarray(np.asarray(zp, np.uint8).reshape(n, -1))) if zp is not None else None
    dtype = str(a.ty.dtype)

    def compute(q, s, *z):
        def w(kk, j):
            blk, off = kk // bs, kk % bs
            if bits == 4:
                code = (q[j, blk, off // 2] >> ((off % 2) * 4).astype("uint8")) & tirx.const(15, "uint8")
            else:
                code = q[j, blk, off]
            if z:
                zb = z[0][j, blk // 2] >> ((blk % 2) * 4).astype("uint8") & tirx.const(15, "uint8") \
                    if bits == 4 else z[0][j, blk]
                zero = zb.astype(dtype)
            else:
                zero = tirx.const(float(1 << (bits - 1)), dtype)
            return (code.astype(dtype) - zero) * s[j, blk].astype(dtype)
        return te.compute((k, n), w, name="dequantize")

    weight = ctx.bb.emit_te(compute, qb, sc, *([zc] if zc is not None else []), primfunc_name_hint="dequantize_nbits")
    return R.matmul(a, weight)
