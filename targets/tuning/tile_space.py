"""The register tiles worth trying for one hand-scheduled kernel request.

Why: every builder in `targets/cpu_kernels` picks its tile by a rule measured on a few
shapes (ResNet-18's convs, BERT's dense layers).  The best tile of a given layer depends on
its widths, channel counts and the cache, which the rule only approximates; a pointwise
conv over 14 x 14 pixels, for instance, may run better as a GEMM with a few padded pixels
than on the channel-vector path the rule chose.  The spaces are small, a dozen tiles or
fewer, each one legal for the builder, so `tile_sweep` can measure all of them.

Tiles, per builder (the `tile=` argument each takes):
  dense, batch_matmul, pointwise conv2d   (mr, nv): rows x vectors of the GEMM tile
  conv2d                                   (wb, ocv, ici): output columns x channel
                                           vectors of the tile, input channels per step;
                                           NCHWc (wb, ocv), and for 3x3 stride 1 also
                                           Winograd's (m, mr, nv)
  depthwise conv2d, pool2d                 (rb, rows per task); NCHWc: (wb, ocv, rows per task)
  inverted_residual                        (rows per task,)
"""

from __future__ import annotations

import math

from ..cpu_kernels import CpuSpec, KernelError
from ..cpu_kernels.blocked_window import blocked_window_tiles, plan_blocked_window
from ..cpu_kernels.common import ceil_div
from ..cpu_kernels.conv import conv_family, is_depthwise, plan_conv2d, winograd_eligible
from ..cpu_kernels.inverted_residual import inverted_residual_tiles, plan_inverted_residual
from ..cpu_kernels.winograd import plan_winograd, winograd_tiles
from ..cpu_kernels.depthwise import plan_window
from ..cpu_kernels.request import KernelRequest

MAX_TILES = 12


def tile_space(request: KernelRequest, spec: CpuSpec) -> list[tuple[int, ...]]:
    """Candidate tiles for `request` (the builder's own choice excluded: that is the baseline)."""
    args, kw = request.args, dict(request.kwargs)
    try:
        if request.builder == "dense":
            (m, _), b_shape = args[0], args[1]
            return gemm_tiles(m, b_shape[0] if kw.get("transpose_b") else b_shape[1], spec)
        if request.builder == "batch_matmul":
            (_, m, _), b_shape = args[0], args[1]
            return gemm_tiles(m, b_shape[1] if kw.get("transpose_b") else b_shape[2], spec)
        if request.builder == "pool2d":
            data_shape, _, kernel, strides, padding = args
            if kw.get("layout") == "NCHWc":
                return blocked_window_tiles(plan_blocked_window("pool2d", data_shape, kernel, strides, padding,
                                                                kw.get("dilation", 1), spec,
                                                                ceil_mode=kw.get("ceil_mode", False)), spec)
            return window_tiles(plan_window("pool2d", data_shape, data_shape[1], kernel, strides, padding,
                                            kw.get("dilation", 1), spec, ceil_mode=kw.get("ceil_mode", False)), spec)
        if request.builder == "conv2d":
            return conv_tiles(args[0], args[1], kw, spec)
        if request.builder == "inverted_residual":
            data_shape, expand_shape, dw_shape, project_shape = args
            plan = plan_inverted_residual(data_shape, expand_shape[0], project_shape[0], dw_shape[2:],
                                          kw.get("strides", 1), kw.get("padding", 0), spec,
                                          data_layout=kw.get("data_layout", "NCHWc"), expand_kernel=expand_shape[2:],
                                          expand_strides=kw.get("expand_strides", 1),
                                          expand_padding=kw.get("expand_padding", 0))
            return [t for t in inverted_residual_tiles(plan, spec) if t != (plan.rows,)] if plan else []
    except KernelError:
        return []
    return []


