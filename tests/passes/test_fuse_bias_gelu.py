"""fuse-bias-gelu: the bias Add folded into mdoc.gelu; exported as BiasGelu for onnxruntime."""

from __future__ import annotations

from mdoc.models import ZOO, build, example_inputs
from mdoc.onnx_export import export_model
from mdoc.onnx_import import import_model
from mdoc.pass_manager import OPT_LEVELS
from mdoc.reference import compare_outputs, run_onnxruntime
from pass_testing import apply, assert_golden


def test_bias_add_folds_into_gelu():
    assert_golden("fuse-bias-gelu", """
graph @g(%x: f32[2,4]) -> (%y: f32[2,4]) {
  %b = onnx.Constant() {value = dense<[[1.0, 2.0, 3.0, 4.0]]>} : f32[1,4]
  %s = onnx.Add(%b, %x) : f32[2,4]
  %y = mdoc.gelu(%s) {approximate = "tanh"} : f32[2,4]
  return %y
}""", """
graph @g(%x: f32[2,4]) -> (%y: f32[2,4]) {
  %0 = onnx.Constant() {value = dense<[1.0, 2.0, 3.0, 4.0]>} : f32[4] from("bias-gelu")
  %y = mdoc.gelu(%x, %0) {approximate = "tanh"} : f32[2,4] from("bias-gelu")
  return %y
}""")


def test_a_scalar_or_run_time_addend_stays_an_add():
    for addend in ('%c = onnx.Constant() {value = dense<1.0>} : f32[]', "%c = onnx.Neg(%x) : f32[2,4]"):
        _, changed = apply(f"""
graph @g(%x: f32[2,4]) -> (%y: f32[2,4]) {{
  {addend}
  %s = onnx.Add(%x, %c) : f32[2,4]
  %y = mdoc.gelu(%s) {{approximate = "none"}} : f32[2,4]
  return %y
}}""", "fuse-bias-gelu")
        assert not changed


def test_bert_bias_gelus_export_as_onnxruntime_bias_gelu():
    proto = build("bert_encoder", **ZOO["bert_encoder"].test_kwargs)
    model = import_model(proto)
    apply(model, OPT_LEVELS[2] + ",fuse-bias-gelu")
    out = export_model(model, runtime_ops=True)
    assert sum(n.op_type == "BiasGelu" and n.domain == "com.microsoft" for n in out.graph.node) == 2
    feeds = example_inputs(proto)
    bad = [d for d in compare_outputs(run_onnxruntime(proto, feeds), run_onnxruntime(out, feeds), rtol=1e-4,
                                      atol=1e-5) if not d.ok]
    assert not bad, bad
