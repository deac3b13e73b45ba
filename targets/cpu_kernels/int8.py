"""Integer products on the CPU's int8 dot product: u8/s8 x s8 -> s32 dense layers and 2-D convolutions,
requantized in the register tile.

Why: an int8 kernel moves a quarter of the bytes of a float one, and one dot-product instruction
does 4 multiply-adds per int32 lane: AVX-512 VNNI's `vpdpbusd` 64 per instruction against the 16 of a
float FMA; aarch64's `sdot` 16. AVX2 has no exact byte dot product (`vpmaddubsw` saturates a u8 x s8
pair sum at int16, the issue onnxruntime documents for its AVX2 kernels), so there the activation bytes
are widened to int16 and `vpmaddwd` multiplies them by int16 weights, 2 per lane, exactly. The inner step is a TVM tensor intrinsic
(`DotProduct.intrinsic`): `lanes` int32 accumulators += `group` activation bytes (broadcast) times a
lanes x group block of weights (group 4, or 2 for vpmaddwd). So the weights are packed at compile
time in reduction groups:

    dense:  W [K, N]           -> [N / lanes, K / group, lanes, group]
    conv:   W [OC, C, KH, KW]  -> [OC / lanes, C / group, KH, KW, lanes, group]  (the layout of TVM's
                                                                               old conv2d_NCHWc_int8)

and the activation is read in the same groups: a dense layer's rows as they are (K padded
to a multiple of the group), a conv's input as NCHW[group]c (padded, packed by the kernel's first stage).

Zero points and signs. x86 multiplies unsigned by signed bytes, aarch64's sdot signed by signed,
so an activation of the other type is shifted by 128 where it is read (x ^ 0x80) and its zero
point with it. The weights are symmetric (zero point 0, what `mdoc quantize` and onnxruntime write), so

    sum_k (x - xz) * w = sum_k x' * w  -  (xz + shift) * sum_k w        (x' = x + shift)

and the second term is one int32 per output channel (`offset`), added with the accumulator.
A conv pads with xz (so padded taps add (xz - xz) * w = 0). Then the epilogue, in the register
tile before the store, in float32:

    t = act(float(acc + offset[c]) * mult[c] + bias[c] + residual)      mult = x_scale * w_scale[c]
    y = saturate(round(t / y_scale) + y_zero_point)                     when the op requantizes

offset and mult are run-time inputs: a static model passes constants, a dynamically quantized
one the vectors computed from that call's activation scale.

Loops as the float kernels (`matmul.py`, `conv.py`): parallel over (column / channel block,
row block / output row), the reduction, then the tile (rows or output columns x vectors of
channels) with the lanes x 4 step tensorized.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx
from tvm.s_tir import Schedule
from tvm.s_tir import TensorIntrin

from .common import (TE_ACTIVATIONS, CpuSpec, Kernel, KernelError, Param, as_dims, as_pads, batch_dims, ceil_div,
                     finish, is_symbolic, pick_block, require_static, window_tag)
from .matmul import gemm_tile

__all__ = ["DotProduct", "QEpilogue", "dot_product", "has_vnni", "pack_qconv_weight", "pack_qdense_weight", "qconv2d",
           "qdense"]



@dataclass(frozen=True)
class DotProduct:
    """The int8 dot-product step of a CPU: `lanes` int32 accumulators += 4 activation bytes (broadcast) times a
    lanes x 4 block of int8 weights, one tensor intrinsic.

    name: the instruction the step is written with (what the tests look for in the library).
    activation: the byte type it multiplies the weights by: x86's vpdpbusd / vpmaddwd take uint8,
        aarch64's sdot int8 (an activation of the other type is shifted by 128 where it is read).
    group: activation bytes one lane reduces (4; 2 for vpmaddwd).
    weight: how the packed weights are stored (int8; int16 for vpmaddwd, which multiplies 16-bit pairs).
    """

    name: str
    lanes: int
    activation: str
    group: int = 4
    weight: str = "int8"

    def shift(self, signed: bool) -> int:
        """What is added to an activation (of type int8 if `signed`, else uint8) to read it as `activation`."""
        if signed == (self.activation == "int8"):
            return 0
        return 128 if signed else -128

    def intrinsic(self) -> str:
        """The tensor intrinsic's name, registered on first use.

        Not TVM's `dot_16x4_vnni`: it passes the bytes as <16 x i32>, and LLVM 22's vpdpbusd takes
        <64 x i8>. Nor imported from `tvm.s_tir.tensor_intrin` at all: that package parses ~500
        TVMScript intrinsics of every target on import (about 20 s of CPU, minutes on a loaded machine).
        """
        key = f"mdoc_dot_{self.lanes}x4_{self.name}"
        if TensorIntrin.get(key, allow_missing=True) is None:
            TensorIntrin.register(key, *_intrinsic(self))
        return key


def _intrinsic(step: DotProduct):
    from tvm.script import tirx as T

    lanes, adtype, group, wdtype, name = step.lanes, step.activation, step.group, step.weight, step.name

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((group,), adtype, offset_factor=1), B: T.Buffer((lanes, group), wdtype, offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, group):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    if name == "vpdpbusd":
        @T.prim_func(s_tir=True)
        def impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
                 C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
            with T.sblock("root"):
                T.reads(C[0:16], A[0:4], B[0:16, 0:4])
                T.writes(C[0:16])
                a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 16),
                                  dtype="uint8x64")
                C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), C.vload([0], dtype="int32x16"), a,
                    B.vload([0, 0], dtype="int8x64"), dtype="int32x16")
    elif name == "vpmaddwd":
        # two bytes widened to int16 against int16 weights: exact (vpmaddubsw on bytes would saturate a
        # u8 x s8 pair sum at int16, the "saturation issue" onnxruntime documents for AVX2)
        madd = "llvm.x86.avx512.pmaddw.d.512" if lanes == 16 else "llvm.x86.avx2.pmadd.wd"

        @T.prim_func(s_tir=True)
        def impl(A: T.Buffer((2,), "uint8", offset_factor=1), B: T.Buffer((lanes, 2), "int16", offset_factor=1),
                 C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:2], B[0:lanes, 0:2])
                T.writes(C[0:lanes])
                a = T.reinterpret(T.broadcast(T.reinterpret(T.cast(A.vload([0], "uint8x2"), "int16x2"),
                                                            dtype="int32"), lanes), dtype=f"int16x{lanes * 2}")
                C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], dtype=f"int32x{lanes}") + T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(madd), a, B.vload([0, 0], dtype=f"int16x{lanes * 2}"),
                    dtype=f"int32x{lanes}")
    else:  # sdot: each int32 lane += the dot product of its 4 bytes of both operands
        @T.prim_func(s_tir=True)
        def impl(A: T.Buffer((4,), "int8", offset_factor=1), B: T.Buffer((4, 4), "int8", offset_factor=1),
                 C: T.Buffer((4,), "int32", offset_factor=1)) -> None:
            with T.sblock("root"):
                T.reads(C[0:4], A[0:4], B[0:4, 0:4])
                T.writes(C[0:4])
                a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int8x4"), dtype="int32"), 4),
                                  dtype="int8x16")
                C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"), C.vload([0], dtype="int32x4"),
                    B.vload([0, 0], dtype="int8x16"), a, dtype="int32x4")
    return desc, impl


def dot_product(spec: CpuSpec) -> DotProduct | None:
    """The int8 step the target's CPU has: vpdpbusd (AVX-512 VNNI), vpmaddwd (AVX2, AVX-512 without VNNI),
    sdot (aarch64 with the dot-product extension), or None (the generic integer kernels serve it)."""
    if spec.isa in ("avx512", "avx2"):
        vnni = "avx512_vnni" in spec.dot_product and spec.lanes == 16
        if vnni:
            return DotProduct("vpdpbusd", 16, "uint8")
        return DotProduct("vpmaddwd", spec.lanes, "uint8", group=2, weight="int16")
    if spec.isa == "neon" and "dotprod" in spec.dot_product:
        return DotProduct("sdot", 4, "int8")
    return None


def has_vnni(spec: CpuSpec) -> bool:
    """Whether the target's CPU has the 512-bit VNNI dot product."""
    step = dot_product(spec)
    return step is not None and step.name == "vpdpbusd"