def gemm_tiles(m: int, n: int, spec: CpuSpec) -> list[tuple[int, int]]:
    """(mr, nv) tiles that keep the accumulators in registers (under 1 KB, see `matmul.gemm_tile`)
    and use at least half of them."""
    lanes = spec.lanes
    max_acc = min(spec.accumulators, 1024 // (lanes * 4) - 1)
    nvec = ceil_div(n, lanes)
    tiles = [(mr, nv) for nv in range(1, min(4, nvec) + 1) for mr in range(1, min(m, 16) + 1)
             if mr * nv <= max_acc and (mr * nv >= max_acc // 2 or mr == m or nv == nvec)]
    # most accumulators first (the fastest tiles in every measurement so far), then squarer tiles
    tiles.sort(key=lambda t: (-t[0] * t[1], abs(t[0] - t[1] * 4)))
    return tiles[:MAX_TILES]


def conv_tiles(data_shape, weight_shape, kw: dict, spec: CpuSpec) -> list[tuple[int, ...]]:
    groups = int(kw.get("groups", 1))
    strides, padding, dilation = kw.get("strides", 1), kw.get("padding", 0), kw.get("dilation", 1)
    if is_depthwise(data_shape, weight_shape, groups):
        if kw.get("layout") == "NCHWc":
            return blocked_window_tiles(plan_blocked_window("depthwise_conv2d", data_shape, weight_shape[2:], strides,
                                                            padding, dilation, spec), spec)
        plan = plan_window("depthwise_conv2d", data_shape, weight_shape[0], weight_shape[2:], strides, padding,
                           dilation, spec)
        return window_tiles(plan, spec)
    layouts = {k: kw[k] for k in ("layout", "data_layout") if k in kw}
    plan = plan_conv2d(data_shape, weight_shape, strides, padding, dilation, groups, spec, **layouts)
    _, oc, oh, ow = plan.out_shape
    channel = channel_tiles(ow, ceil_div(oc, spec.lanes), plan.span, spec)
    if plan.data_layout == "NCHWc":  # the reduction step is one input vector: (wb, ocv) only
        direct = list(dict.fromkeys(t[:2] for t in channel))
        if not winograd_eligible(data_shape, weight_shape, strides, dilation, groups, spec.lanes):
            return direct[:MAX_TILES]
        wplan = plan_winograd(data_shape, weight_shape, padding, spec)
        winograd = winograd_tiles(wplan, spec)
        if conv_family(data_shape, weight_shape, strides, padding, dilation, groups, spec,
                       layout="NCHWc", data_layout="NCHWc") == "winograd":  # the default: direct is a candidate too
            return winograd[:MAX_TILES - 3] + direct[:3]
        return [(wplan.m, wplan.mr, wplan.nv)] + winograd[:MAX_TILES // 2 - 1] + direct[:MAX_TILES // 2]
    tiles: list[tuple[int, ...]] = []
    if plan.layout == "NCHW" and weight_shape[2:] == (1, 1) and plan.strides == (1, 1) and groups == 1 \
            and plan.pads == (0, 0, 0, 0):
        tiles += gemm_tiles(oc, oh * ow, spec)[:MAX_TILES // 2]
    return tiles + channel[:MAX_TILES - len(tiles)]


def channel_tiles(width: int, nvec: int, span: int, spec: CpuSpec) -> list[tuple[int, int, int]]:
    """(wb, ocv, ici) tiles of the channel-vector conv path: up to half the accumulators (more
    spills the broadcast operands, measured in `conv.plan_conv2d`), whole rows when they fit."""
    limit = spec.accumulators // 2 + 2
    widths = sorted({w for w in range(4, min(width, limit) + 1) if width % w == 0} | {min(width, limit)}
                    | {min(width, w) for w in (7, 8)})
    icis = [i for i in (16, 8, 32, 4) if span % i == 0][:2] or [min(16, span)]
    tiles = [(wb, ocv, ici) for wb in widths for ocv in (1, 2, 3, 4)
             if nvec % ocv == 0 and ocv <= nvec and wb * ocv <= limit and wb * ocv >= limit // 3 for ici in icis]
    # fewest padded columns first, then the fuller tiles
    tiles.sort(key=lambda t: (ceil_div(width, t[0]) * t[0] - width, -t[0] * t[1], t[2] != 16))
    return tiles


def window_tiles(plan, spec: CpuSpec) -> list[tuple[int, int]]:
    """(rb, rows per task) for the sliding-window kernels: tiles of up to the accumulator budget,
    tasks of the whole plane or a half, quarter or eighth of it."""
    rbs = [rb for rb in range(1, min(plan.oh, spec.accumulators // max(plan.nxv, 1)) + 1)
           if rb in (1, 2, 3, 4, 6, 7, 8, 14) or rb == plan.oh]
    tiles = set()
    for rb in rbs:
        for parts in (1, 2, 4, 8):
            rows = ceil_div(ceil_div(plan.oh, parts), rb) * rb
            if rows >= rb and (parts == 1 or rows < plan.oh):
                tiles.add((rb, rows))
    # fewest padded rows, then the middle of the range (2-4 rows per tile measured best)
    return sorted(tiles, key=lambda t: (ceil_div(plan.oh, t[1]) * t[1] - plan.oh,
                                        abs(math.log2(t[0] / 3)), -t[1]))[:MAX_TILES]
