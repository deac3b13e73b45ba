"""Greedy generation with a compiled decoder against the same loop on onnxruntime, in one run.

    python benchmarks/generate.py MODEL.onnx [--prompt 5,17,300,42] [--new 32] [--rounds 3]

MODEL is a decoder exported with past key/values (the corpus's gpt2_with_past:
`python benchmarks/corpus.py gather gpt2_with_past`, then .cache/corpus/models/gpt2_with_past.onnx).
It is compiled once (`mdoc compile -t x86`, dims symbolic), then both runtimes generate the
same number of tokens greedily from the same prompt: onnxruntime's loop feeds numpy arrays
(each step's present tensors as the next step's past), mdoc's is `mdoc.generate` (the cache
stays in the runtime). Prints whether the tokens are equal, and prefill and decode tokens
per second of each with their ratio (mdoc / onnxruntime: above 1, mdoc is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def ort_generate(session, sig, prompt: list[int], new: int) -> tuple[list[int], float, float]:
    from mdoc.generation import step_feeds

    """Greedy tokens, prefill seconds, decode seconds of `session` driven as mdoc's Decoder drives an artifact."""
    cache = {name: np.zeros(sig.cache_shape, sig.cache_dtype) for name in sig.past}
    outputs = [o.name for o in session.get_outputs()]

    def step(ids, past_length, cache):
        return session.run(outputs, step_feeds(sig, ids, past_length, cache))

    t = time.perf_counter()
    outs = step(np.asarray([prompt], np.int64), 0, cache)
    tokens = [int(np.argmax(outs[sig.logits][0, -1]))]
    prefill = time.perf_counter() - t
    t = time.perf_counter()
    while len(tokens) < new:
        cache = {name: outs[k] for name, k in zip(sig.past, sig.present)}
        outs = step(np.asarray([[tokens[-1]]], np.int64), len(prompt) + len(tokens) - 1, cache)
        tokens.append(int(np.argmax(outs[sig.logits][0, -1])))
    return tokens, prefill, time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--prompt", default="5,17,300,42")
    p.add_argument("--new", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    import onnxruntime as ort

    import mdoc
    from mdoc.backends import load_artifact
    from mdoc.generation import Decoder

    prompt = [int(t) for t in args.prompt.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        art = mdoc.compile(args.model, "x86", Path(tmp) / "decoder.x86", show_progress=False)
        decoder = Decoder(load_artifact(art), str(art))
        session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
        rows = {"mdoc": [], "onnxruntime": []}
        for _ in range(args.rounds):  # interleaved rounds, medians
            r = decoder.generate(prompt, args.new)
            rows["mdoc"].append((r.tokens, r.prefill_s, r.decode_s))
            rows["onnxruntime"].append(ort_generate(session, decoder.sig, prompt, args.new))
    same = rows["mdoc"][0][0] == rows["onnxruntime"][0][0]
    print(f"{Path(args.model).name}: prompt {len(prompt)} tokens, {args.new} new, greedy; load {os.getloadavg()[0]:.1f}; "
          f"threads {os.environ.get('TVM_NUM_THREADS', 'default')}")
    print(f"tokens equal: {same}  (mdoc {rows['mdoc'][0][0][:12]}...)")
    speed = {}
    for name, runs in rows.items():
        prefill = statistics.median(r[1] for r in runs)
        decode = statistics.median(r[2] for r in runs)
        speed[name] = (len(prompt) / prefill, (args.new - 1) / decode)
        print(f"{name:12s} prefill {prefill * 1e3:8.2f} ms ({speed[name][0]:9.1f} tokens/s)   "
              f"decode {decode * 1e3:8.2f} ms ({speed[name][1]:9.1f} tokens/s)")
    print(f"mdoc / onnxruntime tokens per second: prefill {speed['mdoc'][0] / speed['onnxruntime'][0]:.2f}x, "
          f"decode {speed['mdoc'][1] / speed['onnxruntime'][1]:.2f}x")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
