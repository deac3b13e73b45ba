"""Row-wise normalizations: softmax and layer normalization over the last axis.

Why: these are the reductions of a transformer (attention's softmax over 128..512 keys, the
layernorm after every block).  Legalized by TVM they are several separate loop nests (max,
exp, sum, divide), each scalar, single-threaded, and `exp` is a libm call per element.  Here
one parallel task handles one row end to end while the row is in L1:

* each reduction over the row runs lane-wise on whole vectors first (`lanes` partial
  results, vectorized), then adds up the lanes and the leftover tail (L % lanes) per row;
* softmax computes exp(x - max) once into a row buffer with the polynomial `fast_exp` of
  `common.py` (vectorized; TVM's `exp` would be a scalar `expf` call per element), sums it,
  and scales it by 1 / sum on the store;
* layernorm takes the mean, then the variance around it (two passes over the row in L1,
  no cancellation), and writes (x - mean) * rsqrt(var + eps) * gamma + beta.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tvm import te, tirx
from tvm.s_tir import Schedule

from .common import (CpuSpec, Kernel, KernelError, Param, as_dims, check_dtype, fast_exp, finish, flat_spatial,
                     is_symbolic, require_static)
from .tile_schedules import flatten_leading

__all__ = ["layer_norm", "softmax"]


class _RowReduce:
    """A reduction over a row of length L as (lane-wise over whole vectors) + (lanes) + (tail)."""

    def __init__(self, name: str, rows: int, length: int, lanes: int, f: Callable, kind: str):
        self.names = []
        red = te.sum if kind == "sum" else te.max
        self.kind = kind
        self.vec = self.tail = None
        # a run-time row gets both parts (either may be empty); a static one those it needs
        symbolic = is_symbolic(length)
        nvec, tail = length // lanes, length % lanes
        if symbolic or nvec:
            rv = te.reduce_axis((0, nvec), f"{name}_rv")
            part = te.compute((rows, lanes), lambda r, l: red(f(r, rv * lanes + l), axis=rv), name=f"{name}_part")
            rl = te.reduce_axis((0, lanes), f"{name}_rl")
            self.vec = te.compute((rows,), lambda r: red(part[r, rl], axis=rl), name=f"{name}_lanes")
            self.names += [f"{name}_part", f"{name}_lanes"]
        if symbolic or tail:
            rt = te.reduce_axis((0, tail), f"{name}_rt")
            self.tail = te.compute((rows,), lambda r: red(f(r, nvec * lanes + rt), axis=rt), name=f"{name}_tail")
            self.names.append(f"{name}_tail")

    def __call__(self, r):
        vals = [t[r] for t in (self.vec, self.tail) if t is not None]
        if len(vals) == 1:
            return vals[0]
        return vals[0] + vals[1] if self.kind == "sum" else tirx.max(vals[0], vals[1])


def _rows_reader(x: te.Tensor, lead: tuple[int, ...]) -> Callable:
    def read(r, j):
        idx, rem = [], r
        for ext in reversed(lead):
            idx.append(rem % ext)
            rem = rem // ext
        return x[(*reversed(idx), j)]
    return read


def _schedule_rows(sch: Schedule, out: str, stages: list[str], vector_stages: list[str], lanes: int) -> None:
    """One parallel task per row: every stage computed under the row loop, inner loops vectorized."""
    ob = sch.get_sblock(out)
    r, j = sch.get_loops(ob)
    sch.parallel(r)
    _vectorize_row(sch, j, lanes)
    for st in reversed(stages):
        sch.compute_at(sch.get_sblock(st), r, preserve_unit_loops=True)
    for st in stages:
        b = sch.get_sblock(st)
        loops = sch.get_loops(b)
        if st.endswith("_part"):
            # loops: r | r', lane, rv  -> rv outside the lanes, lanes vectorized
            sch.reorder(loops[-1], loops[-2])
            sch.vectorize(loops[-2])
            sch.decompose_reduction(b, loops[-1])
        elif st.endswith("_tail"):
            # a run-time row's tail may be empty (a length that is a whole number of vectors): its
            # init must not sit inside that empty loop, or the tail keeps the scratch's old bytes
            # (softmax over 16 keys read garbage on every thread but the first)
            sch.decompose_reduction(b, loops[-1])
        elif st in vector_stages:
            _vectorize_row(sch, loops[-1], lanes)


def _vectorize_row(sch: Schedule, loop, lanes: int) -> None:
    """Vectors along a row. A row of run-time length stays a plain loop, which LLVM vectorizes
    with a remainder: split by lanes it would carry a predicate that TVM scalarizes (softmax
    over 512 x 128 took 124 us that way, 62 us as a plain loop, against 34 us for the static
    kernel)."""
    if isinstance(sch.get(loop).extent, tirx.IntImm):
        _, vl = sch.split(loop, [None, lanes])
        sch.vectorize(vl)


def _flat_out(sch: Schedule, lead: tuple[int, ...]) -> Schedule:
    if len(lead) == 1:
        return sch
    return flatten_leading(sch, "out", lead)


def softmax(shape: Sequence[int], *, axis: int = -1, dtype: str = "float32", spec: CpuSpec | None = None,
            name: str | None = None) -> Kernel:
    """Softmax over the last axis of `shape` (ONNX Softmax, opset >= 13, with axis = -1).

    Returns a Kernel `f(x, out)`.
    """
    spec = spec or CpuSpec.host()
    check_dtype("softmax", dtype)
    shape = as_dims(shape)
    require_static("softmax", "all but the first and last dims", *shape[1:-1])
    if axis not in (-1, len(shape) - 1):
        raise KernelError(f"softmax: only the last axis is supported (got axis={axis} for shape {shape}); "
                          "transpose the reduced axis last first")
    lead, length = (shape[:-1] or (1,)), shape[-1]
    rows = flat_spatial(lead)
    lanes = spec.lanes
    x = te.placeholder(shape, "float32", name="x")
    xr = _rows_reader(x, lead) if len(shape) > 1 else (lambda r, j: x[j])
    mx = _RowReduce("max", rows, length, lanes, xr, "max")
    e = te.compute((rows, length), lambda r, j: fast_exp(xr(r, j) - mx(r)), name="exp")
    sm = _RowReduce("sum", rows, length, lanes, lambda r, j: e[r, j], "sum")
    inv = te.compute((rows,), lambda r: tirx.const(1.0, "float32") / sm(r), name="inv")

    def fout(*idx):
        r = 0
        for ax, ext in zip(idx[:-1], lead):
            r = r * ext + ax
        return e[r, idx[-1]] * inv[r]

    out = te.compute(shape if len(shape) > 1 else shape, fout if len(shape) > 1 else (lambda j: e[0, j] * inv[0]),
                     name="out")
    if len(shape) == 1:
        raise KernelError("softmax: expects at least 2 dims ([rows, L]); reshape a vector to [1, L]")
    sch = _flat_out(Schedule(te.create_prim_func([x, out])), lead)
    stages = mx.names + ["exp"] + sm.names + ["inv"]
    _schedule_rows(sch, "out", stages, ["exp"], lanes)
    kname = name or f"softmax_{'x'.join(map(str, shape))}"
    return Kernel(kname, finish(sch.mod["main"], kname), (Param("x", shape), Param("out", shape)), 5 * rows * length,
                  "row per task")


def layer_norm(shape: Sequence[int], *, epsilon: float = 1e-5, affine: bool = True, dtype: str = "float32",
               spec: CpuSpec | None = None, name: str | None = None) -> Kernel:
    """LayerNormalization over the last axis (ONNX axis = -1): (x - mean) / sqrt(var + eps) * gamma + beta.

    Returns a Kernel `f(x, gamma, beta, out)` (`f(x, out)` with affine=False).
    """
    spec = spec or CpuSpec.host()
    check_dtype("layer_norm", dtype)
    shape = as_dims(shape)
    require_static("layer_norm", "the row length and all but the first dim", *shape[1:])
    if len(shape) < 2:
        raise KernelError(f"layer_norm: expects at least 2 dims ([rows, L]), got {shape}")
    lead, length = shape[:-1], shape[-1]
    rows = flat_spatial(lead)
    lanes = spec.lanes
    x = te.placeholder(shape, "float32", name="x")
    xr = _rows_reader(x, lead)
    s1 = _RowReduce("sum", rows, length, lanes, xr, "sum")
    inv_l = tirx.const(1.0 / length, "float32")
    mean = te.compute((rows,), lambda r: s1(r) * inv_l, name="mean")
    s2 = _RowReduce("sq", rows, length, lanes, lambda r, j: (xr(r, j) - mean[r]) * (xr(r, j) - mean[r]), "sum")
    rstd = te.compute((rows,), lambda r: tirx.const(1.0, "float32") / tirx.sqrt(s2(r) * inv_l + tirx.const(epsilon, "float32")),
                      name="rstd")
    params = [x]
    if affine:
        gamma = te.placeholder((length,), "float32", name="gamma")
        beta = te.placeholder((length,), "float32", name="beta")
        params += [gamma, beta]

    def fout(*idx):
        r = 0
        for ax, ext in zip(idx[:-1], lead):
            r = r * ext + ax
        j = idx[-1]
        val = (x[idx] - mean[r]) * rstd[r]
        return val * gamma[j] + beta[j] if affine else val

    out = te.compute(shape, fout, name="out")
    sch = _flat_out(Schedule(te.create_prim_func([*params, out])), lead)
    stages = s1.names + ["mean"] + s2.names + ["rstd"]
    _schedule_rows(sch, "out", stages, [], lanes)
    kname = name or f"layer_norm_{'x'.join(map(str, shape))}" + ("" if affine else "_noaffine")
    ps = [Param("x", shape)] + ([Param("gamma", (length,)), Param("beta", (length,))] if affine else [])
    return Kernel(kname, finish(sch.mod["main"], kname), (*ps, Param("out", shape)), 8 * rows * length, "row per task")
