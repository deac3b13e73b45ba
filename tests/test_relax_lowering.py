"""mdoc IR -> Relax lowering and CPU build, checked against onnxruntime.

Each converter family is one ONNX graph with many outputs (one build per family
keeps the file fast); the graph goes through mdoc's importer, `lower`, `build`
and `run`, and every output is compared with onnxruntime's at rtol 1e-3 /
atol 1e-4. The slow test compiles the onnx package's "light" models and checks
the outputs it ships beside them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ort = pytest.importorskip("onnxruntime")
tvm = pytest.importorskip("tvm")

from tvm import relax, te  # noqa: E402

from mdoc.errors import MdocError  # noqa: E402
from mdoc.ir import Graph, Model  # noqa: E402
from mdoc.onnx_import import import_model  # noqa: E402
from mdoc.targets.presets import resolve_target  # noqa: E402
from mdoc.targets.relax import Kernels, Runner, build, lower, lookup, run  # noqa: E402
from mdoc.targets.relax.build import optimize  # noqa: E402
from mdoc.targets.relax.registry import converter  # noqa: E402
from mdoc.types import DType, TensorType  # noqa: E402

TARGET = resolve_target("x86").tvm
RNG = np.random.default_rng(0)
N = helper.make_node


def f32(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


class GraphSpec:
    """Nodes, initializers and outputs of one test graph, built with short calls."""

    def __init__(self):
        self.nodes, self.outputs, self.inits = [], [], {}

    def add(self, op, inputs, n_out=1, **attrs):
        names = [f"o{len(self.outputs) + k}_{op}" for k in range(n_out)]
        self.nodes.append(N(op, inputs, names, **attrs))
        self.outputs.extend(names)
        return names[0]

    def const(self, name, array):
        self.inits[name] = np.asarray(array)
        return name

    def model(self, inputs: dict, opset: int) -> onnx.ModelProto:
        return make_model(self.nodes, inputs, self.outputs, self.inits, opset)


def make_model(nodes, inputs: dict, outputs, inits, opset: int) -> onnx.ModelProto:
    """inputs: name -> array, or name -> (dtype, shape with str dims)."""
    vis = []
    for name, a in inputs.items():
        dtype, shape = (a.dtype, a.shape) if isinstance(a, np.ndarray) else (np.dtype(a[0]), a[1])
        vis.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dtype), shape))
    outs = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs]
    graph = helper.make_graph(nodes, "g", vis, outs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    inferred = onnx.shape_inference.infer_shapes(m)
    types = {vi.name: vi.type for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for o in m.graph.output:
        if o.name in types and types[o.name].tensor_type.elem_type:
            o.type.CopyFrom(types[o.name])
        else:
            o.type.tensor_type.elem_type = TensorProto.FLOAT
    return m


def reference(m: onnx.ModelProto, feeds: dict) -> dict:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in m.graph.output], sess.run(None, feeds)))


def assert_close(got: dict, ref: dict, rtol=1e-3, atol=1e-4):
    bad = []
    for name, r in ref.items():
        g = got[name]
        if g.shape != r.shape or g.dtype != r.dtype:
            bad.append(f"{name}: got {g.dtype}{list(g.shape)}, onnxruntime {r.dtype}{list(r.shape)}")
        elif r.dtype.kind == "f":
            if not np.allclose(g, r, rtol=rtol, atol=atol, equal_nan=True):
                bad.append(f"{name}: max abs error {np.max(np.abs(g.astype(np.float64) - r)):.3g}")
        elif not np.array_equal(g, r):
            bad.append(f"{name}: differs at {int(np.sum(g != r))} of {r.size} elements")
    assert not bad, "\n".join(bad)


def check(m: onnx.ModelProto, feeds: dict, **tol):
    model = import_model(m)
    ex = build(lower(model), TARGET)
    assert_close(run(ex, feeds, model), reference(m, feeds), **tol)


# -- elementwise ---------------------------------------------------------------------------


def test_elementwise():
    g = GraphSpec()
    x, y = f32(2, 3, 4, 5), f32(4, 5)
    for op in ["Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Equal", "Less", "Greater",
               "LessOrEqual", "GreaterOrEqual"]:
        g.add(op, ["x", "y"])
    g.add("Div", ["ia", "ib"])
    g.add("Mod", ["ia", "ib"])
    g.add("Mod", ["x", "y"], fmod=1)
    g.add("Pow", ["pos", g.const("two", np.array(2.0, np.float32))])
    g.add("Pow", ["pos", "y"])
    g.add("Pow", ["pos", g.const("half", np.array(0.5, np.float32))])
    for op in ["Relu", "Sigmoid", "Tanh", "Exp", "Abs", "Neg", "Floor", "Ceil", "Erf", "Sin", "Cos", "Sign",
               "Round", "Reciprocal", "Softplus", "Softsign", "HardSwish", "Atan", "Mish", "Identity"]:
        g.add(op, ["x"])
    g.add("Log", ["pos"])
    g.add("Sqrt", ["pos"])
    g.add("LeakyRelu", ["x"], alpha=0.2)
    g.add("Elu", ["x"], alpha=0.7)
    g.add("Selu", ["x"])
    g.add("Celu", ["x"], alpha=1.5)
    g.add("ThresholdedRelu", ["x"], alpha=0.3)
    g.add("HardSigmoid", ["x"], alpha=0.3, beta=0.4)
    g.add("Gelu", ["x"])
    g.add("Gelu", ["x"], approximate="tanh")
    g.add("Shrink", ["x"], bias=0.1, lambd=0.4)
    g.add("Clip", ["x", g.const("lo", np.array(-0.3, np.float32)), g.const("hi", np.array(0.4, np.float32))])
    g.add("Clip", ["x", "", "hi"])
    g.add("Clip", ["x", "rlo", "rhi"])  # min/max as runtime inputs (MobileNetV2 exports)
    g.add("PRelu", ["x", g.const("slope", f32(3, 1, 1))])
    g.add("Cast", ["x"], to=TensorProto.INT32)
    g.add("Cast", ["x"], to=TensorProto.BOOL)
    g.add("Cast", ["ia"], to=TensorProto.FLOAT)
    g.add("CastLike", ["ia", "x"])
    g.add("Where", ["cond", "x", "y"])
    g.add("Not", ["cond"])
    for op in ["And", "Or", "Xor"]:
        g.add(op, ["cond", "cond2"])
    g.add("IsNaN", ["x"])
    g.add("IsInf", ["x"])
    feeds = {"x": x, "y": y, "pos": np.abs(x) + 0.1, "ia": RNG.integers(-7, 8, (3, 4)).astype(np.int64),
             "ib": np.array([3, -2, 5, -4], np.int64), "cond": x > 0, "cond2": RNG.standard_normal(5) > 0,
             "rlo": np.array(-0.5, np.float32), "rhi": np.array(0.6, np.float32)}
    check(g.model(feeds, opset=20), feeds)


# -- nn: conv, pooling, normalization, softmax ----------------------------------------------


def test_conv_and_pool():
    g = GraphSpec()
    w = g.const("W", f32(6, 4, 3, 3))
    g.add("Conv", ["x", w, g.const("B", f32(6))], pads=[1, 1, 1, 1])
    g.add("Conv", ["x", w], strides=[2, 2], auto_pad="SAME_UPPER")
    g.add("Conv", ["x", w], strides=[2, 2], auto_pad="SAME_LOWER")
    g.add("Conv", ["x", w, "B"], strides=[2, 1], dilations=[2, 1], auto_pad="VALID")
    g.add("Conv", ["x", g.const("Wg", f32(8, 2, 3, 3))], group=2, pads=[0, 1, 2, 1])
    g.add("Conv", ["x", g.const("Wd", f32(4, 1, 3, 3)), g.const("Bd", f32(4))], group=4, pads=[1, 1, 1, 1])
    g.add("Conv", ["x1", g.const("W1", f32(5, 4, 3))], pads=[1, 2])
    g.add("Conv", ["x3", g.const("W3", f32(3, 2, 2, 2, 2))], pads=[1, 0, 0, 0, 1, 1])
    wt = g.const("Wt", f32(4, 3, 3, 3))
    g.add("ConvTranspose", ["x", wt, g.const("Bt", f32(3))], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])
    g.add("ConvTranspose", ["x", wt], strides=[2, 2], output_shape=[19, 21])
    g.add("ConvTranspose", ["x", wt], strides=[2, 2], auto_pad="SAME_UPPER")
    g.add("ConvTranspose", ["x", g.const("Wtg", f32(4, 2, 3, 3))], strides=[1, 2], group=2, dilations=[2, 1])
    g.add("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2])
    g.add("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    g.add("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)
    g.add("MaxPool", ["x"], kernel_shape=[2, 3], strides=[2, 2], auto_pad="SAME_UPPER")
    g.add("MaxPool", ["x"], kernel_shape=[2, 2], dilations=[2, 2])
    g.add("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    g.add("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)
    g.add("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)
    g.add("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1,
          count_include_pad=1)
    g.add("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, count_include_pad=1)
    g.add("AveragePool", ["x"], kernel_shape=[2, 3], strides=[2, 2], auto_pad="SAME_LOWER")
    g.add("AveragePool", ["x"], kernel_shape=[2, 3], strides=[2, 2], auto_pad="SAME_UPPER", count_include_pad=1)
    g.add("GlobalAveragePool", ["x"])
    g.add("GlobalMaxPool", ["x"])
    g.add("LpPool", ["x"], kernel_shape=[2, 2], strides=[2, 2], p=2)
    feeds = {"x": f32(1, 4, 9, 10), "x1": f32(2, 4, 11), "x3": f32(1, 2, 5, 6, 7)}
    check(g.model(feeds, opset=19), feeds)


def test_normalization_and_softmax():
    g = GraphSpec()
    s, b = g.const("s", f32(4)), g.const("b", f32(4))
    g.add("BatchNormalization", ["x", s, b, g.const("m", f32(4)), g.const("v", np.abs(f32(4)) + 0.5)], epsilon=1e-3)
    g.add("BatchNormalization", ["x", "rs", "rb", "rm", "rv"])  # statistics at run time
    g.add("InstanceNormalization", ["x", s, b], epsilon=1e-4)
    g.add("LayerNormalization", ["x", g.const("ls", f32(10)), g.const("lb", f32(10))])
    g.add("LayerNormalization", ["x", g.const("ls2", f32(9, 10))], axis=-2)
    g.add("GroupNormalization", ["x", g.const("gs", f32(4)), g.const("gb", f32(4))], num_groups=2)
    g.add("LRN", ["x"], size=3, alpha=1e-3, beta=0.75, bias=2.0)
    g.add("LRN", ["x"], size=5)
    g.add("Softmax", ["x"], axis=1)
    g.add("Softmax", ["x"])
    g.add("LogSoftmax", ["x"], axis=2)
    g.add("Hardmax", ["x"], axis=1)
    g.add("MeanVarianceNormalization", ["x"])
    feeds = {"x": f32(1, 4, 9, 10), "rs": f32(4), "rb": f32(4), "rm": f32(4), "rv": np.abs(f32(4)) + 0.5}
    check(g.model(feeds, opset=21), feeds)


def test_old_opsets_softmax_2d_coercion_upsample_dropout():
    """Opset 9: Softmax/LogSoftmax/Hardmax flatten to 2-D at `axis` (default 1); Upsample; Dropout."""
    g = GraphSpec()
    g.add("Softmax", ["x"], axis=1)
    g.add("Softmax", ["x"], axis=2)
    g.add("Softmax", ["x"])
    g.add("LogSoftmax", ["x"], axis=1)
    g.add("Hardmax", ["x"], axis=2)
    g.add("BatchNormalization", ["x", g.const("s", f32(4)), g.const("b", f32(4)), g.const("m", f32(4)),
                                 g.const("v", np.abs(f32(4)) + 0.5)])
    g.add("Dropout", ["x"], ratio=0.3)
    g.add("Upsample", ["x", g.const("us", np.array([1, 1, 2, 3], np.float32))], mode="nearest")
    g.add("Upsample", ["x", "us"], mode="linear")
    g.add("Flatten", ["x"])
    g.add("Gemm", ["a", g.const("bt", f32(6, 4)), g.const("c", f32(6))], transB=1, alpha=0.5, beta=2.0)
    g.add("Sum", ["x", "x", "x"])
    feeds = {"x": f32(2, 4, 3, 5), "a": f32(3, 4)}
    check(g.model(feeds, opset=9), feeds)


# -- tensor and shape ops ------------------------------------------------------------------


def test_tensor_ops():
    g = GraphSpec()
    c = g.const
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    g.add("Reshape", ["x", c("s1", i64(0, -1, 5))])
    g.add("Reshape", ["x", c("s2", i64(6, 20))])
    g.add("Flatten", ["x"], axis=2)
    g.add("Flatten", ["x"], axis=0)
    g.add("Transpose", ["x"], perm=[0, 2, 3, 1])
    g.add("Transpose", ["x"])
    g.add("Concat", ["x", "x"], axis=-1)
    g.add("Split", ["x", c("sp", i64(1, 2))], n_out=2, axis=1)
    g.add("Split", ["x"], n_out=2, axis=3, num_outputs=2)
    g.add("Slice", ["x", c("st", i64(1, -4)), c("en", i64(100, -1)), c("ax", i64(1, 3))])
    g.add("Slice", ["x", c("st2", i64(-1)), c("en2", i64(-1000)), c("ax2", i64(2)), c("stp2", i64(-2))])
    g.add("Slice", ["x", c("st3", i64(0, 4)), c("en3", i64(2, 0)), c("ax3", i64(0, 3)), c("stp3", i64(1, -1))])
    g.add("Gather", ["x", c("gi", np.array([[0, -1], [1, 2]], np.int64))], axis=2)
    g.add("Gather", ["x", c("gs", np.array(-1, np.int64))], axis=1)
    g.add("Gather", ["emb", "ids"], axis=0)  # runtime indices, negative ones wrap
    g.add("GatherElements", ["x", c("ge", RNG.integers(-4, 4, (2, 3, 2, 5)).astype(np.int64))], axis=2)
    g.add("GatherND", ["x", c("gnd", np.array([[0, 1], [1, 2]], np.int64))])
    g.add("Expand", ["x", c("es", i64(3, 1, 1, 1, 1))])
    g.add("Expand", ["v", c("es2", i64(2, 1, 4))])
    g.add("Squeeze", ["x1", c("sq", i64(1))])
    g.add("Squeeze", ["x1"])
    g.add("Unsqueeze", ["x", c("uq", i64(0, -1))])
    g.add("Pad", ["x", c("pd", i64(0, 0, 1, 2, 0, 1, 0, 3)), c("pv", np.array(1.5, np.float32))])
    pd2 = c("pd2", i64(0, 0, 1, 2, 0, 0, 2, 1))
    for mode in ["reflect", "edge", "wrap"]:
        g.add("Pad", ["x", pd2], mode=mode)
    g.add("Pad", ["x", c("pd3", i64(1, -1, 2, 0)), "", c("pax", i64(1, 3))])  # axes input, negative pad crops
    g.add("Tile", ["x", c("tr", i64(1, 2, 1, 3))])
    g.add("ConstantOfShape", [c("cs", i64(2, 3))], value=helper.make_tensor("v", TensorProto.INT32, [1], [7]))
    g.add("Range", [c("r0", np.array(1, np.int64)), c("r1", np.array(10, np.int64)), c("r2", np.array(3, np.int64))])
    g.add("DepthToSpace", ["x4"], blocksize=2)
    g.add("DepthToSpace", ["x4"], blocksize=2, mode="CRD")
    g.add("SpaceToDepth", ["x4"], blocksize=2)
    g.add("Trilu", ["x"])
    g.add("Trilu", ["x", c("k", np.array(-1, np.int64))], upper=0)
    g.add("CumSum", ["x", c("ca", np.array(2, np.int32))])
    g.add("CumSum", ["x", "ca"], reverse=1, exclusive=1)
    g.add("Shape", ["x"])
    g.add("Shape", ["x"], start=1, end=-1)
    g.add("Size", ["x"])
    feeds = {"x": f32(2, 3, 4, 5), "emb": f32(10, 4), "ids": RNG.integers(-10, 10, (2, 3)).astype(np.int64),
             "v": f32(4), "x1": f32(3, 1, 4), "x4": f32(1, 8, 2, 4)}
    check(g.model(feeds, opset=18), feeds)


def test_tensor_ops_attribute_forms_opset11():
    """Squeeze/Unsqueeze/Split/ReduceSum with axes and split as attributes (before opset 13)."""
    g = GraphSpec()
    g.add("Squeeze", ["x1"], axes=[1])
    g.add("Unsqueeze", ["x1"], axes=[0, 3])
    g.add("Split", ["x"], n_out=3, axis=-1, split=[1, 1, 3])
    g.add("ReduceSum", ["x"], axes=[1, 2], keepdims=0)
    g.add("ReduceMean", ["x"], axes=[-1])
    g.add("Pad", ["x", g.const("pads", np.array([0, 1, 0, 0, 0, 0, 2, 0], np.int64))], mode="constant")
    g.add("Resize", ["x", g.const("roi", np.zeros(0, np.float32)), g.const("sc", np.array([1, 1, 2, 2], np.float32))],
          mode="nearest",
          coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    feeds = {"x": f32(2, 3, 4, 5), "x1": f32(3, 1, 4)}
    check(g.model(feeds, opset=11), feeds)


def test_reduce_max_min_of_only_infinities_are_infinities():
    # TVM's reductions start from the finite extremes; a fully masked attention row (all -inf) must stay -inf
    g = GraphSpec()
    ax = g.const("ax", np.array([1], np.int64))
    g.add("ReduceMax", ["x", ax])
    g.add("ReduceMin", ["x", ax], keepdims=0)
    x = f32(3, 4)
    x[0] = -np.inf
    x[1] = np.inf
    x[2, 0] = -np.inf
    check(g.model({"x": x}, opset=18), {"x": x})


def test_reduce_and_matmul():
    g = GraphSpec()
    ra = g.const("ra", np.array([1, -1], np.int64))
    g.add("ReduceMean", ["x", ra])
    g.add("ReduceSum", ["x", ra], keepdims=0)
    g.add("ReduceMax", ["x"], keepdims=0)
    for op in ["ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceSumSquare"]:
        g.add(op, ["x", ra])
    g.add("ReduceLogSumExp", ["x", ra], keepdims=0)
    g.add("ReduceLogSum", ["xp", ra])
    g.add("ReduceSum", ["x", g.const("empty", np.zeros(0, np.int64))], noop_with_empty_axes=1)
    g.add("ArgMax", ["x"], axis=1)
    g.add("ArgMin", ["x"], axis=-1, keepdims=0)
    g.add("ArgMax", ["xi"], axis=1, select_last_index=1)
    g.add("MatMul", ["x", "m"])
    g.add("MatMul", ["v", "m2"])  # 1-D operands
    g.add("MatMul", ["m2t", "v"])
    g.add("MatMul", ["big_a", "big_b"])  # large enough for the register-tiled schedule
    g.add("Gemm", ["a", "bt", g.const("gc", f32(6))], transB=1, alpha=0.5, beta=2.0)
    g.add("Gemm", ["at", "b", "c2"], transA=1)
    g.add("Gemm", ["a", "b"])
    g.add("Einsum", ["a", "b"], equation="ij,jk->ik")
    x = f32(2, 3, 4, 5)
    feeds = {"x": x, "xp": np.abs(x) + 0.1, "xi": RNG.integers(0, 3, (2, 3, 4)).astype(np.int32),
             "m": f32(5, 7), "m2": f32(4, 3), "m2t": f32(3, 4), "v": f32(4), "a": f32(3, 4), "bt": f32(6, 4),
             "at": f32(4, 3), "b": f32(4, 6), "c2": f32(3, 1), "big_a": f32(2, 24, 64), "big_b": f32(64, 96)}
    check(g.model(feeds, opset=18), feeds)


def test_quantize_topk_scatter_onehot():
    g = GraphSpec()
    c = g.const
    q = g.add("QuantizeLinear", ["x", c("qs", np.array(0.05, np.float32)), c("qz", np.array(3, np.uint8))])
    g.add("DequantizeLinear", [q, "qs", "qz"])
    qa = g.add("QuantizeLinear", ["x", c("qsa", np.array([0.02, 0.05, 0.1], np.float32)),
                                  c("qza", np.array([0, -3, 5], np.int8))], axis=1)
    g.add("DequantizeLinear", [qa, "qsa", "qza"], axis=1)
    g.add("TopK", ["x", c("k", np.array([2], np.int64))], n_out=2, axis=-1)
    g.add("TopK", ["x", "k"], n_out=2, axis=1, largest=0)
    g.add("ScatterElements", ["x", c("si", RNG.integers(-5, 5, (2, 3, 4, 2)).astype(np.int64)),
                              c("su", f32(2, 3, 4, 2))], axis=3)
    g.add("ScatterElements", ["x", c("si2", np.zeros((1, 3, 4, 5), np.int64)), c("su2", f32(1, 3, 4, 5))],
          axis=0, reduction="add")
    g.add("ScatterND", ["x", c("sn", np.array([[1, 2], [0, 0]], np.int64)), c("snu", f32(2, 4, 5))])
    g.add("OneHot", ["ids", c("depth", np.array(6, np.int64)), c("vals", np.array([-1.0, 2.0], np.float32))], axis=1)
    feeds = {"x": f32(2, 3, 4, 5) * 4, "ids": RNG.integers(-6, 6, (3, 4)).astype(np.int64)}
    check(g.model(feeds, opset=18), feeds)


# -- Resize -------------------------------------------------------------------------------


def test_resize_modes():
    g = GraphSpec()
    frac = g.const("frac", np.array([1, 1, 1.7, 0.6], np.float32))
    up = g.const("up", np.array([1, 1, 2, 3], np.float32))
    sizes = g.const("sz", np.array([1, 2, 9, 4], np.int64))
    for coord in ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "half_pixel_symmetric"]:
        g.add("Resize", ["x", "", "", sizes], mode="linear", coordinate_transformation_mode=coord)
        if coord != "align_corners":  # see test_resize_align_corners_fractional_scales
            g.add("Resize", ["x", "", frac], mode="linear", coordinate_transformation_mode=coord)
            g.add("Resize", ["x", "", frac], mode="nearest", coordinate_transformation_mode=coord)
    for nearest in ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]:
        g.add("Resize", ["x", "", frac], mode="nearest", nearest_mode=nearest)
        g.add("Resize", ["x", "", "", sizes], mode="nearest", coordinate_transformation_mode="align_corners",
              nearest_mode=nearest)
    g.add("Resize", ["x", "", up], mode="cubic")
    g.add("Resize", ["x", "", frac], mode="cubic", exclude_outside=1, cubic_coeff_a=-0.5)
    g.add("Resize", ["x", g.const("roi", np.array([0, 0, 0.1, 0.2, 1, 1, 0.8, 0.9], np.float32)), "", sizes],
          mode="linear", coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=3.0)
    g.add("Resize", ["x", "", "", g.const("sz2", np.array([7, 3], np.int64))], mode="linear", axes=[2, 3])
    g.add("Resize", ["x", "", "", g.const("sz3", np.array([8, 8], np.int64))], mode="nearest", axes=[2, 3],
          keep_aspect_ratio_policy="not_larger")
    g.add("Resize", ["x", "", "", "sz3"], mode="linear", axes=[2, 3], keep_aspect_ratio_policy="not_smaller")
    feeds = {"x": f32(1, 2, 5, 6)}
    check(g.model(feeds, opset=19), feeds)


def test_resize_align_corners_fractional_scales():
    """align_corners with scales whose dim * scale is not an integer: onnx's reference (and its test
    data) divides by dim * scale - 1, onnxruntime by floor(dim * scale) - 1; mdoc follows onnx."""
    from onnx.reference import ReferenceEvaluator

    g = GraphSpec()
    frac = g.const("frac", np.array([1, 1, 1.7, 0.6], np.float32))
    for mode in ["linear", "nearest", "cubic"]:
        g.add("Resize", ["x", "", frac], mode=mode, coordinate_transformation_mode="align_corners")
    feeds = {"x": f32(1, 2, 5, 6)}
    m = g.model(feeds, opset=19)
    model = import_model(m)
    got = run(build(lower(model), TARGET), feeds, model)
    want = dict(zip(g.outputs, ReferenceEvaluator(m).run(None, feeds)))
    assert_close(got, want)


def test_resize_opset10_and_detection_head():
    """Opset 10 Resize (onnxruntime's legacy rounding), and a detector neck: Resize to the size of
    another feature map computed by a Shape/Slice/Concat subgraph, Concat, Sigmoid."""
    g = GraphSpec()
    g.add("Resize", ["x", g.const("up", np.array([1, 1, 2, 3], np.float32))], mode="nearest")
    g.add("Resize", ["x", "up"], mode="linear")
    g.add("Resize", ["x", g.const("down", np.array([1, 1, 0.5, 0.5], np.float32))], mode="nearest")
    feeds = {"x": f32(1, 2, 5, 6)}
    check(g.model(feeds, opset=10), feeds)

    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    inits = {"b2": i64(2), "e4": i64(4), "b0": i64(0)}
    nodes = [N("Shape", ["q"], ["qs"]), N("Slice", ["qs", "b2", "e4"], ["hw"]),
             N("Shape", ["p"], ["ps"]), N("Slice", ["ps", "b0", "b2"], ["nc"]),
             N("Concat", ["nc", "hw"], ["size"], axis=0),
             N("Resize", ["p", "", "", "size"], ["pu"], mode="nearest", coordinate_transformation_mode="asymmetric",
               nearest_mode="floor"),
             N("Resize", ["p", "", "", "size"], ["pl"], mode="linear"),
             N("Concat", ["pu", "pl", "q"], ["cat"], axis=1), N("Sigmoid", ["cat"], ["sig"])]
    feeds = {"p": f32(1, 4, 3, 5), "q": f32(1, 4, 6, 10)}
    check(make_model(nodes, feeds, ["sig"], inits, 13), feeds)


# -- a BERT-style encoder with symbolic batch and sequence dims ----------------------------------


def _bert_model() -> onnx.ModelProto:
    """Token + position embeddings, a decomposed LayerNorm, one attention block whose head
    reshapes come from Shape/Gather/Unsqueeze/Concat subgraphs, an additive mask built with
    Unsqueeze/Cast/Sub/Mul and a Where/Equal/Expand one, an Erf GELU, as PyTorch exports them."""
    H, NH, DH, V = 16, 2, 8, 30
    nodes, inits = [], {}
    rng = np.random.default_rng(1)

    def c(name, a):
        inits[name] = np.asarray(a)
        return name

    def n(op, ins, out, **attrs):
        nodes.append(N(op, ins, [out], **attrs))
        return out

    w = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)  # noqa: E731
    c("wemb", w(V, H)), c("pemb", w(64, H)), c("pids", np.arange(64, dtype=np.int64).reshape(1, 64))
    c("i0", np.array(0, np.int64)), c("i1", np.array(1, np.int64)), c("ax0", np.array([0], np.int64))
    c("st0", np.array([0], np.int64)), c("ax1", np.array([1], np.int64)), c("ax12", np.array([1, 2], np.int64))
    c("two", np.array(2.0, np.float32)), c("eps", np.array(1e-12, np.float32)), c("one", np.array(1.0, np.float32))
    c("negbig", np.array(-10000.0, np.float32)), c("hd", np.array([NH, DH], np.int64))
    c("hsz", np.array([H], np.int64)), c("sqrt_dh", np.array(np.sqrt(DH), np.float32))
    c("half", np.array(0.5, np.float32)), c("sqrt2", np.array(np.sqrt(2), np.float32))
    c("gamma", 1 + w(H)), c("beta", w(H)), c("wq", w(H, H)), c("wk", w(H, H)), c("wv", w(H, H)), c("bq", w(H))
    c("w1", w(H, 32)), c("w2", w(32, H)), c("flat", np.array([-1, H], np.int64)), c("empty", np.zeros(0, np.int64))
    n("Gather", ["wemb", "ids"], "we")
    n("Shape", ["ids"], "sh"), n("Gather", ["sh", "i1"], "seq"), n("Unsqueeze", ["seq", "ax0"], "seq1")
    n("Slice", ["pids", "st0", "seq1", "ax1"], "pos"), n("Gather", ["pemb", "pos"], "pe")
    n("Add", ["we", "pe"], "e")
    n("ReduceMean", ["e"], "lm", axes=[-1]), n("Sub", ["e", "lm"], "ld"), n("Pow", ["ld", "two"], "lp")
    n("ReduceMean", ["lp"], "lv", axes=[-1]), n("Add", ["lv", "eps"], "lve"), n("Sqrt", ["lve"], "ls")
    n("Div", ["ld", "ls"], "ln"), n("Mul", ["ln", "gamma"], "lg"), n("Add", ["lg", "beta"], "h")
    n("Shape", ["h"], "hs"), n("Gather", ["hs", "i0"], "b"), n("Gather", ["hs", "i1"], "s")
    n("Unsqueeze", ["b", "ax0"], "b1"), n("Unsqueeze", ["s", "ax0"], "s1")
    n("Concat", ["b1", "s1", "hd"], "qshape", axis=0)
    heads = {}
    for name, bias in [("q", "bq"), ("k", None), ("v", None)]:
        x = n("MatMul", ["h", "w" + name], name + "mm")
        if bias:
            x = n("Add", [x, bias], name + "b")
        n("Reshape", [x, "qshape"], name + "r")
        heads[name] = n("Transpose", [name + "r"], name + "t", perm=[0, 2, 1, 3])
    n("Transpose", [heads["k"]], "ktt", perm=[0, 1, 3, 2]), n("MatMul", [heads["q"], "ktt"], "sc")
    n("Div", ["sc", "sqrt_dh"], "scd")
    n("Unsqueeze", ["mask", "ax12"], "m4"), n("Cast", ["m4"], "m4f", to=TensorProto.FLOAT)
    n("Sub", ["one", "m4f"], "m4i"), n("Mul", ["m4i", "negbig"], "madd"), n("Add", ["scd", "madd"], "scm")
    n("Shape", ["scm"], "scs"), n("Equal", ["m4", "i0"], "meq"), n("Expand", ["meq", "scs"], "mex")
    n("ConstantOfShape", ["empty"], "fill", value=helper.make_tensor("v", TensorProto.FLOAT, [1], [-1e9]))
    n("Where", ["mex", "fill", "scm"], "scw")
    n("Softmax", ["scw"], "probs", axis=-1), n("MatMul", ["probs", heads["v"]], "ctx")
    n("Transpose", ["ctx"], "ctxt", perm=[0, 2, 1, 3])
    n("Concat", ["b1", "s1", "hsz"], "oshape", axis=0), n("Reshape", ["ctxt", "oshape"], "att")
    n("Add", ["att", "h"], "res")
    n("MatMul", ["res", "w1"], "f1"), n("Div", ["f1", "sqrt2"], "f1d"), n("Erf", ["f1d"], "erf")
    n("Add", ["erf", "one"], "erf1"), n("Mul", ["f1", "erf1"], "g0"), n("Mul", ["g0", "half"], "gelu")
    n("MatMul", ["gelu", "w2"], "f2"), n("Add", ["f2", "res"], "out")
    n("Reshape", ["out", "flat"], "out2")
    n("Cast", ["seq"], "seqf", to=TensorProto.FLOAT)
    inputs = {"ids": ("int64", ["batch", "seq"]), "mask": ("int64", ["batch", "seq"])}
    return make_model(nodes, inputs, ["out", "out2", "probs", "seqf"], inits, 14)


def test_bert_encoder_symbolic_shapes_one_build_many_shapes():
    m = _bert_model()
    model = import_model(m)
    mod = lower(model)
    params = mod["main"].params
    assert [p.name for p in params] == ["ids", "mask"]
    assert params[0].ty.shape.values[0].same_as(params[1].ty.shape.values[0])  # one var for "batch"
    runner = Runner(build(mod, TARGET), model)
    rng = np.random.default_rng(2)
    for batch, seq in [(2, 7), (1, 5), (3, 12)]:
        feeds = {"ids": rng.integers(0, 30, (batch, seq)).astype(np.int64),
                 "mask": (rng.random((batch, seq)) > 0.3).astype(np.int64)}
        assert_close(runner(feeds), reference(m, feeds))


# -- IR built by hand, conventions of the lowered module -----------------------------------------


def _hand_model() -> Model:
    g = Graph("hand")
    x = g.add_input(TensorType(DType.F32, ("N", 4)), "x")
    y = g.add_input(TensorType(DType.F32, ("N", None)), "y")
    w = g.constant(np.arange(16, dtype=np.float32).reshape(4, 4) / 16, "w")
    mm = g.add("onnx.MatMul", [x, w], name="mm").output
    s = g.add("onnx.Sigmoid", [mm], name="sig", output_names=["s"]).output
    r = g.add("onnx.ReduceSum", [y], {"keepdims": 0, "axes": (1,)}, name="rs", output_names=["r"]).output
    g.outputs = [s, r]
    return Model(g, {"": 11})


def test_hand_built_ir_symbolic_dims_and_tuple_outputs():
    model = _hand_model()
    mod = lower(model)
    main = mod["main"]
    x, y = main.params
    assert x.ty.shape.values[0].same_as(y.ty.shape.values[0])  # "N" is one tir.Var
    assert not y.ty.shape.values[1].same_as(x.ty.shape.values[0])  # None got a fresh var
    assert isinstance(main.ret_ty, relax.TupleType) and len(main.ret_ty.fields) == 2
    xs, ys = f32(3, 4), f32(3, 6)
    out = run(build(mod, TARGET), {"x": xs, "y": ys}, model)
    w = np.arange(16, dtype=np.float32).reshape(4, 4) / 16
    np.testing.assert_allclose(out["s"], 1 / (1 + np.exp(-(xs @ w))), rtol=1e-5)
    np.testing.assert_allclose(out["r"], ys.sum(1), rtol=1e-5)


def test_params_as_inputs_are_fed_from_the_model():
    g = Graph("p")
    x = g.add_input(TensorType(DType.F32, (2, 64)), "x")
    w = g.constant(f32(64, 32), "weight")
    g.outputs = [g.add("onnx.MatMul", [x, w], name="mm", output_names=["y"]).output]
    model = Model(g, {"": 17})
    mod = lower(model, params_as_constants=False)
    assert [p.name for p in mod["main"].params] == ["x", "weight"]
    assert int(mod["main"].attrs["num_input"]) == 1
    xs = f32(2, 64)
    out = run(build(mod, TARGET), {"x": xs}, model)
    np.testing.assert_allclose(out["y"], xs @ w.const_value, rtol=1e-4, atol=1e-5)


# -- errors -------------------------------------------------------------------------------


def test_unsupported_op_names_op_node_and_opset():
    g = Graph()
    x = g.add_input(TensorType(DType.F32, (2, 3)), "x")
    g.outputs = [g.add("onnx.Det", [x], name="det").output]
    with pytest.raises(MdocError) as e:
        lower(Model(g, {"": 17}))
    assert str(e.value) == "onnx.Det (node 'det') has no Relax converter for opset 17"


def test_operand_that_must_be_constant_is_named():
    """An operand that decides the computation's structure (here an axes tensor of unknown length,
    which decides the rank) names the graph inputs it comes from and how to bind them
    (tests/test_dynamic_operands.py covers binding)."""
    g = Graph()
    x = g.add_input(TensorType(DType.F32, (2, 3)), "x")
    axes = g.add_input(TensorType(DType.I64, ("n",)), "axes")
    g.outputs = [g.add("onnx.ReduceSum", [x, axes], {"keepdims": 0}, name="rs").output]
    with pytest.raises(MdocError) as e:
        lower(Model(g, {"": 18}))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg == ("onnx.ReduceSum (node 'rs'): operand 1 %axes (axes, of a length known only at run time) must be a "
                   "constant for the Relax target; it is graph input 'axes': bind its value at compile time "
                   "(mdoc compile --bind axes=VALUES)")
    assert e.value.inputs == ("axes",)


def test_registry_picks_highest_since_not_above_opset():
    assert lookup("onnx.Squeeze", 12).__name__ == "squeeze_v1"
    assert lookup("onnx.Squeeze", 13).__name__ == "squeeze_v13"
    assert lookup("onnx.Squeeze", 21).__name__ == "squeeze_v13"
    assert lookup("onnx.Resize", 9) is None
    assert lookup("onnx.NoSuchOp", 17) is None


# -- schedules and the kernel hook -------------------------------------------------------------


def test_every_primfunc_is_scheduled_parallel():
    g = GraphSpec()
    g.add("Conv", ["x", g.const("w", f32(32, 16, 3, 3))], pads=[1, 1, 1, 1])
    g.add("Softmax", ["x"], axis=-1)
    g.add("ReduceMean", ["x"], axes=[2, 3])
    g.add("MatMul", ["a", g.const("b", f32(64, 48))])
    feeds = {"x": f32(1, 16, 12, 12), "a": f32(32, 64)}
    mod = optimize(lower(import_model(g.model(feeds, opset=13))), TARGET)
    funcs = [(gv.name_hint, fn) for gv, fn in mod.functions_items() if isinstance(fn, tvm.tirx.PrimFunc)]
    assert funcs
    for name, fn in funcs:
        assert fn.attrs is not None and "mdoc.scheduled" in fn.attrs, name
        assert "T.parallel" in fn.script(), f"{name} has no parallel loop"
    conv = next(fn for name, fn in funcs if "conv" in name)
    assert "T.vectorized" in conv.script()


class _CountingKernels(Kernels):
    """A strategy that replaces every matmul with its own scheduled PrimFunc."""

    calls = 0

    def matmul(self, ctx, a, b, *, transpose_b=False):
        (m, k), (k2, n) = ctx.shape_of(a), ctx.shape_of(b)
        if transpose_b:
            return super().matmul(ctx, a, b, transpose_b=transpose_b)
        A = te.placeholder((m, k), "float32", name="A")
        B = te.placeholder((k, n), "float32", name="B")
        r = te.reduce_axis((0, k), name="r")
        C = te.compute((m, n), lambda i, j: te.sum(A[i, r] * B[r, j], axis=r), name="C")
        gv = ctx.add_kernel(te.create_prim_func([A, B, C]), "mdoc_test_matmul")
        type(self).calls += 1
        return relax.call_tir(gv, [a, b], out_ty=relax.TensorType((m, n), "float32"))


def test_kernel_strategy_hook_replaces_matmul():
    g = GraphSpec()
    g.add("MatMul", ["a", g.const("b", f32(8, 5))])
    feeds = {"a": f32(3, 8)}
    m = g.model(feeds, opset=13)
    model = import_model(m)
    mod = lower(model, kernels=_CountingKernels())
    assert _CountingKernels.calls == 1 and "mdoc_test_matmul" in [gv.name_hint for gv in mod.get_global_vars()]
    assert mod["mdoc_test_matmul"].attrs["mdoc.scheduled"]
    opt = optimize(mod, TARGET)
    assert "T.parallel" not in opt["mdoc_test_matmul"].script()  # left alone by the generic schedule
    assert_close(run(build(mod, TARGET), feeds, model), reference(m, feeds))


def test_plugin_converter_overrides_builtin():
    @converter("mdoc.test_double", since=1)
    def double(ctx, node):
        x = ctx.input(0)
        return [relax.op.add(x, x)]

    g = Graph()
    x = g.add_input(TensorType(DType.F32, (4,)), "x")
    g.outputs = [g.add("mdoc.test_double", [x], name="d").output]
    model = Model(g, {"": 17})
    xs = f32(4)
    out = run(build(lower(model), TARGET), {"x": xs}, model)
    np.testing.assert_allclose(out[g.outputs[0].name], 2 * xs)


# -- the onnx package's light models -----------------------------------------------------------

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
                "squeezenet", "vgg19", "zfnet512"]


@pytest.mark.slow
@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_matches_shipped_output(name):
    path = LIGHT / f"light_{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} is not in this onnx install")
    model = import_model(path)
    x = model.graph.inputs[0]
    shape = tuple(d if isinstance(d, int) else 1 for d in x.type.shape)
    n = int(np.prod(shape))
    data = (np.arange(n).reshape(shape) / n).astype(np.float32)  # onnx's generate_dummy_data
    expected = numpy_helper.to_array(onnx.load_tensor(str(LIGHT / f"light_{name}_output_0.pb")))
    t0 = time.perf_counter()
    ex = build(lower(model), TARGET)
    build_s = time.perf_counter() - t0
    got = run(ex, {x.name: data}, model)[model.graph.outputs[0].name]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
    if os.environ.get("MDOC_VERBOSE"):
        print(f"{name}: build {build_s:.1f}s")


ZOO_MODELS = ["resnet18", "resnet50", "mobilenetv2", "bert_encoder", "vit_tiny", "detector_head"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO_MODELS)
def test_zoo_model_matches_onnxruntime(name):
    """The small variants of mdoc's reference models (models/zoo.py), end to end against onnxruntime."""
    from mdoc.models import ZOO, example_inputs

    entry = ZOO[name]
    m = entry.builder(**entry.test_kwargs)
    feeds = example_inputs(m)
    model = import_model(m)
    assert_close(run(build(lower(model), TARGET), feeds, model), reference(m, feeds))
