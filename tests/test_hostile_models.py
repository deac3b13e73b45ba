"""Hostile model files: external data that reaches outside its file or folder or claims bytes twice,
sizes declared to exhaust memory, bodies nested past what ONNX holds. Each is refused with one line
(exit 2) before any tensor is read or made."""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mdoc.errors import MdocError
from mdoc.limits import MAX_NESTED_BODIES

from conftest import tiny_model


def _assert_one_line(result, *fragments):
    assert result.code == 2, (result.code, result.err)
    assert result.err.count("\n") == 1 and result.err.startswith("mdoc: error: "), result.err
    for f in fragments:
        assert f in result.err, (f, result.err)


@pytest.fixture
def no_reads(monkeypatch):
    """Fail the test if the importer reads any external tensor."""
    import mdoc.onnx_import

    def read(*args):
        raise AssertionError("an external tensor was read before the model was checked")

    monkeypatch.setattr(mdoc.onnx_import, "load_external_array", read)


def _external(name, location, offset=None, length=None, dims=(4, 3)):
    t = helper.make_tensor(name, TensorProto.FLOAT, list(dims), np.zeros(int(np.prod(dims)), np.float32))
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value=location)
    if offset is not None:
        t.external_data.add(key="offset", value=str(offset))
    if length is not None:
        t.external_data.add(key="length", value=str(length))
    return t


def _model_with(folder, *weights, name="ext.onnx"):
    """y = x @ W0 + x @ W1 ... for external [4, 3] weights."""
    nodes, terms = [], []
    for k, w in enumerate(weights):
        nodes.append(helper.make_node("MatMul", ["x", w.name], [f"p{k}"]))
        terms.append(f"p{k}")
    out = terms[0]
    for k, t in enumerate(terms[1:]):
        nodes.append(helper.make_node("Add", [out, t], [f"s{k}"]))
        out = f"s{k}"
    graph = helper.make_graph(nodes, "ext", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 3])],
                              initializer=list(weights))
    path = folder / name
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


@pytest.mark.parametrize("offset, length, message", [
    (1 << 40, None, "external data range (offset 1099511627776, length None) lies outside 'w.bin' (96 bytes)"),
    (0, 1 << 40, "external data range (offset 0, length 1099511627776) lies outside"),
    (60, None, "needs 48 bytes from offset 60 but 'w.bin' is shorter"),
    (0, 8, "needs 48 bytes of external data but its length is 8"),
    (-8, None, "lies outside"),
    ("1e3", None, "offset/length are not integers"),
])
def test_external_ranges_beyond_the_file(mdoc_cli, tmp_path, no_reads, offset, length, message):
    (tmp_path / "w.bin").write_bytes(bytes(96))
    path = _model_with(tmp_path, _external("W", "w.bin", offset, length))
    _assert_one_line(mdoc_cli("inspect", path), "ext.onnx", "tensor 'W'", message)


def test_duplicate_and_overlapping_ranges(mdoc_cli, tmp_path, no_reads):
    (tmp_path / "w.bin").write_bytes(bytes(200))
    same = _model_with(tmp_path, _external("A", "w.bin", 0, 48), _external("B", "w.bin", 0, 48), name="same.onnx")
    _assert_one_line(mdoc_cli("inspect", same), "tensors 'A' and 'B' claim overlapping bytes of 'w.bin' (0-48 and 0-48)")
    overlap = _model_with(tmp_path, _external("A", "w.bin", 0), _external("B", "w.bin", 40), name="over.onnx")
    _assert_one_line(mdoc_cli("inspect", overlap), "tensors 'A' and 'B' claim overlapping bytes", "(0-48 and 40-88)")


def test_adjacent_ranges_and_two_files_load(mdoc_cli, tmp_path):
    (tmp_path / "w.bin").write_bytes(np.arange(24, dtype=np.float32).tobytes())
    (tmp_path / "v.bin").write_bytes(np.arange(12, dtype=np.float32).tobytes())
    path = _model_with(tmp_path, _external("A", "w.bin", 0), _external("B", "w.bin", 48), _external("C", "v.bin"))
    r = mdoc_cli("inspect", path, "--json")
    assert r.code == 0, r.err
    assert '"parameters": 36' in r.out


def test_symlinks_out_of_the_folder(mdoc_cli, tmp_path, no_reads):
    outside = tmp_path / "secret.bin"
    outside.write_bytes(bytes(48))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "w.bin").symlink_to(outside)
    (folder / "sub").symlink_to(tmp_path)
    _assert_one_line(mdoc_cli("inspect", _model_with(folder, _external("W", "w.bin"))),
                     "tensor 'W'", "external data location 'w.bin' escapes the model's folder")
    _assert_one_line(mdoc_cli("inspect", _model_with(folder, _external("W", "sub/secret.bin"), name="b.onnx")),
                     "'sub/secret.bin' escapes the model's folder")


