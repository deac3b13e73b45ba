"""conv2d on NCHW activations with weights packed at compile time: dense, grouped, strided, dilated.

Why this shape: an unscheduled TVM conv2d is scalar single-threaded code (~2 GFLOP/s here),
and MetaSchedule needs minutes per layer.  This builder writes the schedule that reached
parity with onnxruntime (~200 GFLOP/s on 2 Zen 4 cores) directly, for any static shape:

* The output-channel block is one vector (`lanes` channels, 16 for AVX-512) and the
  register tile is `wb` output columns x `ocv` channel vectors, sized so the tile fills
  the vector registers (28 accumulators of 32 on AVX-512).  Each inner step loads one
  weight vector and does `wb` FMAs with the input value broadcast from memory
  (`vfmadd231ps mem{1to16}`).
* Weights are packed once, at compile time, as [B, S/ici, KH, KW, ici, lanes]: the lanes
  of one block are consecutive output channels and the inner reduction walks the
  weights contiguously.  Output channels are padded up to a whole tile with zeros.
* The activations stay NCHW on both sides, because the IR is NCHW.  The input is read
  in place (a broadcast per FMA does not care about layout) unless it needs zero
  padding, extra width for a ragged last tile, or extra channels for a group block;
  then one parallel stage copies it into a padded buffer.  The accumulator tile is
  `cache_write`-style local and the output block (epilogue: bias, residual, activation)
  reads it and stores whole NCHW rows, vectorized along the width.
* 1x1 stride-1 convs with no padding (and one group) are matmuls W[OC, C] x X[C, H*W]; they
  go through the GEMM schedule of `matmul.py` with the vectors along the flattened pixels
  (contiguous in NCHW), so their stores need no transposition either.  That matters there:
  with few input channels the transposing store of the general path costs as much as the
  FMAs.
* Groups: a block of `lanes` output channels reads the contiguous input-channel span
  that its groups cover; weights outside a lane's own group are zero.  That is exact
  for every grouping and costs no extra work when a group holds a whole number of
  vectors (ResNeXt, grouped 1x1); depthwise convs go to `depthwise.py` instead.

Tasks by rows: every parallel loop here (and in depthwise.py, blocked_window.py) puts the
output rows outside the channel blocks, so TVM's static split gives each core a band of rows
with all its channels.  The next layer's core then finds most of its input in its own L2,
written there by the layer before; split by channels, every layer reads half its input from
the other core.  A chain of thirty 1x1 convs (32 channels, 56x56) went from 2.5 to 1.6 ms.

Remainders (OC not a multiple of `lanes`, width not a multiple of `wb`, ragged input
channel blocks) are handled by padding the packed weight and the intermediate buffers,
never by requiring divisibility.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tvm import te, tirx
from tvm.s_tir import Schedule
from tvm.s_tir.schedule import ScheduleError

from .common import (
    CpuSpec,
    Epilogue,
    Kernel,
    KernelError,
    Param,
    apply_nchw_epilogue,
    as_pads,
    as_pair,
    batch_dims,
    ceil_div,
    is_symbolic,
    blocked_shape,
    check_dtype,
    check_layout,
    epilogue_inputs,
    finish,
    largest_divisor,
    window_tag,
    pick_block,
)
from .depthwise import depthwise_conv2d
from .matmul import gemm_tile, schedule_gemm
from .tile_schedules import schedule_copy, schedule_nchw_tile, schedule_nchwc_tile
from .winograd import plan_winograd, winograd_conv2d

__all__ = ["Conv2dPlan", "conv2d", "pack_conv2d_weight", "plan_conv2d"]


@dataclass(frozen=True)
class Conv2dPlan:
    """Every static decision of one conv2d kernel: shapes, tiling, packed layouts.

    The packed weight has shape (blocks, span // ici, KH, KW, ici, lanes); block b's lane v
    is output channel b * lanes + v and its reduction runs over input channels
    ic_start(b) .. ic_start(b) + span.
    """

    data_shape: tuple[int, int, int, int]
    weight_shape: tuple[int, int, int, int]  # OIHW, I = C / groups
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    dilation: tuple[int, int]
    groups: int
    lanes: int
    wb: int  # register tile width (output columns, or flattened pixels for pointwise)
    ocv: int  # channel vectors per register tile
    ici: int  # input channels per inner reduction block
    span: int  # input channels one block reduces over (a multiple of ici)
    blocks: int  # output-channel blocks of `lanes` (a multiple of ocv)
    pointwise: bool  # 1x1, stride 1, no padding, one group: a GEMM over the flattened pixels
    mr: int = 0  # pointwise only: GEMM register tile rows (output channels) ...
    nv: int = 0  # ... and vectors (pixels)
    layout: str = "NCHW"  # of the output and residual; NCHWc: see common.blocked_shape
    data_layout: str = "NCHW"  # of the input (NCHW under an NCHWc output: a stem conv over 3 channels)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        n, _, h, w = self.data_shape
        oc, _, kh, kw = self.weight_shape
        (sh, sw), (dh, dw) = self.strides, self.dilation
        pt, pl, pb, pr = self.pads
        return (n, oc, (h + pt + pb - dh * (kh - 1) - 1) // sh + 1, (w + pl + pr - dw * (kw - 1) - 1) // sw + 1)

    @property
    def packed_weight_shape(self) -> tuple[int, ...]:
        oc, c, kh, kw = self.weight_shape
        if self.pointwise:
            return (oc, c)
        return (self.blocks, self.span // self.ici, kh, kw, self.ici, self.lanes)

    def ic_start(self, b: int) -> int:
        oc, cg, _, _ = self.weight_shape
        return 0 if self.groups == 1 else (b * self.lanes // (oc // self.groups)) * cg

    @property
    def flops(self) -> int:
        n, oc, oh, ow = self.out_shape
        _, cg, kh, kw = self.weight_shape
        return 2 * n * oc * oh * ow * cg * kh * kw


def plan_conv2d(data_shape, weight_shape, strides=1, padding=0, dilation=1, groups=1,
                spec: CpuSpec | None = None, tile: tuple[int, ...] | None = None, layout: str = "NCHW",
                data_layout: str | None = None) -> Conv2dPlan:
    """Choose the tiling of a dense or grouped conv2d (tile=(wb, ocv, ici) overrides the choice;
    NCHWc takes (wb, ocv): its reduction step is one input-channel vector)."""
    spec = spec or CpuSpec.host()
    op = "conv2d"
    data_layout = data_layout or layout
    check_layout(op, layout)
    check_layout(op, data_layout)
    data_shape = batch_dims(op, data_shape)
    weight_shape = tuple(int(d) for d in weight_shape)
    if len(data_shape) != 4 or len(weight_shape) != 4:
        raise KernelError(f"{op}: expects NCHW data and OIHW weight, got data {data_shape} and weight {weight_shape}")
    n, c, h, w = data_shape
    oc, cg, kh, kw = weight_shape
    strides, dilation, pads = as_pair(strides, "strides", op), as_pair(dilation, "dilation", op), as_pads(padding, op)
    if groups < 1 or c % groups or oc % groups or cg * groups != c:
        raise KernelError(f"{op}: data has {c} channels and weight {weight_shape} with groups={groups}; "
                          f"need C == groups * weight.shape[1] and OC divisible by groups")
    if min(strides) < 1 or min(dilation) < 1 or min(pads) < 0:
        raise KernelError(f"{op}: strides {strides} and dilation {dilation} must be >= 1 and pads {pads} >= 0")
    lanes = spec.lanes
    if "NCHWc" in (layout, data_layout) and groups != 1:
        raise KernelError(f"{op}: the NCHWc layout takes dense convs (one group) here, got groups={groups}; "
                          "depthwise convs have their own NCHWc kernel")
    if layout == "NCHW" and data_layout == "NCHWc":
        raise KernelError(f"{op}: an NCHWc input needs an NCHWc output")
    pointwise = kh == kw == 1 and strides == (1, 1) and pads == (0, 0, 0, 0) and groups == 1 and layout == "NCHW"
    oh = (h + pads[0] + pads[2] - dilation[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (w + pads[1] + pads[3] - dilation[1] * (kw - 1) - 1) // strides[1] + 1
    if oh < 1 or ow < 1:
        raise KernelError(f"{op}: output would be empty ({oh}x{ow}) for input {h}x{w}, kernel {kh}x{kw}, "
                          f"strides {strides}, pads {pads}, dilation {dilation}")
    if pointwise:
        mr, nv = tile[:2] if tile is not None and len(tile) == 2 else gemm_tile(oc, oh * ow, spec)
        pix = oh * ow
        waste = ceil_div(pix, nv * lanes) * nv * lanes / pix - 1
        if (tile is not None and len(tile) == 2) or waste <= 0.08:
            return Conv2dPlan(data_shape, weight_shape, strides, pads, dilation, groups, lanes, 0, 0, 0, c, 0, True, mr, nv)
        # few pixels that do not fill whole vectors (7x7 = 49, 14x14 = 196): the GEMM would
        # compute up to 30% padding; the channel-vector path below has no pixel padding
    ocg = oc // groups
    nvec = ceil_div(oc, lanes)
    width = ow
    acc = spec.accumulators
    if tile is not None:
        wb, ocv, ici = tile if len(tile) == 3 else (*tile, lanes)
    else:
        # Half the registers as accumulators: 14 columns x 1 vector on AVX-512 runs as fast as
        # the notes' 28 x 1 (both ~105 GFLOP/s per core, measured on the ResNet-18 shapes) but
        # LLVM compiles it 5x faster (0.4 s instead of 2 s: the transposing store of a 28-wide
        # tile is what takes the time).  More than one channel vector per tile needs a register
        # per weight vector and keeps each broadcast in a register: 14 x 2 (28 accumulators)
        # spills and drops the 7x7 stem conv from 104 to 36 GFLOP/s.
        tile_max = min(acc // 2, 16)
        wb = pick_block(width, tile_max, low=max(4, tile_max // 2))
        ocv = 1
        for v in (4, 3, 2):
            if v <= nvec and wb * v <= tile_max and nvec % v == 0:
                ocv = v
                break
        ici = None
    blocks = ceil_div(nvec, ocv) * ocv
    # input-channel span of one block
    if groups == 1:
        span = cg
    else:
        span = 0
        for b in range(blocks):
            lo_oc, hi_oc = b * lanes, min(b * lanes + lanes, oc) - 1
            if lo_oc >= oc:
                break
            span = max(span, (hi_oc // ocg - lo_oc // ocg + 1) * cg)
    if data_layout == "NCHWc":
        ici = lanes  # one input vector per reduction step: rco, rci index the blocked input directly
    elif ici is None:
        ici = largest_divisor(span, 16)
        if ici < 4 and span > 16:  # awkward channel count: pad the span to a multiple of 8
            ici = 8
    span = ceil_div(span, ici) * ici
    return Conv2dPlan(data_shape, weight_shape, strides, pads, dilation, groups, lanes, wb, ocv, ici, span, blocks,
                      False, layout=layout, data_layout=data_layout)


def pack_conv2d_weight(weight: np.ndarray, plan: Conv2dPlan) -> np.ndarray:
    """OIHW weight -> the plan's packed layout (zeros in padded channels and across groups)."""
    weight = np.asarray(weight, dtype="float32")
    if weight.shape != plan.weight_shape:
        raise KernelError(f"pack_conv2d_weight: weight has shape {weight.shape}, plan expects {plan.weight_shape}")
    oc, cg, kh, kw = weight.shape
    if plan.pointwise:
        return np.ascontiguousarray(weight.reshape(oc, cg))
    ocg = oc // plan.groups
    lanes, ici, span = plan.lanes, plan.ici, plan.span
    packed = np.zeros((plan.blocks, span, kh, kw, lanes), "float32")  # [b, r, kh, kw, v]
    if plan.groups == 1:  # every lane reduces over all input channels: one transpose
        full = np.zeros((plan.blocks * lanes, span, kh, kw), "float32")
        full[:oc, :cg] = weight
        packed = full.reshape(plan.blocks, lanes, span, kh, kw).transpose(0, 2, 3, 4, 1)
        return np.ascontiguousarray(packed.reshape(plan.blocks, span // ici, ici, kh, kw, lanes).transpose(0, 1, 3, 4, 2, 5))
    for b in range(plan.blocks):
        start = plan.ic_start(b)
        for v in range(lanes):
            o = b * lanes + v
            if o >= oc:
                break
            g = o // ocg
            # this lane's own input channels, relative to the block's span
            lo = g * cg - start
            r = np.arange(span)
            own = (r >= lo) & (r < lo + cg)
            packed[b, own, :, :, v] = weight[o, r[own] - lo]
    return np.ascontiguousarray(packed.reshape(plan.blocks, span // ici, ici, kh, kw, lanes).transpose(0, 1, 3, 4, 2, 5))


def conv2d(data_shape: Sequence[int], weight, *, strides=1, padding=0, dilation=1, groups: int = 1,
           epilogue: Epilogue = Epilogue(), dtype: str = "float32", spec: CpuSpec | None = None,
           name: str | None = None, tile: tuple[int, ...] | None = None, layout: str = "NCHW",
           data_layout: str | None = None) -> Kernel:
    """A scheduled NCHW (or NCHWc) conv2d, optionally with a fused epilogue.

    data_shape: (N, C, H, W) of the input.
    weight: the OIHW weight as a numpy array (packed now, becomes a constant parameter) or
        just its shape (the kernel then takes the packed weight at run time; pack it with
        `kernel.packers["weight"]`).
    strides, dilation: int or (h, w); padding: int, (h, w) or ONNX (top, left, bottom, right).
    groups: ONNX `group`; depthwise convs (C == groups, one input channel per group)
        are routed to `depthwise_conv2d`.
    epilogue: bias [OC], residual [N, OC, OH, OW] and activation, fused before the store.
    tile: overrides the builder's register tile (what `mdoc tune` searches): (wb, ocv, ici) for
        the channel-vector path, (mr, nv) for the GEMM path of a pointwise conv, and
        (rb, rows per task) for a depthwise conv; (wb, ocv) in NCHWc, where a 3x3 stride-1 conv
        takes (m,) or (m, mr, nv) for Winograd F(m x m, 3 x 3) (`winograd.py`, also chosen
        without a tile where it pays, see `winograd_applies`).
    layout: "NCHWc" takes and returns activations blocked by the vector width
        (`common.blocked_shape`; data, residual and output), for chains of convs that never
        need NCHW between them; one group, channel counts in whole vectors.
    data_layout: the input's layout when it differs from the output's (an NCHW image into a
        stem conv whose output starts an NCHWc chain); defaults to `layout`.
    Returns a Kernel whose PrimFunc is `f(data, weight, [bias], [residual], out)`.
    """
    spec = spec or CpuSpec.host()
    check_dtype("conv2d", dtype)
    wshape = tuple(int(d) for d in (weight.shape if isinstance(weight, np.ndarray) else weight))
    family = conv_family(data_shape, wshape, strides, padding, dilation, groups, spec, tile, layout, data_layout)
    if family == "depthwise":
        if tile is not None and layout == "NCHW":
            tile = tuple(tile[:2])  # (rb, rows per task); NCHWc takes (wb, ocv[, rows per task])
        return depthwise_conv2d(data_shape, weight, strides=strides, padding=padding, dilation=dilation,
                                epilogue=epilogue, dtype=dtype, spec=spec, name=name, tile=tile, layout=layout)
    if family == "winograd":
        try:
            return winograd_conv2d(data_shape, weight, padding=padding, epilogue=epilogue, spec=spec, name=name,
                                   tile=tile)
        except ScheduleError:
            # the input transform's row unrolling does not always schedule over a run-time batch
            # (YOLOv8's 64x80x80 head conv): the direct kernel takes it, as where Winograd does not pay
            if tile is not None or not is_symbolic(data_shape[0]):
                raise
    plan = plan_conv2d(data_shape, wshape, strides, padding, dilation, groups, spec, tile, layout, data_layout)
    if plan.pointwise:
        return _build_pointwise(plan, weight if isinstance(weight, np.ndarray) else None, epilogue, name)
    return _build(plan, weight if isinstance(weight, np.ndarray) else None, epilogue, name)


CONV_FAMILIES = ("depthwise", "winograd", "pointwise", "direct")


def conv_family(data_shape, weight_shape, strides=1, padding=0, dilation=1, groups: int = 1,
                spec: CpuSpec | None = None, tile: tuple[int, ...] | None = None, layout: str = "NCHW",
                data_layout: str | None = None) -> str:
    """The kernel family `conv2d` builds for a conv (one of CONV_FAMILIES), decided here only:
    `depthwise_conv2d` for a depthwise conv, Winograd where `winograd_applies`, else the direct
    kernel's GEMM path for a pointwise conv (`plan_conv2d`'s rule) or its channel-vector path.
    (A Winograd conv that does not schedule over a run-time batch falls back to the direct kernel.)
    `spec`: the CPU built for (default: this host's)."""
    spec = spec or CpuSpec.host()
    if is_depthwise(data_shape, weight_shape, groups):
        return "depthwise"
    if winograd_applies(data_shape, weight_shape, strides, dilation, groups, layout, data_layout, spec, padding, tile):
        return "winograd"
    plan = plan_conv2d(data_shape, weight_shape, strides, padding, dilation, groups, spec, tile, layout, data_layout)
    return "pointwise" if plan.pointwise else "direct"


def is_depthwise(data_shape, weight_shape, groups: int) -> bool:
    """One input channel per group and as many groups as channels (the depthwise kernels')."""
    return groups > 1 and len(weight_shape) == 4 and int(weight_shape[1]) == 1 and groups == int(data_shape[1])


# Winograd is the default where its cost model expects at least this speedup over the direct
# kernel: measured 3.1x / 3.4x / 2.1x on ResNet-18's 56, 28 and 14 layers (predicted 3.9 / 3.7 /
# 2.1), but only 5-10% at 512x7x7 with cold caches (predicted 1.5; its 38 MB weight streams from
# memory), which stays direct unless `mdoc tune` measures otherwise
WINOGRAD_MIN_SPEEDUP = 2.0


def winograd_eligible(data_shape, weight_shape, strides, dilation, groups, lanes: int) -> bool:
    """Whether `winograd.winograd_conv2d` takes this conv at all: 3x3, stride 1, no dilation,
    one group, channels in whole vectors (on NCHWc activations)."""
    return (tuple(weight_shape[2:]) == (3, 3) and groups == 1 and data_shape[1] % lanes == 0
            and weight_shape[0] % lanes == 0 and as_pair(strides, "strides", "conv2d") == (1, 1)
            and as_pair(dilation, "dilation", "conv2d") == (1, 1))


def winograd_applies(data_shape, weight_shape, strides, dilation, groups, layout, data_layout, spec, padding,
                     tile) -> bool:
    """Whether conv2d routes to `winograd.winograd_conv2d`: an eligible NCHWc conv whose tile asks
    for it ((m,) or (m, mr, nv)), or, with no tile, where its estimated speedup is large."""
    if (layout, data_layout or layout) != ("NCHWc", "NCHWc") or \
            not winograd_eligible(data_shape, weight_shape, strides, dilation, groups, spec.lanes):
        return False
    if tile is not None:
        return len(tile) in (1, 3)
    try:
        return plan_winograd(data_shape, weight_shape, padding, spec).estimated_speedup >= WINOGRAD_MIN_SPEEDUP
    except KernelError:
        return False


def _conv_epilogue_inputs(epi: Epilogue, oc: int, out_shape):
    if epi.scale is not None:
        raise KernelError("conv2d: Epilogue.scale is not supported for convolutions; fold it into the weight")
    return epilogue_inputs(epi, (oc,), out_shape)


def _kernel_name(plan: Conv2dPlan, epi: Epilogue, name: str | None) -> str:
    if name:
        return name
    n, c, h, w = plan.data_shape
    oc, _, kh, kw = plan.weight_shape
    tag = f"conv2d_{window_tag((kh, kw), plan.strides, plan.pads, plan.dilation)}_{c}x{h}x{w}_{oc}"
    tag += f"_g{plan.groups}" if plan.groups > 1 else ""
    tag += {("NCHWc", "NCHWc"): "_nchwc", ("NCHW", "NCHWc"): "_to_nchwc"}.get((plan.data_layout, plan.layout), "")
    return tag + (f"_{epi.tag()}" if epi.tag() else "")


def _build(plan: Conv2dPlan, weight: np.ndarray | None, epi: Epilogue, name: str | None) -> Kernel:
    n, c, h, w = plan.data_shape
    oc, cg, kh, kw = plan.weight_shape
    (sh, sw), (dh, dw) = plan.strides, plan.dilation
    pt, pl, _, _ = plan.pads
    _, _, oh, ow = plan.out_shape
    lanes, wb, ici, span = plan.lanes, plan.wb, plan.ici, plan.span
    ocg = oc // plan.groups
    zero = tirx.const(0.0, "float32")
    blocked, blocked_in = plan.layout == "NCHWc", plan.data_layout == "NCHWc"

    owp = ceil_div(ow, wb) * wb
    # input extent the (padded) output grid touches
    need_c = max(plan.ic_start(b) for b in range(plan.blocks)) + span
    vh, vw = (oh - 1) * sh + dh * (kh - 1) + 1, (owp - 1) * sw + dw * (kw - 1) + 1
    direct = plan.pads == (0, 0, 0, 0) and vh <= h and vw <= w and need_c <= c

    data_shape = blocked_shape(plan.data_shape, lanes) if blocked_in else plan.data_shape
    data = te.placeholder(data_shape, "float32", name="data")
    if blocked_in:  # channel block cb, lane ci: the reduction walks whole input vectors
        inside = (lambda y, x: tirx.all(y >= pt, y < pt + h, x >= pl, x < pl + w))
        source = data if direct else te.compute(
            (n, ceil_div(c, lanes), vh, vw, lanes),
            lambda i, cb, y, x, v: tirx.if_then_else(inside(y, x), data[i, cb, y - pt, x - pl, v], zero), name="pad")

        def read(i, b, cb, ci, y, x):
            return source[i, cb, y, x, ci]
    else:
        source = data if direct else te.compute(
            (n, need_c, vh, vw),
            lambda i, ch, y, x: tirx.if_then_else(tirx.all(ch < c, y >= pt, y < pt + h, x >= pl, x < pl + w),
                                                  data[i, ch, y - pt, x - pl], zero),
            name="pad")

        def read(i, b, cb, ci, y, x):
            start = 0 if plan.groups == 1 else (b * lanes // ocg) * cg
            return source[i, start + cb * ici + ci, y, x]

    wparam = te.placeholder(plan.packed_weight_shape, "float32", name="weight")
    rco = te.reduce_axis((0, span // ici), "rco")
    rkh = te.reduce_axis((0, kh), "rkh")
    rkw = te.reduce_axis((0, kw), "rkw")
    rci = te.reduce_axis((0, ici), "rci")
    acc = te.compute(
        (n, plan.blocks, oh, owp, lanes),
        lambda i, b, y, x, v: te.sum(
            read(i, b, rco, rci, y * sh + rkh * dh, x * sw + rkw * dw) * wparam[b, rco, rkh, rkw, rci, v],
            axis=[rco, rkh, rkw, rci]),
        name="acc")
    out_shape = blocked_shape(plan.out_shape, lanes) if blocked else plan.out_shape
    extra, extra_params, bias, residual = _conv_epilogue_inputs(epi, oc, out_shape)
    if blocked:
        def fout(i, b, y, x, v):
            val = acc[i, b, y, x, v]
            if bias is not None:  # a padded last vector (oc % lanes) adds 0 in its extra lanes
                o = b * lanes + v
                val = val + (bias[o] if oc % lanes == 0 else
                             tirx.if_then_else(o < oc, bias[tirx.min(o, oc - 1)], tirx.const(0.0, "float32")))
            val = val + residual[i, b, y, x, v] if residual is not None else val
            return epi.activate(val)
    else:
        def fout(i, o, y, x):
            return apply_nchw_epilogue(epi, acc[i, o // lanes, y, x, o % lanes], bias, residual, i, o, y, x)
    out = te.compute(out_shape, fout, name="out")
    sch = Schedule(te.create_prim_func([data, wparam, *extra, out]))
    (schedule_nchwc_tile if blocked else schedule_nchw_tile)(sch, "out", "acc", n_reduce=4, lanes=lanes, wb=wb,
                                                             ocv=plan.ocv)
    if not direct:
        schedule_copy(sch, "pad", lanes)

    kname = _kernel_name(plan, epi, name)
    wvalue = pack_conv2d_weight(weight, plan) if weight is not None else None
    params = (Param("data", data_shape), Param("weight", plan.packed_weight_shape, value=wvalue),
              *extra_params, Param("out", out_shape))
    notes = (f"wb={wb} ocv={plan.ocv} ici={ici} span={span} blocks={plan.blocks}"
             f"{' nchwc' if blocked else ''}{' padded-copy' if not direct else ''}")
    return Kernel(kname, finish(sch.mod["main"], kname), params, plan.flops, notes,
                  packers={"weight": lambda a, _p=plan: pack_conv2d_weight(a, _p)})


def _build_pointwise(plan: Conv2dPlan, weight: np.ndarray | None, epi: Epilogue, name: str | None) -> Kernel:
    """1x1 / stride 1 / no padding: out[n, o, p] = sum_c W[o, c] * X[n, c, p] over p = h * W + w."""
    n, c, h, w = plan.data_shape
    oc = plan.weight_shape[0]
    lanes, mr, nv = plan.lanes, plan.mr, plan.nv
    pix = h * w
    ocp = ceil_div(oc, mr) * mr
    pixp = ceil_div(pix, lanes * nv) * lanes * nv

    data = te.placeholder((n, c, h, w), "float32", name="data")
    if pixp == pix:
        def xread(i, ch, p):
            return data[i, ch, p // w, p % w]  # simplifies to a contiguous vector load
        padded = None
    else:
        # vectors must not read past the end of a channel: copy into whole vectors first
        padded = te.compute((n, c, pixp),
                            lambda i, ch, p: tirx.if_then_else(p < pix, data[i, ch, tirx.min(p, pix - 1) // w,
                                                                               tirx.min(p, pix - 1) % w],
                                                               tirx.const(0.0, "float32")),
                            name="pad")

        def xread(i, ch, p):
            return padded[i, ch, p]

    wparam = te.placeholder((oc, c), "float32", name="weight")
    rk = te.reduce_axis((0, c), "k")
    clamp = (lambda o: tirx.min(o, oc - 1)) if ocp != oc else (lambda o: o)
    acc = te.compute((n, ocp, pixp), lambda i, o, p: te.sum(wparam[clamp(o), rk] * xread(i, rk, p), axis=rk), name="acc")
    extra, extra_params, bias, residual = _conv_epilogue_inputs(epi, oc, plan.out_shape)
    out = te.compute(plan.out_shape,
                     lambda i, o, y, x: apply_nchw_epilogue(epi, acc[i, o, y * w + x], bias, residual, i, o, y, x),
                     name="out")
    sch = Schedule(te.create_prim_func([data, wparam, *extra, out]))
    sch = flatten_output_spatial(sch, "out")
    schedule_gemm(sch, "out", "acc", lanes=lanes, mr=mr, nv=nv, batch_loops=1)
    if padded is not None:
        schedule_copy(sch, "pad", lanes, vectorize_whole_row=True)

    kname = _kernel_name(plan, epi, name)
    wvalue = pack_conv2d_weight(weight, plan) if weight is not None else None
    params = (Param("data", plan.data_shape), Param("weight", plan.packed_weight_shape, value=wvalue),
              *extra_params, Param("out", plan.out_shape))
    notes = f"gemm mr={mr} nv={nv} pointwise{' padded-copy' if padded is not None else ''}"
    return Kernel(kname, finish(sch.mod["main"], kname), params, plan.flops, notes,
                  packers={"weight": lambda a, _p=plan: pack_conv2d_weight(a, _p)})


def flatten_output_spatial(sch: Schedule, block: str) -> Schedule:
    """Iterate an NCHW output block over (n, c, h*w) and return a schedule of the simplified result.

    The block layout (not just its loops) is flattened so that the accumulator's column index
    becomes the loop variable itself; `transform_block_layout` leaves it as
    `p // ow * ow + p % ow`, which compute_at cannot bound, hence the StmtSimplify round trip.
    """
    b = sch.get_sblock(block)
    ow = int(sch.get(b).iter_vars[3].dom.extent)
    sch.transform_block_layout(b, lambda i, o, y, x: (i, o, y * ow + x))
    return Schedule(tirx.transform.StmtSimplify()(sch.mod))
