"""Calls of a loaded artifact (`mdoc.load(path)(**inputs)`): the lean path's inputs, outputs and checks.

Inputs go to the VM without a copy when they are C-contiguous, writeable and 64-byte
aligned, else through a staging buffer per input; outputs are the caller's own arrays.
These tests pin what that must not change: results equal onnxruntime's whatever the
input's layout, an output never changes after it is returned (not when the VM returned
an input, not when the next call reuses a staging buffer), and bad inputs get one-line
errors that name the input and the dim.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mdoc.errors import MdocError

pytest.importorskip("tvm")
ort = pytest.importorskip("onnxruntime")

SAMPLE = "models/sample.onnx"


def aligned(a: np.ndarray) -> np.ndarray:
    """A copy of `a` at a 64-byte address."""
    raw = np.empty(a.nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def unaligned(a: np.ndarray) -> np.ndarray:
    """A copy of `a` at an address 4 bytes past a 64-byte boundary."""
    raw = np.empty(a.nbytes + 128, np.uint8)
    start = -raw.ctypes.data % 64 + 4
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def layouts(a: np.ndarray) -> dict[str, np.ndarray]:
    """`a` as aligned, unaligned, Fortran-ordered, strided and read-only arrays (equal values)."""
    strided = np.zeros(a.shape[:-1] + (a.shape[-1] * 2,), a.dtype)[..., ::2]
    strided[...] = a
    readonly = aligned(a)
    readonly.flags.writeable = False
    out = {"aligned": aligned(a), "unaligned": unaligned(a), "fortran": np.asfortranarray(a),
           "strided": strided, "readonly": readonly}
    assert out["unaligned"].ctypes.data % 64 and not out["strided"].flags.c_contiguous
    return out


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    import mdoc

    out = tmp_path_factory.mktemp("art") / "sample.x86"
    return mdoc.load(mdoc.compile(SAMPLE, "x86", out, show_progress=False))


@pytest.fixture(scope="module")
def symbolic(tmp_path_factory):
    """An artifact with a symbolic dim N shared by two inputs; output `z` is input `x` itself."""
    from mdoc.backends import get_backend
    from mdoc.model_io import load_model

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, "N", 4])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "z")]
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["s", "r"], ["y"]),
             helper.make_node("Identity", ["x"], ["z"])]
    proto = helper.make_model(helper.make_graph(nodes, "sym", [x, s], outs),
                              opset_imports=[helper.make_opsetid("", 17)])
    folder = tmp_path_factory.mktemp("sym")
    onnx.save(proto, folder / "sym.onnx")
    # the backend directly: it keeps the dims symbolic whatever `mdoc.compile` does with them
    path = get_backend("tvm").compile(load_model(str(folder / "sym.onnx")), "x86", folder / "sym.x86")
    return get_backend("tvm").load(path), ort.InferenceSession(str(folder / "sym.onnx"))


def test_sample_matches_onnxruntime_for_every_input_layout(sample):
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    (expected,) = ort.InferenceSession(SAMPLE).run(["logits"], {"image": x})
    results = {name: sample(image=a)["logits"] for name, a in layouts(x).items()}
    np.testing.assert_allclose(results["aligned"], expected, rtol=1e-4, atol=1e-5)
    for name, got in results.items():
        np.testing.assert_array_equal(got, results["aligned"], err_msg=name)


def test_outputs_are_not_overwritten_by_later_calls(sample):
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(3)]
    for make in (aligned, unaligned):
        first = sample(image=make(inputs[0]))["logits"]
        kept = first.copy()
        second = sample(image=make(inputs[1]))["logits"]
        sample(image=make(inputs[2]))
        np.testing.assert_array_equal(first, kept)
        assert not np.array_equal(first, second) and first.flags.owndata and first.flags.writeable


def test_input_is_left_alone(sample):
    x = aligned(np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32))
    before = x.copy()
    sample(image=x)["logits"][...] = 0
    np.testing.assert_array_equal(x, before)


def test_symbolic_dims_match_onnxruntime_at_several_sizes(symbolic):
    run, session = symbolic
    rng = np.random.default_rng(3)
    for n in (1, 3, 5, 3):  # the staging buffers follow the size, and back
        x = rng.standard_normal((n, 4)).astype(np.float32)
        s = rng.standard_normal((2, n, 4)).astype(np.float32)
        expected = dict(zip(["y", "z"], session.run(["y", "z"], {"x": x, "s": s})))
        for make in (aligned, unaligned, np.asfortranarray):
            got = run(x=make(x), s=make(s))
            for k in expected:
                np.testing.assert_allclose(got[k], expected[k], rtol=1e-6, err_msg=f"{k} N={n} {make.__name__}")


def test_an_output_that_is_an_input_is_a_copy(symbolic):
    run, _ = symbolic
    x, s = np.ones((2, 4), np.float32), np.zeros((2, 2, 4), np.float32)
    for make in (aligned, unaligned):
        xin = make(x)
        z = run(x=xin, s=s)["z"]
        run(x=make(x * 7), s=s)  # the unaligned case reuses x's staging buffer
        xin[...] = 5
        np.testing.assert_array_equal(z, x)


def test_input_errors_name_the_input_and_dim(symbolic, sample):
    run, _ = symbolic
    x, s = np.ones((2, 4), np.float32), np.zeros((2, 2, 4), np.float32)
    cases = [
        (dict(x=x, s=np.zeros((2, 3, 4), np.float32)),
         r"input 's' has N = 3 \(dim 1 of shape \[2, 3, 4\]\), but input 'x' has N = 2"),
        (dict(x=x, s=np.zeros((2, 2, 5), np.float32)), r"input 's' has shape \[2, 2, 5\], the artifact expects \[2, 'N', 4\]"),
        (dict(x=x[None], s=s), r"input 'x' has shape \[1, 2, 4\], the artifact expects \['N', 4\]"),
        (dict(x=x.astype(np.float64), s=s), "input 'x' is float64, the artifact expects float32"),
        (dict(x=x), "input 's' is missing"),
        (dict(x=x, s=s, t=s), "tensor 't' is not an input of the artifact \\(inputs: x, s\\)"),
        (dict(x=x, t=s), "tensor 't' is not an input of the artifact"),
    ]
    for feeds, message in cases:
        with pytest.raises(MdocError, match=message) as e:
            run(**feeds)
        assert "\n" not in str(e.value) and "sym.x86" in str(e.value)
    with pytest.raises(MdocError, match=r"input 'image' has shape \[1, 3, 32\]"):
        sample(image=np.zeros((1, 3, 32), np.float32))


def test_inputs_that_are_not_arrays_are_converted(symbolic):
    run, _ = symbolic
    x = np.array([[1.0, -2.0, 3.0, -4.0]], np.float32)
    got = run(x=memoryview(x), s=np.zeros((2, 1, 4), np.float32))  # any buffer, as np.asarray reads it
    np.testing.assert_array_equal(got["y"], [[[1, 0, 3, 0]]] * 2)
    with pytest.raises(MdocError, match="input 'x' is float64, the artifact expects float32"):
        run(x=x.tolist(), s=np.zeros((2, 1, 4), np.float32))  # Python floats are float64, as numpy reads them


def test_bfloat16_inputs_are_taken(tmp_path):
    """numpy has no DLPack for ml_dtypes' bfloat16: such an input goes in as a copy (it was a
    BufferError from numpy, the ONNX node suite's bfloat16 Compress, OneHot, Range cases)."""
    import ml_dtypes

    import mdoc

    graph = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    path = tmp_path / "bf16.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    run = mdoc.load(mdoc.compile(str(path), "x86", tmp_path / "bf16.x86", show_progress=False))
    x = np.array([1.5, -2.0, 3.25], ml_dtypes.bfloat16)
    np.testing.assert_array_equal(run(x=x)["y"], x.astype(np.float32))
