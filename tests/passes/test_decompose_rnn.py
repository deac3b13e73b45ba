"""decompose-rnn: LSTM, GRU and RNN unrolled, checked against onnxruntime for every attribute exporters use.

onnxruntime refuses layout=1, so the reference for a layout=1 node is the same
node in layout 0 between Transposes.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import mdoc.models
from mdoc.errors import MdocError
from mdoc.onnx_export import export_model
from mdoc.onnx_import import import_model
from mdoc.pass_manager import PassManager, parse_pipeline, pipeline_for_level
from mdoc.reference import compare_outputs, run_onnxruntime
from mdoc.specialize import bind_dims

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
RECURRENT = {"onnx.LSTM", "onnx.GRU", "onnx.RNN", "onnx.Scan", "onnx.Loop"}


def recurrent_model(op: str, *, seq: int = 3, batch: int = 2, inp: int = 3, hidden: int = 4,
                    direction: str = "forward", layout: int = 0, bias: bool = True, lens: str | None = None,
                    initial: bool = False, peephole: bool = False, outputs: tuple[str, ...] = ("Y", "Y_h"),
                    weights_as_inputs: bool = False, opset: int = 17, seed: int = 0, seq_dim=None, **attrs):
    """(model, reference model, feeds): one `op` node with random weights; the reference is ORT-runnable."""
    rng = np.random.default_rng(seed)
    nd = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    arrays = {
        "W": rng.uniform(-1, 1, (nd, g * hidden, inp)),
        "R": rng.uniform(-1, 1, (nd, g * hidden, hidden)),
    }
    if bias:
        arrays["B"] = rng.uniform(-1, 1, (nd, 2 * g * hidden))
    if peephole:
        arrays["P"] = rng.uniform(-1, 1, (nd, 3 * hidden))
    feeds = {"X": rng.standard_normal((batch, seq, inp) if layout else (seq, batch, inp)).astype(np.float32)}
    state_shape = (batch, nd, hidden) if layout else (nd, batch, hidden)
    if initial:
        feeds["initial_h"] = rng.standard_normal(state_shape).astype(np.float32)
        if op == "LSTM":
            feeds["initial_c"] = rng.standard_normal(state_shape).astype(np.float32)
    arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
    names = ["X", "W", "R", "B" if bias else "", "", "initial_h" if initial else "",
             "initial_c" if initial and op == "LSTM" else "", "P" if peephole else ""]
    lens_init = []
    if lens == "full":
        lens_init = [helper.make_tensor("lens", TensorProto.INT32, [batch], [seq] * batch)]
        names[4] = "lens"
    elif lens == "const":
        values = [seq] + list(rng.integers(1, seq + 1, batch - 1))
        lens_init = [helper.make_tensor("lens", TensorProto.INT32, [batch], values)]
        names[4] = "lens"
    elif lens == "input":
        feeds["lens"] = rng.integers(1, seq + 1, batch).astype(np.int32)
        names[4] = "lens"
    while names and not names[-1]:
        names.pop()
    all_outputs = ["Y", "Y_h", "Y_c"][: 3 if op == "LSTM" else 2]
    out_names = [o if o in outputs else "" for o in all_outputs]
    while not out_names[-1]:
        out_names.pop()
    node_attrs = dict(hidden_size=hidden, direction=direction, **attrs)

    def build(layout_attr: int, transposed: bool) -> onnx.ModelProto:
        nodes = []
        ins = list(names)
        outs = list(out_names)
        if transposed:  # the layout=1 node, spelled in layout 0 between Transposes
            nodes.append(helper.make_node("Transpose", ["X"], ["X_t"], perm=[1, 0, 2]))
            ins[0] = "X_t"
            for i, nm in ((5, "initial_h"), (6, "initial_c")):
                if i < len(ins) and ins[i]:
                    nodes.append(helper.make_node("Transpose", [nm], [nm + "_t"], perm=[1, 0, 2]))
                    ins[i] = nm + "_t"
            outs = [o + "_t" if o else "" for o in outs]
        extra = {"layout": layout_attr} if layout_attr else {}
        nodes.append(helper.make_node(op, ins, outs, name="rnn", **node_attrs, **extra))
        if transposed:
            for o in out_names:
                if o:
                    perm = [2, 0, 1, 3] if o == "Y" else [1, 0, 2]
                    nodes.append(helper.make_node("Transpose", [o + "_t"], [o], perm=perm))
        weights = [helper.make_tensor(k, TensorProto.FLOAT, v.shape, v.reshape(-1)) for k, v in arrays.items()]
        xshape = list(feeds["X"].shape)
        if seq_dim is not None:
            xshape[layout] = seq_dim
        inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, xshape)]
        inputs += [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in feeds.items()
                   if k.startswith("initial")]
        if lens == "input":
            inputs.append(helper.make_tensor_value_info("lens", TensorProto.INT32, [batch]))
        inits = lens_init
        if weights_as_inputs:
            inputs += [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in arrays.items()]
        else:
            inits = inits + weights
        graph = helper.make_graph(nodes, op.lower(), inputs,
                                  [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in out_names if o],
                                  initializer=inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])

    if weights_as_inputs:
        feeds.update(arrays)
    return build(layout, False), build(0, layout == 1), feeds


def decompose(proto: onnx.ModelProto, pipeline: str = "decompose-rnn"):
    model = import_model(proto)
    records = PassManager(parse_pipeline(pipeline)).run(model)  # verifies before and after
    assert not any(n.op in RECURRENT for n in model.graph.walk()), [n.op for n in model.graph.walk()]
    return model, records


def check(op: str, **kw) -> None:
    proto, reference, feeds = recurrent_model(op, **kw)
    model, records = decompose(proto)
    assert records[0].changed
    out = export_model(model)
    onnx.checker.check_model(out, full_check=True)
    want, got = run_onnxruntime(reference, feeds), run_onnxruntime(out, feeds)
    assert set(got) == set(want)
    bad = [d for d in compare_outputs(want, got, rtol=1e-4, atol=1e-5) if not d.ok]
    assert not bad, f"{op} {kw}: {bad}"


DIRECTIONS = ["forward", "reverse", "bidirectional"]


@pytest.mark.parametrize("op,direction,layout", list(itertools.product(["LSTM", "GRU", "RNN"], DIRECTIONS, [0, 1])))
def test_directions_and_layouts(op, direction, layout):
    outputs = ("Y", "Y_h", "Y_c") if op == "LSTM" else ("Y", "Y_h")
    check(op, direction=direction, layout=layout, outputs=outputs, seq=3, batch=2, initial=layout == 1)


@pytest.mark.parametrize("seq,batch", [(1, 1), (2, 3), (5, 1), (4, 2)])
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_sequence_and_batch_sizes(op, seq, batch):
    check(op, seq=seq, batch=batch, direction="bidirectional", outputs=("Y", "Y_h"))


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("bias,initial", [(False, False), (False, True), (True, True)])
def test_optional_bias_and_initial_state(op, bias, initial):
    outputs = ("Y", "Y_h", "Y_c") if op == "LSTM" else ("Y", "Y_h")
    check(op, bias=bias, initial=initial, outputs=outputs, direction="bidirectional")


@pytest.mark.parametrize("lbr", [0, 1])
@pytest.mark.parametrize("bias,initial", [(True, False), (False, False), (True, True)])
def test_gru_linear_before_reset(lbr, bias, initial):
    check("GRU", linear_before_reset=lbr, bias=bias, initial=initial, direction="bidirectional", seq=4)


@pytest.mark.parametrize("initial", [False, True])
def test_lstm_peepholes(initial):
    check("LSTM", peephole=True, initial=initial, outputs=("Y", "Y_h", "Y_c"), direction="bidirectional", seq=4)


def test_lstm_input_forget():
    check("LSTM", input_forget=1, initial=True, outputs=("Y", "Y_h", "Y_c"), peephole=True, seq=4)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_clip(op):
    check(op, clip=0.5, initial=True, direction="bidirectional", seq=4,
          outputs=("Y", "Y_h", "Y_c") if op == "LSTM" else ("Y", "Y_h"))


ACTIVATION_CASES = [
    ("Relu", [], []), ("Tanh", [], []), ("Sigmoid", [], []), ("Softsign", [], []), ("Softplus", [], []),
    ("Affine", [0.5], [0.1]), ("LeakyRelu", [0.2], []), ("ThresholdedRelu", [0.1], []),
    ("ScaledTanh", [1.5], [0.7]), ("HardSigmoid", [0.3], [0.4]), ("Elu", [0.9], []),
    ("LeakyRelu", [], []), ("HardSigmoid", [], []), ("Elu", [], []),
]


@pytest.mark.parametrize("name,alpha,beta", ACTIVATION_CASES)
def test_rnn_activations(name, alpha, beta):
    attrs = {"activations": [name, name]}
    if alpha:
        attrs["activation_alpha"] = alpha * 2
    if beta:
        attrs["activation_beta"] = beta * 2
    check("RNN", direction="bidirectional", initial=True, **attrs)


def test_activations_of_lstm_and_gru_per_direction():
    check("LSTM", direction="bidirectional", outputs=("Y", "Y_h", "Y_c"), initial=True,
          activations=["HardSigmoid", "Tanh", "Relu", "Sigmoid", "LeakyRelu", "Softsign"],
          activation_alpha=[0.3, 0.05], activation_beta=[0.45])
    check("GRU", direction="bidirectional", initial=True, linear_before_reset=1,
          activations=["Sigmoid", "Relu", "HardSigmoid", "Tanh"], activation_alpha=[0.25], activation_beta=[0.55])


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("lens", ["full", "const", "input"])
def test_sequence_lens(op, lens):
    outputs = ("Y", "Y_h", "Y_c") if op == "LSTM" else ("Y", "Y_h")
    check(op, lens=lens, seq=4, batch=3, direction="bidirectional", initial=lens == "input", outputs=outputs,
          seed=3)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_weights_computed_at_run_time(op):
    outputs = ("Y", "Y_h", "Y_c") if op == "LSTM" else ("Y", "Y_h")
    check(op, weights_as_inputs=True, direction="bidirectional", initial=True, outputs=outputs,
          peephole=op == "LSTM", **({"linear_before_reset": 1} if op == "GRU" else {}))


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_older_and_newer_opsets(opset):
    # Unsqueeze/Split with attributes (11), with inputs (13), Split with num_outputs (18)
    check("LSTM", opset=opset, direction="bidirectional", outputs=("Y", "Y_h", "Y_c"), clip=1.0, lens="input")
    check("GRU", opset=opset, direction="reverse", initial=True, linear_before_reset=1)


@pytest.mark.parametrize("outputs", [("Y",), ("Y_h",), ("Y_c",), ("Y_h", "Y_c")])
def test_only_read_outputs_are_built(outputs):
    check("LSTM", outputs=outputs, direction="bidirectional")
    proto, _, _ = recurrent_model("LSTM", outputs=outputs)
    model, _ = decompose(proto)
    ops = [n.op for n in model.graph.walk()]
    # one Reshape per output built; one direction: only Y joins pieces with a Concat
    assert ops.count("onnx.Reshape") == len(outputs)
    assert ops.count("onnx.Concat") == ("Y" in outputs)


def test_symbolic_batch_is_fine():
    proto, reference, feeds = recurrent_model("LSTM", direction="bidirectional", outputs=("Y", "Y_h", "Y_c"))
    proto.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "N"
    model, _ = decompose(proto)
    got = run_onnxruntime(export_model(model), feeds)
    assert all(d.ok for d in compare_outputs(run_onnxruntime(reference, feeds), got))


def check_looped(op: str, lengths=(3, 5), **kw) -> onnx.ModelProto:
    """A node whose sequence length is the symbol S becomes an onnx.Loop; checked at several lengths."""
    proto, _, _ = recurrent_model(op, seq_dim="S", **kw)
    model = import_model(proto)
    records = PassManager(parse_pipeline("decompose-rnn")).run(model)
    ops = [n.op for n in model.graph.walk()]
    assert records[0].changed and "onnx.Loop" in ops and not set(ops) & {"onnx.LSTM", "onnx.GRU", "onnx.RNN"}
    out = export_model(model)
    onnx.checker.check_model(out, full_check=True)
    for seq in lengths:
        _, reference, feeds = recurrent_model(op, seq=seq, **kw)
        want, got = run_onnxruntime(reference, feeds), run_onnxruntime(out, feeds)
        bad = [d for d in compare_outputs(want, got, rtol=1e-4, atol=1e-5) if not d.ok]
        assert not bad, f"{op} {kw} at sequence length {seq}: {bad}"
    return out


@pytest.mark.parametrize("op,direction,layout", list(itertools.product(["LSTM", "GRU", "RNN"], DIRECTIONS, [0, 1])))
def test_sequence_known_at_run_time_becomes_a_loop(op, direction, layout):
    outputs = ("Y", "Y_h", "Y_c") if op == "LSTM" else ("Y", "Y_h")
    check_looped(op, direction=direction, layout=layout, outputs=outputs, initial=layout == 1)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_looped_sequence_lens_and_state(op):
    check_looped(op, lens="input", direction="bidirectional", outputs=("Y", "Y_h"), lengths=(1, 4))
    check_looped(op, bias=False, initial=True)


@pytest.mark.parametrize("kw", [dict(op="LSTM", peephole=True, initial=True), dict(op="LSTM", input_forget=1),
                                dict(op="GRU", linear_before_reset=1), dict(op="LSTM", weights_as_inputs=True),
                                dict(op="GRU", opset=9, direction="forward")])
def test_looped_cell_variants(kw):
    check_looped(kw.pop("op"), **kw)


@pytest.mark.parametrize("op,kw", [("LSTM", dict(direction="bidirectional", outputs=("Y", "Y_h", "Y_c"))),
                                   ("GRU", dict(direction="reverse", lens="input", linear_before_reset=1)),
                                   ("RNN", dict(layout=1, initial=True))])
def test_recurrent_layer_over_a_run_time_length_compiles(op, kw, tmp_path):
    """decompose-rnn's Loop path through TVM: one artifact, run at three sequence lengths."""
    pytest.importorskip("tvm")
    from mdoc.backends import get_backend, load_artifact

    proto, _, _ = recurrent_model(op, seq_dim="S", **kw)
    model = import_model(proto)
    # mdoc.compile would bind S to 1 (it binds every symbolic dim until they stay symbolic): build directly
    PassManager(pipeline_for_level(2)).run(model)  # the backend's own passes run decompose-rnn
    run = load_artifact(get_backend("tvm").compile(model, "x86", tmp_path / "art"))
    for seq in (1, 3, 6):
        _, reference, feeds = recurrent_model(op, seq=seq, **kw)
        bad = [d for d in compare_outputs(run_onnxruntime(reference, feeds), run(**feeds), rtol=1e-4, atol=1e-5)
               if not d.ok]
        assert not bad, f"{op} at sequence length {seq}: {bad}"


