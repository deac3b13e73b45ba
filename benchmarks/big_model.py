"""A 1.1B-parameter Llama decoder (4.4 GB of fp32 weights, external data) through import, -O2, int4 and compile,
each stage in its own process with its peak memory and wall time (issue 22: models over 2 GB).

    python benchmarks/big_model.py make [--layers 22]      # .cache/big/llama1b.onnx + .onnx.data
    python benchmarks/big_model.py run [--stages import,opt,quantize,compile,check]

`make` builds the graph that torch.onnx writes for transformers' Llama (`mdoc.models.llama`, TinyLlama's shape:
hidden 2048, 32 query / 4 key-value heads, intermediate 5632, vocab 32000) with seeded weights streamed to the
external-data file one tensor at a time (`ExternalWeights`), so making it needs one weight in memory, not 4.4 GB.
Built with onnx.helper and numpy, not exported by torch: a torch export holds the model and its trace at once.

`run` runs each stage as a child process and reads its peak resident set from os.wait4 (ru_maxrss of that child
alone; it counts the weight pages the child touched through its memory maps, which the kernel may drop at will):

- import:   the ONNX file becomes mdoc IR (`mdoc.model_io.load_model`);
- opt:      `mdoc opt -O2` (import, the -O2 passes, export with external data);
- quantize: `mdoc quantize --weights int4` of the -O2 file (block 32, symmetric, f16 scales);
- compile:  `mdoc compile` of the int4 file for x86;
- check:    one decode step (past 8 tokens) of the artifact against onnxruntime on the same int4 model written
            with MatMulNBits (`--onnx-runtime-ops`), and the step's median time on both.

The largest tensor (the 32000 x 2048 embedding, 262 MB) is printed beside the peaks. The load average is printed
with every figure: timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".cache" / "big"
MODEL = WORK / "llama1b.onnx"
GIB = 1 << 30

SHAPE = {"hidden": 2048, "heads": 32, "kv_heads": 4, "intermediate": 5632, "vocab_size": 32000}
"""TinyLlama-1.1B's dimensions; `--layers` (22 there) sets the depth."""

PAST = 8
"""Tokens in the cache for the checked decode step."""


