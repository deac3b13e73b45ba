"""NCHWc variants of the depthwise conv and pooling kernels (targets/cpu_kernels/blocked_window.py).

Each kernel runs on blocked data (N, C / lanes, H, W, lanes) and its result, unblocked with a
numpy reshape + transpose, is compared with the float64 references of test_cpu_kernels.py
(and with the NCHW kernel of the same op).  Small shapes that hit every path: stride 2, a
ragged last column tile, rows per task below the height, no padding (input read in place),
ceil_mode past the input, and the fused epilogue.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mdoc.targets.cpu_kernels import CpuSpec, Epilogue, KernelError, depthwise_conv2d, global_avg_pool2d, pool2d
from mdoc.targets.cpu_kernels.blocked_window import blocked_window_tiles, plan_blocked_window
from mdoc.targets.cpu_kernels.common import activation_reference, blocked_shape

from test_cpu_kernels import _pool_ref, close, conv_ref, rand

SPEC = CpuSpec.from_target({"kind": "llvm", "mcpu": "znver4", "num-cores": 2})  # fixed, so plans do not follow the host
L = SPEC.lanes


def to_blocked(x: np.ndarray, lanes: int = L) -> np.ndarray:
    n, c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(n, c // lanes, lanes, h, w).transpose(0, 1, 3, 4, 2))


def from_blocked(x: np.ndarray) -> np.ndarray:
    n, cb, h, w, lanes = x.shape
    return x.transpose(0, 1, 4, 2, 3).reshape(n, cb * lanes, h, w)


def test_blocked_layout_helpers_agree_with_blocked_shape():
    x = rand(2, 2 * L, 3, 5)
    xb = to_blocked(x)
    assert xb.shape == blocked_shape(x.shape, L)
    assert xb[1, 1, 2, 4, 3] == x[1, L + 3, 2, 4]
    np.testing.assert_array_equal(from_blocked(xb), x)


# ------------------------------------------------------------------------------------------
# depthwise
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, stride, pads, tile", [
    ((1, 2 * L, 13, 13), 1, (1, 1, 1, 1), None),  # ragged last column tile
    ((1, 2 * L, 13, 13), 2, (1, 1, 1, 1), None),  # stride 2
    ((2, 3 * L, 9, 10), 2, (1, 0, 2, 1), (4, 3, 1)),  # batch 2, asymmetric pads, 3 vectors in a tile, row tasks
    ((1, L, 8, 8), 1, (0, 0, 0, 0), (4, 1, 2)),  # no padding but 6 columns in 4-wide tiles: padded band
    ((1, 2 * L, 8, 10), 1, (0, 0, 0, 0), (4, 2, 3)),  # no padding, whole tiles: input read in place
])
def test_depthwise_nchwc(shape, stride, pads, tile):
    c = shape[1]
    x, w, b = rand(*shape), rand(c, 1, 3, 3), rand(c)
    epi = Epilogue(bias=True, activation="clip")
    k = depthwise_conv2d(x.shape, w, strides=stride, padding=pads, epilogue=epi, layout="NCHWc", tile=tile, spec=SPEC)
    assert k.name.startswith("dwconv2d_nchwc") and k.params[0].shape == blocked_shape(shape, L)
    assert ("padded-band" in k.notes) == (tile != (4, 2, 3))
    got = from_blocked(k.compile()(to_blocked(x), b))
    want = np.clip(conv_ref(x, w, (stride, stride), pads, groups=c) + b[None, :, None, None], 0, 6)
    close(got, want)
    nchw = depthwise_conv2d(x.shape, w, strides=stride, padding=pads, epilogue=epi, spec=SPEC)
    assert nchw.name != k.name
    close(got, nchw.compile()(x, b))


def test_depthwise_nchwc_dilation():
    x, w = rand(1, L, 11, 12), rand(L, 1, 3, 3)
    k = depthwise_conv2d(x.shape, w, padding=2, dilation=2, layout="NCHWc", spec=SPEC)
    close(from_blocked(k.compile()(to_blocked(x))), conv_ref(x, w, pads=(2, 2, 2, 2), dil=(2, 2), groups=L))


@pytest.mark.parametrize("spec", [CpuSpec.from_target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2}),
                                  replace(SPEC, lanes=4)])  # NEON's tiling, run on this host
def test_window_ops_nchwc_narrower_vectors(spec):
    # AVX2 (8 lanes) and NEON-sized (4 lanes) blocks, run on this x86 host
    lanes = spec.lanes
    x, w, b = rand(1, 3 * lanes, 9, 9), rand(3 * lanes, 1, 3, 3), rand(3 * lanes)
    k = depthwise_conv2d(x.shape, w, strides=2, padding=1, epilogue=Epilogue(bias=True), layout="NCHWc", spec=spec)
    got = k.compile(spec.target)(to_blocked(x, lanes), b)
    assert got.shape == blocked_shape((1, 3 * lanes, 5, 5), lanes)
    close(from_blocked(got), conv_ref(x, w, (2, 2), (1, 1, 1, 1), groups=3 * lanes) + b[None, :, None, None])
    p = pool2d(x.shape, "max", 3, 2, 1, layout="NCHWc", spec=spec)
    close(from_blocked(p.compile(spec.target)(to_blocked(x, lanes))), _pool_ref(x, "max", 3, 2, 1))
    g = global_avg_pool2d(x.shape, layout="NCHWc", spec=spec)
    close(from_blocked(g.compile(spec.target)(to_blocked(x, lanes))), x.mean(axis=(2, 3), keepdims=True), atol=1e-5)


def test_depthwise_nchwc_residual_activation_and_runtime_weight():
    x, w, res = rand(1, 2 * L, 10, 10), rand(2 * L, 1, 3, 3), rand(1, 2 * L, 5, 5)
    k = depthwise_conv2d(x.shape, w.shape, strides=2, padding=1, layout="NCHWc", spec=SPEC,
                         epilogue=Epilogue(residual=True, activation="silu"))
    assert k.params[2].name == "residual" and k.params[2].shape == blocked_shape(res.shape, L)
    got = k.compile()(to_blocked(x), k.packers["weight"](w), to_blocked(res))
    want = activation_reference("silu", conv_ref(x, w, (2, 2), (1, 1, 1, 1), groups=2 * L).astype(np.float64) + res)
    close(from_blocked(got), want)


def test_blocked_window_tiles_are_legal_and_correct():
    shape, w = (1, 2 * L, 28, 28), rand(2 * L, 1, 3, 3)
    plan = plan_blocked_window("depthwise_conv2d", shape, 3, 2, 1, 1, SPEC)
    tiles = blocked_window_tiles(plan, SPEC)
    assert 4 <= len(tiles) <= 12 and (plan.wb, plan.ocv, plan.rows) not in tiles
    for t in tiles:  # each one a legal plan
        assert plan_blocked_window("depthwise_conv2d", shape, 3, 2, 1, 1, SPEC, tile=t).wb == t[0]
    x = rand(*shape)
    k = depthwise_conv2d(shape, w, strides=2, padding=1, layout="NCHWc", tile=tiles[-1], spec=SPEC)
    close(from_blocked(k.compile()(to_blocked(x))), conv_ref(x, w, (2, 2), (1, 1, 1, 1), groups=2 * L))


def test_depthwise_nchwc_refuses_what_it_cannot_block():
    with pytest.raises(KernelError, match=r"NCHWc layout needs C a multiple of 16 lanes; data \(1, 24, 8, 8\) has C=24"):
        depthwise_conv2d((1, 24, 8, 8), (24, 1, 3, 3), padding=1, layout="NCHWc", spec=SPEC)
    with pytest.raises(KernelError, match="NCHWc layout needs channel multiplier 1"):
        depthwise_conv2d((1, L, 8, 8), (2 * L, 1, 3, 3), padding=1, layout="NCHWc", spec=SPEC)
    with pytest.raises(KernelError, match="ocv dividing 2 channel vectors"):
        depthwise_conv2d((1, 2 * L, 8, 8), (2 * L, 1, 3, 3), padding=1, layout="NCHWc", tile=(4, 3), spec=SPEC)
    with pytest.raises(KernelError, match="layout 'NHWC' is not one of NCHW, NCHWc"):
        depthwise_conv2d((1, L, 8, 8), (L, 1, 3, 3), layout="NHWC", spec=SPEC)


# ------------------------------------------------------------------------------------------
# pooling
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, k, s, p, cm, cip", [
    ("max", 3, 2, 1, False, False),  # ResNet's stem pool
    ("avg", 3, 2, 1, False, False),
    ("avg", 3, 1, 1, False, True),
    ("max", 3, 2, 0, True, False),  # ceil_mode: the last window runs past the input
    ("avg", 3, 2, 1, True, True),  # ... and past the padding, which does not count
    ("avg", 2, 2, 0, False, False),  # no padding: read in place
])
def test_pool2d_nchwc(kind, k, s, p, cm, cip):
    x = rand(2, 2 * L, 12, 13)
    kern = pool2d(x.shape, kind, k, s, p, ceil_mode=cm, count_include_pad=cip, layout="NCHWc", spec=SPEC)
    assert kern.name.startswith(f"{kind}pool2d_nchwc")
    got = from_blocked(kern.compile()(to_blocked(x)))
    close(got, _pool_ref(x, kind, k, s, p, cm, cip), rtol=1e-5, atol=1e-5)
    close(got, pool2d(x.shape, kind, k, s, p, ceil_mode=cm, count_include_pad=cip, spec=SPEC).compile()(x),
          rtol=1e-5, atol=1e-6)


def test_pool2d_nchwc_dilation_matches_nchw_kernel():
    x = rand(1, L, 10, 11)
    kw = dict(dilation=2, ceil_mode=True, spec=SPEC)
    k = pool2d(x.shape, "max", 2, 2, (1, 0, 0, 1), layout="NCHWc", **kw)
    close(from_blocked(k.compile()(to_blocked(x))), pool2d(x.shape, "max", 2, 2, (1, 0, 0, 1), **kw).compile()(x))


def test_global_avg_pool_nchwc():
    for shape in [(2, 2 * L, 7, 7), (1, L, 3, 1)]:  # 49 pixels: 4 chains with a ragged last step; 3 < 4 chains
        x = rand(*shape)
        k = global_avg_pool2d(x.shape, layout="NCHWc", spec=SPEC)
        assert k.name.startswith("global_avg_pool2d_nchwc") and k.output.shape == (shape[0], shape[1] // L, 1, 1, L)
        close(from_blocked(k.compile()(to_blocked(x))), x.mean(axis=(2, 3), keepdims=True), rtol=1e-5, atol=1e-6)


def test_pooling_nchwc_errors():
    with pytest.raises(KernelError, match="needs C a multiple of 16 lanes"):
        pool2d((1, 20, 8, 8), "max", 3, 2, 1, layout="NCHWc", spec=SPEC)
    with pytest.raises(KernelError, match=r"global_avg_pool2d: NCHWc layout needs C a multiple of 16 lanes; data \(1, 20, 7, 7\)"):
        global_avg_pool2d((1, 20, 7, 7), layout="NCHWc", spec=SPEC)
    with pytest.raises(KernelError, match="keeps the spatial dims"):
        global_avg_pool2d((1, L, 7, 7), keepdims=False, layout="NCHWc", spec=SPEC)


def test_nchwc_chain_through_relax():
    """A chain that stays NCHWc end to end, built the way the lowering builds kernels (add_func +
    call_tir): depthwise (bias, relu6) -> 3x3/2 max pool -> depthwise + residual -> global average pool."""
    import tvm
    from tvm import relax

    c = 2 * L
    x, w1, b1, w2 = rand(1, c, 12, 12), rand(c, 1, 3, 3), rand(c), rand(c, 1, 3, 3)
    dw1 = depthwise_conv2d(x.shape, w1, padding=1, epilogue=Epilogue(bias=True, activation="clip"), layout="NCHWc",
                           spec=SPEC)
    pool = pool2d(x.shape, "max", 3, 2, 1, layout="NCHWc", spec=SPEC)
    dw2 = depthwise_conv2d((1, c, 6, 6), w2, padding=1, epilogue=Epilogue(residual=True), layout="NCHWc", spec=SPEC)
    gap = global_avg_pool2d((1, c, 6, 6), layout="NCHWc", spec=SPEC)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(blocked_shape(x.shape, L), "float32"))

    def call(k, *args):
        return bb.emit(relax.call_tir(bb.add_func(k.func, k.name), list(args), relax.TensorType(k.output.shape, "float32")))

    with bb.function("main", [xv]):
        with bb.dataflow():
            h = call(dw1, xv, relax.const(dw1.constant("weight")), relax.const(b1))
            p = call(pool, h)
            r = call(dw2, p, relax.const(dw2.constant("weight")), p)
            out = bb.emit_output(call(gap, r))
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), tvm.target.Target(CpuSpec.host().target)), tvm.cpu())
    got = from_blocked(vm["main"](tvm.runtime.tensor(to_blocked(x), tvm.cpu())).numpy())
    h = np.clip(conv_ref(x, w1, pads=(1, 1, 1, 1), groups=c) + b1[None, :, None, None], 0, 6)
    p = _pool_ref(h, "max", 3, 2, 1)
    r = conv_ref(p, w2, pads=(1, 1, 1, 1), groups=c) + p
    close(got, r.mean(axis=(2, 3), keepdims=True))
