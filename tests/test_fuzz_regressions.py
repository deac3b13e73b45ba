"""One small reproduction per failure class the fuzzers found (tooling/fuzz.py, benchmarks/fuzz_campaign.py).

Each built by hand from the failing seed's mutation; each was exit 3 (a Python exception
reaching the CLI) or a multi-line error before its fix, and must stay one line, exit 2,
or a success.
"""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import tiny_model


def _one_line(result, *fragments):
    assert result.code == 2, (result.code, result.err)
    assert result.err.count("\n") == 1 and result.err.startswith("mdoc: error: "), result.err
    for f in fragments:
        assert f in result.err, (f, result.err)


def _save(tmp_path, proto, name="m.onnx"):
    path = tmp_path / name
    path.write_bytes(proto.SerializeToString())
    return path


def test_scan_without_a_body(mdoc_cli, tmp_path):
    """Campaign seed 140: an op renamed to Scan keeps no body; mdoc's own inference read attrs['body']."""
    proto = tiny_model()
    proto.graph.node[1].op_type = "Scan"
    path = _save(tmp_path, proto)
    assert mdoc_cli("inspect", path).code == 0
    _one_line(mdoc_cli("opt", path, "-o", tmp_path / "o.onnx"), "node 'add' (onnx.Scan)")


def test_reshape_without_operands(mdoc_cli, tmp_path):
    """Seed 5535: a Reshape whose inputs were dropped."""
    proto = tiny_model()
    proto.graph.node[1].op_type = "Reshape"
    del proto.graph.node[1].input[:]
    _one_line(mdoc_cli("opt", _save(tmp_path, proto), "-o", tmp_path / "o.onnx"),
              "node 'add' (onnx.Reshape): expects 2 operands, has 0")


def test_conv_whose_weight_has_rank_one(mdoc_cli, tmp_path):
    """Seed 3935: Conv's weight of rank 1; the operand hint indexed its dim 1."""
    proto = tiny_model()
    proto.graph.node[0].op_type = "Conv"
    proto.graph.node[0].input[1] = "b"
    r = mdoc_cli("opt", _save(tmp_path, proto), "-o", tmp_path / "o.onnx")
    assert r.code in (0, 2) and r.err.count("\n") <= 1 and "internal error" not in r.err, r.err


def test_constant_whose_value_attribute_has_the_wrong_kind(mdoc_cli, tmp_path):
    """Seed 3603: value_float holding a string."""
    proto = tiny_model()
    proto.graph.node.insert(0, helper.make_node("Constant", [], ["k"], name="k", value_float=1.0))
    proto.graph.node[0].attribute[0].CopyFrom(helper.make_attribute("value_float", "s"))
    _one_line(mdoc_cli("inspect", _save(tmp_path, proto)),
              "node 'k' (Constant): attribute 'value_float' holds a str, not the kind its name says")


def test_graph_input_of_unknown_type(mdoc_cli, tmp_path):
    """Seed 3759: an input's elem_type set to 0 (undefined); unifying symbolic dims iterated its shape."""
    proto = tiny_model()
    proto.graph.input[0].type.tensor_type.elem_type = 0
    r = mdoc_cli("opt", _save(tmp_path, proto), "-o", tmp_path / "o.onnx")
    assert r.code in (0, 2) and "internal error" not in r.err, r.err


def test_declared_shape_that_contradicts_inference(mdoc_cli, tmp_path):
    """Seed 420: y declared [N, 0] where Relu of [N, 3] makes [N, 3]; the inferred shape wins."""
    proto = tiny_model()
    proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 0
    path = _save(tmp_path, proto)
    assert mdoc_cli("opt", path, "-o", tmp_path / "o.onnx").code == 0
    r = mdoc_cli("compare", path, tmp_path / "o.onnx")
    assert r.code == 0, r.err


