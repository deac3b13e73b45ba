"""The front doors without TensorFlow or PyTorch: detection, refusals, shape specs, dim names, safe writes.

Every refusal is one line naming the file, exit 2, and no output file. A missing
framework is simulated by hiding its module, so these run (and mean the same)
whether or not the extras are installed.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile

import onnx
import pytest
from onnx import TensorProto, helper

from conftest import tiny_model
from mdoc.convert import DynamicAxis, InputSpec, check_converted, write_onnx
from mdoc.convert.specs import name_dims
from mdoc.errors import MdocError


def _assert_clean_failure(result, *fragments):
    assert result.code == 2, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mdoc: error: "), result.err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def _zip(path, names):
    with zipfile.ZipFile(path, "w") as z:
        for n in names:
            z.writestr(n, "x")
    return path


def _tflite(path):
    path.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))  # the identifier, then nothing valid
    return path


@pytest.mark.parametrize("name, make, fragment", [
    ("m.xyz", lambda p: p.write_bytes(b"abc"), "unrecognized model format"),
    ("m.tflite", lambda p: p.write_bytes(b"not a flatbuffer at all"), "not a TFLite flatbuffer"),
    ("m.tflite", lambda p: p.write_bytes(b""), "empty file"),
    ("m.keras", lambda p: p.write_bytes(b"PK garbage"), "not a readable zip archive"),
    ("m.keras", lambda p: _zip(p, ["model.weights.h5"]), "not a Keras v3 file"),
    ("m.h5", lambda p: p.write_bytes(b"12345678"), "not an HDF5 file"),
    ("m.pt2", lambda p: _zip(p, ["m/data.pkl"]), "not a torch.export archive"),
    ("m.pt", lambda p: _zip(p, ["m/data.pkl", "m/version"]), "a torch.save file"),
    ("m.pt", lambda p: p.write_bytes(b"\x80\x02legacy pickle"), "not a TorchScript file"),
    ("saved", lambda p: p.mkdir(), "not a TensorFlow SavedModel"),
    ("gone.pt2", lambda p: None, "no such file"),
])
def test_bad_source_is_one_line(mdoc_cli, tmp_path, name, make, fragment):
    src, out = tmp_path / name, tmp_path / "o.onnx"
    make(src)
    _assert_clean_failure(mdoc_cli("import", src, "-o", out), name, fragment)
    assert not out.exists()


@pytest.mark.parametrize("command", [("inspect",), ("opt", "-o", "o.onnx"), ("compile", "-o", "o.x86")])
def test_other_commands_detect_the_formats(mdoc_cli, tmp_path, command):
    src = tmp_path / "m.tflite"
    src.write_bytes(b"garbage!garbage!")
    r = mdoc_cli(command[0], src, *command[1:])
    _assert_clean_failure(r, "m.tflite", "not a TFLite flatbuffer")


@pytest.mark.parametrize("name, make, hidden, install", [
    ("m.tflite", _tflite, "tensorflow", "pip install 'mdoc[tensorflow]'"),
    ("m.keras", lambda p: _zip(p, ["config.json"]), "tensorflow", "pip install 'mdoc[tensorflow]'"),
    ("m.pt2", lambda p: _zip(p, ["m/archive_format"]), "torch", "pip install torch==2.13.0 && pip install 'mdoc[torch]'"),
    ("m.pt", lambda p: _zip(p, ["m/code/__torch__.py"]), "torch", "pip install torch==2.13.0"),
])
def test_missing_extra_names_the_install(mdoc_cli, tmp_path, monkeypatch, name, make, hidden, install):
    monkeypatch.setitem(sys.modules, hidden, None)  # `import hidden` now raises ImportError
    src, out = tmp_path / name, tmp_path / "o.onnx"
    make(src)
    _assert_clean_failure(mdoc_cli("import", src, "-o", out), name, f"'{hidden}'", install)
    assert not out.exists()


def test_from_torch_without_torch(monkeypatch):
    import mdoc

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MdocError, match=r"pip install torch==2\.13\.0"):
        mdoc.from_torch(object(), ())


@pytest.mark.parametrize("text, expected", [
    ("image=1x3x224x224/float32", InputSpec("image", (1, 3, 224, 224), "float32")),
    ("ids=2,128/int64", InputSpec("ids", (2, 128), "int64")),
    ("x=4", InputSpec("x", (4,), "float32")),
    ("step=/int64", InputSpec("step", (), "int64")),
])
def test_input_spec(text, expected):
    assert InputSpec.parse(text) == expected
    assert InputSpec.parse(text).example().shape == expected.shape


@pytest.mark.parametrize("text", ["image", "image=1xNx3", "=1x3", "x=1x3/float128"])
def test_bad_input_spec(mdoc_cli, tmp_path, text):
    _assert_clean_failure(mdoc_cli("import", tmp_path / "m.pt", "-o", tmp_path / "o.onnx", "--input", text),
                          f"--input '{text}'")


@pytest.mark.parametrize("text", ["image:0", "image=batch", "image:x=batch", "image:0=1batch"])
def test_bad_dynamic_spec(mdoc_cli, tmp_path, text):
    _assert_clean_failure(mdoc_cli("import", tmp_path / "m.pt", "-o", tmp_path / "o.onnx", "--dynamic", text),
                          f"--dynamic '{text}'")


def _symbolic_model() -> onnx.ModelProto:
    """x: [unk__1, 4] -> y: [unk__1, 3], with a value_info and an expression dim that use the same symbol."""
    m = tiny_model()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "unk__1"
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "unk__1"
    m.graph.value_info.append(helper.make_tensor_value_info("xw", TensorProto.FLOAT, ["2*unk__1", 3]))
    return m


def test_name_dims_renames_the_symbol_everywhere():
    m = _symbolic_model()
    name_dims(m, [DynamicAxis("x", 0, "batch")], "m.keras")
    dims = lambda vi: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(m.graph.input[0]) == ["batch", 4]
    assert dims(m.graph.output[0]) == ["batch", 3]
    assert dims(m.graph.value_info[0]) == ["2*batch", 3]


@pytest.mark.parametrize("axis, fragment", [(DynamicAxis("x", 1, "k"), "that axis is fixed to 4"),
                                            (DynamicAxis("nope", 0, "n"), "the model's inputs are x"),
                                            (DynamicAxis("x", 5, "n"), "has 2 dims")])
def test_name_dims_refusals(axis, fragment):
    with pytest.raises(MdocError, match=fragment):
        name_dims(_symbolic_model(), [axis], "m.keras")


def test_unconverted_ops_are_refused():
    m = tiny_model()
    m.graph.node[0].op_type = "TFL_CUSTOM_THING"
    with pytest.raises(MdocError, match="m.tflite: the converter left .*TFL_CUSTOM_THING unconverted"):
        check_converted(m, "m.tflite")
    check_converted(tiny_model(), "m.tflite")


def test_write_onnx_is_whole_or_nothing(tmp_path):
    out = write_onnx(tiny_model(), tmp_path / "m.onnx")
    assert onnx.load(out).graph.node[0].op_type == "MatMul"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    with pytest.raises(MdocError, match="folder .* does not exist"):
        write_onnx(tiny_model(), tmp_path / "missing" / "m.onnx")
    with pytest.raises(MdocError, match="an .onnx file"):
        write_onnx(tiny_model(), tmp_path / "m.mdir")
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_startup_imports_no_framework():
    code = ("import sys, mdoc, mdoc.cli, mdoc.convert; "
            "print([m for m in ('torch', 'tensorflow', 'tf2onnx', 'keras') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