def test_symlink_that_stays_inside_loads(mdoc_cli, tmp_path):
    (tmp_path / "inside.bin").write_bytes(np.ones(12, np.float32).tobytes())
    (tmp_path / "link.bin").symlink_to(tmp_path / "inside.bin")
    assert mdoc_cli("inspect", _model_with(tmp_path, _external("W", "link.bin"))).code == 0


def test_external_location_that_is_not_a_file(mdoc_cli, tmp_path, no_reads):
    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "fifo")
    _assert_one_line(mdoc_cli("inspect", _model_with(tmp_path, _external("W", "d"))), "'d' is not a regular file")
    _assert_one_line(mdoc_cli("inspect", _model_with(tmp_path, _external("W", "fifo"), name="f.onnx")),
                     "'fifo' is not a regular file")


def test_external_tensor_in_a_body_is_checked(mdoc_cli, tmp_path, no_reads):
    (tmp_path / "w.bin").write_bytes(bytes(8))
    body = helper.make_graph([helper.make_node("Constant", [], ["k"], value=_external("K", "w.bin"))], "then", [],
                             [helper.make_tensor_value_info("k", TensorProto.FLOAT, [4, 3])])
    graph = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=body)], "g",
                              [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])])
    path = tmp_path / "if.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    _assert_one_line(mdoc_cli("inspect", path), "tensor 'K' (attribute 'value' of node 'Constant')", "shorter")


def test_sparse_initializer_that_expands_to_terabytes(mdoc_cli, tmp_path):
    values = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    indices = helper.make_tensor("i", TensorProto.INT64, [1], [0])
    sparse = helper.make_sparse_tensor(values, indices, [1 << 20, 1 << 20])
    graph = helper.make_graph([helper.make_node("Identity", ["v"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], sparse_initializer=[sparse])
    path = tmp_path / "sparse.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    _assert_one_line(mdoc_cli("inspect", path), "sparse tensor 'v'", "made dense, it would take 4.1e+03 GiB")


def test_absurd_declared_dims(mdoc_cli, tmp_path):
    proto = tiny_model()
    proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 1 << 50
    path = tmp_path / "huge.onnx"
    onnx.save(proto, path)
    _assert_one_line(mdoc_cli("inspect", path), "value 'x' of graph 'tiny' declares dim 1125899906842624", "absurd")
    proto = tiny_model()
    proto.graph.initializer[0].dims[:] = [1 << 41, 3]  # 12 floats of data, a shape that would need 24 TiB
    onnx.save(proto, path)
    _assert_one_line(mdoc_cli("inspect", path), "tensor 'W'", "dim 2199023255552 is absurd")


def test_seeded_inputs_too_large_to_make_up(mdoc_cli, tmp_path):
    """A model with a plausible but huge input: compare would fill it with random numbers."""
    proto = tiny_model()
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1 << 32
    path = tmp_path / "big.onnx"
    onnx.save(proto, path)
    _assert_one_line(mdoc_cli("compare", path, path), "seeded input 'x' of shape [4294967296, 4]",
                     "would take 64 GiB, more than mdoc makes up", "--inputs")


def test_npz_whose_header_claims_more_than_it_holds(mdoc_cli, tmp_path, tiny_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 20, 1 << 20)})
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w") as z:
        z.writestr("x.npy", header.getvalue())
    _assert_one_line(mdoc_cli("compare", tiny_path, tiny_path, "--inputs", tmp_path / "bomb.npz"),
                     "bomb.npz: not a readable .npz file", "declares shape [1048576, 1048576] of float32", "holds 0 bytes")


def test_npz_zip_bomb(tmp_path, monkeypatch):
    import mdoc.tensors
    from mdoc.tensors import npz_problem

    np.savez_compressed(tmp_path / "z.npz", x=np.zeros(3 << 20, np.uint8))  # 3 MiB that compress to 3 KiB
    assert npz_problem(tmp_path / "z.npz") is None
    monkeypatch.setattr(mdoc.tensors, "MAX_MATERIALIZED_BYTES", 1 << 20)  # the 4 GiB limit, scaled down
    assert "member 'x.npy' expands to 3145856 bytes" in npz_problem(tmp_path / "z.npz")