def test_looped_reverse_before_opset_11_is_refused():
    proto, _, _ = recurrent_model("RNN", seq_dim="S", direction="reverse", opset=10)
    with pytest.raises(MdocError, match=r"RNN node 'rnn': the sequence length is known only at run time, and "
                                        r"a reverse direction over it needs Range \(opset 11\)"):
        decompose(proto)


def test_unknown_rank_of_x_is_fine():
    # what a body sees when nothing typed X: the Loop takes every size from Shape(X) at run time
    proto, reference, feeds = recurrent_model("LSTM", direction="bidirectional", outputs=("Y", "Y_h", "Y_c"))
    proto.graph.input[0].type.tensor_type.ClearField("shape")
    model = import_model(proto, infer_shapes=False)
    PassManager(parse_pipeline("decompose-rnn")).run(model)
    assert "onnx.Loop" in [n.op for n in model.graph.walk()]
    got = run_onnxruntime(export_model(model), feeds)
    assert all(d.ok for d in compare_outputs(run_onnxruntime(reference, feeds), got))


def test_bad_activation_count_is_refused():
    proto, _, _ = recurrent_model("LSTM", direction="bidirectional", activations=["Sigmoid", "Tanh", "Tanh"])
    with pytest.raises(MdocError, match=r"LSTM node 'rnn': has 3 activations; it needs 3 per direction \(6\)"):
        decompose(proto)


