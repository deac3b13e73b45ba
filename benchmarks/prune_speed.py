"""Structured pruning pays off when compiled: FLOPs, parameters and mdoc-compiled latency of the
zoo models before and after `mdoc prune`, with onnxruntime timed in the same run.

    python benchmarks/prune_speed.py      # resnet18, mobilenetv2 at 30% channels, bert_encoder at 25% heads
    python benchmarks/prune_speed.py --models resnet18 --channels 0.5

For each CNN: `prune_model` removes --channels of every channel group (l1, kept counts rounded
to the x86 target's vector width, what `mdoc prune -t x86` does); the BERT-style encoder loses
--heads of its attention heads. onnxruntime runs the pruned ONNX (the check that it is a valid
model), then the original and the pruned model are compiled with mdoc (-O2, x86, batch 1), and a
control (the original through the same preparation and export, nothing pruned); all five (mdoc
before, after and control, onnxruntime before and after) are timed interleaved in one run
(`mdoc.bench.interleaved`). Printed: FLOPs and parameter ratios, medians in ms, the speedup of
the compiled pruned model over the compiled original, and each against onnxruntime. Weights
are seeded, so no accuracy is claimed here (see benchmarks/distill_accuracy.py).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,mobilenetv2,bert_encoder")
    p.add_argument("--channels", type=float, default=0.3)
    p.add_argument("--heads", type=float, default=0.25)
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args()

    import mdoc
    from mdoc.backends import list_targets
    from mdoc.bench import interleaved, ort_session
    from mdoc.models.zoo import build, example_inputs
    from mdoc.onnx_import import import_model
    from mdoc.pass_manager import PassManager, parse_pipeline
    from mdoc.pruning.api import FUSE_HEADS, PREPARE, prune_model

    lanes = list_targets()["x86"].cpu.lanes
    print(f"load average {os.getloadavg()[0]:.1f}; kept channels rounded to {lanes} (x86 vector width)")
    print(f"{'model':12s} {'pruned':>12s} {'FLOPs':>6s} {'params':>6s} {'mdoc ms':>16s} {'speedup':>7s} "
          f"{'ort ms':>16s} {'mdoc/ort':>11s}")
    with tempfile.TemporaryDirectory(prefix="mdoc-prune-") as tmp:
        tmp = Path(tmp)
        for name in args.models.split(","):
            proto = build(name)
            feeds = example_inputs(proto)
            bert = name.startswith("bert")
            options = {"heads": args.heads} if bert else {"channels": args.channels, "round_to": lanes}
            pruned, report = prune_model(import_model(proto), **options)
            paths = {"before": tmp / f"{name}.onnx", "after": tmp / f"{name}.pruned.onnx"}
            onnx.save(proto, paths["before"])
            mdoc.save_model(pruned, paths["after"])
            # control: the same preparation and export with nothing pruned, so that the speedup is the pruning's
            control = import_model(proto)
            PassManager(parse_pipeline(PREPARE + (f",{FUSE_HEADS},{PREPARE},{FUSE_HEADS}" if bert else ""))).run(control)
            mdoc.save_model(control, tmp / f"{name}.control.onnx")
            sessions = {k: ort_session(str(v)) for k, v in paths.items()}
            ort_out = {k: s.run(None, feeds) for k, s in sessions.items()}
            assert [o.shape for o in ort_out["after"]] == [o.shape for o in ort_out["before"]]
            dims = {"N": 1, "S": feeds[next(iter(feeds))].shape[-1]} if bert else {"N": 1}
            compiled = {k: mdoc.load(mdoc.compile(v, target="x86", output=tmp / f"{name}.{k}.x86", dims=dims))
                        for k, v in {**paths, "control": tmp / f"{name}.control.onnx"}.items()}
            candidates = {f"mdoc {k}": (lambda f=f: f(**feeds)) for k, f in compiled.items()}
            candidates.update({f"ort {k}": (lambda s=s: s.run(None, feeds)) for k, s in sessions.items()})
            t = {k: v.median_ms for k, v in interleaved(candidates, rounds=args.rounds).items()}
            b, a = report["before"], report["after"]
            what = f"heads {args.heads:.0%}" if bert else f"channels {args.channels:.0%}"
            print(f"{name:12s} {what:>12s} {a['flops'] / b['flops']:6.2f} {a['parameters'] / b['parameters']:6.2f} "
                  f"{t['mdoc before']:7.2f} -> {t['mdoc after']:5.2f} {t['mdoc before'] / t['mdoc after']:6.2f}x "
                  f"{t['ort before']:7.2f} -> {t['ort after']:5.2f} "
                  f"{t['mdoc before'] / t['ort before']:4.2f} {t['mdoc after'] / t['ort after']:4.2f} "
                  f"(control, prepared and unpruned: {t['mdoc control']:.2f} ms)", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
