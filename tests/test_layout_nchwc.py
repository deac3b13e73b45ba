"""The NCHWc layout on CPU: conv kernels that read and write it, the layout copies, the cost
model that picks which convs use it (targets/relax/layout_plan.py), and the lowering that
joins them (a chain converted once at each end), checked against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

tvm = pytest.importorskip("tvm")

from mdoc.onnx_import import import_model  # noqa: E402
from mdoc.pass_manager import PassManager, parse_pipeline  # noqa: E402
from mdoc.targets.cpu_kernels import CpuSpec, Epilogue, KernelError, conv2d  # noqa: E402
from mdoc.targets.cpu_kernels.layout import from_nchwc, to_nchwc  # noqa: E402
from mdoc.targets.relax.build import optimize  # noqa: E402
from mdoc.targets.relax.layout_plan import plan_layouts  # noqa: E402
from test_cpu_strategy import FUSE, TARGET, check, lowered, make_model  # noqa: E402

SPEC = CpuSpec.from_target(TARGET)
L = SPEC.lanes
N = helper.make_node
RNG = np.random.default_rng(0)


def blocked(a: np.ndarray) -> np.ndarray:
    n, c, h, w = a.shape
    return np.ascontiguousarray(a.reshape(n, c // L, L, h, w).transpose(0, 1, 3, 4, 2))


def unblocked(a: np.ndarray) -> np.ndarray:
    n, cb, h, w, lanes = a.shape
    return a.transpose(0, 1, 4, 2, 3).reshape(n, cb * lanes, h, w)


@pytest.mark.parametrize("c, hw, oc, k, stride, pad, residual, data_layout", [
    (32, (14, 14), 64, 1, 1, 0, True, "NCHWc"),  # pointwise, fused residual
    (16, (9, 11), 32, 3, 2, 1, False, "NCHWc"),  # strided, padded, ragged width
    (48, (7, 7), 32, 3, 1, 1, True, "NCHWc"),
    (3, (20, 20), 32, 3, 2, 1, False, "NCHW"),  # a stem conv: NCHW image in, NCHWc out
])
def test_nchwc_conv_matches_the_nchw_kernel(c, hw, oc, k, stride, pad, residual, data_layout):
    x = RNG.standard_normal((1, c, *hw)).astype(np.float32)
    w = (RNG.standard_normal((oc, c, k, k)) * 0.1).astype(np.float32)
    bias = RNG.standard_normal(oc).astype(np.float32)
    epi = Epilogue(bias=True, residual=residual, activation="relu")
    nchw = conv2d(x.shape, w, strides=stride, padding=pad, epilogue=epi, spec=SPEC)
    nchwc = conv2d(x.shape, w, strides=stride, padding=pad, epilogue=epi, spec=SPEC, layout="NCHWc",
                   data_layout=data_layout)
    r = RNG.standard_normal(nchw.output.shape).astype(np.float32)
    expected = nchw.compile(SPEC.target)(x, bias, *([r] if residual else []))
    got = nchwc.compile(SPEC.target)(blocked(x) if data_layout == "NCHWc" else x, bias,
                                     *([blocked(r)] if residual else []))
    np.testing.assert_allclose(unblocked(got), expected, rtol=1e-5, atol=1e-5)
    assert "nchwc" in nchwc.name and nchwc.name != nchw.name


def test_nchwc_refuses_groups_and_an_nchw_output_of_a_blocked_input():
    with pytest.raises(KernelError, match="dense convs .one group. here, got groups=2"):
        conv2d((1, 32, 8, 8), (32, 16, 1, 1), groups=2, spec=SPEC, layout="NCHWc")
    with pytest.raises(KernelError, match="an NCHWc input needs an NCHWc output"):
        conv2d((1, 16, 8, 8), (16, 16, 1, 1), spec=SPEC, data_layout="NCHWc")


@pytest.mark.parametrize("c, oc", [(24, 40), (16, 24), (24, 16)])
def test_channels_that_are_not_whole_vectors_pad_the_last_one(c, oc):
    # MobileNetV2's 24-channel layers: the padded lanes of the input are weighed by zero
    x = RNG.standard_normal((1, c, 6, 7)).astype(np.float32)
    w = (RNG.standard_normal((oc, c, 3, 3)) * 0.1).astype(np.float32)
    bias = RNG.standard_normal(oc).astype(np.float32)
    epi = Epilogue(bias=True, residual=True, activation="relu")
    nchw = conv2d(x.shape, w, padding=1, epilogue=epi, spec=SPEC)
    nchwc = conv2d(x.shape, w, padding=1, epilogue=epi, spec=SPEC, layout="NCHWc")
    r = RNG.standard_normal(nchw.output.shape).astype(np.float32)
    pack = to_nchwc(x.shape, spec=SPEC).compile(SPEC.target)
    unpack = from_nchwc(nchw.output.shape, spec=SPEC).compile(SPEC.target)
    blocked_x = pack(x)
    blocked_x[:, -1, ..., c % L or L:] = 7.0  # whatever the padded lanes hold, it must not matter
    got = nchwc.compile(SPEC.target)(blocked_x, bias, to_nchwc(r.shape, spec=SPEC).compile(SPEC.target)(r))
    expected = nchw.compile(SPEC.target)(x, bias, r)
    np.testing.assert_allclose(unpack(got), expected, rtol=1e-5, atol=1e-5)


def test_layout_copies_round_trip():
    x = RNG.standard_normal((2, 2 * L, 5, 3)).astype(np.float32)
    packed = to_nchwc(x.shape, spec=SPEC).compile(SPEC.target)(x)
    np.testing.assert_array_equal(packed, blocked(x))
    np.testing.assert_array_equal(from_nchwc(x.shape, spec=SPEC).compile(SPEC.target)(packed), x)


def _chain_model(stem_channels: int = 3):
    """stem 3x3/2 conv -> Relu -> 1x1 conv -> + stem (residual) -> Relu -> 3x3/2 conv: a chain that
    stays NCHWc from the stem's output to the last conv."""
    c = 4 * L
    inits = {"w0": (RNG.standard_normal((c, stem_channels, 3, 3)) * 0.2).astype(np.float32),
             "b0": RNG.standard_normal(c).astype(np.float32),
             "w1": (RNG.standard_normal((c, c, 1, 1)) * 0.1).astype(np.float32),
             "w2": (RNG.standard_normal((c, c, 3, 3)) * 0.05).astype(np.float32)}
    nodes = [N("Conv", ["x", "w0", "b0"], ["c0"], strides=[2, 2], pads=[1, 1, 1, 1]), N("Relu", ["c0"], ["r0"]),
             N("Conv", ["r0", "w1"], ["c1"]), N("Add", ["c1", "r0"], ["a1"]), N("Relu", ["a1"], ["r1"]),
             N("Conv", ["r1", "w2"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1])]
    # with every intermediate's type, as the compile pipeline's infer-shapes leaves the graph
    return onnx.shape_inference.infer_shapes(make_model(nodes, {"x": [1, stem_channels, 64, 64]}, ["y"], inits))


