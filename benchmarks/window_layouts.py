"""Time the NCHWc window kernels (depthwise conv, pooling) against their NCHW versions.

For MobileNetV2's depthwise layers (bias fused), ResNet's 3x3/2 max pool, a 3x3 average pool
and the global average pools, this builds both kernels, checks that the NCHWc result,
unblocked, equals the NCHW one, and times each with TVM's time_evaluator two ways:

    cold  number=1, repeat=40, f_preproc="cache_flush_cpu_non_first_arg" (median)
    hot   number=50, repeat=5, the best run's mean (a hot loop)

in interleaved rounds (best of the rounds' values), because the other processes of a shared
machine make a single measurement swing by 2x.  No conversion between layouts is timed:
a chain of NCHWc layers never converts.

    python benchmarks/window_layouts.py                     # everything (~1 min)
    python benchmarks/window_layouts.py --filter 'dw 144'   # a subset, by regular expression
"""

from __future__ import annotations

import argparse
import os
import re


def _args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--filter", default="", help="regular expression on the case label")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--threads", type=int, default=2, help="TVM runtime threads")
    return p.parse_args()


ARGS = _args() if __name__ == "__main__" else None
if ARGS is not None:
    os.environ["TVM_NUM_THREADS"] = str(ARGS.threads)  # read once, when TVM's pool starts

import numpy as np  # noqa: E402
import tvm  # noqa: E402
from kernels import MOBILENETV2_DW  # noqa: E402

from mdoc.targets.cpu_kernels import CpuSpec, Epilogue, depthwise_conv2d, global_avg_pool2d, pool2d  # noqa: E402
from mdoc.targets.cpu_kernels.common import CompiledKernel  # noqa: E402


def cases(spec: CpuSpec):
    """(label, NCHW input shape, build(layout) -> Kernel, extra runtime inputs)."""
    rng = np.random.default_rng(0)
    out = []
    for c, h, s in MOBILENETV2_DW:
        w, b = rng.standard_normal((c, 1, 3, 3)).astype("float32"), rng.standard_normal(c).astype("float32")
        out.append((f"dw {c}x{h}x{h} s{s}", (1, c, h, h),
                    lambda lay, c=c, h=h, s=s, w=w: depthwise_conv2d((1, c, h, h), w, strides=s, padding=1, spec=spec,
                                                                       epilogue=Epilogue(bias=True), layout=lay), [b]))
    out.append(("maxpool 64x112x112 3x3s2p1", (1, 64, 112, 112),
                lambda lay: pool2d((1, 64, 112, 112), "max", 3, 2, 1, spec=spec, layout=lay), []))
    out.append(("avgpool 64x56x56 3x3s1p1", (1, 64, 56, 56),
                lambda lay: pool2d((1, 64, 56, 56), "avg", 3, 1, 1, spec=spec, layout=lay), []))
    for c in (512, 1280):
        out.append((f"gap {c}x7x7", (1, c, 7, 7), lambda lay, c=c: global_avg_pool2d((1, c, 7, 7), spec=spec, layout=lay), []))
    return out


def _timer(kernel, spec: CpuSpec, inputs):
    """Device arguments for one call (output last; the kernel has run once) and a () -> (cold ms, hot ms) timer."""
    lib = tvm.compile(kernel.module(), spec.tvm_target()).jit()
    args = CompiledKernel(kernel, lib[kernel.name]).prepare(*inputs)
    lib[kernel.name](*args)
    cold = lib.time_evaluator(kernel.name, tvm.cpu(), number=1, repeat=40, f_preproc="cache_flush_cpu_non_first_arg")
    hot = lib.time_evaluator(kernel.name, tvm.cpu(), number=50, repeat=5)

    def run():
        return float(np.median(cold(*args).results)) * 1e3, float(min(hot(*args).results)) * 1e3

    return args, run


def main():
    args, spec = ARGS, CpuSpec.host()
    lanes = spec.lanes
    print(f"# NCHW vs NCHWc window kernels, {args.threads} thread(s), target {spec.target}; best of {args.rounds} "
          f"rounds; load average at start {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    print("| layer | NCHW cold ms | NCHWc cold ms | NCHW hot ms | NCHWc hot ms | hot speedup | NCHWc tiling |")
    print("|---|---:|---:|---:|---:|---:|---|")
    rng = np.random.default_rng(1)
    for label, shape, build, extra in cases(spec):
        if not re.search(args.filter, label):
            continue
        x = rng.standard_normal(shape).astype("float32")
        n, c, h, w = shape
        xb = np.ascontiguousarray(x.reshape(n, c // lanes, lanes, h, w).transpose(0, 1, 3, 4, 2))
        k0, k1 = build("NCHW"), build("NCHWc")
        a0, t0 = _timer(k0, spec, [x, *extra])
        a1, t1 = _timer(k1, spec, [xb, *extra])
        yb = a1[-1].numpy()
        got = yb.transpose(0, 1, 4, 2, 3).reshape(yb.shape[0], -1, *yb.shape[2:4])
        if not np.allclose(got, a0[-1].numpy().reshape(got.shape), rtol=1e-4, atol=1e-5):
            print(f"| {label} | MISMATCH between the NCHW and NCHWc kernels |")
            continue
        best = np.full((2, 2), np.inf)
        for _ in range(args.rounds):
            best = np.minimum(best, [t0(), t1()])
        (c0, h0), (c1, h1) = best
        print(f"| {label} | {c0:.4f} | {c1:.4f} | {h0:.4f} | {h1:.4f} | {h0 / h1:.2f} | {k1.notes} |", flush=True)


if __name__ == "__main__":
    main()
