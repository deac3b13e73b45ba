"""The long fuzzing campaign: mutated inputs through the CLI, random graphs against onnxruntime.

    python benchmarks/fuzz_campaign.py inputs --cases 2000 [--seed 0] [--kinds onnx,bytes,mdir,npz,artifact]
    python benchmarks/fuzz_campaign.py differential --cases 200 [--seed 0] [--target x86] [-O 2]
    python benchmarks/fuzz_campaign.py serve --cases 5000 [--seed 0]

Uses the mutators and the graph generator of `mdoc.tooling.fuzz` that the bounded CI
campaign (tests/test_fuzz_inputs.py, tests/test_fuzz_differential.py) uses, so a seed
printed here reproduces in a test. `inputs` checks the rule for bad input (exit 0, 1 or
2; exit 2 is one `mdoc: error:` line; no traceback, no exit 3) and groups the failures
by their first line with the seed of the first case of each; `differential` compiles
each random graph and compares it with onnxruntime; `serve` starts `mdoc serve` on the
tiny model and sends `--cases` REST and as many gRPC requests from the strategies of
`mdoc.tooling.serve_fuzz` (tests/test_serve_fuzz.py's), with a well-behaved client beside
them whose answers are checked against onnxruntime. Each case runs in this process;
a case that crashes the process (a segfault in a native library) ends the campaign
with its seed printed last. Prints the figures the notes keep: cases per kind and
target, failures, distinct failure classes.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from mdoc.tooling.fuzz import (describe, differential, mutate_artifact, mutate_bytes, mutate_npz, mutate_onnx,  # noqa: E402
                               random_graph, run_cli)


def _bases():
    from conftest import tiny_model
    from test_fuzz_inputs import rich_model

    return [tiny_model(), rich_model()]


def _signature(text: str) -> str:
    """A failure's class: its message with paths, numbers and names blurred."""
    text = re.sub(r"/[^\s:'\"]+", "PATH", text)
    text = re.sub(r"'[^']*'", "'_'", text)
    return re.sub(r"\d+", "N", text)[:160]


def one_input_case(kind: str, seed: int, folder: Path, bases, artifact: Path | None) -> str | None:
    rng = random.Random(seed)
    if kind == "onnx":
        path = folder / "m.onnx"
        path.write_bytes(mutate_onnx(bases[seed % len(bases)], rng).SerializeToString())
        runs = [("inspect", path), ("opt", path, "-o", folder / "o.onnx")]
    elif kind == "bytes":
        path = folder / "m.onnx"
        data = bases[seed % len(bases)].SerializeToString()
        for _ in range(rng.randint(1, 3)):
            data = mutate_bytes(data, rng)
        path.write_bytes(data)
        runs = [("opt", path, "-o", folder / "o.mdir", "-O1")]
    elif kind == "mdir":
        (folder / "b.onnx").write_bytes(bases[seed % len(bases)].SerializeToString())
        run_cli("print", folder / "b.onnx", "-o", folder / "m.mdir")
        (folder / "m.mdir").write_bytes(mutate_bytes((folder / "m.mdir").read_bytes(), rng))
        runs = [("opt", folder / "m.mdir", "-o", folder / "o.onnx")]
    elif kind == "npz":
        onnx.save(bases[0], folder / "t.onnx")
        np.savez(folder / "in.npz", **mutate_npz({"x": np.ones((2, 4), np.float32)}, rng))
        if rng.random() < 0.5:
            (folder / "in.npz").write_bytes(mutate_bytes((folder / "in.npz").read_bytes(), rng))
        runs = [("compare", folder / "t.onnx", folder / "t.onnx", "--inputs", folder / "in.npz")]
    else:
        art = folder / "a.x86"
        shutil.copytree(artifact, art)
        mutate_artifact(art, rng)
        runs = [("run", art, "--repeat", "1")]
    for args in runs:
        problem = run_cli(*args).problem()
        if problem:
            return f"mdoc {args[0]}: {problem}"
    return None


