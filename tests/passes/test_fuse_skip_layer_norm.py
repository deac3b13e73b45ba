"""fuse-skip-layer-norm: the residual Add (and the bias before it) folded into mdoc.skip_layer_norm."""

from __future__ import annotations

import onnx

from mdoc.models import ZOO, build, example_inputs
from mdoc.onnx_export import export_model
from mdoc.onnx_import import import_model
from mdoc.pass_manager import OPT_LEVELS
from mdoc.reference import compare_outputs, run_onnxruntime
from pass_testing import apply, assert_golden


def test_layer_norm_of_a_residual_sum_with_bias():
    assert_golden("fuse-skip-layer-norm", """
graph @g(%x: f32[2,4], %r: f32[2,4]) -> (%y: f32[2,4]) {
  %b = onnx.Constant() {value = dense<[1.0, 2.0, 3.0, 4.0]>} : f32[4]
  %g = onnx.Constant() {value = dense<[0.5, 0.5, 0.5, 0.5]>} : f32[4]
  %xb = onnx.Add(%b, %x) : f32[2,4]
  %s = onnx.Add(%r, %xb) : f32[2,4]
  %y = mdoc.layer_norm(%s, %g) {axis = -1, epsilon = 0.25} : f32[2,4]
  return %y
}""", """
graph @g(%x: f32[2,4], %r: f32[2,4]) -> (%y: f32[2,4]) {
  %g = onnx.Constant() {value = dense<[0.5, 0.5, 0.5, 0.5]>} : f32[4]
  %0 = onnx.Constant() {value = dense<[0.0, 0.0, 0.0, 0.0]>} : f32[4] from("skip-layer-norm-bias")
  %1 = onnx.Constant() {value = dense<[1.0, 2.0, 3.0, 4.0]>} : f32[4] from("skip-layer-norm-bias")
  %y = mdoc.skip_layer_norm(%x, %r, %g, %0, %1) {epsilon = 0.25} : f32[2,4] from("skip-layer-norm-bias")
  return %y
}""")


def test_a_broadcast_skip_is_refused():
    model, changed = apply("""
graph @g(%x: f32[2,4], %r: f32[1,4]) -> (%y: f32[2,4]) {
  %g = onnx.Constant() {value = dense<[0.5, 0.5, 0.5, 0.5]>} : f32[4]
  %s = onnx.Add(%x, %r) : f32[2,4]
  %y = mdoc.layer_norm(%s, %g) {axis = -1, epsilon = 0.25} : f32[2,4]
  return %y
}""", "fuse-skip-layer-norm")
    assert not changed


def test_bert_with_skip_layer_norms_matches_in_onnxruntime_both_exports():
    proto = build("bert_encoder", **{**ZOO["bert_encoder"].test_kwargs, "batch": 2, "seq": 6})
    model = import_model(proto)
    # before fuse-epilogue, which would take the residual Adds into the MatMuls
    apply(model, OPT_LEVELS[2].replace("fuse-epilogue", "fuse-skip-layer-norm,fuse-epilogue"))
    assert sum(n.op == "mdoc.skip_layer_norm" for n in model.graph) == 4  # two per layer; not the embeddings'
    feeds = example_inputs(proto)
    want = run_onnxruntime(proto, feeds)
    for runtime_ops in (False, True):
        out = export_model(model, runtime_ops=runtime_ops)
        if runtime_ops:
            assert sum(n.op_type == "SkipLayerNormalization" for n in out.graph.node) == 4
        else:
            onnx.checker.check_model(out, full_check=True)
        bad = [d for d in compare_outputs(want, run_onnxruntime(out, feeds), rtol=1e-4, atol=1e-5) if not d.ok]
        assert not bad, bad