def make(layers: int) -> None:
    from mdoc.models.builder import ExternalWeights
    from mdoc.models.llama import llama_decoder
    import onnx

    WORK.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with ExternalWeights(MODEL.with_name(MODEL.name + ".data"), threshold=1 << 20) as external:
        proto = llama_decoder(layers=layers, **SHAPE, seed=0, external=external)
    onnx.save_model(proto, MODEL)
    params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    print(f"wrote {MODEL} ({layers} layers, {params / 1e9:.2f}B parameters, "
          f"{(MODEL.stat().st_size + external.path.stat().st_size) / 1e9:.2f} GB) in {time.perf_counter() - start:.0f} s, "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


def _largest_tensor(path: Path) -> tuple[str, int]:
    import onnx

    from mdoc.onnx_load import external_nbytes

    proto = onnx.load_model(path, load_external_data=False)
    t = max(proto.graph.initializer, key=lambda t: external_nbytes(t, t.name))
    return t.name, external_nbytes(t, t.name)


def _stage(name: str, argv: list[str]) -> dict:
    """Run `argv` as a child; its wall time and peak RSS (GiB), or the last line it printed when it fails."""
    env = {**os.environ, "TVM_NUM_THREADS": os.environ.get("TVM_NUM_THREADS", "2")}
    start = time.perf_counter()
    child = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    result = {"stage": name, "seconds": time.perf_counter() - start, "peak_gib": usage.ru_maxrss / 2**20,
              "rc": child.returncode, "load": os.getloadavg()[0],
              "last": (output.strip().splitlines() or [""])[-1][:300]}
    print(f"{name:9s} rc {result['rc']}  {result['seconds']:7.1f} s  peak RSS {result['peak_gib']:5.2f} GiB  "
          f"(load {result['load']:.1f})  {result['last']}", flush=True)
    return result


def _mdoc(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from mdoc.cli import main; main(sys.argv[1:])", *args]


def check() -> None:
    """One decode step of the int4 artifact against onnxruntime's MatMulNBits model; median step times."""
    import onnxruntime as ort

    from mdoc.bench import interleaved
    from mdoc.targets.artifact import load

    artifact = load(WORK / "llama1b_q4")
    session = ort.InferenceSession(str(WORK / "llama1b_q4_ort.onnx"), providers=["CPUExecutionProvider"])
    layers = sum(1 for i in session.get_inputs() if i.name.endswith(".key"))
    kv, hd = SHAPE["kv_heads"], SHAPE["hidden"] // SHAPE["heads"]
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, SHAPE["vocab_size"], (1, 1)), "attention_mask": np.ones((1, PAST + 1), np.int64),
             "position_ids": np.array([[PAST]], np.int64)}
    for i in range(layers):
        for part in ("key", "value"):
            feeds[f"past_key_values.{i}.{part}"] = rng.standard_normal((1, kv, PAST, hd)).astype(np.float32)
    want = session.run(None, feeds)
    got = artifact(**feeds)
    names = [o.name for o in session.get_outputs()]
    worst = max(float(np.max(np.abs(np.asarray(got[n]) - w)) / (float(np.max(np.abs(w))) or 1.0))
                for n, w in zip(names, want))
    same_token = int(np.argmax(np.asarray(got["logits"])[0, -1])) == int(np.argmax(want[0][0, -1]))
    times = interleaved({"mdoc": lambda: artifact(**feeds), "onnxruntime": lambda: session.run(None, feeds)},
                        rounds=5, calls=1)
    print(json.dumps({"max_rel_err": worst, "same_next_token": same_token,
                      "decode_ms": {k: v * 1e3 for k, v in times.items()}, "load": os.getloadavg()[0]}))
    if worst > 1e-2 or not same_token:
        sys.exit(1)


def run(stages: list[str]) -> None:
    name, nbytes = _largest_tensor(MODEL)
    print(f"{MODEL.name}: largest tensor {name} {nbytes / 1e6:.0f} MB; "
          f"file {(MODEL.stat().st_size + MODEL.with_name(MODEL.name + '.data').stat().st_size) / 1e9:.2f} GB")
    opt, q4, art = WORK / "llama1b_O2.onnx", WORK / "llama1b_q4.onnx", WORK / "llama1b_q4"
    commands = {
        "import": [sys.executable, "-c", "import sys; from mdoc.model_io import load_model; "
                                         "m = load_model(sys.argv[1]); print(len(m.graph.nodes()), 'nodes')", str(MODEL)],
        "opt": _mdoc("opt", "-O2", str(MODEL), "-o", str(opt)),
        "quantize": _mdoc("quantize", "--weights", "int4", str(opt), "-o", str(q4)),
        "quantize-ort": _mdoc("quantize", "--weights", "int4", "--onnx-runtime-ops", str(opt),
                              "-o", str(WORK / "llama1b_q4_ort.onnx")),
        "compile": _mdoc("compile", str(q4), "-o", str(art)),
        "check": [sys.executable, __file__, "_check"],
    }
    results = [_stage(s, commands[s]) for s in stages]
    for r in results:
        r["peak_over_largest"] = r["peak_gib"] * GIB / nbytes
    print(json.dumps(results, indent=1))
    if any(r["rc"] for r in results):
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("make").add_argument("--layers", type=int, default=22)
    sub.add_parser("run").add_argument("--stages", default="import,opt,quantize,quantize-ort,compile,check")
    sub.add_parser("_check")
    args = parser.parse_args()
    if args.command == "make":
        make(args.layers)
    elif args.command == "run":
        run(args.stages.split(","))
    else:
        check()


if __name__ == "__main__":
    main()
