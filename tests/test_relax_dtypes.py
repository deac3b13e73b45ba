"""Cast / CastLike to and from float8, float4e2m1, int4 / int2 and bfloat16, bit for bit against onnx's reference.

The small types travel in a byte through the compiled model (mdoc.targets.storage);
these tests check the lowered conversions on every code of each type, on the ties
between neighbouring codes and just beside them, on overflow, infinities and NaN,
and that artifacts take and return the real ml_dtypes arrays.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

pytest.importorskip("tvm")

from mdoc.onnx_import import import_model  # noqa: E402
from mdoc.targets.presets import resolve_target  # noqa: E402
from mdoc.targets.relax import build, lower, run  # noqa: E402

TARGET = resolve_target("x86").tvm
SMALL_FLOATS = ["FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT4E2M1"]
SMALL_INTS = ["INT4", "UINT4", "INT2", "UINT2"]
RNG_BYTES = np.random.default_rng(0)


def np_type(name: str) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(getattr(TensorProto, name)))


def cast_model(src: str, dst: str, shape, opset: int = 25, **attrs) -> onnx.ModelProto:
    node = helper.make_node("Cast", ["x"], ["y"], to=getattr(TensorProto, dst), **attrs)
    graph = helper.make_graph([node], "cast", [helper.make_tensor_value_info("x", getattr(TensorProto, src), shape)],
                              [helper.make_tensor_value_info("y", getattr(TensorProto, dst), shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def compiled(m: onnx.ModelProto, feeds: dict) -> dict:
    model = import_model(m)
    return run(build(lower(model), TARGET), feeds, model)


def assert_same_bits(got: np.ndarray, want: np.ndarray, x: np.ndarray):
    """Equal codes, except that any NaN equals any NaN (ml_dtypes keeps the sign of NaN)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    gf, wf = got.astype(np.float32), want.astype(np.float32)
    same = (got.view(np.uint8) == want.view(np.uint8)) | (np.isnan(gf) & np.isnan(wf))
    bad = np.flatnonzero(~same)
    assert not bad.size, (f"{bad.size} of {got.size} differ, e.g. {x.reshape(-1)[bad[:5]]} -> "
                          f"{got.reshape(-1)[bad[:5]]}, expected {want.reshape(-1)[bad[:5]]}")


def probe_values(dtype: np.dtype) -> np.ndarray:
    """Every finite value of `dtype`, the midpoints between neighbours (ties), one float32 ulp either
    side of each, beyond the largest value, infinities, NaN, float32 subnormals, signed zeros."""
    codes = np.arange(256 if dtype.itemsize == 1 and "float4" not in dtype.name else 16, dtype=np.uint8)
    values = codes.view(dtype).astype(np.float64)
    values = np.unique(values[np.isfinite(values)])
    mids = (values[1:] + values[:-1]) / 2
    top = values[-1]
    base = np.concatenate([values, mids, [top * 1.5, top * 4, 1e30, 1e-30, 1e-45]]).astype(np.float32)
    near = np.concatenate([base, np.nextafter(base, np.float32(np.inf)), np.nextafter(base, np.float32(-np.inf))])
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0], np.float32)
    return np.concatenate([near, -near, special])


@pytest.mark.parametrize("saturate", [1, 0])
@pytest.mark.parametrize("dst", SMALL_FLOATS)
def test_cast_float_to_small_float_matches_reference_bit_for_bit(dst, saturate):
    x = probe_values(np_type(dst))
    with np.errstate(over="ignore"):
        x16 = x.astype(np.float16)
    for src, xs in (("FLOAT", x), ("FLOAT16", x16)):
        m = cast_model(src, dst, list(xs.shape), saturate=saturate)
        want = ReferenceEvaluator(m).run(None, {"x": xs})[0]
        assert_same_bits(compiled(m, {"x": xs})["y"], want, xs)


@pytest.mark.parametrize("src", SMALL_FLOATS + ["FLOAT8E8M0"])
def test_cast_small_float_to_float_decodes_every_code(src):
    codes = np.arange(16 if src == "FLOAT4E2M1" else 256, dtype=np.uint8).view(np_type(src))
    for dst in ("FLOAT", "FLOAT16", "BFLOAT16"):
        m = cast_model(src, dst, [codes.size])
        got = compiled(m, {"x": codes})["y"]
        want = codes.astype(np_type(dst))
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))


