"""Benchmark mdoc's default CPU kernels against onnxruntime, layer by layer.

For every shape in the list (all distinct ResNet-18 convs, MobileNetV2's depthwise and
pointwise convs, BERT-style matmuls, pooling, softmax / layernorm), this script builds the
mdoc kernel, builds a one-node ONNX model of the same layer, checks the outputs agree
(rtol 1e-3, atol 1e-4) and times both.

Timing follows /work/shared/notes/tvm-0.27.md ("Timing on 2 cores"): both runtimes keep
their thread pools spinning after a call, so the two are timed in interleaved rounds with
an idle gap before every timed block, after a warm-up, and the per-call medians are
compared.  The ratio column is onnxruntime time / mdoc time (> 1: mdoc is faster).

    python benchmarks/kernels.py                      # everything (~6 min on 2 cores)
    python benchmarks/kernels.py --filter resnet      # a subset, by regular expression
    python benchmarks/kernels.py --threads 1          # one thread on both sides
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Callable


def _args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--filter", default="", help="regular expression on the case name")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per case")
    p.add_argument("--gap", type=float, default=0.5, help="idle seconds before every timed block")
    p.add_argument("--block-ms", type=float, default=40.0, help="target length of one timed block")
    p.add_argument("--threads", type=int, default=2, help="threads for both runtimes")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--resnet50", action="store_true", help="add ResNet-50's convs to the list")
    p.add_argument("--check-only", action="store_true", help="build and check against onnxruntime, no timing")
    return p.parse_args()


ARGS = _args() if __name__ == "__main__" else None
if ARGS is not None:
    # TVM's runtime reads this once, when its thread pool starts; without it TVM halves the
    # core count on x86 ("hyper-threading") and runs on one core of this 2-core machine
    os.environ["TVM_NUM_THREADS"] = str(ARGS.threads)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from mdoc.targets.cpu_kernels import (  # noqa: E402
    CpuSpec,
    Epilogue,
    batch_matmul,
    conv2d,
    dense,
)


@dataclass
class Case:
    name: str  # group/label
    shape: str  # human-readable shape
    build: Callable  # () -> Kernel
    model: Callable  # () -> (onnx.ModelProto, feeds dict)
    runtime_inputs: Callable  # feeds -> list of arrays for the mdoc kernel (in kernel order)


RNG = np.random.default_rng(0)


def _rand(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _model(nodes, inputs, outputs, inits):
    g = helper.make_graph(nodes, "bench", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


# ------------------------------------------------------------------------------------------
# cases
# ------------------------------------------------------------------------------------------


def conv_case(group, n, c, h, w, oc, k, s, p, groups=1, spec=None):
    x = _rand(n, c, h, w)
    fan = c // groups * k * k
    wt = _rand(oc, c // groups, k, k, scale=1.0 / np.sqrt(fan))
    b = _rand(oc)
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1

    def model():
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[k, k], pads=[p] * 4,
                                strides=[s, s], group=groups)
        m = _model([node], [_vi("x", x.shape)], [_vi("y", (n, oc, oh, ow))],
                   [numpy_helper.from_array(wt, "w"), numpy_helper.from_array(b, "b")])
        return m, {"x": x}

    kind = "dw" if groups == c and groups > 1 else ("pw" if k == 1 and s == 1 else f"{k}x{k}s{s}")
    return Case(f"{group}/{kind}", f"{c}x{h}x{w}->{oc}" + (f" g{groups}" if groups > 1 else ""),
                lambda: conv2d(x.shape, wt, strides=s, padding=p, groups=groups, epilogue=Epilogue(bias=True), spec=spec),
                model, lambda feeds: [feeds["x"], b])


def dense_case(group, m, k, n, spec=None):
    a = _rand(m, k)
    wt = _rand(k, n, scale=1.0 / np.sqrt(k))

    def model():
        node = helper.make_node("MatMul", ["a", "w"], ["y"])
        return _model([node], [_vi("a", a.shape)], [_vi("y", (m, n))], [numpy_helper.from_array(wt, "w")]), {"a": a}

    return Case(f"{group}/dense", f"{m}x{k} @ {k}x{n}", lambda: dense(a.shape, wt, spec=spec), model,
                lambda feeds: [feeds["a"]])


def bmm_case(group, b, m, k, n, spec=None):
    a = _rand(b, m, k)
    bb = _rand(b, k, n)

    def model():
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
        return _model([node], [_vi("a", a.shape), _vi("b", bb.shape)], [_vi("y", (b, m, n))], []), {"a": a, "b": bb}

    return Case(f"{group}/bmm", f"{b}x{m}x{k} @ {b}x{k}x{n}", lambda: batch_matmul(a.shape, bb.shape, spec=spec), model,
                lambda feeds: [feeds["a"], feeds["b"]])


def extra_cases(spec):
    """Pooling and the generic schedule (elementwise / reductions), if those builders exist."""
    cases = []
    try:
        from mdoc.targets.cpu_kernels import global_avg_pool2d, pool2d
    except ImportError:
        return cases

    def pool_case(name, c, h, kind, k, s, p):
        x = _rand(1, c, h, h)
        oh = (h + 2 * p - k) // s + 1

        def model():
            op = "MaxPool" if kind == "max" else "AveragePool"
            node = helper.make_node(op, ["x"], ["y"], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4)
            return _model([node], [_vi("x", x.shape)], [_vi("y", (1, c, oh, oh))], []), {"x": x}

        return Case(f"{name}/{kind}pool", f"{c}x{h}x{h} k{k}s{s}",
                    lambda: pool2d(x.shape, kind, k, s, p, spec=spec), model, lambda feeds: [feeds["x"]])

    def gap_case(name, c, h):
        x = _rand(1, c, h, h)

        def model():
            node = helper.make_node("GlobalAveragePool", ["x"], ["y"])
            return _model([node], [_vi("x", x.shape)], [_vi("y", (1, c, 1, 1))], []), {"x": x}

        return Case(f"{name}/gap", f"{c}x{h}x{h}", lambda: global_avg_pool2d(x.shape, spec=spec), model,
                    lambda feeds: [feeds["x"]])

    cases += [pool_case("resnet18", 64, 112, "max", 3, 2, 1), gap_case("resnet18", 512, 7), gap_case("mobilenetv2", 1280, 7)]
    try:
        from mdoc.targets.cpu_kernels import layer_norm, softmax
    except ImportError:
        return cases

    def softmax_case(shape):
        x = _rand(*shape)

        def model():
            node = helper.make_node("Softmax", ["x"], ["y"], axis=-1)
            return _model([node], [_vi("x", shape)], [_vi("y", shape)], []), {"x": x}

        return Case("bert/softmax", "x".join(map(str, shape)), lambda: softmax(shape, spec=spec), model,
                    lambda feeds: [feeds["x"]])

    def layernorm_case(shape):
        x = _rand(*shape)
        g, bt = _rand(shape[-1]), _rand(shape[-1])

        def model():
            node = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=1e-5)
            return _model([node], [_vi("x", shape)], [_vi("y", shape)],
                          [numpy_helper.from_array(g, "g"), numpy_helper.from_array(bt, "b")]), {"x": x}

        return Case("bert/layernorm", "x".join(map(str, shape)), lambda: layer_norm(shape, spec=spec), model,
                    lambda feeds: [feeds["x"], g, bt])

    cases += [softmax_case((12, 128, 128)), layernorm_case((128, 768))]
    return cases


RESNET18 = [  # (c, h, oc, k, s, p): the 11 distinct convs of ResNet-18 at 224x224
    (3, 224, 64, 7, 2, 3), (64, 56, 64, 3, 1, 1), (64, 56, 128, 3, 2, 1), (64, 56, 128, 1, 2, 0),
    (128, 28, 128, 3, 1, 1), (128, 28, 256, 3, 2, 1), (128, 28, 256, 1, 2, 0), (256, 14, 256, 3, 1, 1),
    (256, 14, 512, 3, 2, 1), (256, 14, 512, 1, 2, 0), (512, 7, 512, 3, 1, 1),
]
MOBILENETV2_DW = [(32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2), (192, 28, 1), (192, 28, 2),
                  (384, 14, 1), (576, 14, 1), (576, 14, 2), (960, 7, 1)]
MOBILENETV2_PW = [(32, 112, 16), (16, 112, 96), (96, 56, 24), (24, 56, 144), (144, 56, 24), (144, 28, 32),
                  (32, 28, 192), (192, 28, 32), (192, 14, 64), (64, 14, 384), (384, 14, 64), (384, 14, 96),
                  (96, 14, 576), (576, 14, 96), (576, 7, 160), (160, 7, 960), (960, 7, 160), (960, 7, 320),
                  (320, 7, 1280)]
RESNET50 = [  # the distinct convs of torchvision's ResNet-50 (v1.5: stride on the 3x3) besides the stem
    (64, 56, 64, 1, 1, 0), (64, 56, 64, 3, 1, 1), (64, 56, 256, 1, 1, 0), (256, 56, 64, 1, 1, 0),
    (256, 56, 128, 1, 1, 0), (128, 56, 128, 3, 2, 1), (128, 28, 512, 1, 1, 0), (256, 56, 512, 1, 2, 0),
    (512, 28, 128, 1, 1, 0), (128, 28, 128, 3, 1, 1), (512, 28, 256, 1, 1, 0), (256, 28, 256, 3, 2, 1),
    (256, 14, 1024, 1, 1, 0), (512, 28, 1024, 1, 2, 0), (1024, 14, 256, 1, 1, 0), (256, 14, 256, 3, 1, 1),
    (1024, 14, 512, 1, 1, 0), (512, 14, 512, 3, 2, 1), (512, 7, 2048, 1, 1, 0), (1024, 14, 2048, 1, 2, 0),
    (2048, 7, 512, 1, 1, 0), (512, 7, 512, 3, 1, 1),
]
BERT_DENSE = [(128, 768, 768), (128, 768, 2304), (128, 768, 3072), (128, 3072, 768),
              (128, 512, 512), (128, 512, 2048), (128, 2048, 512),
              (128, 256, 256), (128, 256, 1024), (128, 1024, 256)]
BERT_BMM = [(12, 128, 64, 128), (12, 128, 128, 64), (8, 128, 64, 128), (8, 128, 128, 64),
            (4, 128, 64, 128), (4, 128, 128, 64)]


def all_cases(spec: CpuSpec, resnet50: bool = False) -> list[Case]:
    cases = [conv_case("resnet18", 1, c, h, h, oc, k, s, p, spec=spec) for c, h, oc, k, s, p in RESNET18]
    if resnet50:
        cases += [conv_case("resnet50", 1, c, h, h, oc, k, s, p, spec=spec) for c, h, oc, k, s, p in RESNET50]
    cases += [conv_case("mobilenetv2", 1, 3, 224, 224, 32, 3, 2, 1, spec=spec)]
    cases += [conv_case("mobilenetv2", 1, c, h, h, c, 3, s, 1, groups=c, spec=spec) for c, h, s in MOBILENETV2_DW]
    cases += [conv_case("mobilenetv2", 1, c, h, h, oc, 1, 1, 0, spec=spec) for c, h, oc in MOBILENETV2_PW]
    cases += [dense_case("bert", m, k, n, spec=spec) for m, k, n in BERT_DENSE]
    cases += [bmm_case("bert", b, m, k, n, spec=spec) for b, m, k, n in BERT_BMM]
    cases += extra_cases(spec)
    return cases


# ------------------------------------------------------------------------------------------
# measurement
# ------------------------------------------------------------------------------------------


def _time_block(fn, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def measure(case: Case, args, spec: CpuSpec) -> dict:
    t0 = time.perf_counter()
    kernel = case.build()
    compiled = kernel.compile(spec.target)
    compile_s = time.perf_counter() - t0

    proto, feeds = case.model()
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    expected = sess.run(None, feeds)[0]

    dev_args = compiled.prepare(*case.runtime_inputs(feeds))
    compiled.fn(*dev_args)
    got = dev_args[-1].numpy()
    ok = bool(np.allclose(got, expected, rtol=1e-3, atol=1e-4))
    err = float(np.max(np.abs(got - expected) / (np.abs(expected) + 1e-3))) if got.shape == expected.shape else float("inf")

    def run_mdoc():
        compiled.fn(*dev_args)

    def run_ort():
        sess.run(None, feeds)

    if args.check_only:
        return dict(name=case.name, shape=case.shape, notes=kernel.notes, flops=kernel.flops, compile_s=compile_s,
                    mdoc_ms=float("nan"), ort_ms=float("nan"), best_ratio=float("nan"), ok=ok, err=err)
    # warm-up, and a block size from a first estimate
    for _ in range(3):
        run_mdoc()
        run_ort()
    est = min(np.median(_time_block(run_mdoc, 5)), np.median(_time_block(run_ort, 5)))
    n = int(min(200, max(5, args.block_ms / 1e3 / max(est, 1e-6))))
    tm, to = [], []
    for _ in range(args.rounds):
        time.sleep(args.gap)
        tm += _time_block(run_mdoc, n)
        time.sleep(args.gap)
        to += _time_block(run_ort, n)
    mm, mo = float(np.median(tm)), float(np.median(to))
    return dict(name=case.name, shape=case.shape, notes=kernel.notes, flops=kernel.flops, compile_s=compile_s,
                mdoc_ms=mm * 1e3, ort_ms=mo * 1e3, best_ratio=float(np.min(to) / np.min(tm)), ok=ok, err=err)


def main():
    args = ARGS
    spec = CpuSpec.host()
    cases = [c for c in all_cases(spec, args.resnet50) if re.search(args.filter, f"{c.name} {c.shape}")]
    if args.list:
        for c in cases:
            print(c.name, c.shape)
        return 0
    import tvm

    print(f"# mdoc default CPU kernels vs onnxruntime {ort.__version__}, TVM {tvm.__version__}, "
          f"{args.threads} thread(s), target {spec.target}, lanes {spec.lanes}")
    print(f"# {args.rounds} interleaved rounds, {args.gap}s idle gap before each timed block, medians; "
          "ratio = ort time / mdoc time (> 1: mdoc faster)\n")
    print(f"# load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} (other processes on the machine skew "
          "2-thread timings: TVM splits a parallel loop statically, so a busy core stalls the whole kernel)\n")
    header = ("| layer | shape | mdoc ms | ort ms | mdoc GFLOP/s | ort GFLOP/s | ratio | ratio of best times | compile s | "
              "check | tiling |")
    print(header)
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    rows, failures = [], 0
    for case in cases:
        try:
            r = measure(case, args, spec)
        except Exception as e:  # keep going: one bad case must not hide the others
            failures += 1
            print(f"| {case.name} | {case.shape} | ERROR: {type(e).__name__}: {str(e).splitlines()[0][:120]} |", flush=True)
            continue
        rows.append(r)
        failures += not r["ok"]
        gf = lambda ms: r["flops"] / (ms * 1e-3) / 1e9  # noqa: E731
        print(f"| {r['name']} | {r['shape']} | {r['mdoc_ms']:.3f} | {r['ort_ms']:.3f} | {gf(r['mdoc_ms']):.1f} | "
              f"{gf(r['ort_ms']):.1f} | {r['ort_ms'] / r['mdoc_ms']:.2f} | {r['best_ratio']:.2f} | {r['compile_s']:.2f} | "
              f"{'ok' if r['ok'] else 'MISMATCH %.1e' % r['err']} | {r['notes']} |", flush=True)

    if args.check_only:
        bad = [r for r in rows if not r["ok"]]
        print(f"\nchecked {len(rows)} kernels against onnxruntime (rtol 1e-3, atol 1e-4): "
              f"{len(rows) - len(bad)} ok, {len(bad)} mismatched, {failures - len(bad)} errors; "
              f"compile time {sum(r['compile_s'] for r in rows):.1f} s in all")
        return 1 if failures else 0
    print("\n| group | layers | mdoc ms (sum) | ort ms (sum) | ratio | compile s (sum) |")
    print("|---|---:|---:|---:|---:|---:|")
    groups = {}
    for r in rows:
        groups.setdefault(r["name"].split("/")[0] + "/" + r["name"].split("/")[1], []).append(r)
    for g, rs in groups.items():
        m, o, c = sum(r["mdoc_ms"] for r in rs), sum(r["ort_ms"] for r in rs), sum(r["compile_s"] for r in rs)
        print(f"| {g} | {len(rs)} | {m:.3f} | {o:.3f} | {o / m:.2f} | {c:.1f} |")
    m, o = sum(r["mdoc_ms"] for r in rows), sum(r["ort_ms"] for r in rows)
    if rows:
        print(f"| all | {len(rows)} | {m:.3f} | {o:.3f} | {o / m:.2f} | {sum(r['compile_s'] for r in rows):.1f} |")
    print(f"\n# load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if failures:
        print(f"\n{failures} case(s) failed the check or errored", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
