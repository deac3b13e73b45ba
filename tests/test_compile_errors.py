"""Compile failures that name their cause, and window ops on spatial dims known only at run time.

Each failure class of issue 18 ("Real models from the wild") is reproduced by a tiny model:
a converter that raises inside nested If and Loop bodies, an op with an attribute the Relax
target refuses, a convolution whose window does not fit its input, a converter bug and a
failing TVM pass (exit 3). The message tests read file descriptor 2 itself (`capfd`), where
TVM's C++ log lines land: none may reach it, before or after mdoc's one line.

Convolutions and pools over an input declared without spatial sizes compile once and are
checked against onnxruntime at two input sizes.
"""

from __future__ import annotations

import gc
import os
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as h

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("tvm")

import mdoc  # noqa: E402
from mdoc.api import optimize  # noqa: E402
from mdoc.backends import BUILD_LOG, get_backend  # noqa: E402
from mdoc.errors import InternalError  # noqa: E402
from mdoc.onnx_import import import_model  # noqa: E402

F, I64, B = TP.FLOAT, TP.INT64, TP.BOOL
RNG = np.random.default_rng(18)
TVM_LOG_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] |Warning:|BlockBuilder", re.M)


def vi(name, elem, shape):
    return h.make_tensor_value_info(name, elem, shape)


def const(name, array):
    return h.make_tensor(name, TP.FLOAT if array.dtype == np.float32 else TP.INT64, array.shape, array.ravel())


def make(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    m = h.make_model(h.make_graph(nodes, "g", inputs, outputs, initializer=list(inits)),
                     opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 8
    return m


@pytest.fixture
def mdoc_fd(capfd, fresh_registries):
    """Run `mdoc ARGS...` in-process; (exit status, stdout, stderr) as file descriptors 1 and 2 saw them,
    after a garbage collection (TVM objects that log when destroyed have then logged)."""
    from mdoc.cli import main

    def run(*args) -> tuple[int, str, str]:
        capfd.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        gc.collect()
        out, err = capfd.readouterr()
        return code, out, err

    return run


def assert_one_line(err: str, *fragments: str, prefix: str = "mdoc: error: ") -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(prefix), lines[0]
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert not TVM_LOG_LINE.search(err), err
    return lines[0]


def _pool_with_indices(name: str, out: str):
    """A MaxPool whose Indices result is used: the Relax target refuses it (a converter raises)."""
    return [h.make_node("MaxPool", ["x"], [f"{out}_p", f"{out}_i"], kernel_shape=[2, 2], name=name),
            h.make_node("Cast", [f"{out}_i"], [f"{out}_f"], to=F, name=f"{name}_cast"),
            h.make_node("Add", [f"{out}_p", f"{out}_f"], [out], name=f"{name}_add")]


def _branch(nodes, out):
    return h.make_graph(nodes, out, [], [vi(out, F, [1, 1, 3, 3])])


def _nested_if_model() -> onnx.ModelProto:
    """outer If (run-time condition) -> else_branch: inner If -> then_branch: the refused MaxPool."""
    def plain(out):
        return [h.make_node("MaxPool", ["x"], [out], kernel_shape=[2, 2], name=f"pool_{out}")]

    inner = h.make_node("If", ["c"], ["i"], name="inner_if",
                        then_branch=_branch(_pool_with_indices("pool_in_if", "t"), "t"),
                        else_branch=_branch(plain("e"), "e"))
    outer = h.make_node("If", ["c"], ["y"], name="outer_if", then_branch=_branch(plain("o"), "o"),
                        else_branch=_branch([inner], "i"))
    nodes = [h.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="sum"),
             h.make_node("Greater", ["s", "zero"], ["c"], name="gt"), outer]
    return make(nodes, [vi("x", F, [1, 1, 4, 4])], [vi("y", F, [1, 1, 3, 3])],
                [const("zero", np.zeros((), np.float32))])


def _loop_model() -> onnx.ModelProto:
    """A Loop of run-time trip count whose body holds the refused MaxPool."""
    body = h.make_graph(
        [h.make_node("Identity", ["cond"], ["cond_out"], name="keep_going"), *_pool_with_indices("pool_in_loop", "b"),
         h.make_node("Add", ["acc", "b"], ["acc_out"], name="accumulate")],
        "body", [vi("i", I64, []), vi("cond", B, []), vi("acc", F, [1, 1, 3, 3])],
        [vi("cond_out", B, []), vi("acc_out", F, [1, 1, 3, 3])])
    nodes = [h.make_node("Loop", ["n", "", "acc0"], ["y"], body=body, name="the_loop")]
    return make(nodes, [vi("x", F, [1, 1, 4, 4]), vi("n", I64, []), vi("acc0", F, [1, 1, 3, 3])],
                [vi("y", F, [1, 1, 3, 3])])


def test_error_in_nested_if_body_names_node_and_bodies(mdoc_fd, tmp_path):
    path = tmp_path / "nested_if.onnx"
    onnx.save(_nested_if_model(), path)
    code, out, err = mdoc_fd("compile", path, "-o", tmp_path / "a")
    assert code == 2
    assert_one_line(err, "onnx.MaxPool (node 'pool_in_if')", "Indices result of MaxPool is not supported",
                    "in the then_branch of onnx.If 'inner_if'", "in the else_branch of onnx.If 'outer_if'")
    assert not (tmp_path / "a").exists()


def test_error_in_loop_body_names_node_and_loop(mdoc_fd, tmp_path):
    path = tmp_path / "loop.onnx"
    onnx.save(_loop_model(), path)
    code, _, err = mdoc_fd("compile", path, "-o", tmp_path / "a")
    assert code == 2
    assert_one_line(err, "onnx.MaxPool (node 'pool_in_loop')", "in the body of onnx.Loop 'the_loop'")


def test_unsupported_attribute_is_one_line(mdoc_fd, tmp_path):
    nodes = [h.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2], storage_order=1, name="col_major")]
    path = tmp_path / "storage_order.onnx"
    onnx.save(make(nodes, [vi("x", F, [1, 1, 4, 4])], [vi("y", F, [1, 1, 3, 3]), vi("idx", I64, [1, 1, 3, 3])]), path)
    code, _, err = mdoc_fd("compile", path, "-o", tmp_path / "a")
    assert code == 2
    assert_one_line(err, "onnx.MaxPool (node 'col_major')", "storage_order=1 is not supported")


