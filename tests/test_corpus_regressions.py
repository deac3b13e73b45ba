"""Tiny reproductions of what the real-model corpus (benchmarks/corpus.py) found failing.

Each test builds the few nodes of one failure class the way the exporter wrote them,
compiles them once through `mdoc.compile` with the dims symbolic (as `mdoc compile` does)
and checks the one artifact against onnxruntime at two shapes.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import mdoc

N = helper.make_node


def _model(nodes, inputs, outputs, inits, opset=17) -> onnx.ModelProto:
    """inputs / outputs: name -> (onnx elem type, shape with str dims); inits: name -> array."""
    graph = helper.make_graph(nodes, "corpus_case",
                              [helper.make_tensor_value_info(k, t, s) for k, (t, s) in inputs.items()],
                              [helper.make_tensor_value_info(k, t, s) for k, (t, s) in outputs.items()],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def check_two_shapes(m: onnx.ModelProto, feeds: list[dict], tmp_path) -> None:
    """Compile `m` once (dims symbolic), run every feed dict, compare with onnxruntime."""
    path = tmp_path / "case.onnx"
    onnx.save(m, path)
    run = mdoc.load(mdoc.compile(str(path), "x86", tmp_path / "case.x86", show_progress=False))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for f in feeds:
        got = run(**f)
        for name, want in zip(names, session.run(names, f)):
            np.testing.assert_allclose(got[name], want, rtol=1e-3, atol=1e-4, err_msg=f"{name} at {f.keys()}")


def _f32(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_slice_end_sentinel_on_a_symbolic_dim(tmp_path):
    """tf2onnx (magika) writes an open slice end as 1e9, below INT32_MAX: on a run-time batch the
    end must still clamp to the dim, or the slice claims a 1e9-long axis."""
    m = _model([N("Slice", ["x", "starts", "ends", "axes"], ["s"]), N("Relu", ["s"], ["y"])],
               {"x": (TensorProto.FLOAT, ["N", 4, 3])}, {"y": (TensorProto.FLOAT, ["N", 4, 3])},
               {"starts": np.zeros(3, np.int32), "ends": np.full(3, 1_000_000_000, np.int32),
                "axes": np.arange(3, dtype=np.int32)})
    check_two_shapes(m, [{"x": _f32(1, 4, 3)}, {"x": _f32(3, 4, 3, seed=1)}], tmp_path)


def test_shape_cast_to_int32_and_back(tmp_path):
    """jax2tf / tf2onnx shape subgraphs cast Shape to int32 and back to int64 before Expand: the
    round trip must leave the run-time batch a plain dim (FuseTIR refused Cast(int64, Cast(int32, N)))."""
    nodes = [N("Shape", ["x"], ["s"]), N("Cast", ["s"], ["s32"], to=TensorProto.INT32),
             N("Slice", ["s32", "zero", "one"], ["n"]), N("Concat", ["n", "rest"], ["shape32"], axis=0),
             N("Cast", ["shape32"], ["shape"], to=TensorProto.INT64),
             N("Reshape", ["x", "shape"], ["r"]), N("Expand", ["r", "shape"], ["e"]),
             N("Equal", ["e", "one_f"], ["eq"]), N("Cast", ["eq"], ["y"], to=TensorProto.FLOAT)]
    m = _model(nodes, {"x": (TensorProto.INT32, ["N", 8])}, {"y": (TensorProto.FLOAT, ["N", 8, 1])},
               {"zero": np.array([0], np.int32), "one": np.array([1], np.int32),
                "rest": np.array([8, 1], np.int32), "one_f": np.array(1, np.int32)})
    feeds = [{"x": np.random.default_rng(i).integers(0, 3, (n, 8)).astype(np.int32)} for i, n in enumerate((1, 3))]
    check_two_shapes(m, feeds, tmp_path)


def test_if_branch_broadcasts_captured_values_sharing_a_dim(tmp_path):
    """silero-vad (op18, one If on the sample rate): the branch adds the audio's features to the
    LSTM state, both [batch, ...] outside; the branch's parameters must keep one batch var, or
    Relax cannot broadcast them and the add is left unlowered ("CodeGenVM cannot emit")."""
    then = helper.make_graph([N("Gather", ["state", "zero"], ["h"]), N("Relu", ["x"], ["rx"]),
                              N("Add", ["rx", "h"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["B", 4])])
    other = helper.make_graph([N("Relu", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["B", 4])])
    nodes = [N("Equal", ["sr", "sr16k"], ["c"]), N("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    m = _model(nodes, {"x": (TensorProto.FLOAT, ["B", 4]), "state": (TensorProto.FLOAT, [2, "B", 4]),
                       "sr": (TensorProto.INT64, [])}, {"y": (TensorProto.FLOAT, ["B", 4])},
               {"zero": np.array(0, np.int64), "sr16k": np.array(16000, np.int64)})
    feeds = [{"x": _f32(b, 4, seed=b), "state": _f32(2, b, 4, seed=b + 1), "sr": np.array(sr, np.int64)}
             for b, sr in ((1, 16000), (2, 8000), (3, 16000))]
    check_two_shapes(m, feeds, tmp_path)


def test_bidirectional_lstm_over_a_run_time_sequence(tmp_path):
    """ddddocr / PP-OCR recognizers: a bidirectional LSTM over a sequence known at run time. Its two
    directions come out of two loops whose lengths Relax cannot prove equal, and their Concat was
    left unlowered ("CodeGenVM cannot emit R.concat"). The Concat converter match-casts the
    directions to one length (`LowerCtx.aligned`); with the sequence computed by a strided conv,
    ConvertToDataflow's CanonicalizeBindings dropped that cast until `aligned` pinned the first."""
    rng = np.random.default_rng(0)
    hidden, feat = 8, 6
    w = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    m = _model([N("Conv", ["x", "k"], ["c"], strides=[1, 2], pads=[0, 1, 0, 1]),  # [1, feat, 1, (W - 1) // 2 + 1]
                N("Squeeze", ["c", "two"], ["q"]), N("Transpose", ["q"], ["s"], perm=[2, 0, 1]),
                N("LSTM", ["s", "W", "R", "B"], ["y"], hidden_size=hidden, direction="bidirectional"),
                N("Transpose", ["y"], ["t"], perm=[0, 2, 1, 3]), N("Reshape", ["t", "flat"], ["z"])],
               {"x": (TensorProto.FLOAT, [1, 1, 2, "W"])}, {"z": (TensorProto.FLOAT, [None, 1, 2 * hidden])},
               {"k": w(feat, 1, 2, 3), "W": w(2, 4 * hidden, feat), "R": w(2, 4 * hidden, hidden),
                "B": w(2, 8 * hidden), "flat": np.array([0, 1, -1], np.int64), "two": np.array([2], np.int64)},
               opset=13)
    check_two_shapes(m, [{"x": _f32(1, 1, 2, 10)}, {"x": _f32(1, 1, 2, 17, seed=1)}], tmp_path)