@pytest.mark.parametrize("dst", SMALL_INTS)
def test_cast_to_small_ints_truncates_and_wraps_like_the_reference(dst):
    x = np.concatenate([np.arange(-20, 21), np.arange(-20, 21) + 0.5, [-3.7, 3.7, 300.2, -300.2]]).astype(np.float32)
    for src, xs in (("FLOAT", x), ("FLOAT16", x.astype(np.float16)), ("INT32", x.astype(np.int32))):
        m = cast_model(src, dst, [x.size])
        want = ReferenceEvaluator(m).run(None, {"x": xs})[0]
        got = compiled(m, {"x": xs})["y"]
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got.astype(np.int32), want.astype(np.int32), err_msg=src)


@pytest.mark.parametrize("src", SMALL_INTS)
def test_cast_from_small_ints(src):
    dtype = np_type(src)
    info = ml_dtypes.iinfo(dtype)
    x = np.arange(info.min, info.max + 1).astype(dtype)
    for dst in ("FLOAT", "FLOAT16", "INT8" if info.min < 0 else "UINT8", "INT64", "FLOAT8E4M3FN"):
        m = cast_model(src, dst, [x.size])
        got = compiled(m, {"x": x})["y"]
        want = x.astype(np_type(dst))
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32), err_msg=dst)


@pytest.mark.parametrize("round_mode", ["up", "down", "nearest"])
@pytest.mark.parametrize("saturate", [1, 0])
def test_cast_to_e8m0_rounding_modes(round_mode, saturate):
    x = np.array([0, 0.124, 0.25, 0.5, 0.75, 1.1, 1.5, 1.75, 2, 3, 4, 5, 6, 8, -3, 1e-40, 3e38, 3.4e38,
                  np.inf, np.nan], np.float32)
    m = cast_model("FLOAT", "FLOAT8E8M0", [x.size], saturate=saturate, round_mode=round_mode)
    want = ReferenceEvaluator(m).run(None, {"x": x})[0]
    assert_same_bits(compiled(m, {"x": x})["y"], want, x)