@dataclass(frozen=True)
class QEpilogue:
    """What an integer kernel does after the accumulation (see the module docstring).

    signed: the activation is int8, else uint8 (either is shifted on reading where the dot product wants the other).
    bias / residual: float32 vector per output channel / tensor of the result's shape.
    activation, alpha, beta: as `Epilogue` (relu, clip, ...).
    y_scale, y_zero_point, out_dtype: requantization to uint8 / int8; None: float32 result.
    """

    signed: bool = False
    bias: bool = False
    residual: bool = False
    activation: str | None = None
    alpha: float | None = None
    beta: float | None = None
    y_scale: float | None = None
    y_zero_point: int = 0
    out_dtype: str = "float32"

    def __post_init__(self):
        if self.activation is not None and self.activation not in TE_ACTIVATIONS:
            raise KernelError(f"unknown fused activation {self.activation!r}; supported: {', '.join(TE_ACTIVATIONS)}")
        if (self.y_scale is None) != (self.out_dtype == "float32"):
            raise KernelError("an integer kernel's result is float32 exactly when it does not requantize")

    def value(self, acc, offset, mult, bias, residual):
        from mdoc.activations import ACTIVATIONS

        t = (acc + offset).astype("float32") * mult
        if bias is not None:
            t = t + bias
        if residual is not None:
            t = t + residual
        if self.activation is not None:
            spec = ACTIVATIONS[self.activation]
            t = TE_ACTIVATIONS[self.activation](t, spec.alpha if self.alpha is None else self.alpha,
                                                spec.beta if self.beta is None else self.beta)
        if self.y_scale is None:
            return t
        info = np.iinfo(self.out_dtype)
        q = tirx.nearbyint(t * tirx.const(1.0 / self.y_scale, "float32")) + tirx.const(float(self.y_zero_point),
                                                                                      "float32")
        q = tirx.max(tirx.min(q, tirx.const(float(info.max), "float32")), tirx.const(float(info.min), "float32"))
        return q.astype(self.out_dtype)

    def tag(self) -> str:
        parts = (["s8"] if self.signed else []) + (["bias"] if self.bias else []) + (["res"] if self.residual else [])
        parts += ([self.activation] if self.activation else []) + ([f"q{self.out_dtype[:-1]}"] if self.y_scale else [])
        return "_".join(parts)

    def extra(self, shape_c: int, res_shape: tuple):
        """The float placeholders the epilogue reads (bias [C], residual) and their Params."""
        tensors, params, bias, residual = [], [], None, None
        if self.bias:
            bias = te.placeholder((shape_c,), "float32", name="bias")
            tensors.append(bias)
            params.append(Param("bias", (shape_c,)))
        if self.residual:
            residual = te.placeholder(res_shape, "float32", name="residual")
            tensors.append(residual)
            params.append(Param("residual", res_shape))
        return tensors, params, bias, residual


