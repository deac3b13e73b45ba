"""mdoc -O2 against onnxslim and onnxsim: node counts, file bytes, wall time, and whether outputs still agree.

    /work/venv/bin/python benchmarks/opt_vs_slim.py [--pipeline TEXT] [--only NAME,...]

Models: the onnx package's light models (weights built by ConstantOfShape) and
the small variants of the zoo (`mdoc.models`, batch 3). Every optimized model is
run by onnxruntime on the same seeded inputs as the original, compared at rtol 1e-4.

Columns: nodes are NodeProtos in the whole model (bodies included; initializers
are not nodes); bytes are the serialized ModelProto without `value_info` (type
annotations of intermediate values, which mdoc's exporter writes and the inputs
mostly lack; the `+vi` column gives mdoc's default export with them). `ok` lists
which of mdoc / onnxslim / onnxsim match the original outputs ('-' when a tool failed).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import io
import os
import sys
import time
from collections import Counter

import numpy as np
import onnx

from mdoc.models import ZOO, build, example_inputs
from mdoc.onnx_export import export_model
from mdoc.onnx_import import import_model
from mdoc.pass_manager import OPT_LEVELS, PassManager, parse_pipeline
from mdoc.reference import compare_outputs, run_onnxruntime
from mdoc.tensors import random_inputs

LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def sources(only: set[str] | None):
    for path in sorted(glob.glob(os.path.join(LIGHT_DIR, "light_*.onnx"))):
        name = os.path.basename(path)[len("light_"):-len(".onnx")]
        if not only or name in only:
            yield name, onnx.load(path)
    for name in sorted(ZOO):
        if not only or f"zoo:{name}" in only or name in only:
            yield f"zoo:{name}", build(name, **ZOO[name].test_kwargs)


def inputs_for(name: str, proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Seeded inputs; zoo models run with batch 3, so a rewrite that confuses the batch dim with 1 shows."""
    if name.startswith("zoo:"):
        return example_inputs(proto, dims={"N": 3})
    return random_inputs(import_model(proto))


def count_nodes(graph: onnx.GraphProto) -> int:
    n = 0
    for node in graph.node:
        n += 1
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                n += count_nodes(a.g)
            for g in a.graphs:
                n += count_nodes(g)
    return n


def op_counts(graph: onnx.GraphProto) -> Counter:
    return Counter(n.op_type for n in graph.node)


def lean_bytes(proto: onnx.ModelProto) -> int:
    lean = onnx.ModelProto()
    lean.CopyFrom(proto)
    _strip(lean.graph)
    return lean.ByteSize()


def _strip(graph: onnx.GraphProto) -> None:
    del graph.value_info[:]
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                _strip(a.g)
            for g in a.graphs:
                _strip(g)


def run_mdoc(proto: onnx.ModelProto, pipeline: str):
    model = import_model(proto)
    PassManager(parse_pipeline(pipeline)).run(model)
    return export_model(model)


def run_onnxslim(proto: onnx.ModelProto):
    import onnxslim

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return onnxslim.slim(_copy(proto))


def run_onnxsim(proto: onnx.ModelProto):
    import onnxsim

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        out, ok = onnxsim.simplify(_copy(proto))
    return out if ok else None


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    c = onnx.ModelProto()
    c.CopyFrom(proto)
    return c


def timed(fn, *args):
    start = time.perf_counter()
    try:
        out = fn(*args)
    except Exception as e:  # a tool that fails on a model is a result, not a crash of the table
        print(f"  {fn.__name__}: {type(e).__name__}: {' '.join(str(e).split())[:160]}", file=sys.stderr)
        out = None
    return out, time.perf_counter() - start


def agrees(reference: dict, proto, feeds) -> bool | None:
    if proto is None:
        return None
    try:
        got = run_onnxruntime(proto, feeds)
    except Exception as e:
        print(f"  onnxruntime: {' '.join(str(e).split())[:160]}", file=sys.stderr)
        return False
    return all(d.ok for d in compare_outputs(reference, got, rtol=1e-4))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", default=OPT_LEVELS[2], help="mdoc pass pipeline (default: -O2)")
    ap.add_argument("--only", default="", help="comma-separated model names")
    ap.add_argument("--no-onnxsim", action="store_true", help="skip onnxsim (slow on the light models)")
    args = ap.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()} or None

    head = (f"{'model':22s} {'nodes: in':>9s} {'mdoc':>5s} {'slim':>5s} {'sim':>5s} | "
            f"{'bytes: in':>10s} {'mdoc':>10s} {'+vi':>10s} {'slim':>10s} {'sim':>10s} | "
            f"{'time s: mdoc':>12s} {'slim':>5s} {'sim':>5s} | ok")
    print(f"pipeline: {args.pipeline}")
    print(head)
    print("-" * len(head))
    failures = []
    for name, proto in sources(only):
        feeds = inputs_for(name, proto)
        reference = run_onnxruntime(proto, feeds)
        ours, t_ours = timed(run_mdoc, proto, args.pipeline)
        slim, t_slim = timed(run_onnxslim, proto)
        sim, t_sim = (None, 0.0) if args.no_onnxsim else timed(run_onnxsim, proto)
        oks = [agrees(reference, p, feeds) for p in (ours, slim, sim)]

        def nodes(p):
            return count_nodes(p.graph) if p is not None else "-"

        def size(p):
            return lean_bytes(p) if p is not None else "-"

        n_in, n_ours, n_slim = count_nodes(proto.graph), nodes(ours), nodes(slim)
        b_in, b_ours = lean_bytes(proto), size(ours)
        print(f"{name:22s} {n_in:9d} {n_ours:>5} {n_slim:>5} {nodes(sim):>5} | "
              f"{b_in:10d} {b_ours:>10} {ours.ByteSize() if ours is not None else '-':>10} {size(slim):>10} "
              f"{size(sim):>10} | {t_ours:12.2f} {t_slim:5.2f} {t_sim:5.2f} | "
              + "/".join("-" if ok is None else ("yes" if ok else "NO") for ok in oks))
        if ours is None or not oks[0]:
            failures.append(f"{name}: outputs differ or mdoc failed")
        elif isinstance(n_slim, int) and n_ours > n_slim:
            extra = op_counts(ours.graph) - op_counts(slim.graph)
            why = ", ".join(f"{op} +{k}" for op, k in extra.most_common())
            failures.append(f"{name}: {n_ours} nodes, onnxslim {n_slim} (mdoc keeps {why})")
        if isinstance(b_ours, int) and b_ours > b_in:
            failures.append(f"{name}: {b_ours} bytes > input {b_in}")
    if failures:
        print("\nshort of the goals:")
        for f in failures:
            print(f"  {f}")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