def test_lstm_seq_zoo_model():
    kwargs = mdoc.models.ZOO["lstm_seq"].test_kwargs
    proto = mdoc.models.build("lstm_seq", **kwargs)
    feeds = mdoc.models.example_inputs(proto, dims={"N": 2})
    seq = feeds["x"].shape[1]
    model = import_model(proto)
    bind_dims(model, {"N": 2, "S": seq})
    PassManager(parse_pipeline("infer-shapes,decompose-rnn")).run(model)
    assert not any(n.op in RECURRENT for n in model.graph.walk())
    want, got = run_onnxruntime(proto, feeds), run_onnxruntime(export_model(model), feeds)
    bad = [d for d in compare_outputs(want, got) if not d.ok]
    assert not bad, bad


@pytest.mark.parametrize("name", ["Affine", "ScaledTanh", "ThresholdedRelu"])
def test_activation_without_its_parameters_is_refused(name):
    proto, _, _ = recurrent_model("RNN", activations=[name])
    with pytest.raises(MdocError, match=f"RNN node 'rnn': activation '{name}' has no alpha in activation_alpha/"
                                        "activation_beta; give it explicitly"):
        decompose(proto)


def test_unnamed_node_is_named_by_its_result():
    proto, _, _ = recurrent_model("LSTM", layout=2)
    proto.graph.node[0].name = ""
    with pytest.raises(MdocError) as e:
        decompose(proto)
    assert str(e.value) == "decompose-rnn: unnamed LSTM node (result %Y): layout=2 is not 0 or 1"


def test_x_of_another_rank_is_refused():
    proto, _, _ = recurrent_model("GRU")
    proto.graph.input[0].type.tensor_type.shape.dim.pop()
    with pytest.raises(MdocError) as e:
        decompose(proto)
    assert str(e.value) == "decompose-rnn: GRU node 'rnn': X has type f32[3,2]; it must have rank 3"
