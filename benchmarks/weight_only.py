"""Weight-only int4 decode and prefill: mdoc's fused matmul_nbits kernels against onnxruntime, one run.

    python benchmarks/weight_only.py [--layers 2] [--hidden 2048] [--mlp 5632] [--block 32] [--rounds 7]

1. The machine's memory bandwidth: a numpy copy of a buffer far larger than the caches
   (bytes read + written per second, the best of a few runs).
2. A decoder-like stack of MatMuls (per layer: q, k, v, o of hidden x hidden, gate and up of
   hidden x mlp, down of mlp x hidden; the attention and the norms left out, so the time is
   the weights'), quantized to int4 by onnxruntime's own MatMulNBitsQuantizer (symmetric,
   `--block`), so onnxruntime's MatMulNBits and mdoc (which imports that file onto
   mdoc.matmul_nbits) read the very same packed weights.
3. For M = 1 (decode, one token) and M = `--prefill` rows: medians of interleaved runs of mdoc's
   artifact (M symbolic; for prefill also one compiled with M fixed), onnxruntime on the MatMulNBits file (its default accuracy level, and
   accuracy_level=4, which quantizes the activations to int8), and onnxruntime on the float32
   model. Printed: milliseconds, GB/s of packed weights read per second and that as a share of
   the copy bandwidth (decode), and the ratios against onnxruntime. Every mdoc run is checked
   against onnxruntime's MatMulNBits.

Timings on a shared machine are noisy: the script prints the load average beside them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def copy_bandwidth(mbytes: int = 512, repeats: int = 5) -> float:
    """GB/s of a large numpy copy, counting the bytes read and the bytes written."""
    src = np.ones(mbytes << 20, np.uint8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best / 1e9


def decoder_stack(layers: int, hidden: int, mlp: int) -> onnx.ModelProto:
    """x [M, hidden] through `layers` blocks of the seven MatMuls of a Llama-style layer."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []

    def weight(name: str, k: int, n: int) -> str:
        inits.append(numpy_helper.from_array((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32),
                                             f"{name}.weight"))
        return f"{name}.weight"

    def mm(x: str, w: str, out: str) -> str:
        nodes.append(helper.make_node("MatMul", [x, w], [out], name=out))
        return out

    def op(kind: str, inputs: list[str], out: str) -> str:
        nodes.append(helper.make_node(kind, inputs, [out], name=out))
        return out

    h = "x"
    for i in range(layers):
        q, k, v = (mm(h, weight(f"l{i}.{p}", hidden, hidden), f"l{i}.{p}") for p in ("q", "k", "v"))
        attn = op("Add", [op("Add", [q, k], f"l{i}.qk"), v], f"l{i}.qkv")  # stands in for attention
        h = op("Add", [h, mm(attn, weight(f"l{i}.o", hidden, hidden), f"l{i}.o")], f"l{i}.res1")
        gate = op("Sigmoid", [mm(h, weight(f"l{i}.gate", hidden, mlp), f"l{i}.gate")], f"l{i}.act")
        up = mm(h, weight(f"l{i}.up", hidden, mlp), f"l{i}.up")
        down = mm(op("Mul", [gate, up], f"l{i}.glu"), weight(f"l{i}.down", mlp, hidden), f"l{i}.down")
        h = op("Add", [h, down], f"l{i}.res2")
    graph = helper.make_graph(nodes, "decoder_stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", hidden])],
                              [helper.make_tensor_value_info(h, TensorProto.FLOAT, ["M", hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def ort_int4(model: onnx.ModelProto, block: int, accuracy_level: int | None) -> onnx.ModelProto:
    from onnxruntime.quantization import matmul_nbits_quantizer as mq

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    q = mq.MatMulNBitsQuantizer(onnx.ModelProto.FromString(model.SerializeToString()), bits=4, block_size=block,
                                is_symmetric=True, accuracy_level=accuracy_level)
    q.process()
    return q.model.model


def packed_bytes(model: onnx.ModelProto) -> int:
    """The bytes a forward pass reads from the quantized weights (codes, scales, zero points)."""
    read = {name for n in model.graph.node if n.op_type == "MatMulNBits" for name in n.input[1:4] if name}
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer if t.name in read)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--mlp", type=int, default=5632)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--prefill", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    threads = len(os.sched_getaffinity(0))
    os.environ.setdefault("TVM_NUM_THREADS", str(threads))

    import mdoc
    from mdoc.bench import interleaved, ort_session

    bandwidth = copy_bandwidth()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {threads} threads; "
          f"copy bandwidth {bandwidth:.1f} GB/s (numpy copy, read + write)")
    with tempfile.TemporaryDirectory(prefix="mdoc-wq-") as tmp:
        fp32 = decoder_stack(args.layers, args.hidden, args.mlp)
        paths = {"fp32": Path(tmp) / "fp32.onnx", "int4": Path(tmp) / "int4.onnx", "int4_acc4": Path(tmp) / "acc4.onnx"}
        onnx.save(fp32, paths["fp32"])
        int4 = ort_int4(fp32, args.block, None)
        onnx.save(int4, paths["int4"])
        onnx.save(ort_int4(fp32, args.block, 4), paths["int4_acc4"])
        weights = packed_bytes(int4)
        float_bytes = sum(numpy_helper.to_array(t).nbytes for t in fp32.graph.initializer)
        start = time.perf_counter()
        run = mdoc.load(mdoc.compile(str(paths["int4"]), "x86", Path(tmp) / "int4.x86", show_progress=False))
        print(f"{args.layers} layers, hidden {args.hidden}, mlp {args.mlp}: float32 weights {float_bytes / 1e6:.1f} MB, "
              f"int4 block {args.block} {weights / 1e6:.1f} MB ({weights / float_bytes:.3f}x); "
              f"mdoc compile {time.perf_counter() - start:.1f} s")
        # the same file specialized to the prefill rows: the tiled form (a run-time M runs row by row)
        static = mdoc.load(mdoc.compile(str(paths["int4"]), "x86", Path(tmp) / "int4.static.x86",
                                        dims={"M": args.prefill}, show_progress=False))
        sessions = {k: ort_session(str(p), threads) for k, p in paths.items()}
        for rows in (1, args.prefill):
            x = np.random.default_rng(1).standard_normal((rows, args.hidden)).astype(np.float32)
            want = sessions["int4"].run(None, {"x": x})[0]
            outs = [run(x=x)] + ([static(x=x)] if rows == args.prefill else [])
            err = max(float(np.max(np.abs(next(iter(o.values())) - want)) / max(np.max(np.abs(want)), 1e-12))
                      for o in outs)
            calls = 20 if rows == 1 else 3
            mine = {"mdoc": lambda: run(x=x)}
            if rows == args.prefill:
                mine["mdoc_static_M"] = lambda: static(x=x)
            timings = interleaved({**mine,
                                   **{f"ort_{k}": (lambda s=s: s.run(None, {"x": x})) for k, s in sessions.items()}},
                                  rounds=args.rounds, calls=calls, warmup=2)
            ms = {k: t.median_ms for k, t in timings.items()}
            label = "decode M=1" if rows == 1 else f"prefill M={rows}"
            print(f"\n{label} (mdoc vs onnxruntime MatMulNBits: max error {err:.1e} of the largest output)")
            for name, t in ms.items():
                gbs = weights / (t / 1e3) / 1e9
                share = f", {gbs / bandwidth:.0%} of copy bandwidth" if name != "ort_fp32" else ""
                read = f"{gbs:6.1f} GB/s of int4 weights{share}" if name != "ort_fp32" else \
                    f"{float_bytes / (t / 1e3) / 1e9:6.1f} GB/s of float32 weights"
                print(f"  {name:14s} {t:9.2f} ms   {read}")
            for name in mine:
                print(f"  {name} / ort int4 {ms[name] / ms['ort_int4']:.2f}x time, / ort int4 acc4 "
                      f"{ms[name] / ms['ort_int4_acc4']:.2f}x, / ort fp32 {ms[name] / ms['ort_fp32']:.2f}x "
                      f"(below 1: mdoc faster)")
    print(f"\nload average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
