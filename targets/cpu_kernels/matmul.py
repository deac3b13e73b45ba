"""Matrix products: dense layers with constant weights, batched matmul of two activations, and
the GEMM schedule they share with 1x1 convolutions.

Why this shape: every one of these is C[i, j] = sum_k A[i, k] * B[k, j] with C stored row-major,
so the register tile is `mr` rows x `nv` vectors of `lanes` columns (8 x 2 vectors on AVX-512,
the structure that reached ~205 GFLOP/s for 128x768x3072 on 2 Zen 4 cores): per k step it
loads `nv` vectors of B, broadcasts `mr` scalars of A straight from memory into the FMAs,
and keeps all `mr * nv` accumulators in registers.  Rows of the tile are stored as whole
vectors, so no transposition is ever needed on the way out, and the epilogue (scale, bias,
residual, activation) runs on the registers before the store.

* `dense`: B is a constant, packed at compile time as [N / lanes, K, lanes] (zero-padded
  columns), so each k step reads `nv` consecutive vectors.  A may have leading batch axes
  ([..., M, K]); they are folded into M.
* `batch_matmul`: both operands are activations ([..., M, K] x [..., K, N], numpy broadcasting
  of the batch axes).  B is read in place when N is a multiple of the vector; otherwise, or
  when it comes transposed ([..., N, K], attention's Q K^T), one parallel stage copies it into
  a padded [batch, K, Np] buffer first.
* Rows that do not fill the last tile (M not a multiple of `mr`) are computed from a clamped
  row index and never stored, so A is never copied; columns past N are masked on the store.

The loops, outermost first: parallel over (batch, column block, row block); k; then the
register tile (rows unrolled, vectors unrolled, lanes vectorized).  Columns are the outer
block loop so the packed-B panel of one column block (K x nv*lanes floats) stays in L2
while the rows stream past it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from tvm import te, tirx
from tvm.s_tir import Schedule

from .common import (CpuSpec, Epilogue, Kernel, KernelError, Param, as_dims, ceil_div, check_dtype, epilogue_inputs,
                     finish, flat_spatial, is_symbolic, require_static)
from .tile_schedules import flatten_leading, schedule_copy

__all__ = ["batch_matmul", "dense", "gemm_tile", "pack_dense_weight", "schedule_gemm"]


def gemm_tile(m: int, n: int, spec: CpuSpec) -> tuple[int, int]:
    """(mr, nv): rows x vectors of the register tile.

    The tile's accumulators must stay under 1 KB (7 x 2 vectors on AVX-512): TVM turns a
    "global" buffer under 1 KB into a stack alloca, which LLVM keeps in registers, while
    anything bigger (or any "local"-scope buffer) is fetched from TVMBackendAllocWorkspace
    once per task and round-trips through memory.  Measured on a 16x112x112 -> 96 pointwise
    conv (K = 16, where the tile's init and store dominate): 8 x 2 local 34 GFLOP/s, 8 x 2
    global (1 KB, still heap) 45, 7 x 2 global 103 on one core.
    """
    lanes = spec.lanes
    max_acc = min(spec.accumulators, 1024 // (lanes * 4) - 1)
    nvec = ceil_div(n, lanes) if not is_symbolic(n) else 1 << 30  # columns known at run time: assume many
    nv = min(2 if lanes >= 16 else 3, nvec)
    if is_symbolic(m):  # rows known at run time: the full tile, the last one clamped
        return max(1, min(max_acc // nv, 8)), nv
    mr = max(1, min(m, max_acc // nv, 8))
    if m > mr:
        # prefer a row count that divides M when one is close
        for r in range(mr, max(mr - 3, 3), -1):
            if m % r == 0:
                mr = r
                break
    elif nv < nvec:
        nv = max(1, min(nvec, max_acc // mr, 4))
    return mr, nv


def schedule_gemm(sch: Schedule, out: str, acc: str, *, lanes: int, mr: int, nv: int, batch_loops: int) -> None:
    """Tile out[batch..., i, j] = epilogue(acc[batch, i, j]) as described in the module docstring.

    `out` must iterate (batch loops..., rows, cols) and read acc at (batch, row, col); `acc` is a
    reduction block with one reduction loop.
    """
    ob, cb = sch.get_sblock(out), sch.get_sblock(acc)
    loops = sch.get_loops(ob)
    bl, i, j = loops[:batch_loops], loops[batch_loops], loops[batch_loops + 1]
    io, ii = sch.split(i, [None, mr])
    jo, jv, jl = sch.split(j, [None, nv, lanes])
    sch.reorder(*bl, jo, io, ii, jv, jl)
    task = sch.fuse(*bl, jo, io)
    sch.compute_at(cb, task, preserve_unit_loops=True)
    # (no set_scope("local"): see gemm_tile, a small "global" tile becomes registers)
    cl = sch.get_loops(cb)[1:]  # batch, i, j, k
    cbatch, ci, cj, ck = cl
    cjv, cjl = sch.split(cj, [nv, lanes])
    sch.reorder(ck, cbatch, ci, cjv, cjl)
    sch.unroll(ci)
    sch.unroll(cjv)
    sch.vectorize(cjl)
    sch.parallel(task)
    sch.unroll(ii)
    sch.unroll(jv)
    sch.vectorize(jl)
    init = sch.decompose_reduction(cb, ck)
    sch.vectorize(sch.get_loops(init)[-1])


def pack_dense_weight(weight: np.ndarray, lanes: int, nv: int = 1) -> np.ndarray:
    """[K, N] -> [ceil(N / (lanes * nv)) * nv, K, lanes], zero-padded columns."""
    weight = np.asarray(weight, dtype="float32")
    k, n = weight.shape
    blocks = ceil_div(ceil_div(n, lanes), nv) * nv
    padded = np.zeros((k, blocks * lanes), "float32")
    padded[:, :n] = weight
    return np.ascontiguousarray(padded.reshape(k, blocks, lanes).transpose(1, 0, 2))


def _epilogue_value(epi: Epilogue, val, bias, residual, j, res_index):
    if epi.scale is not None:
        val = val * tirx.const(epi.scale, "float32")
    if bias is not None:
        val = val + bias[j]
    if residual is not None:
        val = val + residual[res_index]
    return epi.activate(val)


def dense(a_shape: Sequence[int], weight, *, transpose_b: bool = False, epilogue: Epilogue = Epilogue(),
          dtype: str = "float32", spec: CpuSpec | None = None, name: str | None = None,
          tile: tuple[int, int] | None = None) -> Kernel:
    """Y[..., N] = epilogue(A[..., K] @ W) with W constant.

    a_shape: the leading dims may be names (symbolic, known at run time); the rows then run
        in full tiles with the last one clamped, as for a static M that is not a multiple.
    weight: numpy [K, N] (ONNX MatMul; [N, K] with transpose_b=True, as in Gemm transB=1 or
        torch Linear) packed now into a constant; or its shape, then the kernel takes the
        packed weight at run time (`kernel.packers["weight"]` packs it).
    epilogue: scale, bias [N], residual [..., N], activation.
    Returns a Kernel `f(a, weight, [bias], [residual], out)`.
    """
    spec = spec or CpuSpec.host()
    check_dtype("dense", dtype)
    a_shape = as_dims(a_shape)
    require_static("dense", "K", a_shape[-1])
    wshape = tuple(int(d) for d in (weight.shape if isinstance(weight, np.ndarray) else weight))
    if len(a_shape) < 2 or len(wshape) != 2:
        raise KernelError(f"dense: expects A [..., M, K] (at least 2 dims) and a 2-D weight, got A {a_shape} "
                          f"and weight {wshape}; reshape a vector to [1, K]")
    k, n = (wshape[1], wshape[0]) if transpose_b else wshape
    if a_shape[-1] != k:
        raise KernelError(f"dense: A {a_shape} has K={a_shape[-1]} but the weight {wshape}"
                          f"{' (transposed)' if transpose_b else ''} has K={k}")
    lead = a_shape[:-1]
    if len(lead) > 1:
        require_static("dense", "leading dims of a 3-D or wider A (flatten them first)", *lead)
    m = flat_spatial(lead)
    lanes = spec.lanes
    mr, nv = tile or gemm_tile(m, n, spec)
    mp = ceil_div(m, mr) * mr
    blocks = ceil_div(ceil_div(n, lanes), nv) * nv
    np_ = blocks * lanes

    a = te.placeholder(a_shape, "float32", name="a")
    a2 = (lambda i, kk: a[i, kk]) if len(a_shape) == 2 else _flat_reader(a, lead)
    w = te.placeholder((blocks, k, lanes), "float32", name="weight")
    rk = te.reduce_axis((0, k), "k")
    clamp = (lambda i: tirx.min(i, m - 1)) if is_symbolic(m) or mp != m else (lambda i: i)
    acc = te.compute((1, mp, np_), lambda b, i, j: te.sum(a2(clamp(i), rk) * w[j // lanes, rk, j % lanes], axis=rk),
                     name="acc")
    extra, extra_params, bias, residual = epilogue_inputs(epilogue, (n,), (*lead, n))
    out_shape = (*lead, n)

    if len(lead) == 1:
        out = te.compute(out_shape, lambda i, j: _epilogue_value(epilogue, acc[0, i, j], bias, residual, j, (i, j)),
                         name="out")
        sch = Schedule(te.create_prim_func([a, w, *extra, out]))
    else:
        # several leading axes: iterate the output over (M, N) with M flattened
        def fout(*idx):
            i = 0
            for ax, ext in zip(idx[:-1], lead):
                i = i * ext + ax
            return _epilogue_value(epilogue, acc[0, i, idx[-1]], bias, residual, idx[-1], idx)
        out = te.compute(out_shape, fout, name="out")
        sch = Schedule(te.create_prim_func([a, w, *extra, out]))
        sch = flatten_leading(sch, "out", lead)
    schedule_gemm(sch, "out", "acc", lanes=lanes, mr=mr, nv=nv, batch_loops=0)

    kname = name or f"dense_{m}x{k}x{n}{'_tb' if transpose_b else ''}" + (f"_{epilogue.tag()}" if epilogue.tag() else "")
    if isinstance(weight, np.ndarray):
        wk = np.asarray(weight, "float32").T if transpose_b else np.asarray(weight, "float32")
        wvalue = pack_dense_weight(wk, lanes, nv)
    else:
        wvalue = None
    params = (Param("a", a_shape), Param("weight", (blocks, k, lanes), value=wvalue), *extra_params,
              Param("out", out_shape))
    packer = (lambda x, _l=lanes, _nv=nv, _t=transpose_b: pack_dense_weight(np.asarray(x).T if _t else x, _l, _nv))
    return Kernel(kname, finish(sch.mod["main"], kname), params, 2 * m * n * k, f"mr={mr} nv={nv} blocks={blocks}",
                  packers={"weight": packer})


def batch_matmul(a_shape: Sequence[int], b_shape: Sequence[int], *, transpose_b: bool = False,
                 epilogue: Epilogue = Epilogue(), dtype: str = "float32", spec: CpuSpec | None = None,
                 name: str | None = None, tile: tuple[int, int] | None = None) -> Kernel:
    """C[..., M, N] = epilogue(A[..., M, K] @ B[..., K, N]) for two run-time operands.

    Batch axes broadcast like numpy (e.g. A [12, 128, 64] with B [1, 64, 128]); with
    transpose_b=True B is [..., N, K] (Q @ K^T without a separate Transpose).
    epilogue: scale (attention's 1/sqrt(d)), bias [N], residual [..., M, N] (an additive
    mask, say), activation.
    Returns a Kernel `f(a, b, [bias], [residual], out)`.
    """
    spec = spec or CpuSpec.host()
    op = "batch_matmul"
    check_dtype(op, dtype)
    dims = as_dims((*a_shape, *b_shape))  # one var per name across both operands
    a_shape, b_shape = dims[:len(a_shape)], dims[len(a_shape):]
    if len(a_shape) < 2 or len(b_shape) < 2:
        raise KernelError(f"{op}: operands need at least 2 dims, got {a_shape} and {b_shape}")
    m, k = a_shape[-2:]
    n, kb = (b_shape[-2], b_shape[-1]) if transpose_b else (b_shape[-1], b_shape[-2])
    if not _same_extent(kb, k):
        raise KernelError(f"{op}: contraction sizes differ: A {a_shape} has K={k}, B {b_shape} has K={kb}"
                          f"{' (B transposed)' if transpose_b else ''}")
    batch = _broadcast_batch(op, a_shape, b_shape)
    nb = flat_spatial(batch)
    lanes = spec.lanes
    mr, nv = tile or gemm_tile(m, n, spec)
    mp = ceil_div(m, mr) * mr
    np_ = ceil_div(n, lanes * nv) * lanes * nv

    a = te.placeholder(a_shape, "float32", name="a")
    b = te.placeholder(b_shape, "float32", name="b")

    def bidx(shape, flat):
        """index tuple of operand `shape`'s batch axes for the flattened output batch `flat`"""
        nd = len(shape) - 2
        idx, rem = [], flat
        full = [1] * (len(batch) - nd) + list(shape[:-2])
        coords = []
        for ext in reversed(batch):
            coords.append(rem % ext)
            rem = rem // ext
        coords = list(reversed(coords))
        for ax in range(len(batch) - nd, len(batch)):
            idx.append(coords[ax] if is_symbolic(full[ax]) or full[ax] != 1 else 0)
        return idx

    clamp = (lambda i: tirx.min(i, m - 1)) if is_symbolic(m) or mp != m else (lambda i: i)
    direct_b = not transpose_b and not is_symbolic(n) and np_ == n
    if direct_b:
        def bread(bt, kk, j):
            return b[(*bidx(b_shape, bt), kk, j)]
        packed = None
    else:
        nb_b = flat_spatial(b_shape[:-2])
        bbatch = b_shape[:-2]

        def bsrc(bt, kk, j):
            idx = []
            rem = bt
            for ext in reversed(bbatch):
                idx.append(rem % ext)
                rem = rem // ext
            idx = list(reversed(idx))
            jj = tirx.min(j, n - 1)
            val = b[(*idx, jj, kk)] if transpose_b else b[(*idx, kk, jj)]
            return tirx.if_then_else(j < n, val, tirx.const(0.0, "float32"))

        packed = te.compute((nb_b, k, np_), bsrc, name="bpack")

        def bread(bt, kk, j):
            bb = 0
            if is_symbolic(nb_b) or nb_b > 1:
                # the flattened batch index of B for output batch bt
                bb = 0
                for ax, ext in zip(bidx(b_shape, bt), bbatch):
                    bb = bb * ext + ax
            return packed[bb, kk, j]

    rk = te.reduce_axis((0, k), "k")
    acc = te.compute((nb, mp, np_),
                     lambda bt, i, j: te.sum(a[(*bidx(a_shape, bt), clamp(i), rk)] * bread(bt, rk, j), axis=rk),
                     name="acc")
    out_shape = (*batch, m, n)
    extra, extra_params, bias, residual = epilogue_inputs(epilogue, (n,), out_shape)

    def fout(*idx):
        bt = 0
        for ax, ext in zip(idx[:-2], batch):
            bt = bt * ext + ax
        return _epilogue_value(epilogue, acc[bt, idx[-2], idx[-1]], bias, residual, idx[-1], idx)

    out = te.compute(out_shape, fout, name="out")
    sch = Schedule(te.create_prim_func([a, b, *extra, out]))
    if len(batch) > 1:
        sch = flatten_leading(sch, "out", batch)
    schedule_gemm(sch, "out", "acc", lanes=lanes, mr=mr, nv=nv, batch_loops=1 if batch else 0)
    if packed is not None:
        schedule_copy(sch, "bpack", lanes)

    kname = name or f"batch_matmul_{nb}x{m}x{k}x{n}{'_tb' if transpose_b else ''}" + (
        f"_{epilogue.tag()}" if epilogue.tag() else "")
    params = (Param("a", a_shape), Param("b", b_shape), *extra_params, Param("out", out_shape))
    return Kernel(kname, finish(sch.mod["main"], kname), params, 2 * nb * m * n * k,
                  f"mr={mr} nv={nv}{' packed-b' if packed is not None else ''}")


# --------------------------------------------------------------------------------------------




def _same_extent(a, b) -> bool:
    return a is b if is_symbolic(a) or is_symbolic(b) else a == b


def _broadcast_batch(op: str, a_shape: tuple, b_shape: tuple) -> tuple:
    """numpy broadcasting of the batch axes; a symbolic axis meets itself or a 1."""
    a, b = a_shape[:-2], b_shape[:-2]
    a, b = (1,) * (len(b) - len(a)) + a, (1,) * (len(a) - len(b)) + b
    out = []
    for x, y in zip(a, b):
        if _same_extent(x, y) or (not is_symbolic(y) and y == 1):
            out.append(x)
        elif not is_symbolic(x) and x == 1:
            out.append(y)
        else:
            raise KernelError(f"{op}: batch axes of A {a_shape} and B {b_shape} do not broadcast")
    return tuple(out)


def _flat_reader(a: te.Tensor, lead: tuple[int, ...]) -> Callable:
    """A[(lead...), K] read with the leading axes flattened into one row index."""
    def read(i, kk):
        idx, rem = [], i
        for ext in reversed(lead):
            idx.append(rem % ext)
            rem = rem // ext
        return a[(*reversed(idx), kk)]
    return read
