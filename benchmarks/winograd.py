"""Time Winograd 3x3 convs against the direct NCHWc conv on ResNet-18's 3x3 stride-1 layers.

For each shape (C = OC, bias + relu fused, NCHWc in and out) this builds the direct kernel
(`conv2d(..., layout="NCHWc")`) and Winograd F(2x2) and F(4x4) (`winograd_conv2d`), checks
that both Winograd outputs match the direct one (rtol 1e-3, atol 1e-4), and times each with
TVM's time_evaluator (as benchmarks/window_layouts.py does):

    cold  number=1, repeat=40, f_preproc="cache_flush_cpu_non_first_arg" (median)
    hot   number=50, repeat=5, the best run's mean (a hot loop)

in interleaved rounds, best of the rounds (the machine is shared).  GFLOP/s are the direct
conv's FLOPs over the time, so Winograd's are "equivalent" GFLOP/s and may pass the FMA peak.

    python benchmarks/winograd.py                    # the four shapes (~1 min)
    python benchmarks/winograd.py --filter 64x56     # a subset, by regular expression
"""

from __future__ import annotations

import argparse
import os
import re


def _args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--filter", default="", help="regular expression on the layer label")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--threads", type=int, default=2, help="TVM runtime threads")
    return p.parse_args()


ARGS = _args() if __name__ == "__main__" else None
if ARGS is not None:
    os.environ["TVM_NUM_THREADS"] = str(ARGS.threads)  # read once, when TVM's pool starts

import numpy as np  # noqa: E402
from window_layouts import _timer  # noqa: E402

from mdoc.targets.cpu_kernels import CpuSpec, Epilogue, conv2d  # noqa: E402
from mdoc.targets.cpu_kernels.winograd import winograd_conv2d  # noqa: E402

RESNET18_3X3_S1 = ((64, 56), (128, 28), (256, 14), (512, 7))  # (C = OC, H = W)


def main():
    args, spec = ARGS, CpuSpec.host()
    lanes = spec.lanes
    print(f"# Winograd vs direct NCHWc 3x3 s1 conv (bias + relu), {args.threads} thread(s), target {spec.target}; "
          f"best of {args.rounds} rounds; load average at start {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    print("| layer | kernel | cold ms | hot ms | hot GFLOP/s (direct-equivalent) | hot speedup | notes |")
    print("|---|---|---:|---:|---:|---:|---|")
    rng = np.random.default_rng(0)
    epi = Epilogue(bias=True, activation="relu")
    for c, h in RESNET18_3X3_S1:
        label = f"{c}x{h}x{h} -> {c}"
        if not re.search(args.filter, label):
            continue
        shape = (1, c, h, h)
        x = rng.standard_normal(shape).astype("float32")
        w = (rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)).astype("float32")
        b = rng.standard_normal(c).astype("float32")
        xb = np.ascontiguousarray(x.reshape(1, c // lanes, lanes, h, h).transpose(0, 1, 3, 4, 2))
        kernels = {"direct": conv2d(shape, w, padding=1, epilogue=epi, spec=spec, layout="NCHWc")}
        for m in (2, 4):
            kernels[f"winograd F({m}x{m})"] = winograd_conv2d(shape, w, padding=1, epilogue=epi, spec=spec, tile=(m,))
        timers = {name: _timer(k, spec, [xb, b]) for name, k in kernels.items()}
        want = timers["direct"][0][-1].numpy()
        best = {name: np.full(2, np.inf) for name in kernels}
        for _ in range(args.rounds):
            for name, (_, run) in timers.items():
                best[name] = np.minimum(best[name], run())
        for name, k in kernels.items():
            got = timers[name][0][-1].numpy()
            ok = np.allclose(got, want, rtol=1e-3, atol=1e-4)
            cold, hot = best[name]
            print(f"| {label} | {name} | {cold:.4f} | {hot:.4f} | {k.flops / hot / 1e6:.0f} | "
                  f"{best['direct'][1] / hot:.2f} | {k.notes}{'' if ok else ' MISMATCH vs direct'} |", flush=True)


if __name__ == "__main__":
    main()
