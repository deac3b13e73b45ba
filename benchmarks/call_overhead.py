"""Per-call time of small models: mdoc's `mdoc.load(artifact)(**inputs)` against onnxruntime's `run`.

On a model whose kernels take tens of microseconds, what the runtime does around them
(input checks and conversion, the VM's dispatch, copying outputs, waking thread pools)
is most of a call. This script compiles each model, checks that mdoc's outputs agree
with onnxruntime's, and times three candidates interleaved in one process (as
`mdoc bench` does: a warm-up, then rounds of blocks of calls, each block after an idle
gap; medians):

* onnxruntime: `session.run(None, feeds)`, numpy arrays in, numpy arrays out;
* mdoc: `f(**feeds)` with the same numpy arrays (checks, conversion, outputs copied out);
* mdoc VM only: the VM's `main` on inputs already converted, no checks, outputs left in
  the VM: the floor that the Python around the call is measured against.

The models: the bundled sample, and the zoo's Silero-VAD-like detector on one
512-sample chunk (its state in and out, the sample rate as an int64 scalar), a model
that runs on every 32 ms of audio.

    python benchmarks/call_overhead.py                     # both models, mdoc bench's regime
    python benchmarks/call_overhead.py --gap 0 --calls 200 # back to back, caches and pools warm
    python benchmarks/call_overhead.py --threads 1         # one thread on both sides

Exit status 1 when mdoc's outputs differ from onnxruntime's beyond mdoc bench's tolerances.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="sample,silero_vad", help="comma-separated: sample, silero_vad")
    p.add_argument("--rounds", type=int, default=20, help="interleaved timed rounds")
    p.add_argument("--calls", type=int, default=5, help="calls per timed block (mdoc bench: 5)")
    p.add_argument("--gap", type=float, default=0.5, help="idle seconds before every block (mdoc bench: 0.5)")
    p.add_argument("--threads", type=int, default=0, help="threads for both runtimes (default: all cores)")
    return p.parse_args()


def sample_model(folder: Path) -> tuple[str, dict[str, np.ndarray]]:
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    return str(ROOT / "models" / "sample.onnx"), {"image": x}


def silero_model(folder: Path) -> tuple[str, dict[str, np.ndarray]]:
    import onnx

    from mdoc.models.zoo import build

    path = folder / "silero_vad.onnx"
    onnx.save(build("silero_vad", chunk=512), path)
    rng = np.random.default_rng(0)
    feeds = {"input": rng.standard_normal((1, 512)).astype(np.float32) * 0.1,
             "state": np.zeros((2, 1, 64), np.float32), "sr": np.array(16000, np.int64)}
    return str(path), feeds


MODELS = {"sample": sample_model, "silero_vad": silero_model}


def vm_only(run, feeds: dict[str, np.ndarray]):
    """A call of the VM's `main` on inputs converted once (TVM's own aligned copies), outputs not fetched."""
    import tvm

    args = [tvm.runtime.tensor(np.asarray(feeds[sig["name"]]), run.dev) for sig in run.manifest["inputs"]]
    main = run.vm["main"]
    return lambda: main(*args)


def bench(name: str, folder: Path, args) -> dict:
    import mdoc
    from mdoc.bench import interleaved, max_difference, ort_session
    from mdoc.reference import compare_outputs

    model, feeds = MODELS[name](folder)
    dims = {"N": 1} if name == "silero_vad" else None
    run = mdoc.load(mdoc.compile(model, "x86", folder / f"{name}.x86", dims=dims, show_progress=False))
    session = ort_session(model, args.threads)
    names = [o.name for o in session.get_outputs()]
    expected = dict(zip(names, session.run(names, feeds)))
    got = run(**feeds)
    agrees = all(d.ok for d in compare_outputs(expected, got, rtol=1e-3, atol=1e-4))  # mdoc bench's tolerances
    timings = interleaved({"onnxruntime": lambda: session.run(None, feeds), "mdoc": lambda: run(**feeds),
                           "mdoc VM only": vm_only(run, feeds)}, rounds=args.rounds, calls=args.calls, gap=args.gap)
    us = {k: t.median_ms * 1000 for k, t in timings.items()}
    return {"model": name, **us, "ratio": us["mdoc"] / us["onnxruntime"],
            "max_abs_diff": max_difference(expected, got), "agrees": agrees}


def main() -> int:
    args = _args()
    if args.threads:
        os.environ["TVM_NUM_THREADS"] = str(args.threads)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; rounds {args.rounds}, calls {args.calls}, "
          f"gap {args.gap} s, threads {args.threads or 'all'} (TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS', 'unset')})")
    print(f"{'model':12s} {'onnxruntime':>12s} {'mdoc':>10s} {'ratio':>7s} {'VM only':>10s}  agreement")
    agree = True
    with tempfile.TemporaryDirectory(prefix="mdoc-overhead-") as tmp:
        for name in args.models.split(","):
            r = bench(name, Path(tmp), args)
            agree &= r["agrees"]
            print(f"{name:12s} {r['onnxruntime']:9.1f} us {r['mdoc']:7.1f} us {r['ratio']:6.2f}x "
                  f"{r['mdoc VM only']:7.1f} us  max abs diff {r['max_abs_diff']:.2g}"
                  f"{'' if r['agrees'] else ' BEYOND rtol 1e-3, atol 1e-4'}", flush=True)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
