"""The README's "From TensorFlow and PyTorch" examples, run as written and checked numerically.

    .venv/bin/python benchmarks/frontdoors.py                 # all three
    .venv/bin/python benchmarks/frontdoors.py --only resnet18

Each example builds a seeded model in its framework, saves it in that framework's
format, converts it with `mdoc import` (the ONNX that onnxruntime runs), compiles the
framework's file directly with `mdoc compile -t x86`, runs the artifact and prints the
largest differences of mdoc and onnxruntime from the framework's own output on one
seeded input. Needs the extras: `pip install torch==2.13.0`, then
`pip install -e '.[tensorflow,torch]'`. Exit 1 when a difference exceeds the tolerance.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MDOC = Path(sys.executable).parent / "mdoc"
RTOL, ATOL = 1e-3, 1e-4


def mdoc(*args) -> str:
    r = subprocess.run([str(MDOC), *map(str, args)], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"mdoc {' '.join(map(str, args))}: {r.stderr.strip()}")
    return r.stdout


def mobilenetv2():
    """Keras MobileNetV2 (weights=None), its weights redrawn from seed 0 at He scale with random BatchNorm
    statistics: Keras' own initialization shrinks the logits to about 1e-11, where any two engines agree."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, classifier_activation=None)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        weights = layer.get_weights()
        if isinstance(layer, keras.layers.BatchNormalization):  # gamma, beta, moving mean, moving variance
            n = weights[0].shape
            weights = [np.ones(n), rng.uniform(-0.1, 0.1, n), rng.uniform(-0.1, 0.1, n), rng.uniform(0.5, 1.5, n)]
        elif weights:
            kernel = weights[0]
            fan_in = np.prod(kernel.shape[:2] if isinstance(layer, keras.layers.DepthwiseConv2D) else kernel.shape[:-1])
            weights = [rng.standard_normal(kernel.shape) * np.sqrt(2 / fan_in)] + [np.zeros_like(w) for w in weights[1:]]
        layer.set_weights([w.astype(np.float32) for w in weights])
    return model


def keras_mobilenetv2(tmp: Path):
    """MobileNetV2 saved as .keras."""
    model = mobilenetv2()
    model.save(tmp / "mobilenetv2.keras")
    image = np.random.default_rng(0).random((1, 224, 224, 3), np.float32)
    return tmp / "mobilenetv2.keras", image, model(image, training=False).numpy()


def resnet18():
    """torchvision's ResNet-18 (BasicBlock, [2, 2, 2, 2]), written out: PyPI's torchvision wheels link CUDA
    libraries that the CPU torch wheel lacks, so `import torchvision` fails beside torch 2.13.0+cpu."""
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                                      nn.ReLU(), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
            self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            return (self.body(x) + self.down(x)).relu()

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    for cin, cout, stride in ((64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)):
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
    class ResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000))

        def forward(self, image):
            return self.layers(image)

    return ResNet18()


def torch_resnet18(tmp: Path):
    """ResNet-18 with random weights from seed 0 (and random BatchNorm statistics), exported with a dynamic
    batch and saved as .pt2."""
    import torch

    torch.manual_seed(0)
    net = resnet18().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.rand(2, 3, 224, 224)
    program = torch.export.export(net, (x,), dynamic_shapes={"image": {0: torch.export.Dim("batch")}})
    torch.export.save(program, tmp / "resnet18.pt2")
    image = np.random.default_rng(0).random((1, 3, 224, 224), np.float32)
    with torch.no_grad():
        return tmp / "resnet18.pt2", image, net(torch.from_numpy(image)).numpy()


def tflite_tiny(tmp: Path):
    """A tiny Keras CNN (seed 0) through the TFLite converter, and the TFLite interpreter's output."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32, 32, 3), batch_size=1, name="image"),
                              keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.MaxPooling2D(),
                              keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(10)])
    (tmp / "tiny.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    image = np.random.default_rng(0).random((1, 32, 32, 3), np.float32)
    interpreter = tf.lite.Interpreter(model_path=str(tmp / "tiny.tflite"))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    interpreter.invoke()
    return tmp / "tiny.tflite", image, interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


EXAMPLES = {"mobilenetv2-keras": keras_mobilenetv2, "resnet18": torch_resnet18, "tflite-tiny": tflite_tiny}


def check(name: str, tmp: Path) -> bool:
    import onnx
    import onnxruntime as ort

    import mdoc as api

    src, image, expected = EXAMPLES[name](tmp)
    onnx_path = tmp / f"{name}.onnx"
    start = time.perf_counter()
    mdoc("import", src, "-o", onnx_path)
    import_s = time.perf_counter() - start
    input_name = onnx.load(onnx_path).graph.input[0].name
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ort_out = session.run(None, {input_name: image})[0]
    start = time.perf_counter()
    mdoc("compile", src, "-t", "x86", "-o", tmp / f"{name}.x86")
    compile_s = time.perf_counter() - start
    got = api.load(tmp / f"{name}.x86")(**{input_name: image})
    mdoc_out = next(iter(got.values()))
    d_mdoc, d_ort = np.abs(mdoc_out - expected).max(), np.abs(ort_out - expected).max()
    ok = all(np.allclose(out, expected, rtol=RTOL, atol=ATOL) for out in (mdoc_out, ort_out))
    print(f"{name:<18} {src.name:<18} input {input_name:<12} import {import_s:5.1f} s  compile {compile_s:5.1f} s  "
          f"max|output| {np.abs(expected).max():.3g}  max|mdoc - framework| {d_mdoc:.2e}  "
          f"max|onnxruntime - framework| {d_ort:.2e}  {'ok' if ok else 'DIFFERS'}", flush=True)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=sorted(EXAMPLES), action="append")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="mdoc-frontdoors-") as tmp:
        results = [check(name, Path(tmp)) for name in (args.only or EXAMPLES)]
    print(f"load average {os.getloadavg()[0]:.2f}")
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