def _nested_if(depth: int) -> onnx.ModelProto:
    """`depth` Ifs, each in the then-branch of the one before; every else-branch is one Identity."""
    def body(level):
        out = [helper.make_tensor_value_info(f"y{level}", TensorProto.FLOAT, [1])]
        leaf = helper.make_graph([helper.make_node("Identity", ["x"], [f"y{level}"])], f"e{level}", [], out)
        if level == 0:
            return leaf
        node = helper.make_node("If", ["c"], [f"y{level}"], then_branch=body(level - 1), else_branch=leaf)
        return helper.make_graph([node], f"g{level}", [], out)

    g = body(depth)
    top = helper.make_graph(list(g.node), "top", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
                                                   helper.make_tensor_value_info("c", TensorProto.BOOL, [])], list(g.output))
    return helper.make_model(top, opset_imports=[helper.make_opsetid("", 17)])


def _nested_if_text(depth: int) -> str:
    """The text form of `_nested_if(depth)`, written directly (no ONNX file can hold it past the limit)."""
    def body(level):
        inner = "%e = onnx.Identity(%x) : f32[1]\nreturn %e" if level == 1 else (
            f"%y = onnx.If(%c) {{else_branch = {leaf(level)}, then_branch = {body(level - 1)}}} : f32[1]\nreturn %y")
        return f"graph @g{level}() -> (%r: f32[1]) {{\n{inner}\n}}"

    def leaf(level):
        return f"graph @e{level}() -> (%r: f32[1]) {{\n%e = onnx.Identity(%x) : f32[1]\nreturn %e\n}}"

    return ('module {ir_version = 8, opset_imports = {"" = 17}}\n'
            "graph @top(%x: f32[1], %c: bool[]) -> (%y: f32[1]) {\n"
            f"%y = onnx.If(%c) {{else_branch = {leaf(0)}, then_branch = {body(depth)}}} : f32[1]\nreturn %y\n}}\n")


def test_nesting_depth_onnx_and_text(mdoc_cli, tmp_path):
    deepest = tmp_path / "deepest.onnx"
    deepest.write_bytes(_nested_if(MAX_NESTED_BODIES).SerializeToString())
    text = tmp_path / "deepest.mdir"
    assert mdoc_cli("print", deepest, "-o", text).code == 0
    assert mdoc_cli("opt", text, "-o", tmp_path / "back.onnx", "-O0").code == 0  # the deepest ONNX holds
    # one body deeper: protobuf cannot parse it, and the text form refuses it instead of failing on export
    (tmp_path / "deeper.mdir").write_text(_nested_if_text(MAX_NESTED_BODIES + 1))
    _assert_one_line(mdoc_cli("opt", tmp_path / "deeper.mdir", "-o", tmp_path / "o.onnx"),
                     f"bodies nested more than {MAX_NESTED_BODIES} deep (more than ONNX can hold)")
    with pytest.raises(MdocError, match="protobuf does not parse"):
        from mdoc.onnx_load import read_model_proto

        (tmp_path / "d.onnx").write_bytes(_nested_if(MAX_NESTED_BODIES + 1).SerializeToString())
        read_model_proto(tmp_path / "d.onnx")


def _constant_of_shape(tmp_path, shape) -> str:
    dims = helper.make_tensor("s", TensorProto.INT64, [len(shape)], list(shape))
    graph = helper.make_graph([helper.make_node("ConstantOfShape", ["s"], ["z"], name="fill"),
                               helper.make_node("ReduceSum", ["z"], ["y"], keepdims=0)], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])], initializer=[dims])
    path = tmp_path / "fill.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


def test_compile_refuses_a_value_no_target_can_hold(mdoc_cli, tmp_path):
    path = _constant_of_shape(tmp_path, [10**6, 10**6])
    _assert_one_line(mdoc_cli("compile", path, "-t", "x86", "-o", tmp_path / "a"),
                     "node 'fill' (onnx.ConstantOfShape) makes 'z' of shape [1000000, 1000000], 3.73e+03 GiB")
    assert not (tmp_path / "a").exists()


def test_run_out_of_memory_is_one_line(mdoc_cli, tmp_path, monkeypatch):
    from mdoc.targets import tvm_backend

    monkeypatch.setattr(tvm_backend, "check_static_sizes", lambda model: None)  # build it anyway
    path = _constant_of_shape(tmp_path, [10**6, 10**6])
    assert mdoc_cli("compile", path, "-t", "x86", "-o", tmp_path / "a").code == 0
    _assert_one_line(mdoc_cli("run", tmp_path / "a", "--repeat", "1"), "out of memory running the model")