def test_nms_over_a_run_time_batch_and_box_count(tmp_path):
    """A YOLO end2end export: NonMaxSuppression over [N, A, 4] boxes, A set by the image size. TOPI
    sized its output with a Python `if` on the dims ("Cannot use and / or / not operator to Expr")."""
    m = _model([N("NonMaxSuppression", ["boxes", "scores", "limit", "iou", "thr"], ["sel"])],
               {"boxes": (TensorProto.FLOAT, ["N", "A", 4]), "scores": (TensorProto.FLOAT, ["N", 3, "A"])},
               {"sel": (TensorProto.INT64, ["K", 3])},
               {"limit": np.array([5], np.int64), "iou": np.array([0.5], np.float32),
                "thr": np.array([0.2], np.float32)})

    def feeds(n, a, seed):
        rng = np.random.default_rng(seed)
        corner = rng.random((n, a, 2), dtype=np.float32) * 10
        boxes = np.concatenate([corner, corner + 1 + rng.random((n, a, 2), dtype=np.float32) * 3], axis=2)
        return {"boxes": boxes, "scores": rng.random((n, 3, a), dtype=np.float32)}

    check_two_shapes(m, [feeds(1, 30, 0), feeds(2, 57, 1)], tmp_path)


def test_fpn_adds_an_upsampled_map_to_a_lateral_one(tmp_path):
    """PP-OCR's text detectors (DBNet FPN): a stride-4 map upsampled 2x by Resize is added to a
    stride-2 map. Relax cannot prove 2 * (H // 4) equal to H // 2 and left the Add unlowered
    ("CodeGenVM cannot emit R.add")."""
    rng = np.random.default_rng(0)
    k = lambda: (rng.standard_normal((4, 4, 3, 3)) * 0.2).astype(np.float32)  # noqa: E731
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    nodes = [N("Conv", ["x", "k1"], ["c2"], **conv), N("Conv", ["c2", "k2"], ["c4"], **conv),
             N("Resize", ["c4", "", "scales"], ["up"], mode="nearest"), N("Add", ["up", "c2"], ["y"])]
    m = _model(nodes, {"x": (TensorProto.FLOAT, ["N", 4, "H", "W"])}, {"y": (TensorProto.FLOAT, ["N", 4, None, None])},
               {"k1": k(), "k2": k(), "scales": np.array([1, 1, 2, 2], np.float32)})
    check_two_shapes(m, [{"x": _f32(1, 4, 32, 32)}, {"x": _f32(2, 4, 16, 24, seed=1)}], tmp_path)


