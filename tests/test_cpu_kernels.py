"""Numeric tests of mdoc's default CPU kernels (targets/cpu_kernels) against numpy.

Small shapes chosen to hit every remainder path: output channels that do not fill a vector,
widths that do not fill a register tile, pixel counts that do not fill a vector, matrix rows
that do not fill the row tile, and every fused epilogue.  Each kernel compiles in well under
a second; the whole file runs in about 20 s.
"""

from __future__ import annotations

from dataclasses import replace

from math import erf

import numpy as np
import pytest

from mdoc.errors import MdocError
from mdoc.targets.cpu_kernels import (
    CpuSpec,
    Epilogue,
    KernelError,
    batch_matmul,
    conv2d,
    dense,
    depthwise_conv2d,
    global_avg_pool2d,
    layer_norm,
    pool2d,
    softmax,
)
from mdoc.targets.cpu_kernels.common import activation_reference

RNG = np.random.default_rng(7)


def rand(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def conv_ref(x, w, strides=(1, 1), pads=(0, 0, 0, 0), dil=(1, 1), groups=1):
    """Direct NCHW convolution in float64 (pads: top, left, bottom, right)."""
    n, c, h, wd = x.shape
    oc, cg, kh, kw = w.shape
    pt, pl, pb, pr = pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    oh = (h + pt + pb - dil[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (wd + pl + pr - dil[1] * (kw - 1) - 1) // strides[1] + 1
    out = np.zeros((n, oc, oh, ow))
    ocg = oc // groups
    for g in range(groups):
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, g * cg:(g + 1) * cg,
                           i * dil[0]: i * dil[0] + strides[0] * (oh - 1) + 1: strides[0],
                           j * dil[1]: j * dil[1] + strides[1] * (ow - 1) + 1: strides[1]]
                out[:, g * ocg:(g + 1) * ocg] += np.einsum("nchw,oc->nohw", patch, w[g * ocg:(g + 1) * ocg, :, i, j])
    return out.astype(np.float32)


def close(got, want, rtol=1e-4, atol=1e-4):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------
# conv2d
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "xshape, wshape, kw",
    [
        # OC 20: one full vector + 4 lanes; OW 10 with a forced 4-wide tile: a ragged last tile
        ((1, 8, 10, 10), (20, 8, 3, 3), dict(padding=1, tile=(4, 1, 8))),
        # stride 2, asymmetric pads, dilation 2, batch 2, 3 input channels (stem-like)
        ((2, 3, 17, 19), (16, 3, 3, 3), dict(strides=2, padding=(1, 0, 2, 1), dilation=2)),
        # 1x1 stride 2 (ResNet downsample): reads the input in place
        ((1, 16, 9, 9), (32, 16, 1, 1), dict(strides=2)),
        # groups: 8 output channels per group (two groups share a vector) and 16 per group
        ((1, 16, 9, 9), (32, 4, 3, 3), dict(padding=1, groups=4)),
        ((1, 8, 7, 7), (32, 4, 3, 3), dict(padding=1, groups=2)),
    ],
)
def test_conv2d_shapes(xshape, wshape, kw):
    x, w = rand(*xshape), rand(*wshape)
    k = conv2d(xshape, w, **kw)
    strides = kw.get("strides", 1)
    strides = (strides, strides) if isinstance(strides, int) else strides
    pad = kw.get("padding", 0)
    pads = (pad,) * 4 if isinstance(pad, int) else pad
    dil = kw.get("dilation", 1)
    close(k.compile()(x), conv_ref(x, w, strides, pads, (dil, dil), kw.get("groups", 1)))


def test_conv2d_pointwise_tails_and_batch():
    # 1x1 stride 1: a GEMM over the pixels when they fill whole vectors (8x8 = 64)...
    x, w = rand(2, 24, 8, 8), rand(20, 24, 1, 1)
    k = conv2d(x.shape, w)
    assert "gemm" in k.notes
    close(k.compile()(x), conv_ref(x, w))
    # ... the channel-vector path when they do not (7x7 = 49: the GEMM would compute 23% padding)
    x = rand(2, 24, 7, 7)
    k = conv2d(x.shape, w)
    assert "gemm" not in k.notes
    close(k.compile()(x), conv_ref(x, w))
    # the GEMM with ragged pixels and channels when asked for (tile = (rows, vectors))
    k = conv2d(x.shape, w, tile=(3, 1))
    assert "gemm" in k.notes and "padded-copy" in k.notes
    close(k.compile()(x), conv_ref(x, w))


@pytest.mark.parametrize("act, alpha, beta", [("clip", 0.0, 6.0), ("hardswish", None, None), ("leaky_relu", 0.1, None)])
def test_conv2d_fused_epilogue(act, alpha, beta):
    x, w, b = rand(1, 8, 9, 9), rand(24, 8, 3, 3, scale=0.3), rand(24)
    res = rand(1, 24, 9, 9)
    k = conv2d(x.shape, w, padding=1, epilogue=Epilogue(bias=True, residual=True, activation=act, alpha=alpha, beta=beta))
    assert [p.name for p in k.params] == ["data", "weight", "bias", "residual", "out"]
    want = activation_reference(act, conv_ref(x, w, pads=(1, 1, 1, 1)) + b[None, :, None, None] + res, alpha, beta)
    close(k.compile()(x, b, res), want)


def test_conv2d_pointwise_epilogue():
    x, w, b = rand(1, 16, 6, 6), rand(32, 16, 1, 1, scale=0.3), rand(32)
    k = conv2d(x.shape, w, epilogue=Epilogue(bias=True, activation="silu"))
    close(k.compile()(x, b), activation_reference("silu", conv_ref(x, w) + b[None, :, None, None]))


def test_conv2d_weight_packed_at_run_time():
    x, w = rand(1, 8, 8, 8), rand(16, 8, 3, 3)
    k = conv2d(x.shape, w.shape, padding=1)  # only the shape: the weight is a run-time input
    assert [p.name for p in k.runtime_inputs] == ["data", "weight"]
    packed = k.packers["weight"](w)
    assert packed.shape == k.params[1].shape
    close(k.compile()(x, packed), conv_ref(x, w, pads=(1, 1, 1, 1)))


@pytest.mark.parametrize("spec", [CpuSpec.from_target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2}),
                                  replace(CpuSpec.host(), lanes=4)])  # NEON's tiling, run on this host
