"""Task accuracy of a model with real (trained) weights before and after pruning and `mdoc distill`.

    pip install scikit-learn && python benchmarks/distill_digits.py [--channels 0.5]

scikit-learn's bundled 8x8 digits (1797 images, no download) train a small MLP
(64 -> 256 -> 256 -> 10, ReLU, scikit-learn's MLPClassifier, seeded), written as an ONNX model of
Gemm and Relu. `prune_model` removes --channels of each hidden layer (l1); `distill` re-fits the
layers that read the pruned units from the training images alone (no labels), the original model
as the teacher. Printed: test-set accuracy (the labels are only used here) of the original, the
pruned and the distilled model, and the centered cosine of their logits against the original's.
"""

from __future__ import annotations

import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _onnx_mlp(mlp) -> onnx.ModelProto:
    nodes, inits, x = [], [], "x"
    for i, (w, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_)):
        inits += [numpy_helper.from_array(w.astype(np.float32), f"fc{i}.weight"),
                  numpy_helper.from_array(b.astype(np.float32), f"fc{i}.bias")]
        last = i == len(mlp.coefs_) - 1
        out = "logits" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, f"fc{i}.weight", f"fc{i}.bias"], [out], name=f"fc{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"], name=f"relu{i}"))
            out = f"r{i}"
        x = out
    graph = helper.make_graph(nodes, "digits_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", type=float, default=0.9)
    p.add_argument("--ridge", type=float, default=0.01)
    p.add_argument("--int8", default="scale", choices=["bias", "scale", "requantize"], help="how int8 layers are fitted")
    args = p.parse_args()
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    import onnxruntime as ort

    from mdoc.distill import distill
    from mdoc.onnx_export import export_model
    from mdoc.onnx_import import import_model
    from mdoc.pruning.api import prune_model
    from mdoc.quantize import accuracy, quantize_static

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.3, random_state=0)
    mlp = MLPClassifier(hidden_layer_sizes=(256, 256), max_iter=300, random_state=0).fit(x_train, y_train)
    teacher = _onnx_mlp(mlp)

    def logits(proto):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        s = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return s.run(None, {"x": x_test})[0]

    calib = [{"x": x_train[i:i + 1]} for i in range(len(x_train))]
    held_out = [{"x": x_test[i:i + 1]} for i in range(len(x_test))]
    pruned, report = prune_model(import_model(teacher), channels=args.channels)
    pruned_proto = export_model(pruned)  # distill re-fits the student in place
    distilled, _ = distill(pruned, import_model(teacher), calib, eval_samples=held_out, ridge=args.ridge)
    quantized, _ = quantize_static(import_model(teacher), calib[:64])
    quantized_proto = export_model(quantized)
    int8_distilled, _ = distill(quantized, import_model(teacher), calib, eval_samples=held_out, ridge=args.ridge,
                                int8=args.int8)
    want = logits(teacher)
    print(f"digits MLP 64-256-256-10, {len(x_train)} training images (unlabeled for distill), {len(x_test)} test; "
          f"hidden units pruned {args.channels:.0%}, parameters {report['after']['parameters']} of "
          f"{report['before']['parameters']}")
    print(f"{'model':24s} {'test accuracy':>13s} {'centered cosine':>15s}")
    for name, proto in (("original", teacher), ("pruned", pruned_proto), ("pruned + distilled", export_model(distilled)),
                        ("int8", quantized_proto), (f"int8 + distilled ({args.int8})", export_model(int8_distilled))):
        got = logits(proto)
        top1 = float((got.argmax(axis=1) == y_test).mean())
        print(f"{name:24s} {top1:13.4f} {accuracy([got[:, None]], [want[:, None]]):15.6f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
