"""Weight-only quantized matmul: Y[M, N] = A[M, K] @ W, W read as packed int4 / int8 and dequantized in registers.

Why one fused kernel: at decode (M = 1) the product is bound by reading W, so the packed
bytes must be read once and turned into floats in the registers that multiply them; a
dequantize-to-float-tensor step before a float matmul would read 4 bits and write and reread
32. The loop structure is `dense`'s (matmul.py, `schedule_gemm`): parallel over
(column block, row block), then the reduction, then the register tile of `mr` rows x `nv`
vectors of columns. Two forms of the reduction:

* per block (M <= 4, and an M known only at run time, which is how decode reaches a dynamic
  model): for each block of K, `part` sums a * code in registers (nibble shift and mask,
  widen, convert, one FMA per weight vector), and the block's scale and zero point are applied
  once: acc += scale * (part - zero * sum of a over the block) (`asum`, computed once per row).
  A run-time M runs one row per task (no clamped rows computed at decode; prefill then
  dequantizes once per row, about 1.5x slower than the tiled form at M = 128).
* per panel (static M > 4, prefill): each task dequantizes its column block's [K, NB] panel
  ((code - zero) * scale) once into an L2-sized float buffer, and dense's register tile (7 x 2
  vectors on AVX-512) runs every row block against it: the dequantization is shared by all M
  rows, the packed bytes are still read once.

Packed layouts (`pack_weights`, numpy at compile time, from the IR's MatMulNBits layout):

* q: uint8 [N / NB, K2, NB], NB = nv * lanes columns per block: for 4 bits, byte (kk, j) holds
  k = 2 kk in its low nibble and k = 2 kk + 1 in its high one; for 8 bits one byte per k.
  K2 covers K (rounded up to 2 for 4 bits) or, in the per-block form, whole blocks (the
  padding codes are the block's zero point, so they add 0). A column block's bytes stream in
  k order.
* scales: [N / NB, k_blocks, NB] in the IR's scale type (float16 is converted in the
  register), zero points (when the weight has them) uint8 [N / NB, k_blocks, NB].
* Columns past N are zero codes with zero scales; they are computed and never stored.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from tvm import te, tirx
from tvm.s_tir import Schedule

from mdoc.weight_quant_ops import k_blocks, unpack_rows, zero_points_of_array

from .common import CpuSpec, Kernel, KernelError, Param, as_dims, ceil_div, finish, is_symbolic
from .matmul import gemm_tile, schedule_gemm

__all__ = ["matmul_nbits", "pack_weights"]


def matmul_nbits(m, k: int, n: int, *, bits: int, block_size: int, zero_points: bool, scale_dtype: str = "float32",
                 spec: CpuSpec | None = None) -> Kernel:
    """The kernel `f(a [M, K], q, scales, [zero_points], out [M, N])`; M may be a name (symbolic)."""
    spec = spec or CpuSpec.host()
    return _build(m, k, n, bits, block_size, zero_points, scale_dtype, spec)


PER_BLOCK_ROWS = 4  # up to this many rows (and for rows known only at run time) the scales apply per block


@lru_cache(maxsize=64)
def _build(m, k: int, n: int, bits: int, block_size: int, zero_points: bool, scale_dtype: str,
           spec: CpuSpec) -> Kernel:
    """The two forms of the module docstring: per block (few or run-time rows), per panel (many rows)."""
    if bits not in (4, 8):
        raise KernelError(f"matmul_nbits: bits={bits}; expected 4 or 8")
    if scale_dtype not in ("float32", "float16"):
        raise KernelError(f"matmul_nbits: scales of type {scale_dtype}; expected float32 or float16")
    (m,) = as_dims((m,))
    lanes = spec.lanes
    blocked = is_symbolic(m) or m <= PER_BLOCK_ROWS
    if blocked:
        # one row per task at a run-time M (no wasted rows at decode); the partial sums and the totals
        # both stay in registers, 8 spare for the codes: 8 vectors (128 columns) a row on AVX-512, which
        # measured 1.25x faster than 4 for a 2048 x 5632 decode
        mr = 1 if is_symbolic(m) else m
        nv = max(1, min(ceil_div(n, lanes), (spec.vector_registers - 8) // (2 * mr), 8))
    else:
        mr, nv = gemm_tile(m, n, spec)
    nb = nv * lanes
    blocks = ceil_div(n, nb)
    np_ = blocks * nb
    kb = ceil_div(k, block_size)
    kq = kb * block_size if blocked else k  # the per-block form reads whole blocks (padded with zero codes)
    k2 = ceil_div(kq, 2) if bits == 4 else kq
    mp = ceil_div(m, mr) * mr

    a = te.placeholder((m, k), "float32", name="a")
    q = te.placeholder((blocks, k2, nb), "uint8", name="q")
    s = te.placeholder((blocks, kb, nb), scale_dtype, name="scales")
    z = te.placeholder((blocks, kb, nb), "uint8", name="zero_points") if zero_points else None
    rk = te.reduce_axis((0, k), "k")
    clamp = (lambda i: tirx.min(i, m - 1)) if is_symbolic(m) or mp != m else (lambda i: i)

    def weight(kk, j):
        jb, jl = j // nb, j % nb
        if bits == 4:
            code = (q[jb, kk // 2, jl] >> ((kk % 2) * 4).astype("uint8")) & tirx.const(15, "uint8")
        else:
            code = q[jb, kk, jl]
        zero = (z[jb, kk // block_size, jl].astype("float32") if z is not None
                else tirx.const(float(1 << (bits - 1)), "float32"))
        return (code.astype("float32") - zero) * s[jb, kk // block_size, jl].astype("float32")

    if blocked:
        sch = _per_block(a, q, s, z, m, mp, k, kb, n, np_, nb, bits, block_size, clamp, lanes, mr, nv)
    else:
        panel = te.compute((blocks, k, nb), lambda jb, kk, jl: weight(kk, jb * nb + jl), name="panel")
        acc = te.compute((1, mp, np_), lambda b, i, j: te.sum(a[clamp(i), rk] * panel[j // nb, rk, j % nb], axis=rk),
                         name="acc")
        out = te.compute((m, n), lambda i, j: acc[0, i, j], name="out")
        inputs = [a, q, s] + ([z] if z is not None else [])
        sch = Schedule(te.create_prim_func([*inputs, out]))
        _schedule_panel(sch, bits, k, lanes, mr, nv)

    mname = m if not is_symbolic(m) else "m"
    name = f"matmul_nbits{bits}_{mname}x{k}x{n}_b{block_size}{'_zp' if zero_points else ''}" \
           f"{'_s16' if scale_dtype == 'float16' else ''}"
    params = (Param("a", (m, k)), Param("q", (blocks, k2, nb), "uint8"), Param("scales", (blocks, kb, nb), scale_dtype),
              *([Param("zero_points", (blocks, kb, nb), "uint8")] if zero_points else []), Param("out", (m, n)))
    return Kernel(name, finish(sch.mod["main"], name), params, 2 * (m if not is_symbolic(m) else 1) * n * k,
                  f"mr={mr} nv={nv} blocks={blocks}")


def _schedule_panel(sch: Schedule, bits: int, k: int, lanes: int, mr: int, nv: int) -> None:
    """Many rows: each task owns a column block, dequantizes its [K, NB] panel once into a float
    buffer (L2-sized: 2048 x 32 floats is 256 KB) and runs dense's register tile over every row
    block against it, so the dequantization is shared by all M rows and the packed bytes are
    still read once."""
    ob, cb, pb = sch.get_sblock("out"), sch.get_sblock("acc"), sch.get_sblock("panel")
    i, j = sch.get_loops(ob)
    io, ii = sch.split(i, [None, mr])
    jo, jv, jl = sch.split(j, [None, nv, lanes])
    sch.reorder(jo, io, ii, jv, jl)
    sch.parallel(jo)  # before the compute_at: the check of compact dataflow refuses it after
    sch.compute_at(cb, io, preserve_unit_loops=True)
    cbatch, ci, cj, ck = sch.get_loops(cb)[2:]
    cjv, cjl = sch.split(cj, [nv, lanes])
    sch.reorder(ck, cbatch, ci, cjv, cjl)
    sch.unroll(ci)
    sch.unroll(cjv)
    sch.vectorize(cjl)
    sch.unroll(ii)
    sch.unroll(jv)
    sch.vectorize(jl)
    init = sch.decompose_reduction(cb, ck)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.compute_at(pb, jo, preserve_unit_loops=True)
    _, pjb, pk, pl = sch.get_loops(pb)
    if bits == 4 and k % 2 == 0:  # two k per byte: the nibble's shift becomes a constant
        _, pki = sch.split(pk, [None, 2])
        sch.unroll(pki)
    plv, pll = sch.split(pl, [None, lanes])
    sch.vectorize(pll)


def _per_block(a, q, s, z, m, mp, k, kb, n, np_, nb, bits, block_size, clamp, lanes, mr, nv) -> Schedule:
    """acc = sum over blocks of scale * (sum over the block of a * code - zero * sum over the block of a):
    the scale and the zero point are applied once per block, not once per weight."""
    tail = kb * block_size != k
    rin = te.reduce_axis((0, block_size), "kin")
    rin2 = te.reduce_axis((0, block_size), "kin2")
    rb = te.reduce_axis((0, kb), "kb")

    def a_at(i, kk):
        return a[clamp(i), tirx.min(kk, k - 1) if tail else kk]

    def code(kk, j):
        jb, jl = j // nb, j % nb
        if bits == 4:
            c = (q[jb, kk // 2, jl] >> ((kk % 2) * 4).astype("uint8")) & tirx.const(15, "uint8")
        else:
            c = q[jb, kk, jl]
        return c.astype("float32")

    part = te.compute((1, mp, kb, np_), lambda b, i, blk, j: te.sum(
        a_at(i, blk * block_size + rin) * code(blk * block_size + rin, j), axis=rin), name="part")
    asum = te.compute((1, mp, kb), lambda b, i, blk: te.sum(a_at(i, blk * block_size + rin2), axis=rin2), name="asum")

    def zero(blk, j):
        return (z[j // nb, blk, j % nb].astype("float32") if z is not None
                else tirx.const(float(1 << (bits - 1)), "float32"))

    acc = te.compute((1, mp, np_), lambda b, i, j: te.sum(
        s[j // nb, rb, j % nb].astype("float32") * (part[0, i, rb, j] - zero(rb, j) * asum[0, i, rb]), axis=rb),
        name="acc")
    out = te.compute((m, n), lambda i, j: acc[0, i, j], name="out")
    inputs = [a, q, s] + ([z] if z is not None else [])
    sch = Schedule(te.create_prim_func([*inputs, out]))
    schedule_gemm(sch, "out", "acc", lanes=lanes, mr=mr, nv=nv, batch_loops=0)
    pb = sch.get_sblock("part")
    sch.compute_at(pb, sch.get_loops(sch.get_sblock("acc_update"))[1], preserve_unit_loops=True)
    _, _, b_, i_, blk_, j_, kin = sch.get_loops(pb)
    jv, jl = sch.split(j_, [nv, lanes])
    sch.reorder(kin, b_, i_, blk_, jv, jl)
    if bits == 4:
        _, kin_i = sch.split(kin, [None, 2])
        sch.reorder(kin_i, b_)
        sch.unroll(kin_i)
    sch.unroll(i_)
    sch.unroll(jv)
    sch.vectorize(jl)
    init = sch.decompose_reduction(pb, sch.get_loops(pb)[2])
    sch.vectorize(sch.get_loops(init)[-1])
    return sch


def pack_weights(kernel: Kernel, b: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, *,
                 bits: int, block_size: int, k: int, n: int) -> list[np.ndarray]:
    """The kernel's packed constants (q, scales, [zero points]) from the IR's MatMulNBits-layout operands."""
    blocks, k2, nb = kernel.params[1].shape
    kb = k_blocks(k, block_size)
    codes = unpack_rows(np.asarray(b, np.uint8).reshape(n, kb, -1), bits, block_size).reshape(n, kb * block_size)
    zero = zero_points_of_array(zero_points, bits, n, kb)  # [N, kb]
    codes = codes[:, :k]
    width = k2 * 2 if bits == 4 else k2  # the kernel's K: K, K rounded up to 2, or whole blocks
    if width > k:  # padding codes read as zero: the zero point of the block they fall in
        pad_blocks = np.arange(k, width) // block_size
        codes = np.concatenate([codes, zero[:, np.minimum(pad_blocks, kb - 1)]], axis=1)
    cols = np.zeros((blocks * nb, codes.shape[1]), np.uint8)
    cols[:n] = codes
    if bits == 4:
        cols = cols[:, 0::2] | (cols[:, 1::2] << 4)
    q = np.ascontiguousarray(cols.reshape(blocks, nb, k2).transpose(0, 2, 1))

    def blocked(per_block: np.ndarray, dtype) -> np.ndarray:
        full = np.zeros((blocks * nb, kb), dtype)
        full[:n] = per_block
        return np.ascontiguousarray(full.reshape(blocks, nb, kb).transpose(0, 2, 1))

    scale_dtype = kernel.params[2].dtype
    packed = [q, blocked(np.asarray(scales).reshape(n, kb), scale_dtype)]
    if zero_points is not None:
        packed.append(blocked(zero, np.uint8))
    return packed