def _as_dot(v, signed: bool, step: DotProduct):
    """An activation byte as the dot product reads it: shifted by 128 when its type is the other one."""
    shift = step.shift(signed)
    return (v.astype("int32") + shift).astype(step.activation) if shift else v


def _step(spec: CpuSpec, op: str) -> DotProduct:
    step = dot_product(spec)
    if step is None:
        raise KernelError(f"{op}: the target's CPU ({spec.isa}; dot products: {', '.join(spec.dot_product) or 'none'}) "
                          "has no int8 dot product these kernels use; the generic integer kernels serve it")
    return step


# -- dense ---------------------------------------------------------------------------------------
def pack_qdense_weight(weight: np.ndarray, nv: int = 1, lanes: int = 16, group: int = 4,
                       dtype: str = "int8") -> np.ndarray:
    """int8 [K, N] -> [ceil(N / (lanes nv)) nv, ceil(K / group), lanes, group] of `dtype`, zero padded."""
    k, n = weight.shape
    blocks, kg = ceil_div(ceil_div(n, lanes), nv) * nv, ceil_div(k, group)
    padded = np.zeros((kg * group, blocks * lanes), dtype)
    padded[:k, :n] = weight
    return np.ascontiguousarray(padded.reshape(kg, group, blocks, lanes).transpose(2, 0, 3, 1))


