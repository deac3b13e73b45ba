"""Winograd 3x3 convs (targets/cpu_kernels/winograd.py) against the direct NCHWc kernel.

Each case builds both kernels for the same shape and weights (unit-scale inputs, weights
~N(0, 1/(9C)) as in a trained net) and compares the NCHWc outputs within rtol 1e-3 / atol 1e-4,
the accuracy Winograd owes the direct kernel.  Shapes cover C = OC = 16 (one vector), H and W
that are not multiples of the output tile (ragged bottom and right tiles, and GEMM rows past
the last tile), batch 2, asymmetric padding, the fused epilogue with a residual, and a weight
given only by shape (packed at run time).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mdoc.targets.cpu_kernels import CpuSpec, Epilogue, KernelError, conv2d
from mdoc.targets.cpu_kernels.common import blocked_shape
from mdoc.targets.cpu_kernels.winograd import (pack_winograd_weight, plan_winograd, winograd_conv2d, winograd_matrices,
                                              winograd_tiles)

from test_cpu_kernels import conv_ref
from test_cpu_kernels_nchwc import from_blocked, to_blocked

SPEC = CpuSpec.from_target({"kind": "llvm", "mcpu": "znver4", "num-cores": 2})  # fixed, so plans do not follow the host
L = SPEC.lanes
RNG = np.random.default_rng(7)


def _case(shape, oc):
    c = shape[1]
    x = RNG.standard_normal(shape).astype(np.float32)
    wt = (RNG.standard_normal((oc, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    return x, wt


def _direct(x, wt, padding, epi, *extra):
    k = conv2d(x.shape, wt, padding=padding, epilogue=epi, layout="NCHWc", spec=SPEC)
    return k.compile()(to_blocked(x), *extra)


@pytest.mark.parametrize("m", [2, 4])
def test_winograd_matrices_compute_a_3_tap_correlation(m):
    """Y = A^T [(G g) * (B^T d)] is the valid correlation of d (m + 2 taps) with g (3 taps)."""
    bt, g, at = winograd_matrices(m)
    d, f = RNG.standard_normal(m + 2), RNG.standard_normal(3)
    np.testing.assert_allclose(at @ ((g @ f) * (bt @ d)), np.correlate(d, f, "valid"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape, oc, padding, tile", [
    ((1, L, 8, 8), L, 1, (4,)),            # C = OC = one vector, whole tiles
    ((1, 2 * L, 9, 11), 3 * L, 1, (2,)),   # ragged tiles, OC != C
    ((2, L, 7, 6), 2 * L, 1, (4, 3, 1)),   # batch 2, ragged, GEMM rows past the last tile
    ((1, L, 6, 7), L, (0, 1, 1, 0), (2, 4, 1)),  # asymmetric padding
])
def test_winograd_matches_direct_nchwc(shape, oc, padding, tile):
    x, wt = _case(shape, oc)
    bias = RNG.standard_normal(oc).astype(np.float32)
    epi = Epilogue(bias=True)
    k = winograd_conv2d(shape, wt, padding=padding, epilogue=epi, spec=SPEC, tile=tile)
    got = k.compile()(to_blocked(x), bias)
    want = _direct(x, wt, padding, epi, bias)
    assert got.shape == want.shape == k.output.shape
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    pads = plan_winograd(shape, wt.shape, padding, SPEC, tile).pads
    ref = conv_ref(x, wt, pads=pads) + bias[None, :, None, None]
    np.testing.assert_allclose(from_blocked(got), ref, rtol=1e-3, atol=1e-4)


def test_winograd_residual_relu_and_runtime_weight():
    shape, oc = (1, 2 * L, 10, 10), 2 * L
    x, wt = _case(shape, oc)
    bias = RNG.standard_normal(oc).astype(np.float32)
    res = RNG.standard_normal(blocked_shape((1, oc, 10, 10), L)).astype(np.float32)
    epi = Epilogue(bias=True, residual=True, activation="relu")
    k = winograd_conv2d(shape, wt.shape, epilogue=epi, spec=SPEC, tile=(4,))
    assert k.name == f"conv2d_wino4_3x3s1p1_{2 * L}x10x10_{2 * L}_nchwc_bias_res_relu"
    assert [p.name for p in k.params] == ["data", "weight", "bias", "residual", "out"]
    packed = k.packers["weight"](wt)
    assert packed.shape == k.params[1].shape
    got = k.compile()(to_blocked(x), packed, bias, res)
    want = _direct(x, wt, 1, epi, bias, res)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    assert (got >= 0).all() and (got > 0).any()


def test_winograd_f4_numerics_on_a_wide_reduction():
    """F(4x4) loses the most precision; C = 256 still stays within the direct kernel's tolerance."""
    x, wt = _case((1, 16 * L, 6, 6), L)
    got = winograd_conv2d(x.shape, wt, spec=SPEC).compile()(to_blocked(x))
    np.testing.assert_allclose(got, _direct(x, wt, 1, Epilogue()), rtol=1e-3, atol=1e-4)


