"""The fused inverted residual kernel (targets/cpu_kernels/inverted_residual.py) against float64 numpy.

Shapes are small but hit every path: NCHW and NCHWc input, channel counts that are not whole
vectors (input, expanded and output), stride 2 with the halo row of the next band, a 5x5
window with asymmetric padding, several bands per core, the residual and each activation.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import tvm

from mdoc.targets.cpu_kernels import CpuSpec, Epilogue, KernelError
from mdoc.targets.cpu_kernels.common import activation_reference, blocked_shape
from mdoc.targets.cpu_kernels.inverted_residual import (
    inverted_residual,
    inverted_residual_tiles,
    plan_inverted_residual,
)

from test_cpu_kernels import close, conv_ref, rand

SPEC = CpuSpec.from_target({"kind": "llvm", "mcpu": "znver4", "num-cores": 2})  # fixed, so plans do not follow the host
L = SPEC.lanes


def to_blocked(x: np.ndarray, lanes: int = L) -> np.ndarray:
    n, c, h, w = x.shape
    padded = np.zeros((n, blocked_shape(x.shape, lanes)[1] * lanes, h, w), x.dtype)
    padded[:, :c] = x
    return np.ascontiguousarray(padded.reshape(n, -1, lanes, h, w).transpose(0, 1, 3, 4, 2))


def from_blocked(x: np.ndarray, c: int) -> np.ndarray:
    n, cb, h, w, lanes = x.shape
    return x.transpose(0, 1, 4, 2, 3).reshape(n, cb * lanes, h, w)[:, :c]


def block_ref(x, we, be, wd, bd, wp, bp, stride, pads, acts, residual=None, first=(1, (0, 0, 0, 0))):
    s1, p1 = first
    e = activation_reference(acts[0], conv_ref(x, we, (s1, s1), p1) + be[None, :, None, None])
    d = activation_reference(acts[1], conv_ref(e, wd, (stride, stride), pads, groups=wd.shape[0]) + bd[None, :, None, None])
    p = conv_ref(d, wp) + bp[None, :, None, None]
    return activation_reference(acts[2], p + residual if residual is not None else p)


def run(c, h, w, m, co, *, k=3, stride=1, pads=(1, 1, 1, 1), residual=False, data_layout="NCHWc", tile=None,
        acts=("clip", "clip", None), first=(1, 1, (0, 0, 0, 0)), spec=SPEC):
    k1, s1, p1 = first
    x = rand(1, c, h, w)
    we, be, wd, bd = rand(m, c, k1, k1, scale=0.3), rand(m), rand(m, 1, k, k, scale=0.3), rand(m)
    wp, bp = rand(co, m, 1, 1, scale=0.2), rand(co)
    epis = [Epilogue(bias=True, activation=a) for a in acts]
    project = Epilogue(bias=True, residual=residual, activation=acts[2])
    kern = inverted_residual(x.shape, we.shape, wd.shape, wp.shape, strides=stride, padding=pads, expand_strides=s1,
                             expand_padding=p1, expand=epis[0], depthwise=epis[1], project=project, spec=spec,
                             tile=tile, data_layout=data_layout)
    oh, ow = kern.output.shape[2:4]
    res = rand(1, co, oh, ow) if residual else None
    consts = {"expand_weight": we, "expand_bias": be, "dw_weight": wd, "dw_bias": bd, "weight": wp, "bias": bp}
    lanes = spec.lanes
    args = [to_blocked(x, lanes) if data_layout == "NCHWc" else x]
    args += [kern.packers[p.name](consts[p.name]) for p in kern.params[1:7]]
    if residual:
        args.append(to_blocked(res, lanes))
    compiled = kern.compile()
    targs = compiled.prepare(*args)
    targs[-1] = tvm.runtime.tensor(np.full(kern.output.shape, np.nan, np.float32))  # every element must be written
    compiled.fn(*targs)
    got = targs[-1].numpy()
    assert got.shape == blocked_shape((1, co, oh, ow), lanes)
    want = block_ref(x, we, be, wd, bd, wp, bp, stride, pads, acts, res, (s1, p1))
    close(from_blocked(got, co), want, rtol=1e-3, atol=1e-3)
    if co % lanes:  # the padded lanes of the last output vector are zeros, as to_nchwc writes them
        assert not np.any(got[:, -1, :, :, co % lanes:])
    return kern


@pytest.mark.parametrize("c, h, w, m, co, stride, residual, data_layout, tile", [
    (24, 16, 16, 96, 24, 1, True, "NCHWc", None),  # MobileNetV2's residual block, padded input / output vector
    (16, 16, 16, 6 * L, 24, 2, False, "NCHW", None),  # stride 2 reading NCHW (after an NCHW layer)
    (2 * L, 8, 8, 3 * L, 2 * L, 1, True, "NCHWc", (2,)),  # four bands: every band has a halo on both sides
    (8, 12, 8, 40, 20, 2, False, "NCHWc", (3,)),  # expanded channels not in whole vectors; odd bands
])
def test_inverted_residual_matches_numpy(c, h, w, m, co, stride, residual, data_layout, tile):
    kern = run(c, h, w, m, co, stride=stride, residual=residual, data_layout=data_layout, tile=tile)
    assert kern.name.startswith("invres_") and kern.flops > 0


@pytest.mark.parametrize("data_layout", ["NCHW", "NCHWc"])
def test_inverted_residual_behind_a_strided_3x3_conv(data_layout):
    # MobileNetV2's stem and first block: 3x3 stride 2 over the image's 3 channels, then depthwise and project
    kern = run(3, 32, 32, 32, 16, first=(3, 2, (1, 1, 1, 1)), data_layout=data_layout, acts=("clip", "clip", None))
    assert "_k3x3s2_" in kern.name


def test_inverted_residual_neon_lanes():
    # aarch64's schedule (4 lanes, 4 cores), checked on this host: 6 expanded channels pad to two vectors
    neon = replace(SPEC, lanes=4, cores=4)
    kern = run(5, 16, 12, 6, 7, residual=True, spec=neon)
    assert kern.params[0].shape == blocked_shape((1, 5, 16, 12), 4)


def test_inverted_residual_5x5_asymmetric_padding_and_activations():
    run(L, 12, 12, 2 * L, L, k=5, stride=1, pads=(2, 1, 2, 3), tile=(3,), acts=("hardswish", "relu", "sigmoid"))


def test_inverted_residual_declines_blocks_that_do_not_band():
    # 7x7 output rows do not split into a band per core: the plan declines, the builder says why
    assert plan_inverted_residual((1, 160, 7, 7), 960, 160, (3, 3), 1, 1, SPEC) is None
    with pytest.raises(KernelError, match="does not split into bands"):
        inverted_residual((1, 160, 7, 7), (960, 160, 1, 1), (960, 1, 3, 3), (160, 960, 1, 1), strides=1, padding=1,
                          spec=SPEC)
    with pytest.raises(KernelError, match="must divide"):
        inverted_residual((1, 16, 8, 8), (32, 16, 1, 1), (32, 1, 3, 3), (16, 32, 1, 1), strides=1, padding=1,
                          spec=SPEC, tile=(3,))


def test_inverted_residual_plan_rows_and_tiles():
    plan = plan_inverted_residual((1, 24, 56, 56), 144, 24, (3, 3), 1, 1, SPEC)
    assert plan.rows == 14 and plan.out_hw == (56, 56)  # two bands per core
    assert plan_inverted_residual((1, 64, 14, 14), 384, 64, (3, 3), 1, 1, SPEC).rows == 7  # one band per core
    assert (plan.rows,) in inverted_residual_tiles(plan, SPEC)
    assert all(56 % r == 0 and r <= 28 for (r,) in inverted_residual_tiles(plan, SPEC))
