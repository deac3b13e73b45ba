"""How far `mdoc distill` brings a compressed model back to its teacher: pruned and int8 zoo models,
centered cosine of the logits against the original model on held-out inputs, before and after.

    python benchmarks/distill_accuracy.py                                  # resnet18, mobilenetv2 at 224
    python benchmarks/distill_accuracy.py --models resnet18 --image-size 64 --calib 48

For each model: seeded calibration and held-out inputs (standard normal); the model pruned by
`prune_model` (--channels, l1, rounded to 16) and quantized by `quantize_static` (minmax, u8
activations, per-channel int8 weights); `distill` re-fits each against the original. The seeded
classifiers answer one class for every input, so top-1 says nothing: the metric is the cosine
of the logits after subtracting their mean over the held-out batch (`quantize.accuracy`).
Printed per student: the metric before and after, and the share of its gap to 1 that closed.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,mobilenetv2")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--channels", type=float, default=0.3)
    p.add_argument("--calib", type=int, default=64, help="samples to fit on")
    p.add_argument("--eval", type=int, default=16, help="held-out samples")
    p.add_argument("--ridge", type=float, default=0.3)
    p.add_argument("--students", default="pruned,int8")
    p.add_argument("--int8", default="bias", choices=["bias", "scale", "requantize"], help="how int8 layers are fitted")
    args = p.parse_args()

    from mdoc.distill import distill
    from mdoc.models.zoo import build
    from mdoc.onnx_import import import_model
    from mdoc.pruning.api import prune_model
    from mdoc.quantize import quantize_static

    rng = np.random.default_rng(0)
    shape = (1, 3, args.image_size, args.image_size)
    calib = [{"image": rng.standard_normal(shape).astype(np.float32)} for _ in range(args.calib)]
    held_out = [{"image": rng.standard_normal(shape).astype(np.float32)} for _ in range(args.eval)]
    print(f"load average {os.getloadavg()[0]:.1f}; {args.calib} samples to fit, {args.eval} held out, "
          f"{args.image_size}x{args.image_size}, ridge {args.ridge}")
    print(f"{'model':12s} {'student':16s} {'before':>7s} {'after':>7s} {'gap closed':>10s} {'layers':>6s} {'s':>5s}")
    for name in args.models.split(","):
        teacher = build(name, image_size=args.image_size)
        for kind in args.students.split(","):
            if kind == "pruned":
                student, _ = prune_model(import_model(teacher), channels=args.channels, round_to=16)
                label = f"pruned {args.channels:.0%}"
            else:
                student, _ = quantize_static(import_model(teacher), calib[:32])
                label = f"int8, {args.int8}"
            start = time.perf_counter()
            _, report = distill(student, import_model(teacher), calib, eval_samples=held_out, ridge=args.ridge,
                                int8=args.int8)
            print(f"{name:12s} {label:16s} {report['accuracy_before']:7.4f} {report['accuracy_after']:7.4f} "
                  f"{report['gap_closed']:10.0%} {len(report['layers']):6d} {time.perf_counter() - start:5.0f}",
                  flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