def test_conv2d_narrower_vectors(spec):
    # AVX2 (8 lanes, 16 registers) and NEON-sized (4 lanes) tiles, run on this x86 host
    x, w = rand(1, 8, 9, 9), rand(12, 8, 3, 3)
    k = conv2d(x.shape, w, padding=1, spec=spec)
    close(k.compile(spec.target)(x), conv_ref(x, w, pads=(1, 1, 1, 1)))


# ------------------------------------------------------------------------------------------
# depthwise
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise(stride):
    # MobileNetV2's 3x3 depthwise, with 13 columns (a ragged vector) and bias + relu6
    x, w, b = rand(1, 24, 13, 13), rand(24, 1, 3, 3), rand(24)
    k = conv2d(x.shape, w, strides=stride, padding=1, groups=24, epilogue=Epilogue(bias=True, activation="clip"))
    assert k.name.startswith("dwconv2d")
    want = np.clip(conv_ref(x, w, (stride, stride), (1, 1, 1, 1), groups=24) + b[None, :, None, None], 0, 6)
    close(k.compile()(x, b), want)


def test_depthwise_tiny_plane_channel_vectors():
    # 7x7 planes (MobileNetV2's last stage) take the channel-vector path; 40 channels are ragged
    x, w, b = rand(1, 20, 7, 7), rand(40, 1, 3, 3), rand(40)
    k = depthwise_conv2d(x.shape, w, padding=1, epilogue=Epilogue(bias=True, activation="clip"))
    assert "channel-vectors" in k.notes
    want = np.clip(conv_ref(x, w, (1, 1), (1, 1, 1, 1), groups=20) + b[None, :, None, None], 0, 6)
    close(k.compile()(x, b), want)


