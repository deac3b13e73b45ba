"""Accuracy and size of mdoc's static int8 (QDQ) against onnxruntime's quantize_static, same data.

    python benchmarks/quantize_accuracy.py                        # resnet18, mobilenetv2
    python benchmarks/quantize_accuracy.py --models resnet18 --calib 64 --method percentile
    python benchmarks/quantize_accuracy.py --max-drop 0.02     # with mdoc's accuracy guard

For each zoo model: seeded calibration and evaluation inputs; `mdoc quantize` (the
command, per-channel weights, u8 activations unless --activations s8) and
onnxruntime.quantization.quantize_static (QDQ, S8S8, per-channel, MinMax) each quantize
it; onnxruntime runs fp32 and both QDQ models on the evaluation inputs. The zoo's
seeded classifiers answer one class for every input, so top-1 agreement says nothing:
the metric is the cosine similarity of the logits after subtracting their mean over the
evaluation batch ("centered cosine"), and the size is the weight bytes of the file.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx


def centered_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(axis=0), b - b.mean(axis=0)
    return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _run(path: Path, name: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {name: x[k:k + 1]})[0] for k in range(len(x))])


def _weight_bytes(path: Path) -> int:
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer) + sum(
        onnx.numpy_helper.to_array(a.t).nbytes for n in onnx.load(str(path)).graph.node for a in n.attribute
        if a.type == onnx.AttributeProto.TENSOR)


def _ort_quantize(src: Path, dst: Path, name: str, calib: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{name: calib[k:k + 1]} for k in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,mobilenetv2")
    p.add_argument("--calib", type=int, default=32, help="calibration samples")
    p.add_argument("--eval", type=int, default=16, help="evaluation samples")
    p.add_argument("--method", default="minmax", choices=["minmax", "percentile"])
    p.add_argument("--activations", default="u8", choices=["u8", "s8"])
    p.add_argument("--max-drop", type=float, default=None, help="mdoc's accuracy guard (held-out: the eval inputs)")
    args = p.parse_args()
    from mdoc.models.zoo import build

    print(f"{'model':12s} {'mdoc cos':>9s} {'ort cos':>8s} {'mdoc size':>10s} {'ort size':>9s}")
    with tempfile.TemporaryDirectory(prefix="mdoc-quant-") as tmp:
        tmp = Path(tmp)
        for model in args.models.split(","):
            src = tmp / f"{model}.onnx"
            proto = build(model)
            onnx.save(proto, src)
            name = proto.graph.input[0].name
            shape = [d.dim_value or 1 for d in proto.graph.input[0].type.tensor_type.shape.dim][1:]
            rng = np.random.default_rng(0)
            calib = rng.standard_normal((args.calib, *shape)).astype(np.float32)
            x = rng.standard_normal((args.eval, *shape)).astype(np.float32)
            np.savez(tmp / "calib.npz", **{name: calib})
            np.savez(tmp / "eval.npz", **{name: x[:, None]})
            guard = ["--max-drop", str(args.max_drop), "--eval", str(tmp / "eval.npz")] if args.max_drop else []
            ours, theirs = tmp / f"{model}.mdoc-int8.onnx", tmp / f"{model}.ort-int8.onnx"
            subprocess.run([sys.executable, "-c", "from mdoc.cli import main; main()", "quantize", str(src), "-o", str(ours), "--calib",
                            str(tmp / "calib.npz"), "--method", args.method, "--activations", args.activations, *guard],
                           check=True, stdout=sys.stderr if args.max_drop else subprocess.DEVNULL)
            _ort_quantize(src, theirs, name, calib)
            ref = _run(src, name, x)
            size = _weight_bytes(src)
            print(f"{model:12s} {centered_cosine(_run(ours, name, x), ref):9.4f} {centered_cosine(_run(theirs, name, x), ref):8.4f} "
                  f"{_weight_bytes(ours) / size:9.2f}x {_weight_bytes(theirs) / size:8.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