def test_float_range_over_a_feature_map_dim(tmp_path):
    """YOLOv8's exported anchor grid: Range(0.0, float(W'), 1.0) over a feature map's width. Its
    length was ceil() of a float in the shape, which FuseOps refuses ("FInferType ... prim.ceil")."""
    nodes = [N("Shape", ["x"], ["s"]), N("Gather", ["s", "three"], ["w"]), N("Cast", ["w"], ["wf"], to=TensorProto.FLOAT),
             N("Range", ["zero", "wf", "one"], ["r"]), N("Add", ["x", "r"], ["y"])]
    m = _model(nodes, {"x": (TensorProto.FLOAT, ["N", 2, "H", "W"])}, {"y": (TensorProto.FLOAT, ["N", 2, "H", "W"])},
               {"three": np.array(3, np.int64), "zero": np.array(0.0, np.float32), "one": np.array(1.0, np.float32)})
    check_two_shapes(m, [{"x": _f32(1, 2, 3, 4)}, {"x": _f32(2, 2, 5, 7, seed=1)}], tmp_path)


def test_torch_squeeze_of_a_run_time_dim(tmp_path):
    """torch.onnx exports `x.squeeze(2)` on a dim known only at run time as If(Shape(x)[2] == 1)
    { Squeeze(x, [2]) } else { x } (silero-vad's decoder); the branches differ in rank, which a
    Relax If cannot hold, so fold-if takes the squeeze."""
    then = helper.make_graph([N("Squeeze", ["x", "two"], ["sq"])], "then", [],
                             [helper.make_tensor_value_info("sq", TensorProto.FLOAT, ["N", 4])])
    other = helper.make_graph([N("Identity", ["x"], ["i"])], "else", [],
                              [helper.make_tensor_value_info("i", TensorProto.FLOAT, ["N", 4, "T"])])
    nodes = [N("Shape", ["x"], ["s"]), N("Gather", ["s", "two_scalar"], ["t"]), N("Equal", ["t", "one"], ["c"]),
             N("If", ["c"], ["q"], then_branch=then, else_branch=other), N("MatMul", ["q", "w"], ["y"])]
    m = _model(nodes, {"x": (TensorProto.FLOAT, ["N", 4, "T"])}, {"y": (TensorProto.FLOAT, ["N", 3])},
               {"two": np.array([2], np.int64), "two_scalar": np.array(2, np.int64), "one": np.array(1, np.int64),
                "w": _f32(4, 3, seed=5)})
    check_two_shapes(m, [{"x": _f32(1, 4, 1)}, {"x": _f32(3, 4, 1, seed=1)}], tmp_path)