def test_pack_winograd_weight_is_g_g_gt():
    plan = plan_winograd((1, L, 8, 8), (L, L, 3, 3), 1, SPEC, (2,))
    wt = RNG.standard_normal((L, L, 3, 3)).astype(np.float32)
    u = pack_winograd_weight(wt, plan)  # [E, OC/L, C/L, L(c), L(oc)]
    _, g, _ = winograd_matrices(2)
    o, c, e = 5, 9, 6
    want = (g @ wt[o, c].astype(np.float64) @ g.T).reshape(-1)[e]
    np.testing.assert_allclose(u[e, o // L, c // L, c % L, o % L], want, rtol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(data_shape=(1, L, 8, 8), weight=(L, L, 5, 5)), r"only 3x3 kernels, weight \(16, 16, 5, 5\) is 5x5"),
    (dict(data_shape=(1, 2 * L, 8, 8), weight=(L, L, 3, 3)), "one group only; data has 32 channels"),
    (dict(data_shape=(1, 24, 8, 8), weight=(L, 24, 3, 3)), "channels must be whole 16-lane vectors; got 24 -> 16"),
    (dict(data_shape=(1, L, 8, 8), weight=(24, L, 3, 3)), "channels must be whole 16-lane vectors; got 16 -> 24"),
    (dict(data_shape=(1, L, 8, 8), weight=(L, L, 3, 3), tile=(3,)), "output tile m=3 is not one of 2, 4"),
    (dict(data_shape=(1, L, 8, 8), weight=(3 * L, L, 3, 3), tile=(4, 4, 2)), "nv dividing the 3 output-channel vectors"),
    (dict(data_shape=(1, L, 8, 8), weight=(L, L, 3, 3), tile=(4, 4)), r"tile is \(m,\) or \(m, mr, nv\)"),
    (dict(data_shape=(1, L, 8, 8), weight=(L, L, 3, 3), data_layout="NCHW"), "only NCHWc activations"),
    (dict(data_shape=(1, L, 8, 8), weight=(L, L, 3, 3), epilogue=Epilogue(scale=0.5)), "Epilogue.scale is not supported"),
    (dict(data_shape=(1, L, 1, 1), weight=(L, L, 3, 3), padding=0), "output would be empty for input 1x1"),
])
def test_winograd_refuses_what_it_cannot_compute(kwargs, message):
    with pytest.raises(KernelError, match=message):
        winograd_conv2d(kwargs.pop("data_shape"), kwargs.pop("weight"), spec=SPEC, **kwargs)


def test_default_output_tile_follows_the_tile_count():
    """F(4x4) with many tiles or few (where U's size dominates either way), F(2x2) at 14x14, where
    F(4x4) would pad 196 output pixels to 256."""
    assert [plan_winograd((1, c, h, h), (c, c, 3, 3), 1, SPEC).m for c, h in ((64, 56), (128, 28), (256, 14), (512, 7))] \
        == [4, 4, 2, 4]


def test_estimated_speedup_falls_with_the_tile_count():
    est = [plan_winograd((1, c, h, h), (c, c, 3, 3), 1, SPEC).estimated_speedup
           for c, h in ((64, 56), (128, 28), (256, 14), (512, 7))]
    assert est == sorted(est, reverse=True) and est[0] > 3 and 1 < est[-1] < 2


def test_winograd_tiles_are_legal_and_correct():
    shape, oc = (1, L, 9, 9), 2 * L
    plan = plan_winograd(shape, (oc, L, 3, 3), 1, SPEC)
    tiles = winograd_tiles(plan, SPEC)
    assert tiles and (plan.m, plan.mr, plan.nv) not in tiles
    assert all(mr * nv * L * 4 < 1024 and (oc // L) % nv == 0 for _, mr, nv in tiles)
    x, wt = _case(shape, oc)
    for tile in (tiles[0], next(t for t in tiles if t[0] != plan.m)):
        got = winograd_conv2d(shape, wt, spec=SPEC, tile=tile).compile()(to_blocked(x))
        np.testing.assert_allclose(got, _direct(x, wt, 1, Epilogue()), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("spec", [CpuSpec.from_target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2}),
                                  replace(SPEC, lanes=4)])  # NEON's tiling, run on this host
def test_winograd_narrower_vectors(spec):
    """AVX2 (8 lanes) and NEON-width (4 lanes) blocking, run on this x86 host."""
    lanes = spec.lanes
    shape, oc = (1, 2 * lanes, 7, 9), 3 * lanes
    x, wt = _case(shape, oc)
    bias = RNG.standard_normal(oc).astype(np.float32)
    epi = Epilogue(bias=True, activation="relu")
    xb = to_blocked(x, lanes)
    got = winograd_conv2d(shape, wt, epilogue=epi, spec=spec).compile(spec.target)(xb, bias)
    want = conv2d(shape, wt, padding=1, epilogue=epi, layout="NCHWc", spec=spec).compile(spec.target)(xb, bias)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
