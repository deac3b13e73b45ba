"""Every user-facing error of the foundation commands: one line naming file and problem, exit 2, no output file."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import tiny_model


def _assert_clean_failure(result, *fragments, code=2):
    assert result.code == code, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("mdoc: error: ")
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert "Traceback" not in result.err


def _external_model(tmp_path, location: str) -> str:
    w = helper.make_tensor("W", TensorProto.FLOAT, [4, 3], np.zeros(12, np.float32))
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("float_data")
    w.external_data.add(key="location", value=location)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "ext",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], initializer=[w])
    path = tmp_path / "ext.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return str(path)


def test_missing_file(mdoc_cli, tmp_path):
    out = tmp_path / "o.onnx"
    r = mdoc_cli("opt", tmp_path / "nope.onnx", "-o", out)
    _assert_clean_failure(r, "nope.onnx", "no such file")
    assert not out.exists()


def test_directory_is_not_a_model(mdoc_cli, tmp_path):
    d = tmp_path / "dir.onnx"
    d.mkdir()
    _assert_clean_failure(mdoc_cli("inspect", d), "dir.onnx", "not a file")


def test_not_onnx(mdoc_cli, tmp_path):
    p = tmp_path / "text.onnx"
    p.write_text("this is not a model\n" * 10)
    out = tmp_path / "o.onnx"
    _assert_clean_failure(mdoc_cli("opt", p, "-o", out), "text.onnx", "not an ONNX model")
    assert not out.exists()


def test_truncated_protobuf(mdoc_cli, tmp_path):
    data = tiny_model().SerializeToString()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: len(data) // 2])
    out = tmp_path / "o.mdir"
    _assert_clean_failure(mdoc_cli("opt", p, "-o", out), "cut.onnx", "not an ONNX model")
    assert not out.exists()


def test_empty_file(mdoc_cli, tmp_path):
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    _assert_clean_failure(mdoc_cli("inspect", p), "empty.onnx", "empty file")


def test_dangling_input(mdoc_cli, tmp_path):
    m = tiny_model()
    m.graph.node[1].input[1] = "nowhere"
    p = tmp_path / "dangling.onnx"
    p.write_bytes(m.SerializeToString())
    _assert_clean_failure(mdoc_cli("inspect", p), "dangling.onnx", "node 'add' (Add)", "'nowhere'",
                          "no node, input or initializer defines")


def test_unknown_op_in_default_domain(mdoc_cli, tmp_path):
    m = tiny_model()
    m.graph.node[2].op_type = "Frobnicate"
    p = tmp_path / "unknown.onnx"
    p.write_bytes(m.SerializeToString())
    out = tmp_path / "o.onnx"
    _assert_clean_failure(mdoc_cli("opt", p, "-o", out), "unknown.onnx", "node 'relu' (Frobnicate)",
                          "unknown op 'Frobnicate' in the default ONNX domain")
    assert not out.exists()


def test_custom_domain_op_is_kept(mdoc_cli, tmp_path):
    m = tiny_model()
    m.graph.node[2].op_type = "Frobnicate"
    m.graph.node[2].domain = "com.example"
    m.graph.node[2].attribute.append(helper.make_attribute("strength", 3))
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    p = tmp_path / "custom.onnx"
    p.write_bytes(m.SerializeToString())
    out = tmp_path / "o.onnx"
    r = mdoc_cli("opt", p, "-o", out, "-O0")
    assert r.code == 0, r.err
    node = onnx.load(out).graph.node[-1]
    assert (node.domain, node.op_type, node.attribute[0].i) == ("com.example", "Frobnicate", 3)


def test_external_data_outside_folder(mdoc_cli, tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 48)
    sub = tmp_path / "m"
    sub.mkdir()
    p = _external_model(sub, "../secret.bin")
    _assert_clean_failure(mdoc_cli("inspect", p), "ext.onnx", "tensor 'W'", "escapes the model's folder")


def test_external_data_absolute(mdoc_cli, tmp_path):
    p = _external_model(tmp_path, "/etc/passwd")
    _assert_clean_failure(mdoc_cli("inspect", p), "ext.onnx", "absolute path")


def test_external_data_missing(mdoc_cli, tmp_path):
    p = _external_model(tmp_path, "weights.bin")
    _assert_clean_failure(mdoc_cli("inspect", p), "ext.onnx", "tensor 'W'", "'weights.bin' is missing")


def test_external_data_too_short(mdoc_cli, tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 8)
    p = _external_model(tmp_path, "weights.bin")
    _assert_clean_failure(mdoc_cli("inspect", p), "ext.onnx", "tensor 'W'", "shorter")


def test_external_data_loads(mdoc_cli, tmp_path):
    (tmp_path / "weights.bin").write_bytes(np.arange(12, dtype=np.float32).tobytes())
    p = _external_model(tmp_path, "weights.bin")
    r = mdoc_cli("inspect", p, "--json")
    assert r.code == 0, r.err
    assert '"parameters": 12' in r.out


def test_bad_output_suffix(mdoc_cli, tiny_path, tmp_path):
    _assert_clean_failure(mdoc_cli("opt", tiny_path, "-o", tmp_path / "x.txt"), "x.txt", "unknown output format")


def test_unknown_pass(mdoc_cli, tiny_path, tmp_path):
    out = tmp_path / "o.onnx"
    _assert_clean_failure(mdoc_cli("opt", tiny_path, "-o", out, "-p", "no-such-pass"), "unknown pass 'no-such-pass'")
    assert not out.exists()


def test_compare_bad_inputs_file(mdoc_cli, tiny_path, tmp_path):
    bad = tmp_path / "in.npz"
    np.savez(bad, z=np.zeros(3, np.float32))
    _assert_clean_failure(mdoc_cli("compare", tiny_path, tiny_path, "--inputs", bad),
                          "in.npz", "tensor 'z' is not an input of the model")


def test_compare_wrong_input_dtype(mdoc_cli, tiny_path, tmp_path):
    bad = tmp_path / "in.npz"
    np.savez(bad, x=np.zeros((2, 4), np.int64))
    _assert_clean_failure(mdoc_cli("compare", tiny_path, tiny_path, "--inputs", bad), "input 'x' is int64")


def test_opset_out_of_range(mdoc_cli, tmp_path):
    p = tmp_path / "old.onnx"
    m = tiny_model()
    m.opset_import[0].version = 5
    p.write_bytes(m.SerializeToString())
    _assert_clean_failure(mdoc_cli("inspect", p), "old.onnx", "opset 5 is outside the supported range")


@pytest.mark.parametrize("args", [("zoo", "build", "nonesuch", "-o", "x.onnx")])
def test_unknown_zoo_model(mdoc_cli, args, tmp_path):
    _assert_clean_failure(mdoc_cli(*args), "no zoo model 'nonesuch'")


def test_tensor_defined_twice(mdoc_cli, tmp_path):
    m = tiny_model()
    m.graph.node[1].output[0] = "xw"
    m.graph.node[2].input[0] = "xw"
    p = tmp_path / "twice.onnx"
    p.write_bytes(m.SerializeToString())
    _assert_clean_failure(mdoc_cli("inspect", p), "twice.onnx", "node 'add' (Add) writes 'xw'", "already defined")