def inputs_campaign(args) -> int:
    import mdoc
    from conftest import tiny_model

    bases = _bases()
    kinds = args.kinds.split(",")
    work = Path(tempfile.mkdtemp(prefix="mdoc-fuzz-"))
    artifact = None
    if "artifact" in kinds:
        onnx.save(tiny_model(), work / "tiny.onnx")
        artifact = mdoc.compile(work / "tiny.onnx", "x86", work / "tiny.x86", show_progress=False, tuning_db=False)
    counts, failures, classes = Counter(), Counter(), {}
    start = time.time()
    for k in range(args.cases):
        kind = kinds[k % len(kinds)]
        seed = args.seed + k
        folder = work / f"case{k}"
        folder.mkdir()
        print(f"\r{kind} seed {seed}   ", end="", file=sys.stderr, flush=True)
        problem = one_input_case(kind, seed, folder, bases, artifact)
        shutil.rmtree(folder, ignore_errors=True)
        counts[kind] += 1
        if problem:
            failures[kind] += 1
            classes.setdefault((kind, _signature(problem)), (seed, problem))
    shutil.rmtree(work, ignore_errors=True)
    print(file=sys.stderr)
    print(f"{args.cases} cases in {time.time() - start:.0f} s (seeds {args.seed} to {args.seed + args.cases - 1})")
    for kind in kinds:
        print(f"  {kind}: {counts[kind]} cases, {failures[kind]} failures")
    print(f"{len(classes)} failure classes")
    for (kind, _), (seed, problem) in sorted(classes.items()):
        print(f"- {kind} seed {seed}: {problem[:400]}")
    return 1 if classes else 0


def differential_campaign(args) -> int:
    start = time.time()
    bad = []
    for k in range(args.cases):
        seed = args.seed + k
        print(f"\rgraph seed {seed}   ", end="", file=sys.stderr, flush=True)
        model = random_graph(seed)
        with tempfile.TemporaryDirectory(prefix="mdoc-diff-") as folder:
            problem = differential(model, Path(folder), target=args.target, level=args.level)
        if problem:
            bad.append((seed, problem, describe(model)))
    print(file=sys.stderr)
    print(f"{args.cases} random graphs on {args.target} -O{args.level} in {time.time() - start:.0f} s "
          f"(seeds {args.seed} to {args.seed + args.cases - 1}): {len(bad)} mismatches or failures")
    for seed, problem, text in bad:
        print(f"- seed {seed}: {problem}\n  " + text.replace("\n", "\n  "))
    return 1 if bad else 0


def serve_campaign(args) -> int:
    import json

    import mdoc
    import onnxruntime as ort
    from conftest import tiny_model

    from mdoc.serving.launch import ServerProcess
    from mdoc.tooling import serve_fuzz

    start = time.time()
    with tempfile.TemporaryDirectory(prefix="mdoc-serve-fuzz-") as work:
        onnx.save(tiny_model(), Path(work) / "tiny.onnx")
        artifact = mdoc.compile(Path(work) / "tiny.onnx", "x86", Path(work) / "tiny.x86", show_progress=False,
                                tuning_db=False)
        session = ort.InferenceSession(str(Path(work) / "tiny.onnx"), providers=["CPUExecutionProvider"])
        max_body = int(0.01 * (1 << 20))
        with ServerProcess(artifact, "--max-body-mb", "0.01", "--read-timeout-ms", "2000", "--quiet") as server:
            sig = serve_fuzz.signature(json.loads(server.get("/v2/models/tiny")[1]))
            with serve_fuzz.GoodClient("127.0.0.1", server.port, "tiny",
                                       lambda x: session.run(None, {"x": x})[0]) as good:
                counts, problems = serve_fuzz.campaign("127.0.0.1", server.port, server.grpc_url, "tiny", sig,
                                                       max_body, args.cases, args.seed)
    rest = sum(n for k, n in counts.items() if not k.startswith("gRPC"))
    print(f"{sum(counts.values())} serve cases in {time.time() - start:.0f} s (seed {args.seed}): {rest} REST, "
          f"{sum(counts.values()) - rest} gRPC; {len(problems)} problem classes; the good client: "
          f"{good.answered} answers, {len(good.wrong)} wrong or refused")
    for kind, n in sorted(counts.items()):
        print(f"  {kind}: {n}")
    for problem in problems.values():
        print(f"- {problem[:400]}")
    for wrong in good.wrong[:5]:
        print(f"- good client: {wrong}")
    return 1 if problems or good.wrong else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("inputs")
    p.add_argument("--cases", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kinds", default="onnx,bytes,mdir,npz,artifact")
    d = sub.add_parser("differential")
    d.add_argument("--cases", type=int, default=200)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--target", default="x86")
    d.add_argument("-O", dest="level", type=int, default=2)
    v = sub.add_parser("serve")
    v.add_argument("--cases", type=int, default=5000, help="REST cases, and as many gRPC cases")
    v.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    return {"inputs": inputs_campaign, "differential": differential_campaign, "serve": serve_campaign}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