@pytest.mark.parametrize("dims, flags", [([1, 3, "L"], ["--dim", "L=1"]), ([1, 3, 1], [])])
def test_window_larger_than_input_names_input_and_flag(mdoc_fd, tmp_path, dims, flags):
    """A kernel of 3 over a length of 1: TVM's legalization said only "Invalid conv parameters: lead to
    negative output shape [-1]", as an internal error naming no node."""
    w = RNG.standard_normal((4, 3, 3)).astype(np.float32)
    nodes = [h.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3], name="conv1d")]
    path = tmp_path / "conv1d.onnx"
    onnx.save(make(nodes, [vi("x", F, dims)], [vi("y", F, None)], [const("w", w)]), path)
    code, _, err = mdoc_fd("compile", path, "-o", tmp_path / "a", *flags)
    assert code == 2
    assert_one_line(err, "onnx.Conv (node 'conv1d')", "input %x has spatial dims [1]", "kernel [3]",
                    "output would have spatial dims [-1]", "--shape x=", "--dim NAME=SIZE")


def test_relax_refusal_names_node_and_op_not_its_repr(mdoc_fd, tmp_path):
    nodes = [h.make_node("Add", ["a", "b"], ["y"], name="bad_add")]
    path = tmp_path / "bad_add.onnx"
    onnx.save(make(nodes, [vi("a", F, [2, 3]), vi("b", F, [4, 3])], [vi("y", F, None)]), path)
    code, _, err = mdoc_fd("compile", path, "-o", tmp_path / "a")
    assert code == 2
    line = assert_one_line(err, "onnx.Add (node 'bad_add'): Relax rejected the conversion: ValueError: relax.add: ",
                           "not broadcastable")
    assert "ir.Op(" not in line