def test_depthwise_multiplier_and_residual():
    x, w, res = rand(1, 8, 10, 10), rand(16, 1, 3, 3), rand(1, 16, 5, 5)
    k = depthwise_conv2d(x.shape, w, strides=2, padding=(1, 1, 0, 0), epilogue=Epilogue(residual=True))
    close(k.compile()(x, res), conv_ref(x, w, (2, 2), (1, 1, 0, 0), groups=8) + res)


# ------------------------------------------------------------------------------------------
# matmul
# ------------------------------------------------------------------------------------------


def test_dense_remainders():
    # M = 13 (not a multiple of the 7-row tile), N = 37 (2 vectors + 5 lanes)
    a, w, b = rand(13, 40), rand(40, 37, scale=0.2), rand(37)
    k = dense(a.shape, w, epilogue=Epilogue(bias=True, activation="relu"))
    close(k.compile()(a, b), activation_reference("relu", a.astype(np.float64) @ w + b))


@pytest.mark.parametrize("act", ["sigmoid", "silu", "hardsigmoid", "tanh", "gelu", "gelu_tanh", None])
def test_dense_activations(act):
    # a 3-row tile keeps the unrolled epilogue (and the compile) small; N = 21 is ragged
    a, w, b = rand(3, 40, scale=2), rand(40, 21, scale=0.3), rand(21)
    k = dense(a.shape, w, epilogue=Epilogue(bias=True, activation=act))
    close(k.compile()(a, b), activation_reference(act, a.astype(np.float64) @ w + b))


def test_dense_3d_transposed_residual_scale():
    a, wt, res = rand(2, 9, 24), rand(20, 24), rand(2, 9, 20)
    k = dense(a.shape, wt, transpose_b=True, epilogue=Epilogue(scale=0.5, residual=True))
    close(k.compile()(a, res), (a @ wt.T) * 0.5 + res)


@pytest.mark.parametrize("ashape, bshape, tb", [
    ((3, 16, 8), (3, 8, 32), False),  # B read in place
    ((2, 13, 10), (2, 10, 21), False),  # ragged M and N: B copied into whole vectors
    ((4, 12, 16), (4, 20, 16), True),  # Q @ K^T
    ((2, 3, 5, 8), (1, 3, 8, 16), False),  # broadcast batch
])
def test_batch_matmul(ashape, bshape, tb):
    a, b = rand(*ashape), rand(*bshape)
    k = batch_matmul(a.shape, b.shape, transpose_b=tb, epilogue=Epilogue(scale=0.125))
    want = (a @ (np.swapaxes(b, -1, -2) if tb else b)) * 0.125
    close(k.compile()(a, b), want)


# ------------------------------------------------------------------------------------------
# pooling, softmax, layernorm, generic schedule
# ------------------------------------------------------------------------------------------


