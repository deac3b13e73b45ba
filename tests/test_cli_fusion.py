"""`mdoc opt` with the transformer fusions: --onnx-runtime-ops, --explain, and the report's fusion counts."""

from __future__ import annotations

import onnx

from mdoc.models import ZOO, build, example_inputs
from mdoc.reference import compare_outputs, run_onnxruntime


def bert_path(tmp_path):
    path = tmp_path / "bert.onnx"
    onnx.save(build("bert_encoder", **ZOO["bert_encoder"].test_kwargs), path)
    return path


def test_runtime_ops_export_runs_with_equal_outputs(mdoc_cli, tmp_path):
    src, out, report = bert_path(tmp_path), tmp_path / "o.onnx", tmp_path / "r.html"
    r = mdoc_cli("opt", src, "-o", out, "--onnx-runtime-ops", "--report", report)
    assert r.code == 0, r.err
    proto = onnx.load(out)
    ops = {(n.domain, n.op_type) for n in proto.graph.node}
    assert ("com.microsoft", "MultiHeadAttention") in ops and ("", "LayerNormalization") in ops
    feeds = example_inputs(onnx.load(src))
    diffs = compare_outputs(run_onnxruntime(str(src), feeds), run_onnxruntime(proto, feeds), rtol=1e-4, atol=1e-5)
    assert all(d.ok for d in diffs), diffs
    page = report.read_text()
    assert "<td>mdoc.attention</td><td>2</td>" in page and "<td>mdoc.layer_norm</td><td>5</td>" in page


def test_runtime_ops_need_an_onnx_output(mdoc_cli, tmp_path):
    r = mdoc_cli("opt", bert_path(tmp_path), "-o", tmp_path / "o.mdir", "--onnx-runtime-ops")
    assert r.code == 2 and "--onnx-runtime-ops applies to .onnx output only" in r.err


def test_explain_names_why_a_rule_did_not_fire(mdoc_cli, tmp_path):
    r = mdoc_cli("opt", bert_path(tmp_path), "-o", tmp_path / "o.mdir", "-O1", "--explain", "fuse-gelu,layer-norm")
    assert r.code == 0, r.err
    # -O1 does not fuse, so the exported GELU is still there and the rule says it would fire
    assert "rule gelu-erf: would fire at" in r.err and "rule layer-norm: would fire at" in r.err
    r = mdoc_cli("opt", bert_path(tmp_path), "-o", tmp_path / "o.mdir", "-O1", "--explain", "gelu-tanh")
    assert r.code == 0 and "rule gelu-tanh: near miss at" in r.err
    assert "(onnx.Erf), the pattern wants onnx.Tanh" in r.err


def test_explain_an_unknown_rule_is_a_one_line_error(mdoc_cli, tmp_path):
    r = mdoc_cli("opt", bert_path(tmp_path), "-o", tmp_path / "o.mdir", "--explain", "nonesuch")
    assert r.code == 2 and "unknown rewrite rule 'nonesuch'" in r.err and "Traceback" not in r.err


def test_report_counts_each_fusion_rule_and_runtime_ops_fuse_convs(mdoc_cli, tmp_path):
    src, out, report = tmp_path / "resnet.onnx", tmp_path / "o.onnx", tmp_path / "r.html"
    onnx.save(build("resnet18", **ZOO["resnet18"].test_kwargs), src)
    r = mdoc_cli("opt", src, "-o", out, "--onnx-runtime-ops", "--report", report)
    assert r.code == 0, r.err
    page = report.read_text()
    # every conv but the three downsampling ones takes a Relu; eight residual Adds join a conv
    assert "<td>conv-activation</td><td>17</td>" in page and "<td>conv-residual</td><td>8</td>" in page, page
    assert "<td>mdoc.conv</td><td>17</td>" in page
    proto = onnx.load(out)
    assert sum(n.op_type == "FusedConv" and n.domain == "com.microsoft" for n in proto.graph.node) == 17
    feeds = example_inputs(onnx.load(src))
    diffs = compare_outputs(run_onnxruntime(str(src), feeds), run_onnxruntime(proto, feeds), rtol=1e-4, atol=1e-5)
    assert all(d.ok for d in diffs), diffs
