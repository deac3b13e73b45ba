"""Two versions of mdoc on the same models, timed in one interleaved run beside onnxruntime.

    python benchmarks/before_after.py --base ../old-checkout/.venv/bin/python
    python benchmarks/before_after.py --base OLD_PY --models resnet18,mobilenetv2,bert_encoder --rounds 15

The base interpreter (another checkout's venv) compiles each model with its own mdoc in a
subprocess; this checkout compiles it too; both artifacts (the loader reads either) and
onnxruntime are then timed interleaved in this process (`mdoc.bench.interleaved`: idle
gaps, rounds, medians), so a shared machine's load hits all three alike. Dims are bound
as benchmarks/models.py binds them (batch 1, sequence 128), -O2, no tuning. Prints per
model: onnxruntime, base, new (ms), new / base, and each against onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

COMPILE = ("import sys, json, mdoc; mdoc.compile(sys.argv[1], 'x86', sys.argv[2], dims=json.loads(sys.argv[3]), "
           "show_progress=False, tuning_db=False)")
SIZES = {"N": 1, "S": 128}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="python of the other checkout's venv")
    p.add_argument("--models", default="resnet18,mobilenetv2,bert_encoder")
    p.add_argument("--rounds", type=int, default=12)
    args = p.parse_args()
    import mdoc
    from mdoc.bench import interleaved, ort_session
    from mdoc.models.zoo import build
    from mdoc.tensors import random_inputs
    from mdoc.onnx_import import import_model

    load = os.getloadavg()
    print(f"load average {load[0]:.2f} at the start; rounds {args.rounds}")
    print(f"{'model':14s} {'onnxruntime':>11s} {'base':>8s} {'new':>8s} {'new/base':>9s} {'base/ort':>9s} {'new/ort':>8s}")
    with tempfile.TemporaryDirectory(prefix="mdoc-before-after-") as tmp:
        for name in args.models.split(","):
            path = Path(tmp) / f"{name}.onnx"
            onnx.save(build(name), path)
            base, new = Path(tmp) / f"{name}.base", Path(tmp) / f"{name}.new"
            model = import_model(onnx.load(path))
            used = {d for v in model.graph.inputs for d in (v.type.shape or ()) if isinstance(d, str)}
            dims = json.dumps({k: v for k, v in SIZES.items() if k in used})
            subprocess.run([args.base, "-c", COMPILE, str(path), str(base), dims], check=True)
            subprocess.run([sys.executable, "-c", COMPILE, str(path), str(new), dims], check=True)
            feeds = random_inputs(model, dims=SIZES)
            session = ort_session(str(path))
            run_base, run_new = mdoc.load(base), mdoc.load(new)
            want = session.run(None, feeds)
            for label, run in (("base", run_base), ("new", run_new)):
                got = list(run(**feeds).values())
                if not all(np.allclose(g, w, rtol=1e-3, atol=1e-4) for g, w in zip(got, want)):
                    print(f"{name}: {label} disagrees with onnxruntime", file=sys.stderr)
            t = interleaved({"ort": lambda: session.run(None, feeds), "base": lambda: run_base(**feeds),
                             "new": lambda: run_new(**feeds)}, rounds=args.rounds)
            o, b, n = (t[k].median_ms for k in ("ort", "base", "new"))
            print(f"{name:14s} {o:8.3f} ms {b:8.3f} {n:8.3f} {n / b:8.3f}x {b / o:8.2f}x {n / o:7.2f}x", flush=True)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