def qdense(a_shape, weight_shape, *, epilogue: QEpilogue = QEpilogue(), spec: CpuSpec | None = None,
           name: str | None = None, tile: tuple[int, int] | None = None) -> Kernel:
    """Y[M, N] = epilogue(A[M, K] @ W) with A uint8 (int8 with `epilogue.signed`) and W int8 [K, N].

    Returns a Kernel f(a, weight (packed, `packers["weight"]`), offset [N] int32, mult [N] float32,
    [bias], [residual], out).
    """
    spec = spec or CpuSpec.host()
    step = _step(spec, "qdense")
    lanes, group = step.lanes, step.group
    m, k = as_dims(a_shape)  # the rows may be a name: known at run time (a sequence), the last tile clamped
    require_static("qdense", "K", k)
    k2, n = (int(d) for d in weight_shape)
    if k2 != k:
        raise KernelError(f"qdense: A {tuple(a_shape)} has K={k} but the weight {tuple(weight_shape)} K={k2}")
    mr, nv = tile or gemm_tile(m, n, spec)
    mp = ceil_div(m, mr) * mr
    blocks = ceil_div(ceil_div(n, lanes), nv) * nv
    kp = ceil_div(k, group) * group
    adtype = "int8" if epilogue.signed else "uint8"

    a = te.placeholder((m, k), adtype, name="a")
    w = te.placeholder((blocks, kp // group, lanes, group), step.weight, name="weight")
    offset = te.placeholder((n,), "int32", name="offset")
    mult = te.placeholder((n,), "float32", name="mult")
    prepared = step.shift(epilogue.signed) != 0 or kp != k
    if prepared:  # rows of whole groups in the dot product's type (padded columns weigh 0)
        src = te.compute((m, kp), lambda i, kk: tirx.if_then_else(
            kk < k, _as_dot(a[i, tirx.min(kk, k - 1)], epilogue.signed, step), tirx.const(0, step.activation)),
            name="a_dot")
    else:
        src = a
    rk = te.reduce_axis((0, kp), "k")
    clamp = (lambda i: tirx.min(i, m - 1)) if is_symbolic(m) or mp != m else (lambda i: i)
    acc = te.compute((mp, blocks * lanes), lambda i, j: te.sum(
        src[clamp(i), rk].astype("int32") * w[j // lanes, rk // group, j % lanes, rk % group].astype("int32"),
        axis=rk), name="acc")
    extra, extra_params, bias, residual = epilogue.extra(n, (m, n))
    out = te.compute((m, n), lambda i, j: epilogue.value(
        acc[i, j], offset[j], mult[j], bias[j] if bias is not None else None,
        residual[i, j] if residual is not None else None), name="out")
    sch = Schedule(te.create_prim_func([a, w, offset, mult, *extra, out]))

    ob, cb = sch.get_sblock("out"), sch.get_sblock("acc")
    i, j = sch.get_loops(ob)
    io, ii = sch.split(i, [None, mr])
    jo, jv, jl = sch.split(j, [None, nv, lanes])
    sch.reorder(jo, io, ii, jv, jl)
    task = sch.fuse(jo, io)
    sch.compute_at(cb, task, preserve_unit_loops=True)
    ci, cj, ck = sch.get_loops(cb)[1:]
    cjv, cjl = sch.split(cj, [nv, lanes])
    cko, cki = sch.split(ck, [None, group])
    sch.reorder(cko, ci, cjv, cjl, cki)
    sch.unroll(ci)
    sch.unroll(cjv)
    sch.parallel(task)
    sch.unroll(ii)
    sch.unroll(jv)
    sch.vectorize(jl)
    if prepared:
        pb = sch.get_sblock("a_dot")
        pi, pk = sch.get_loops(pb)
        sch.parallel(pi)
        sch.vectorize(pk) if kp <= 4096 else None
    init = sch.decompose_reduction(cb, cko)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(cjl, step.intrinsic())

    kname = name or f"qdense_{'d' if is_symbolic(m) else m}x{k}x{n}" + (f"_{epilogue.tag()}" if epilogue.tag() else "")
    params = (Param("a", (m, k), adtype), Param("weight", (blocks, kp // group, lanes, group), step.weight),
              Param("offset", (n,), "int32"), Param("mult", (n,)), *extra_params, Param("out", (m, n), epilogue.out_dtype))
    return Kernel(kname, finish(sch.mod["main"], kname), params, 2 * m * n * k, f"mr={mr} nv={nv} {step.name}",
                  packers={"weight": lambda x, _nv=nv, _s=step: pack_qdense_weight(np.asarray(x, np.int8), _nv, _s.lanes,
                                                                                   _s.group, _s.weight)})


# -- conv ----------------------------------------------------------------------------------------
def pack_qconv_weight(weight: np.ndarray, lanes: int = 16, group: int = 4, dtype: str = "int8") -> np.ndarray:
    """int8 [OC, C, KH, KW] -> [ceil(OC / lanes), ceil(C / group), KH, KW, lanes, group] of `dtype`, zero padded."""
    oc, c, kh, kw = weight.shape
    ob, cg = ceil_div(oc, lanes), ceil_div(c, group)
    padded = np.zeros((ob * lanes, cg * group, kh, kw), dtype)
    padded[:oc, :c] = weight
    return np.ascontiguousarray(padded.reshape(ob, lanes, cg, group, kh, kw).transpose(0, 2, 4, 5, 1, 3))


def qconv2d(data_shape, weight_shape, *, strides=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), x_zero_point: int = 0,
            epilogue: QEpilogue = QEpilogue(), spec: CpuSpec | None = None, name: str | None = None,
            tile: tuple[int] | None = None) -> Kernel:
    """Y = epilogue(Conv(X - xz, W)) for NCHW uint8 (int8 with `epilogue.signed`) X and int8 W [OC, C, KH, KW]
    (no groups), Y NCHW; x_zero_point (in X's own type) pads.

    Returns a Kernel f(x, weight (packed, `packers["weight"]`), offset [OC] int32, mult [OC] float32,
    [bias], [residual], out).
    """
    spec = spec or CpuSpec.host()
    step = _step(spec, "qconv2d")
    lanes, group = step.lanes, step.group
    n, c, h, wd = batch_dims("qconv2d", data_shape)  # the batch may be known only at run time
    oc, c2, kh, kw = (int(d) for d in weight_shape)
    if c2 != c:
        raise KernelError(f"qconv2d: data {tuple(data_shape)} has {c} channels, the weight {tuple(weight_shape)} "
                          f"{c2} (grouped convs take the float kernels)")
    (sh, sw), (dh, dw) = tuple(strides), tuple(dilation)
    pt, pl, pb, pr = as_pads(padding, "qconv2d")
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise KernelError(f"qconv2d: output would be empty ({oh}x{ow})")
    ob, cg = ceil_div(oc, lanes), ceil_div(c, group)
    owb = (tile[0] if tile else pick_block(ow, max(1, spec.accumulators - 1), 4))
    owp = ceil_div(ow, owb) * owb
    hp = h + pt + pb
    wp = max(wd + pl + pr, (owp - 1) * sw + dw * (kw - 1) + 1)
    adtype = "int8" if epilogue.signed else "uint8"
    pad = x_zero_point + step.shift(epilogue.signed)  # the zero point, read as the dot product reads bytes

    x = te.placeholder((n, c, h, wd), adtype, name="x")
    w = te.placeholder((ob, cg, kh, kw, lanes, group), step.weight, name="weight")
    offset = te.placeholder((oc,), "int32", name="offset")
    mult = te.placeholder((oc,), "float32", name="mult")

    def packed(i, g, y, xx, v):
        ch = g * group + v
        inside = tirx.all(y >= pt, y < pt + h, xx >= pl, xx < pl + wd)
        value = _as_dot(x[i, tirx.min(ch, c - 1), tirx.min(tirx.max(y - pt, 0), h - 1),
                          tirx.min(tirx.max(xx - pl, 0), wd - 1)], epilogue.signed, step)
        value = tirx.if_then_else(inside, value, tirx.const(pad, step.activation))
        return tirx.if_then_else(ch < c, value, tirx.const(0, step.activation))

    data = te.compute((n, cg, hp, wp, group), packed, name="data")
    rg, ry, rx, rv = (te.reduce_axis((0, cg), "g"), te.reduce_axis((0, kh), "ky"), te.reduce_axis((0, kw), "kx"),
                      te.reduce_axis((0, group), "v"))
    acc = te.compute((n, ob, oh, owp, lanes), lambda i, b, y, xx, o: te.sum(
        data[i, rg, y * sh + ry * dh, xx * sw + rx * dw, rv].astype("int32")
        * w[b, rg, ry, rx, o, rv].astype("int32"), axis=[rg, ry, rx, rv]), name="acc")
    extra, extra_params, bias, residual = epilogue.extra(oc, (n, oc, oh, ow))
    out = te.compute((n, oc, oh, ow), lambda i, o, y, xx: epilogue.value(
        acc[i, o // lanes, y, xx, o % lanes], offset[o], mult[o], bias[o] if bias is not None else None,
        residual[i, o, y, xx] if residual is not None else None), name="out")
    sch = Schedule(te.create_prim_func([x, w, offset, mult, *extra, out]))

    # the packed input: one parallel pass
    db = sch.get_sblock("data")
    dl = sch.get_loops(db)
    sch.parallel(sch.fuse(dl[1], dl[2]) if is_symbolic(n) else sch.fuse(dl[0], dl[1], dl[2]))
    sch.vectorize(sch.fuse(dl[3], dl[4])) if wp * group <= 1024 else None
    # the output: (image, channel block, row) in parallel, then blocks of owb columns
    o_b, c_b = sch.get_sblock("out"), sch.get_sblock("acc")
    i, o, y, xx = sch.get_loops(o_b)
    bo, bl = sch.split(o, [None, lanes])
    xo, xi = sch.split(xx, [None, owb])
    sch.reorder(i, bo, y, xo, bl, xi)
    task = sch.fuse(i, bo, y)
    sch.parallel(task)
    sch.compute_at(c_b, xo, preserve_unit_loops=True)
    loops = sch.get_loops(c_b)
    ci, cbk, cy, cx, co, rg_, ry_, rx_, rv_ = loops[-9:]
    sch.reorder(rg_, ry_, rx_, cx, co, rv_)
    sch.unroll(cx)
    sch.vectorize(xi) if owb >= 4 else None
    init = sch.decompose_reduction(c_b, rg_)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(co, step.intrinsic())

    tag = window_tag((kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw))
    kname = name or f"qconv2d_{'d' if is_symbolic(n) else n}x{c}x{h}x{wd}_{oc}_{tag}" + (f"_{epilogue.tag()}" if epilogue.tag() else "")
    params = (Param("x", (n, c, h, wd), adtype), Param("weight", (ob, cg, kh, kw, lanes, group), step.weight),
              Param("offset", (oc,), "int32"), Param("mult", (oc,)), *extra_params,
              Param("out", (n, oc, oh, ow), epilogue.out_dtype))
    return Kernel(kname, finish(sch.mod["main"], kname), params, 2 * n * oc * oh * ow * c * kh * kw,
                  f"owb={owb} {step.name}",
                  packers={"weight": lambda v, _s=step: pack_qconv_weight(np.asarray(v, np.int8), _s.lanes, _s.group,
                                                                        _s.weight)})