def test_castlike_takes_the_element_type_of_its_second_input():
    x = np.array([0.3, -2.6, 500.0, np.nan], np.float32)
    like = np.zeros([1], ml_dtypes.float8_e5m2)
    node = helper.make_node("CastLike", ["x", "like"], ["y"], saturate=0)
    graph = helper.make_graph([node], "castlike", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
        helper.make_tensor_value_info("like", TensorProto.FLOAT8E5M2, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT8E5M2, [4])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    want = ReferenceEvaluator(m).run(None, {"x": x, "like": like})[0]
    assert_same_bits(compiled(m, {"x": x, "like": like})["y"], want, x)


def test_artifact_takes_and_returns_small_types(tmp_path, mdoc_cli):
    """`mdoc.load(path)` and `mdoc run` feed float8 in and give int4 and float8 back as ml_dtypes arrays."""
    import mdoc

    nodes = [helper.make_node("Cast", ["x"], ["q"], to=TensorProto.INT4),
             helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0])]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT8E4M3FN, [2, 3])],
                              [helper.make_tensor_value_info("q", TensorProto.INT4, [2, 3]),
                               helper.make_tensor_value_info("t", TensorProto.FLOAT8E4M3FN, [3, 2])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.save(m, tmp_path / "small.onnx")
    path = mdoc.compile(str(tmp_path / "small.onnx"), "x86", tmp_path / "small.mdoc", show_progress=False)
    x = np.array([[1.5, -3.0, 7.0], [-8.0, 0.25, 448.0]], ml_dtypes.float8_e4m3fn)
    out = mdoc.load(path)(x=x)
    want = ReferenceEvaluator(m).run(None, {"x": x})
    assert out["q"].dtype == np.dtype(ml_dtypes.int4) and out["t"].dtype == x.dtype
    np.testing.assert_array_equal(out["q"].astype(np.int8), want[0].astype(np.int8))
    np.testing.assert_array_equal(out["t"].view(np.uint8), x.T.view(np.uint8))
    with pytest.raises(mdoc.MdocError, match="input 'x' is float32, the artifact expects float8_e4m3fn"):
        mdoc.load(path)(x=x.astype(np.float32))

    np.savez(tmp_path / "in.npz", x=x)  # npz keeps ml_dtypes arrays as raw bytes
    r = mdoc_cli("run", path, "--inputs", tmp_path / "in.npz", "-o", tmp_path / "out.npz", "--repeat", "1")
    assert r.code == 0, r.err
    with np.load(tmp_path / "out.npz") as saved:
        np.testing.assert_array_equal(saved["t"].view(np.uint8), x.T.view(np.uint8))
    assert mdoc_cli("run", path, "--repeat", "1").code == 0  # seeded float8 inputs


@pytest.mark.parametrize("src, dst", [("FLOAT", "INT32"), ("INT64", "DOUBLE"), ("FLOAT8E5M2", "INT8"),
                                      ("UINT8", "FLOAT8E4M3FNUZ"), ("INT4", "UINT4"), ("FLOAT4E2M1", "INT4"),
                                      ("UINT2", "INT2"), ("BOOL", "UINT8")])
def test_bitcast_keeps_the_bits(src, dst):
    dtype = np_type(src)
    if src == "BOOL":
        x = np.array([True, False, True])
    elif src == "FLOAT4E2M1":
        x = np.arange(16, dtype=np.uint8).view(dtype)
    elif src in SMALL_INTS:  # every value
        info = ml_dtypes.iinfo(dtype)
        x = np.arange(info.min, info.max + 1).astype(dtype)
    else:  # random bytes: NaN payloads, subnormals, negative zeros included
        x = RNG_BYTES.integers(0, 256, 8 * dtype.itemsize, dtype=np.uint8).view(dtype)
    node = helper.make_node("BitCast", ["x"], ["y"], to=getattr(TensorProto, dst))
    graph = helper.make_graph([node], "bitcast", [helper.make_tensor_value_info("x", getattr(TensorProto, src), x.shape)],
                              [helper.make_tensor_value_info("y", getattr(TensorProto, dst), x.shape)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 26)])
    want = ReferenceEvaluator(m).run(None, {"x": x})[0]
    got = compiled(m, {"x": x})["y"]
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got.astype(np.float64) if "INT" in dst else got.view(np.uint8),
                                  want.astype(np.float64) if "INT" in dst else want.view(np.uint8))


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int32, np.uint64])
@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
def test_bitshift_out_of_range_fills_like_the_reference(dtype, direction):
    bits = np.iinfo(dtype).bits
    x = np.array([-8, 4, -1, 5, 1, -128], np.int64).astype(dtype)
    y = np.array([bits, bits + 1, 3, bits - 1, -1, 100], np.int64).astype(dtype)
    node = helper.make_node("BitShift", ["x", "y"], ["z"], direction=direction)
    tt = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph([node], "shift", [helper.make_tensor_value_info("x", tt, [6]),
                                                helper.make_tensor_value_info("y", tt, [6])],
                              [helper.make_tensor_value_info("z", tt, [6])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    want = ReferenceEvaluator(m).run(None, {"x": x, "y": y})[0]
    np.testing.assert_array_equal(compiled(m, {"x": x, "y": y})["z"], want)


@pytest.mark.parametrize("xt, yt", [(np.int32, np.int32), (np.int64, np.float32), (np.int32, np.float32)])
def test_pow_of_integers(xt, yt):
    x, y = np.array([1, 2, 3, -2, 7], xt), np.array([4, 5, 6, 3, 0.5 if yt == np.float32 else 2], yt)
    node = helper.make_node("Pow", ["x", "y"], ["z"])
    graph = helper.make_graph([node], "pow", [
        helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(np.dtype(xt)), [5]),
        helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(np.dtype(yt)), [5])],
        [helper.make_tensor_value_info("z", helper.np_dtype_to_tensor_dtype(np.dtype(xt)), [5])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    want = ReferenceEvaluator(m).run(None, {"x": x, "y": y})[0]
    got = compiled(m, {"x": x, "y": y})["z"]
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
