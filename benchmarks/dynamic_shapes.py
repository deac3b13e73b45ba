"""One artifact for every size: the dynamic artifact against the one specialized to a shape.

    python benchmarks/dynamic_shapes.py [--models resnet18,bert_encoder] [--rounds 9]

For each zoo model this compiles the model twice, once with its symbolic dims kept (the
default of `mdoc compile`) and once specialized to the first shape below (`--dim`), then
times both and onnxruntime, interleaved in one process with idle gaps (`mdoc.bench`), at
that shape; the dynamic artifact also runs a second shape against onnxruntime. Every run is
checked against onnxruntime (rtol 1e-3, atol 1e-4). It prints the medians and the ratios
dynamic / specialized and mdoc / onnxruntime.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

SHAPES = {  # model -> (the shape both artifacts run, a second shape for the dynamic one)
    "resnet18": ({"N": 1}, {"N": 3}),
    "mobilenetv2": ({"N": 1}, {"N": 4}),
    "bert_encoder": ({"N": 1, "S": 128}, {"N": 2, "S": 45}),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,bert_encoder")
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))

    import mdoc
    from mdoc.bench import interleaved, ort_session
    from mdoc.model_io import load_model
    from mdoc.models import build
    from mdoc.tensors import random_inputs

    rows = []
    with tempfile.TemporaryDirectory(prefix="mdoc-dyn-") as tmp:
        for name in args.models.split(","):
            first, second = SHAPES[name]
            path = Path(tmp) / f"{name}.onnx"
            onnx.save(build(name), path)
            start = time.perf_counter()
            dynamic = mdoc.load(mdoc.compile(str(path), "x86", Path(tmp) / f"{name}.dyn", show_progress=False))
            dyn_s = time.perf_counter() - start
            start = time.perf_counter()
            static = mdoc.load(mdoc.compile(str(path), "x86", Path(tmp) / f"{name}.static", dims=first,
                                            show_progress=False))
            static_s = time.perf_counter() - start
            session = ort_session(str(path))
            names = [o.name for o in session.get_outputs()]
            for dims in (first, second):
                feeds = random_inputs(load_model(str(path)), dims=dims)
                expected = dict(zip(names, session.run(names, feeds)))
                runs = {"mdoc dynamic": dynamic, **({"mdoc specialized": static} if dims is first else {})}
                for label, run in runs.items():
                    got = run(**feeds)
                    for out in names:
                        np.testing.assert_allclose(got[out], expected[out], rtol=1e-3, atol=1e-4,
                                                   err_msg=f"{name} {label} {dims} {out}")
                candidates = {"onnxruntime": lambda: session.run(names, feeds),
                              **{label: (lambda r=run: r(**feeds)) for label, run in runs.items()}}
                t = interleaved(candidates, rounds=args.rounds, calls=5)
                rows.append((name, dims, t, dyn_s, static_s, os.getloadavg()[0]))
                shape = ", ".join(f"{k}={v}" for k, v in dims.items())
                line = f"{name:<13} {shape:<12} ort {t['onnxruntime'].median_ms:7.2f} ms  dynamic " \
                       f"{t['mdoc dynamic'].median_ms:7.2f} ms ({t['mdoc dynamic'].median_ms / t['onnxruntime'].median_ms:.2f}x ort)"
                if "mdoc specialized" in t:
                    line += f"  specialized {t['mdoc specialized'].median_ms:7.2f} ms  dynamic/specialized " \
                            f"{t['mdoc dynamic'].median_ms / t['mdoc specialized'].median_ms:.2f}x"
                print(line, flush=True)
    print(f"\ncompile: " + ", ".join(f"{r[0]} dynamic {r[3]:.1f} s / specialized {r[4]:.1f} s" for r in rows[::2]))
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