def test_converter_bug_is_internal_error(mdoc_fd, tmp_path, monkeypatch):
    import importlib

    node_lowering = importlib.import_module("mdoc.targets.relax.node_lowering")  # where converters are called

    def broken(ctx, node):
        raise TypeError("unsupported operand type(s)")

    real = node_lowering.lookup
    monkeypatch.setattr(node_lowering, "lookup", lambda op, opset: broken if op == "onnx.Neg" else real(op, opset))
    path = tmp_path / "neg.onnx"
    onnx.save(make([h.make_node("Neg", ["x"], ["y"], name="negate")], [vi("x", F, [2, 3])], [vi("y", F, [2, 3])]),
              path)
    code, _, err = mdoc_fd("compile", path, "-o", tmp_path / "a")
    assert code == 3
    assert_one_line(err, "onnx.Neg (node 'negate')", "its Relax converter failed: TypeError: unsupported operand",
                    "please report it", prefix="mdoc: internal error: ")


def test_failing_tvm_pass_is_named(tiny_path):
    """A TVM pass that fails on a module mdoc lowered: an InternalError that names the pass."""
    import tvm

    from mdoc.targets.builder import build_for
    from mdoc.targets.presets import resolve_target
    from mdoc.targets.tvm_backend import BACKEND

    @tvm.transform.module_pass(opt_level=0, name="RefusesEverything")
    def refuses(mod, ctx):
        raise ValueError("no thanks")

    spec = resolve_target("x86")
    model = mdoc.load_model(tiny_path)
    with pytest.raises(InternalError, match=r"TVM pass .*RefusesEverything failed: ValueError: no thanks"):
        build_for(BACKEND.lower(model, spec), spec, before_schedule=[refuses])


def test_op_left_unlowered_is_named():
    """An op Relax cannot legalize (its output shape unknown) reaches VM codegen: the error quotes the call."""
    from tvm import relax

    from mdoc.targets.builder import build_for
    from mdoc.targets.presets import resolve_target

    a, b = (relax.Var(n, relax.TensorType(ndim=2, dtype="float32")) for n in "ab")
    bb = relax.BlockBuilder()
    with bb.function("main", [a, b]):
        bb.emit_func_output(bb.emit(relax.op.add(a, b)))
    with pytest.raises(InternalError, match=r"tvm.compile failed: .*\(offending call: R.add\(a, b\)\)"):
        build_for(bb.get(), resolve_target("x86"))


def _embedding_model() -> onnx.ModelProto:
    """A Gather of a constant table by run-time indices: TVM logs "Fast mode segfaults ..." building it."""
    table = RNG.standard_normal((10, 4)).astype(np.float32)
    nodes = [h.make_node("Gather", ["table", "ids"], ["y"], name="embed")]
    return make(nodes, [vi("ids", I64, [1, 3])], [vi("y", F, [1, 3, 4])], [const("table", table)])


def test_tvm_log_goes_to_build_log_and_verbose(mdoc_fd, tmp_path):
    path = tmp_path / "embed.onnx"
    onnx.save(_embedding_model(), path)
    code, out, err = mdoc_fd("compile", path, "-o", tmp_path / "a")
    assert code == 0 and err == "", err
    log = (tmp_path / "a" / BUILD_LOG).read_text()
    assert "Warning: Fast mode segfaults" in log
    mdoc.load(tmp_path / "a")  # build.log is one of the artifact's hashed files
    code, out, err = mdoc_fd("compile", path, "-o", tmp_path / "b", "--verbose")
    assert code == 0
    assert "-- TVM's log (" in err and "Warning: Fast mode segfaults" in err


def test_tvm_log_of_a_failed_build_is_named_in_the_error(tmp_path, capfd, monkeypatch):
    """TVM's lines from a failed build land in a file that the error names, not on stderr."""
    from mdoc.targets import builder

    def logs_then_fails(mod, spec, **kw):  # writes to fd 2 as TVM's C++ LOG(WARNING) does
        os.write(2, b"[00:00:00] fake.cc:1: Warning: from TVM\n")
        raise InternalError("building for x86: TVM pass Fake failed: ValueError: boom")

    monkeypatch.setattr(builder, "build_for", logs_then_fails)
    model = import_model(_embedding_model())
    with pytest.raises(InternalError) as info:
        get_backend("tvm").compile(model, "x86", tmp_path / "a")
    assert "(TVM's log: " in str(info.value) and info.value.log
    with open(info.value.log) as f:
        assert "Warning: from TVM" in f.read()
    assert "Warning" not in capfd.readouterr().err