def test_declared_shape_contradicts_mdocs_inference_in_an_ir3_model(mdoc_cli, tmp_path):
    """Seeds 1280 and 7372: ir_version 3, y declared [N, 5] where Relu of [N, 3] makes [N, 3]. ONNX's
    whole-model inference fails on such a model, so only mdoc's per-node inference (scoped_inference) sees
    the contradiction; the declared shape had won there, and fuse-epilogue built an mdoc.matmul the
    verifier refused (a multi-line pass error). The inferred shape wins, as in the importer."""
    proto = tiny_model()
    proto.ir_version = 3
    proto.opset_import[0].version = 13
    proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 5
    path = _save(tmp_path, proto)
    r = mdoc_cli("opt", path, "-o", tmp_path / "o.onnx")
    assert r.code == 0, r.err
    out = onnx.load(tmp_path / "o.onnx").graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in out][1:] == [3]
    r = mdoc_cli("compare", path, tmp_path / "o.onnx")
    assert r.code == 0, r.err


def test_declared_shape_contradicts_inference_in_an_unsorted_graph(mdoc_cli, tmp_path):
    """Campaign onnx seed 40240: Relu listed before the Add that makes its operand, y declared [N, 1000000].
    ONNX's inference stops at the misplaced node, so y kept its declared shape, and mdoc's per-node
    inference skipped Relu (its output looked fully typed): the same pass error as the ir_version 3 case.
    A graph output is always inferred again now."""
    proto = tiny_model()
    relu = proto.graph.node.pop(2)
    proto.graph.node.insert(1, relu)
    proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 1000000
    path = _save(tmp_path, proto)
    r = mdoc_cli("opt", path, "-o", tmp_path / "o.onnx")
    assert r.code == 0, r.err
    assert mdoc_cli("compare", path, tmp_path / "o.onnx").code == 0


def test_declared_element_type_contradicts_inference(mdoc_cli, tmp_path):
    """Campaign onnx seed 61280: y declared int2 where Relu of float32 makes float32; the pass error of the
    ir_version 3 case again (fuse-epilogue's mdoc.matmul refused by the verifier). An element type the
    node does not make is refused at once, naming the node, as onnxruntime refuses the model."""
    proto = tiny_model()
    proto.graph.output[0].type.tensor_type.elem_type = TensorProto.INT2
    _one_line(mdoc_cli("opt", _save(tmp_path, proto), "-o", tmp_path / "o.onnx"),
              "node 'relu' (onnx.Relu) makes f32[N,3] for 'y', which is declared i2[N,3]")


def test_npz_with_an_unknown_compression_method(mdoc_cli, tmp_path, tiny_path):
    """npz seed 648: a flipped byte made the member's compression method 99 (NotImplementedError)."""
    path = tmp_path / "in.npz"
    np.savez(path, x=np.ones((2, 4), np.float32))
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        offset = z.infolist()[0].header_offset
    data[offset + 8] = 99  # the local header's compression method
    data[data.rfind(b"PK\x01\x02") + 10] = 99  # and the central directory's
    path.write_bytes(bytes(data))
    _one_line(mdoc_cli("compare", tiny_path, tiny_path, "--inputs", path), "in.npz: not a readable .npz file")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    import mdoc

    folder = tmp_path_factory.mktemp("regress")
    onnx.save(tiny_model(), folder / "tiny.onnx")
    return mdoc.compile(folder / "tiny.onnx", "x86", folder / "tiny.x86", show_progress=False, tuning_db=False)


