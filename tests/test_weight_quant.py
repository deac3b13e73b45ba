"""Weight-only int4 / int8 MatMuls: mdoc.matmul_nbits, quantize-weights, fold-weight-dequant, their export
through onnxruntime, and the compiled fused kernel against onnxruntime's MatMulNBits."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mdoc.errors import MdocError
from mdoc.onnx_export import export_model
from mdoc.onnx_import import import_model
from mdoc.pass_manager import PassManager, parse_pipeline
from mdoc.reference import run_onnxruntime
from mdoc.weight_quant_ops import MATMUL_NBITS, dequantize

N_OUT = 48


def _mlp(k: int, opset: int = 21, gemm: bool = False) -> onnx.ModelProto:
    """x [B, S, K] -> MatMul (or Gemm transB on [M, K]) by a seeded weight -> Relu."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((N_OUT, k) if gemm else (k, N_OUT)) * 0.1).astype(np.float32)
    shape = ["M", k] if gemm else ["B", "S", k]
    mm = (helper.make_node("Gemm", ["x", "w"], ["y"], name="mm", transB=1) if gemm
          else helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"))
    graph = helper.make_graph([mm, helper.make_node("Relu", ["y"], ["z"], name="relu")], "mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [*shape[:-1], N_OUT])],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _x(k: int, rows=(2, 5), seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((*rows, k)).astype(np.float32)


def _quantized(proto, **options) -> tuple:
    model = import_model(proto)
    opts = ",".join(f"{k.replace('_', '-')}={str(v).lower()}" for k, v in {"min_elements": 0, **options}.items())
    PassManager(parse_pipeline(f"quantize-weights{{{opts}}},dce")).run(model)
    (node,) = [n for n in model.graph if n.op == MATMUL_NBITS.name]
    return model, node


def _reference(node, x):
    return MATMUL_NBITS.evaluate(node, [x] + [v.const_value for v in node.inputs[1:]])[0]


def _ort_quantized(k: int, bits: int, block: int, symmetric: bool, qdq: bool = False) -> onnx.ModelProto:
    from onnxruntime.quantization import matmul_nbits_quantizer as mq
    from onnxruntime.quantization.quant_utils import QuantFormat

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    q = mq.MatMulNBitsQuantizer(_mlp(k), bits=bits, block_size=block, is_symmetric=symmetric,
                                quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator)
    q.process()
    return q.model.model


def test_golden_ir_and_text_round_trip(tmp_path):
    """The decision is visible: one mdoc.matmul_nbits with its bits, block and sizes; .mdir keeps it."""
    from mdoc.parser import load_mdir
    from mdoc.printer import print_model, save_mdir

    model, _ = _quantized(_mlp(256), symmetric=False)
    text = print_model(model, resources={})
    assert re.search(r"= mdoc\.matmul_nbits\(%x, %w_q4, %w_scales, %w_zero_points\) "
                     r"\{bits = 4, block_size = 32, k = 256, n = 48\}", text), text
    assert "onnx.MatMul" not in text
    assert "%w_q4 = onnx.Constant() {value = resource<\"w_q4\">} : u8[48,8,16]" in text  # [N, blocks, 32 / 2]
    assert ": f16[48,8]" in text and ": u8[48,4]" in text  # a scale per block, zero points two to a byte
    save_mdir(model, tmp_path / "q.mdir")
    again = load_mdir(tmp_path / "q.mdir")
    assert print_model(again, resources={}) == text
    (node,) = [n for n in again.graph if n.op == MATMUL_NBITS.name]
    x = _x(256)
    np.testing.assert_array_equal(_reference(node, x), _reference(
        next(n for n in model.graph if n.op == MATMUL_NBITS.name), x))
    # a second run finds nothing left to quantize, and says so
    (record,) = PassManager(parse_pipeline("quantize-weights{min-elements=0}")).run(model)
    assert not record.changed


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("k,block", [(256, 32), (200, 128)])  # 200: a partial last block
def test_quantize_weights_and_every_export_agree_with_the_reference(bits, symmetric, k, block):
    proto = _mlp(k)
    model, node = _quantized(proto, bits=bits, block_size=block, symmetric=symmetric)
    assert node.attrs == {"bits": bits, "block_size": block, "k": k, "n": N_OUT}
    assert (len(node.inputs) == 3) == symmetric
    w = numpy_helper.to_array(proto.graph.initializer[0])
    wq = dequantize(node, *[v.const_value for v in node.inputs[1:]], *([None] if symmetric else []))
    step = np.abs(w).max() / ((1 << (bits - 1)) - 1)
    assert np.abs(wq - w).max() <= step  # never more than a quantization step off (most blocks: half a step)
    x = _x(k)
    want = np.maximum(_reference(node, x), 0)
    # MatMulNBits (contrib), blocked DequantizeLinear (opset 21), unpacking in plain ops (opset 17)
    for runtime_ops in (True, False):
        exported = export_model(model, runtime_ops=runtime_ops)
        onnx.checker.check_model(exported, full_check=True)
        kinds = {n.op_type for n in exported.graph.node}
        assert ("MatMulNBits" in kinds) == runtime_ops and ("DequantizeLinear" in kinds) != runtime_ops
        # ort's optimizer would fold DequantizeLinear -> MatMul into a MatMulNBits that quantizes x to int8
        got = run_onnxruntime(exported, {"x": x}, optimize=runtime_ops)["z"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    old = import_model(_mlp(k, opset=17))
    PassManager(parse_pipeline(f"quantize-weights{{bits={bits},block-size={block},symmetric={str(symmetric).lower()},"
                               "min-elements=0}")).run(old)
    exported = export_model(old)
    assert "DequantizeLinear" not in {n.op_type for n in exported.graph.node}
    np.testing.assert_allclose(run_onnxruntime(exported, {"x": x})["z"], want, rtol=1e-5, atol=1e-5)


def test_the_exported_file_holds_the_packed_weight_once():
    model, _ = _quantized(_mlp(256), bits=4, block_size=32)
    for runtime_ops in (True, False):
        proto = export_model(model, runtime_ops=runtime_ops)
        weight = sum(t.ByteSize() for t in proto.graph.initializer) + sum(
            a.t.ByteSize() for n in proto.graph.node for a in n.attribute if n.op_type == "Constant")
        assert weight < 256 * N_OUT * 4 * 0.2, weight  # half a byte per value and the scales: no float copy


def test_gemm_trans_b_and_small_matmuls():
    proto = _mlp(256, gemm=True)
    model, node = _quantized(proto)
    x = _x(256, rows=(3,))
    np.testing.assert_allclose(run_onnxruntime(export_model(model, runtime_ops=True), {"x": x})["z"],
                               np.maximum(_reference(node, x), 0), rtol=1e-5, atol=1e-5)
    small = import_model(_mlp(256))
    (record,) = PassManager(parse_pipeline("quantize-weights")).run(small)  # 256 x 48: under min-elements
    assert not record.changed and not any(n.op == MATMUL_NBITS.name for n in small.graph)
    excluded = import_model(_mlp(256))
    PassManager(parse_pipeline("quantize-weights{min-elements=0,exclude=mm}")).run(excluded)
    assert not any(n.op == MATMUL_NBITS.name for n in excluded.graph)


def test_size_ratio_of_int4_at_block_32():
    """The MatMul weights' bytes: 4 bits + one scale per 32 values (f16: 0.1406x; f32: 0.156x, over 0.15)."""
    k, n = 4096, 256
    rng = np.random.default_rng(3)
    w = rng.standard_normal((k, n)).astype(np.float32) * 0.02
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                              [numpy_helper.from_array(w, "w")])
    from mdoc.weight_quantize import quantize_weights

    for scale_type, limit in (("f16", 0.15), ("f32", 0.16)):
        _, summary = quantize_weights(import_model(helper.make_model(graph)), scale_type=scale_type)
        ratio = summary["quantized_matmul_weight_bytes"] / summary["matmul_weight_bytes"]
        assert summary["matmul_weight_bytes"] == w.nbytes
        assert ratio == pytest.approx((0.5 + (2 if scale_type == "f16" else 4) / 32) / 4) and ratio <= limit


@pytest.mark.parametrize("qdq", [False, True])
@pytest.mark.parametrize("symmetric", [True, False])
def test_onnxruntime_quantizer_models_import_onto_the_op(qdq, symmetric):
    proto = _ort_quantized(200, 4, 32, symmetric, qdq)
    model = import_model(proto)
    PassManager(parse_pipeline("fold-weight-dequant,dce")).run(model)
    assert [n.op for n in model.graph if n.op != "onnx.Constant"] == [MATMUL_NBITS.name, "onnx.Relu"]
    (node,) = [n for n in model.graph if n.op == MATMUL_NBITS.name]
    x = _x(200)
    want = run_onnxruntime(proto, {"x": x}, optimize=False)["z"]
    np.testing.assert_allclose(np.maximum(_reference(node, x), 0), want, rtol=1e-5, atol=1e-5)
    again = run_onnxruntime(export_model(model, runtime_ops=True), {"x": x})["z"]
    np.testing.assert_allclose(again, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bits,symmetric,block,k", [(4, True, 32, 256), (4, False, 128, 200), (8, True, 128, 200),
                                                    (8, False, 32, 96)])
def test_compiled_kernel_matches_onnxruntime_matmul_nbits(tmp_path, bits, symmetric, block, k):
    import mdoc

    proto = _ort_quantized(k, bits, block, symmetric)
    path = tmp_path / "q.onnx"
    onnx.save(proto, path)
    out = mdoc.compile(str(path), "x86", tmp_path / "q.x86", show_progress=False)
    run = mdoc.load(out)
    for rows in ((1, 1), (2, 5)):  # decode (GEMV) and a batch of rows
        x = _x(k, rows)
        np.testing.assert_allclose(run(x=x)["z"], run_onnxruntime(path, {"x": x})["z"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bits,symmetric", [(4, False), (8, True)])
def test_generic_lowering_dequantizes_then_multiplies(bits, symmetric):
    """Targets without mdoc's CPU kernels (the default `Kernels`): a dequantizing stage and a matmul."""
    from mdoc.targets.presets import resolve_target
    from mdoc.targets.relax import build, lower, run

    proto = _ort_quantized(200, bits, 64, symmetric)
    model = import_model(proto)
    PassManager(parse_pipeline("fold-weight-dequant,dce")).run(model)
    x = _x(200)
    got = run(build(lower(model), resolve_target("x86").tvm), {"x": x}, model)["z"]
    np.testing.assert_allclose(got, run_onnxruntime(proto, {"x": x})["z"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rows,blocks", [(1, ["acc_init", "acc_update", "asum", "out", "part_init", "part_update"]),
                                         ("M", ["acc_init", "acc_update", "asum", "out", "part_init", "part_update"]),
                                         (64, ["acc_init", "acc_update", "out", "panel"])])
def test_the_fused_kernel_reads_packed_bytes(rows, blocks):
    """One PrimFunc reads the uint8 codes; no float [K, N] weight is computed before the product: decode
    sums a * code per block (part) and applies the scale per block, prefill dequantizes a column panel."""
    from mdoc.targets.cpu_kernels.matmul_nbits import matmul_nbits

    kernel = matmul_nbits(rows, 256, 64, bits=4, block_size=32, zero_points=False)
    assert [p.dtype for p in kernel.params] == ["float32", "uint8", "float32", "float32"]
    script = kernel.func.script()
    assert sorted(set(re.findall(r'T\.sblock\("(\w+)"\)', script)) - {"root"}) == blocks
    assert "T.parallel" in script and "T.vectorized" in script


@pytest.mark.parametrize("rows,bits,symmetric,scale_dtype", [(1, 4, False, np.float16), (3, 8, True, np.float32),
                                                             (9, 4, True, np.float16), (9, 8, False, np.float32)])
def test_kernel_forms_on_a_partial_block(rows, bits, symmetric, scale_dtype):
    """Both forms (per block up to 4 rows, per weight beyond) with K = 200 over blocks of 64 and N = 40."""
    import tvm

    from mdoc.targets.cpu_kernels.matmul_nbits import matmul_nbits, pack_weights
    from mdoc.weight_quant_ops import quantize_blocks

    k, n, block = 200, 40, 64
    rng = np.random.default_rng(4)
    b, scales, zp = quantize_blocks(rng.standard_normal((k, n)), bits, block, symmetric, scale_dtype)
    attrs = SimpleNamespace(attrs={"bits": bits, "block_size": block, "k": k, "n": n})  # what dequantize reads
    kernel = matmul_nbits(rows, k, n, bits=bits, block_size=block, zero_points=not symmetric,
                          scale_dtype=str(scales.dtype))
    packed = pack_weights(kernel, b, scales, zp, bits=bits, block_size=block, k=k, n=n)
    a = rng.standard_normal((rows, k)).astype(np.float32)
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((rows, n), np.float32), dev)
    kernel.compile().fn(*[tvm.runtime.tensor(x, dev) for x in (a, *packed)], out)
    np.testing.assert_allclose(out.numpy(), a @ dequantize(attrs, b, scales, zp), rtol=1e-5, atol=1e-4)


def test_errors_name_the_problem():
    with pytest.raises(MdocError, match="block-size=24"):
        _quantized(_mlp(256), block_size=24)
    with pytest.raises(MdocError, match="bits=3"):
        _quantized(_mlp(256), bits=3)
    proto = _ort_quantized(256, 4, 32, True)
    node = next(n for n in proto.graph.node if n.op_type == "MatMulNBits")
    proto.graph.initializer.append(numpy_helper.from_array(np.zeros(256, np.int32), "g_idx"))
    node.input.extend(["", "g_idx"])
    with pytest.raises(MdocError, match="g_idx"):
        PassManager(parse_pipeline("fold-weight-dequant")).run(import_model(proto))


@pytest.mark.parametrize("runtime_ops", [False, True])
def test_cli_weights_only_then_compile(mdoc_cli, tmp_path, runtime_ops):
    """mdoc quantize --weights int4 writes a file onnxruntime runs and mdoc compiles back onto the fused op."""
    import mdoc

    src, out = tmp_path / "mlp.onnx", tmp_path / "mlp.q4.onnx"
    onnx.save(_mlp(512), src)
    r = mdoc_cli("quantize", src, "-o", out, "--weights", "int4", "--zero-point",
                 *(["--onnx-runtime-ops"] if runtime_ops else []))
    assert r.code == 0, r.err
    # MatMulNBits keeps float32 scales (its scales have the activations' type): 4 bits + 4 / 32 bytes + 4 / 32 bits
    assert "1 MatMuls on int4 weights" in r.out and ("0.160x" if runtime_ops else "0.145x") in r.out, r.out
    kinds = {n.op_type for n in onnx.load(out).graph.node}
    assert ("MatMulNBits" in kinds) == runtime_ops and ("DequantizeLinear" in kinds) != runtime_ops
    x = _x(512)
    want = run_onnxruntime(src, {"x": x})["z"]
    got = run_onnxruntime(out, {"x": x}, optimize=runtime_ops)["z"]
    np.testing.assert_allclose(got, want, atol=0.1 * np.abs(want).max())
    run = mdoc.load(mdoc.compile(str(out), "x86", tmp_path / "q.x86", show_progress=False))
    np.testing.assert_allclose(run(x=x)["z"], got, rtol=1e-4, atol=1e-4)


def test_cli_needs_calib_or_weights(mdoc_cli, tmp_path):
    src = tmp_path / "mlp.onnx"
    onnx.save(_mlp(64), src)
    r = mdoc_cli("quantize", src, "-o", tmp_path / "out.onnx")
    assert r.code == 2 and "--weights int4|int8" in r.err and "Traceback" not in r.err