def test_a_conv_chain_runs_nchwc_converted_once_at_its_end():
    m = _chain_model()
    model = import_model(m)
    PassManager(parse_pipeline(FUSE)).run(model)  # the residual joins the 1x1 conv that reads the stem
    plan = plan_layouts(model.graph, SPEC)
    assert sorted(n.op for n in plan.blocked) == ["mdoc.conv", "mdoc.conv", "onnx.Conv"]
    feeds = {"x": RNG.standard_normal((1, 3, 64, 64)).astype(np.float32)}
    names = check(m, feeds)
    assert any(n.startswith("conv2d_3x3s2p1_3x64x64") and "_to_nchwc" in n for n in names)
    assert sum(n.startswith("conv2d") and "_nchwc" in n and "_to_nchwc" not in n for n in names) == 2
    # the unpacks of the first two convs are read by no one: only the graph output's remains
    _, mod = lowered(m)
    built = optimize(mod, TARGET)
    assert sum("from_nchwc" in gv.name_hint for gv, _ in built.functions_items()) == 1


def test_the_cost_model_leaves_a_lone_small_conv_nchw():
    # one strided 3x3 conv on a 4x4 image whose result the graph returns: the unpack would
    # cost more than NCHWc saves
    inits = {"w": (RNG.standard_normal((L, L, 3, 3)) * 0.1).astype(np.float32)}
    m = make_model([N("Conv", ["x", "w"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1])], {"x": [1, L, 4, 4]}, ["y"], inits)
    plan = plan_layouts(import_model(m).graph, SPEC)
    assert not plan.blocked and len(plan.groups) == 1
    assert plan.groups[0].copy_s > plan.groups[0].gain_s > 0
    names = check(m, {"x": RNG.standard_normal((1, L, 4, 4)).astype(np.float32)})
    assert not any("nchwc" in n for n in names)