@pytest.mark.parametrize("edit, fragment", [
    (lambda m: m["inputs"].clear(), "the library takes inputs (x) but the manifest lists ()"),
    (lambda m: m["inputs"][0].update(shape=[4]), "the library refuses its inputs as the manifest describes them"),
    (lambda m: m["inputs"][0].update(param="z"), "the library takes inputs (x) but the manifest lists (z)"),
])
def test_manifest_that_is_not_the_librarys(mdoc_cli, artifact, tmp_path, edit, fragment):
    """Artifact seeds 1024 and 1030: inputs edited in the manifest (which no hash covers)."""
    copy = tmp_path / "a.x86"
    shutil.copytree(artifact, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    _one_line(mdoc_cli("run", copy, "--repeat", "1"), fragment)


def test_an_op_type_that_is_not_utf8(mdoc_cli, tmp_path):
    """CI seed 451748 (byte mutation): an op type's bytes no longer UTF-8; protobuf returns them as
    bytes and onnx's schema lookup raised a TypeError."""
    data = tiny_model().SerializeToString()
    name = tiny_model().graph.node[0].op_type.encode()
    path = tmp_path / "m.onnx"
    path.write_bytes(data.replace(name, name[:-1] + b"\xe1", 1))
    _one_line(mdoc_cli("opt", path, "-o", tmp_path / "o.mdir", "-O1"), "is not UTF-8 text")


def test_a_name_holding_a_newline(mdoc_cli, tmp_path):
    """atheris (benchmarks/atheris_fuzz.py onnx, seed 1): a flipped byte made a node's input name swallow the
    next field, newline included; the 'no node defines it' message quoted it and ran over two lines.
    MdocError escapes control characters, so every message quoting a name from the input stays one line."""
    proto = tiny_model()
    proto.graph.node[1].input[0] = "xw\n\tperm"
    _one_line(mdoc_cli("inspect", _save(tmp_path, proto)), "uses 'xw\\n\\tperm', but no node")


def test_npz_with_an_encrypted_member(mdoc_cli, tmp_path, tiny_path):
    """atheris (npz, seed 1): the encryption flag set on a member; zipfile raised RuntimeError (exit 3)."""
    path = tmp_path / "in.npz"
    np.savez(path, x=np.ones((2, 4), np.float32))
    data = bytearray(path.read_bytes())
    data[6] |= 1  # the local header's general purpose flags
    data[data.rfind(b"PK\x01\x02") + 8] |= 1  # and the central directory's
    path.write_bytes(bytes(data))
    _one_line(mdoc_cli("compare", tiny_path, tiny_path, "--inputs", path), "member 'x.npy' is encrypted")


def test_an_attribute_name_that_is_not_utf8(mdoc_cli, tmp_path):
    """Campaign bytes seed 33661: a flipped byte in MaxPool's 'kernel_shape'; protobuf returns the name as
    bytes and the verifier's str.startswith raised a TypeError (exit 3)."""
    from test_fuzz_inputs import rich_model

    data = rich_model().SerializeToString()
    path = tmp_path / "m.onnx"
    path.write_bytes(data.replace(b"kernel_shape", b"kerne\xec_shape", 1))
    _one_line(mdoc_cli("opt", path, "-o", tmp_path / "o.mdir", "-O1"), "an attribute's name is not UTF-8 text")


def test_an_aarch64_build_with_no_llvm_module(tmp_path):
    """Differential seed 5010 on aarch64 (Reduce*, Transpose, Div, Min on a [1, 4, 2] input): the executable
    held no LLVM module of its own, so export_library packed its imports for the triple tvm's
    cross_compiler asks the host g++ for (x86_64) and aarch64-linux-gnu-gcc refused the object. The triple
    is the target's now; the build matches onnxruntime under qemu where the emulation root exists."""
    import shutil

    import mdoc
    from mdoc.tooling.emulation import why_no_arm_root
    from mdoc.tooling.fuzz import differential, random_graph

    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("no aarch64-linux-gnu-gcc")
    model = random_graph(5010)
    if why_no_arm_root() is None:
        assert differential(model, tmp_path, target="aarch64") is None
        return
    onnx.save(model, tmp_path / "m.onnx")
    art = mdoc.compile(tmp_path / "m.onnx", "aarch64", tmp_path / "m.art", show_progress=False, tuning_db=False)
    assert (art / "model.so").read_bytes()[18] == 183  # e_machine: EM_AARCH64