# -- window ops on spatial dims known only at run time -------------------------------------


def _window_model() -> onnx.ModelProto:
    """Conv (pads, SAME stride 2, depthwise), pools (SAME, ceil_mode with count_include_pad) and a
    transposed conv on an input declared without spatial sizes."""
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    wd = RNG.standard_normal((4, 1, 3, 3)).astype(np.float32)
    wt = RNG.standard_normal((4, 2, 3, 3)).astype(np.float32)
    N = h.make_node
    nodes = [N("Conv", ["x", "w"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv_pad"),
             N("Conv", ["c1", "wd"], ["c2"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER", group=4,
               name="dw_same"),
             N("MaxPool", ["c1"], ["p1"], kernel_shape=[3, 2], strides=[2, 3], auto_pad="SAME_LOWER", name="max_same"),
             N("AveragePool", ["c1"], ["p2"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER",
               name="avg_same"),
             N("AveragePool", ["c1"], ["p3"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1,
               count_include_pad=1, name="avg_ceil"),
             N("ConvTranspose", ["c2", "wt"], ["t"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER",
               name="up_same")]
    outs = [vi(n, F, None) for n in ("c2", "p1", "p2", "p3", "t")]
    return make(nodes, [vi("x", F, [1, 3, None, None])], outs, [const("w", w), const("wd", wd), const("wt", wt)])


def _runtime_reshape_model() -> onnx.ModelProto:
    """A conv after a Reshape whose shape is a run-time input: shape inference leaves `?` spatial dims."""
    w = RNG.standard_normal((2, 3, 3, 3)).astype(np.float32)
    nodes = [h.make_node("Reshape", ["flat", "shape"], ["x"], name="unflatten"),
             h.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], strides=[2, 1], pads=[1, 0, 1, 2],
                         name="conv")]
    return make(nodes, [vi("flat", F, [1, None]), vi("shape", I64, [4])], [vi("y", F, None)], [const("w", w)])


def _compile_symbolic(proto: onnx.ModelProto, out):
    """Compile keeping the unknown dims symbolic (mdoc.compile fixes them to 1 by default)."""
    model = import_model(proto)
    optimize(model, 2)
    return mdoc.load(get_backend("tvm").compile(model, "x86", out))


def _check(run, proto, feeds):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)
    got = list(run(**feeds).values())
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


def test_window_ops_on_unknown_spatial_dims_match_onnxruntime(tmp_path):
    proto = _window_model()
    run = _compile_symbolic(proto, tmp_path / "a")
    for hw in ((8, 8), (11, 7)):
        _check(run, proto, {"x": RNG.standard_normal((1, 3, *hw)).astype(np.float32)})


def test_conv_after_runtime_reshape_matches_onnxruntime(tmp_path):
    proto = _runtime_reshape_model()
    run = _compile_symbolic(proto, tmp_path / "a")
    for hw in ((6, 5), (9, 12)):
        feeds = {"flat": RNG.standard_normal((1, 3 * hw[0] * hw[1])).astype(np.float32),
                 "shape": np.array([1, 3, *hw], np.int64)}
        _check(run, proto, feeds)


def test_output_shape_on_run_time_dims_names_the_dim(tmp_path):
    wt = RNG.standard_normal((3, 2, 3, 3)).astype(np.float32)
    nodes = [h.make_node("ConvTranspose", ["x", "wt"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                         output_shape=[10, 12], name="up")]
    proto = make(nodes, [vi("x", F, [1, 3, None, None])], [vi("y", F, None)], [const("wt", wt)])
    with pytest.raises(mdoc.MdocError, match=r"onnx.ConvTranspose \(node 'up'\): dim 2 of %x is .*known only at run "
                                             r"time.*output_shape.*--shape x=DIMS"):
        _compile_symbolic(proto, tmp_path / "a")