def test_paddle_unknown_dims(tmp_path):
    """PP-OCR's text-line classifier declares x: [-1, 3, '?', '?']; onnxruntime takes any batch and
    any H != W, mdoc planned a conv for a batch of -1 ("Check failed: !info.dom.IsNothing()")."""
    rng = np.random.default_rng(0)
    nodes = [N("Conv", ["x", "k"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
             N("GlobalAveragePool", ["c"], ["p"]), N("Shape", ["p"], ["s"]),
             N("Slice", ["s", "zero", "one"], ["n"]), N("Concat", ["n", "four"], ["shape"], axis=0),
             N("Reshape", ["p", "shape"], ["y"])]
    m = _model(nodes, {"x": (TensorProto.FLOAT, [-1, 3, "?", "?"])}, {"y": (TensorProto.FLOAT, [-1, 4])},
               {"k": (rng.standard_normal((4, 3, 3, 3)) * 0.2).astype(np.float32), "zero": np.array([0], np.int64),
                "one": np.array([1], np.int64), "four": np.array([4], np.int64)})
    check_two_shapes(m, [{"x": _f32(1, 3, 16, 48)}, {"x": _f32(3, 3, 24, 20, seed=1)}], tmp_path)


def test_gru_over_a_run_time_sequence(tmp_path):
    """A keyword spotter exported by torch.onnx: frames [N, C, T] -> GRU over T -> last step -> Gemm
    ("MdocFastMath failed: emit_te now only supports Tensor that has ShapeExpr shape")."""
    rng = np.random.default_rng(0)
    w = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    h = 8
    m = _model([N("Transpose", ["x"], ["s"], perm=[2, 0, 1]),
                N("GRU", ["s", "W", "R", "B"], ["y"], hidden_size=h, linear_before_reset=1),
                N("Squeeze", ["y", "one"], ["q"]), N("Gather", ["q", "last"], ["z"], axis=0),
                N("Gemm", ["z", "fc"], ["out"], transB=1)],
               {"x": (TensorProto.FLOAT, ["N", 6, "T"])}, {"out": (TensorProto.FLOAT, ["N", 3])},
               {"W": w(1, 3 * h, 6), "R": w(1, 3 * h, h), "B": w(1, 6 * h), "one": np.array([1], np.int64),
                "last": np.array(-1, np.int64), "fc": w(3, h)}, opset=14)
    check_two_shapes(m, [{"x": _f32(1, 6, 5)}, {"x": _f32(3, 6, 9, seed=1)}], tmp_path)


def test_lstm_inside_an_if_branch(tmp_path):
    """silero-vad: its decoder's LSTM runs inside the If on the sample rate, over a batch and a
    sequence known only at run time (the accumulator's element shape was refused first, "needs a
    known element shape"; the Loop now takes the branch's batch var)."""
    rng = np.random.default_rng(0)
    w = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    h = 4
    then = helper.make_graph([N("LSTM", ["x", "W", "R", "B"], ["y", "yh"], hidden_size=h)], "then", [],
                             [helper.make_tensor_value_info("yh", TensorProto.FLOAT, [1, "B", h])])
    other = helper.make_graph([N("LSTM", ["x", "W2", "R", "B"], ["y2", "yh2"], hidden_size=h)], "else", [],
                              [helper.make_tensor_value_info("yh2", TensorProto.FLOAT, [1, "B", h])])
    m = _model([N("Equal", ["sr", "sr16k"], ["c"]), N("If", ["c"], ["out"], then_branch=then, else_branch=other)],
               {"x": (TensorProto.FLOAT, ["T", "B", 3]), "sr": (TensorProto.INT64, [])},
               {"out": (TensorProto.FLOAT, [1, "B", h])},
               {"W": w(1, 4 * h, 3), "W2": w(1, 4 * h, 3), "R": w(1, 4 * h, h), "B": w(1, 8 * h),
                "sr16k": np.array(16000, np.int64)}, opset=14)
    check_two_shapes(m, [{"x": _f32(3, 1, 3), "sr": np.array(16000)},
                         {"x": _f32(5, 2, 3, seed=1), "sr": np.array(8000)}], tmp_path)


def test_average_pool_wider_than_its_input(tmp_path):
    """Hugging Face's EfficientNet pools its 7x7 map with AvgPool2d(1280, ceil_mode=True): TOPI looped
    over every one of the 1280 x 1280 window cells (2.2 s of a 2.2 s call). The window is now
    clamped to the input, and the result is onnxruntime's at any size, the window's edge inside too."""
    m = _model([N("AveragePool", ["x"], ["y"], kernel_shape=[100, 100], strides=[100, 100], ceil_mode=1)],
               {"x": (TensorProto.FLOAT, ["N", 8, "H", "W"])}, {"y": (TensorProto.FLOAT, ["N", 8, "h", "w"])}, {})
    check_two_shapes(m, [{"x": _f32(1, 8, 7, 7)}, {"x": _f32(2, 8, 150, 230, seed=1)}], tmp_path)
    from mdoc.onnx_import import import_model
    from mdoc.targets.presets import resolve_target
    from mdoc.targets.tvm_backend import TvmBackend

    mod = TvmBackend().lower(import_model(m), resolve_target("x86"))
    assert any("wide_avg_pool" in gv.name_hint for gv in mod.get_global_vars()), "TOPI's full-window pool"


def test_reshape_to_a_shape_that_another_op_read_first(tmp_path):
    """GPT-2 with past (TorchScript): the attention's Reshape target [N, S, 384] is built from Shape
    gathers whose [N] piece an earlier Concat (with a run-time value) had read as a tensor; the
    piece must stay a size, or the Reshape gets fresh dims, Split's parts `min(128, d)` and the
    contraction with the cached keys "sizes differ"."""
    piece = lambda i: [N("Gather", ["shape", f"i{i}"], [f"g{i}"]), N("Unsqueeze", [f"g{i}", "zero"], [f"u{i}"])]  # noqa: E731
    nodes = [N("Shape", ["x"], ["shape"]), *piece(0), *piece(1),
             N("Concat", ["u0", "extra"], ["read_first"], axis=0),
             N("Concat", ["u0", "u1", "width"], ["target"], axis=0),
             N("MatMul", ["x", "proj"], ["xp"]), N("Reshape", ["xp", "target"], ["r"]),
             N("Split", ["r", "parts"], ["q", "k", "v"], axis=2),
             N("Concat", ["past_k", "k"], ["kc"], axis=1), N("Concat", ["past_v", "v"], ["vc"], axis=1),
             N("Transpose", ["kc"], ["kt"], perm=[0, 2, 1]), N("MatMul", ["q", "kt"], ["s"]),
             N("Softmax", ["s"], ["p"], axis=-1), N("MatMul", ["p", "vc"], ["y"])]
    m = _model(nodes, {"x": (TensorProto.FLOAT, ["N", "S", 8]), "past_k": (TensorProto.FLOAT, ["N", "P", 4]),
                       "past_v": (TensorProto.FLOAT, ["N", "P", 4]), "extra": (TensorProto.INT64, [1])},
               {"y": (TensorProto.FLOAT, ["N", "S", 4]), "read_first": (TensorProto.INT64, [2])},
               {"i0": np.array(0, np.int64), "i1": np.array(1, np.int64), "zero": np.array([0], np.int64),
                "width": np.array([12], np.int64), "parts": np.array([4, 4, 4], np.int64),
                "proj": _f32(8, 12, seed=3)}, opset=13)
    feeds = [{"x": _f32(1, 1, 8), "past_k": _f32(1, 5, 4, seed=1), "past_v": _f32(1, 5, 4, seed=2),
              "extra": np.array([7])},
             {"x": _f32(2, 4, 8, seed=4), "past_k": _f32(2, 12, 4, seed=5), "past_v": _f32(2, 12, 4, seed=6),
              "extra": np.array([3])}]
    check_two_shapes(m, feeds, tmp_path)


def test_torch_expand_of_a_shape_with_minus_one_markers(tmp_path):
    """BERT's token types (TorchScript): `buffer[:, :S].expand(N, S)` exports as Expand over
    `Where(Equal(shape, -1), 1, shape)`; left as `Select(n == -1, 1, n)` in every dim after it, the
    cast of the embedding sum back to [N, S, D] sent TVM's KillAfterLastUse into endless recursion
    (a segfault). Dims are sizes (>= 0), so the markers fold."""
    nodes = [N("Shape", ["ids"], ["shape"]), N("Gather", ["shape", "one"], ["s"]), N("Unsqueeze", ["s", "zero"], ["end"]),
             N("Slice", ["buffer", "zero", "end", "one_axis"], ["types"]),
             N("Equal", ["shape", "minus_one"], ["is_marker"]), N("Where", ["is_marker", "ones", "shape"], ["to"]),
             N("Expand", ["types", "to"], ["types_n"]),
             N("Gather", ["words", "ids"], ["we"]), N("Gather", ["type_table", "types_n"], ["te"]),
             N("Add", ["we", "te"], ["e"]), N("ReduceMean", ["e"], ["y"], axes=[2], keepdims=0)]
    m = _model(nodes, {"ids": (TensorProto.INT64, ["N", "S"])}, {"y": (TensorProto.FLOAT, ["N", "S"])},
               {"one": np.array(1, np.int64), "zero": np.array([0], np.int64), "one_axis": np.array([1], np.int64),
                "buffer": np.zeros((1, 16), np.int64), "minus_one": np.array(-1, np.int64),
                "ones": np.ones(2, np.int64), "words": _f32(10, 6), "type_table": _f32(2, 6, seed=1)}, opset=13)
    check_two_shapes(m, [{"ids": np.array([[1, 2, 3]])}, {"ids": np.arange(14).reshape(2, 7) % 10}], tmp_path)


def test_gemm_with_a_run_time_c_of_another_symbol(tmp_path):
    """silero-vad (TorchScript, opset 15): decompose-rnn's step is Gemm(h, R, gates[i]), where the
    carried h and the precomputed gates have batch dims that Relax cannot prove equal (the state
    came through a folded If with unknown dims); the add of C was left unlegalized (exit 3). C is
    now cast to the product's rows, checked at run time."""
    m = _model([N("Gemm", ["a", "w", "c"], ["y"])],
               {"a": (TensorProto.FLOAT, ["N", 4]), "c": (TensorProto.FLOAT, ["M", 16])},
               {"y": (TensorProto.FLOAT, ["N", 16])}, {"w": _f32(4, 16, seed=2)})
    check_two_shapes(m, [{"a": _f32(1, 4), "c": _f32(1, 16, seed=1)}, {"a": _f32(3, 4, seed=3), "c": _f32(3, 16, seed=4)}],
                     tmp_path)