def _pool_ref(x, kind, k, s, p, ceil_mode=False, count_include_pad=False):
    n, c, h, w = x.shape
    rnd = (lambda a: -(-a // s)) if ceil_mode else (lambda a: a // s)
    oh, ow = rnd(h + 2 * p - k) + 1, rnd(w + 2 * p - k) + 1
    if ceil_mode:
        oh -= (oh - 1) * s >= h + p
        ow -= (ow - 1) * s >= w + p
    out = np.zeros((n, c, oh, ow), np.float32)
    for y in range(oh):
        for xx in range(ow):
            y0, x0 = y * s - p, xx * s - p
            win = x[:, :, max(y0, 0):min(y0 + k, h), max(x0, 0):min(x0 + k, w)]
            if kind == "max":
                out[:, :, y, xx] = win.max(axis=(2, 3))
            else:
                cnt = (min(y0 + k, h + p) - max(y0, -p)) * (min(x0 + k, w + p) - max(x0, -p)) if count_include_pad \
                    else win.shape[2] * win.shape[3]
                out[:, :, y, xx] = win.sum(axis=(2, 3)) / cnt
    return out


@pytest.mark.parametrize("kind, k, s, p, cm, cip", [
    ("max", 3, 2, 1, False, False),  # ResNet's stem pool
    ("avg", 3, 2, 1, False, False),
    ("avg", 3, 1, 1, False, True),
    ("max", 3, 2, 0, True, False),
])
def test_pool2d(kind, k, s, p, cm, cip):
    x = rand(2, 5, 11, 13)
    kern = pool2d(x.shape, kind, k, s, p, ceil_mode=cm, count_include_pad=cip)
    close(kern.compile()(x), _pool_ref(x, kind, k, s, p, cm, cip), rtol=1e-5, atol=1e-5)


def test_global_avg_pool():
    x = rand(2, 20, 7, 7)  # 49 = 3 vectors + a tail of 1
    close(global_avg_pool2d(x.shape).compile()(x), x.mean(axis=(2, 3), keepdims=True), rtol=1e-5, atol=1e-5)


def test_softmax_and_layer_norm():
    x = rand(3, 5, 37, scale=4)  # 37 = 2 vectors + 5
    e = np.exp(x - x.max(-1, keepdims=True))
    close(softmax(x.shape).compile()(x), e / e.sum(-1, keepdims=True), rtol=1e-4, atol=1e-6)
    x, g, b = rand(6, 40, scale=3) + 1, rand(40), rand(40)
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    close(layer_norm(x.shape, epsilon=1e-5).compile()(x, g, b), (x - m) / np.sqrt(v + 1e-5) * g + b)


# ------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------


def test_errors_say_what_and_how():
    with pytest.raises(KernelError, match=r"groups=3.*C == groups \* weight.shape\[1\]"):
        conv2d((1, 8, 5, 5), (8, 4, 3, 3), groups=3)
    with pytest.raises(KernelError, match="float16.*float32 only"):
        dense((4, 8), (8, 8), dtype="float16")
    with pytest.raises(KernelError, match="unknown fused activation 'swish'.*supported"):
        Epilogue(activation="swish")
    with pytest.raises(KernelError, match="contraction sizes differ"):
        batch_matmul((2, 4, 8), (2, 7, 5))
    assert issubclass(KernelError, MdocError)


def test_activation_reference_gelu_matches_erf():
    x = np.linspace(-3, 3, 7)
    want = 0.5 * x * (1 + np.array([erf(v / np.sqrt(2)) for v in x]))
    np.testing.assert_allclose(activation_reference("gelu", x), want)


def test_kernels_plug_into_relax_call_tir():
    """The way the lowering uses a kernel: add_func + call_tir, constants as relax.const; the same
    kernel added at two call sites must not clash at link time."""
    import tvm
    from tvm import relax

    x = rand(1, 8, 10, 10)
    w1, w2, b = rand(16, 8, 3, 3, scale=0.3), rand(16, 16, 3, 3, scale=0.3), rand(16)
    k1 = conv2d(x.shape, w1, padding=1, epilogue=Epilogue(bias=True, activation="relu"))
    k2 = conv2d((1, 16, 10, 10), w2, padding=1)
    k3 = conv2d((1, 16, 10, 10), w2 * 2, padding=1)  # same name as k2, other weights
    assert k2.name == k3.name
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            y = xv
            for k, extra in ((k1, [b]), (k2, []), (k3, [])):
                gv = bb.add_func(k.func, k.name)
                args = [y] + [relax.const(p.value) for p in k.inputs if p.is_constant] + [relax.const(e) for e in extra]
                y = bb.emit(relax.call_tir(gv, args, relax.TensorType(k.output.shape, "float32")))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    ex = tvm.compile(bb.get(), tvm.target.Target(CpuSpec.host().target))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x, tvm.cpu())).numpy()
    h = np.maximum(conv_ref(x, w1, pads=(1, 1, 1, 1)) + b[None, :, None, None], 0)
    h = conv_ref(h, w2, pads=(1, 1, 1, 1))
    close(got, conv_ref(h, w2 * 2, pads=(1, 1, 1, 1)), rtol=1e-3, atol=1e-3)
