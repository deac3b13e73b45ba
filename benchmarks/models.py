"""Whole-model CPU latency: onnxruntime, TVM's own ONNX importer and mdoc, in one interleaved run.

    /work/venv/bin/python benchmarks/models.py                       # resnet18, mobilenetv2, bert_encoder (S=128)
    /work/venv/bin/python benchmarks/models.py --models sample,my.onnx --dim N=1 --quick
    /work/venv/bin/python benchmarks/models.py --no-tvm-importer --rounds 20

For each model (a zoo name from `mdoc.models` or a path to an .onnx file; batch 1,
sequence 128 unless `--dim` says otherwise) the engines are:

  onnxruntime        fp32, CPU execution provider, all cores
  onnxruntime int8   a hook (`quantize_for_onnxruntime`) that returns None until mdoc can
                     quantize; printed as n/a
  TVM importer       `tvm.relax.frontend.onnx.from_onnx(keep_params_in_input=True)`,
                     `detach_params`, `tvm.compile(mod, target)` with TVM's default build,
                     for the same host target mdoc uses; a failed import or build is recorded
                     with its reason and the run goes on
  mdoc -O2           `mdoc.compile(..., opt_level=2)`, untuned
  mdoc tuned         only with a tuning database (`--tuning-db DIR`, or
                     benchmarks/tuning/<model>/ when it exists); otherwise "no tuning database"

Every compile (and onnxruntime's session creation) runs in a subprocess of this script
together with one first call, so its wall time is the compile time and its peak resident
memory (VmHWM in /proc/self/status) is the peak memory; the libraries it
writes are then loaded here and timed.  Peak memory includes Python, numpy, onnx and
(for TVM and mdoc) TVM's own import, about 300 MiB before any model is read.

Timing follows /work/shared/notes/tvm-0.27.md ("Timing on 2 cores"): `mdoc.bench.interleaved`
sleeps an idle gap before every timed block, interleaves the engines round by round after a
warm-up, and reports medians.  Calls per block are sized so each block lasts about
`--block-ms`; TVM's importer build is far slower (about 78x onnxruntime on ResNet-18), so
it takes part in `--tvm-rounds` rounds only.  Every engine's outputs are compared with
onnxruntime's at rtol 1e-3, atol 1e-4 ("agree" column; "NO" marks a disagreement).

Writes benchmarks/results/latest.md (the table) and latest.png (ratios to onnxruntime,
log scale when the ratios span more than 10x), and prints the table.  The machine is shared, so the
table header records the load average at the start and the end of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# TVM's runtime reads this once, when its thread pool starts; without it TVM halves the core
# count on x86 ("hyper-threading") and runs on one core of a 2-core machine.
os.environ.setdefault("TVM_NUM_THREADS", str(_cores()))

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TUNING = HERE / "tuning"
DEFAULT_MODELS = ("resnet18", "mobilenetv2", "bert_encoder")
DEFAULT_DIMS = {"N": 1, "S": 128}
RTOL, ATOL = 1e-3, 1e-4
ENGINES = ("onnxruntime", "tvm-importer", "mdoc", "mdoc-tuned")
LABELS = {"onnxruntime": "onnxruntime", "ort-int8": "onnxruntime int8", "tvm-importer": "TVM importer",
          "mdoc": "mdoc -O2", "mdoc-tuned": "mdoc tuned"}


# --------------------------------------------------------------------------------------------
# Hooks for what does not exist yet
# --------------------------------------------------------------------------------------------


def quantize_for_onnxruntime(onnx_path: Path, out_dir: Path) -> Path | None:
    """The int8 model onnxruntime should time beside fp32, or None (no quantization in mdoc yet).

    When mdoc can quantize, return the path of the quantized .onnx written under `out_dir`;
    the script then times it as "ort-int8" and reports its ratio like the others.
    """
    return None


def tuning_database(model_name: str, args: argparse.Namespace) -> Path | None:
    """The tuning database for `model_name`: --tuning-db, else benchmarks/tuning/<model>/ if it exists."""
    if args.tuning_db:
        return Path(args.tuning_db)
    path = TUNING / model_name
    return path if path.is_dir() else None


# --------------------------------------------------------------------------------------------
# Worker: one engine's compile and first call, in its own process
# --------------------------------------------------------------------------------------------


def _peak_mib() -> float:
    """This process's peak resident memory since its exec.

    /proc/self/status VmHWM belongs to the process image; `ru_maxrss` would not do: Linux
    carries it over fork and exec, so a worker would report the parent's size.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    # TVM errors put the useful line last, after a C++ traceback
    useful = [line for line in text if line.strip() and not line.startswith(("  ", "File "))]
    msg = (useful[-1] if useful else "").strip()
    return f"{type(exc).__name__}: {msg}"[:300]


def worker(engine: str, job: dict) -> dict:
    """Compile (or open) the model for `engine`, call it once; returns what the parent reports."""
    onnx_path, out = Path(job["onnx"]), Path(job["out"])
    feeds = dict(np.load(job["feeds"]))
    start = time.perf_counter()
    if engine == "onnxruntime":
        from mdoc.bench import ort_session

        session = ort_session(str(onnx_path))
        compile_s = time.perf_counter() - start
        session.run(None, feeds)
    elif engine == "tvm-importer":
        import onnx
        import tvm
        from tvm import relax
        from tvm.relax.frontend.onnx import from_onnx

        model = onnx.load(str(onnx_path))
        shapes = {k: list(v.shape) for k, v in feeds.items()}
        dtypes = {k: str(v.dtype) for k, v in feeds.items()}
        mod = from_onnx(model, shape_dict=shapes, dtype_dict=dtypes, keep_params_in_input=True)
        mod, params = relax.frontend.detach_params(mod)
        ex = tvm.compile(mod, tvm.target.Target(job["target"]))
        ex.export_library(str(out / "tvm_importer.so"))
        compile_s = time.perf_counter() - start
        weights = [p.numpy() for p in params.get("main", [])]
        np.savez(out / "tvm_importer_params.npz", *weights)
        dev = tvm.cpu(0)
        vm = relax.VirtualMachine(ex, dev)
        vm["main"](*[tvm.runtime.tensor(feeds[n], dev) for n in job["input_order"]],
                   *[tvm.runtime.tensor(w, dev) for w in weights])
    elif engine in ("mdoc", "mdoc-tuned"):
        import inspect

        import mdoc

        kwargs = {}
        takes_db = "tuning_db" in inspect.signature(mdoc.compile).parameters
        if engine == "mdoc-tuned":
            if not takes_db:
                raise RuntimeError("mdoc.compile takes no tuning database yet (no tuning_db= parameter)")
            kwargs["tuning_db"] = job["tuning_db"]
        elif takes_db:
            kwargs["tuning_db"] = False  # untuned, even when ~/.cache/mdoc/tuning has a database
        artifact = mdoc.compile(str(onnx_path), job["target_name"], out / engine, opt_level=2, dims=job["dims"],
                                show_progress=False, **kwargs)
        compile_s = time.perf_counter() - start
        mdoc.load(artifact)(**feeds)
    else:
        raise ValueError(f"unknown engine {engine!r}; engines: {', '.join(ENGINES)}")
    return {"compile_s": compile_s, "peak_mib": _peak_mib()}


def worker_main(engine: str, job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    result_path = Path(job["out"]) / f"{engine}.json"
    try:
        result = worker(engine, job)
    except Exception as exc:  # recorded and reported; the parent carries on with the other engines
        traceback.print_exc()
        result = {"error": _first_line(exc), "peak_mib": _peak_mib()}
    result_path.write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------------------------
# Parent: prepare, compile in subprocesses, check, time, report
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    model: str
    dims: dict
    load: float
    ms: dict = field(default_factory=dict)  # engine -> median ms
    samples: dict = field(default_factory=dict)  # engine -> timed blocks
    compile_s: dict = field(default_factory=dict)
    peak_mib: dict = field(default_factory=dict)
    agree: dict = field(default_factory=dict)  # engine -> (ok, max abs diff)
    notes: dict = field(default_factory=dict)  # engine -> why it has no number

    def ratio(self, engine: str) -> float | None:
        if engine in self.ms and "onnxruntime" in self.ms:
            return self.ms[engine] / self.ms["onnxruntime"]
        return None


def prepare(spec: str, dims_arg: dict, work: Path):
    """(display name, .onnx path, bound dims, feeds, input order) for a zoo name or an .onnx path."""
    import onnx

    from mdoc.models import ZOO, build, example_inputs

    if spec in ZOO:
        name, proto = spec, build(spec)
    elif os.path.exists(spec):
        name, proto = Path(spec).stem, onnx.load(spec)
    else:
        raise SystemExit(f"--models: {spec!r} is neither a zoo model ({', '.join(sorted(ZOO))}) nor an .onnx file")
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in initializers]
    symbolic = {d.dim_param for v in inputs for d in v.type.tensor_type.shape.dim if d.dim_param}
    dims = {k: v for k, v in {**DEFAULT_DIMS, **dims_arg}.items() if k in symbolic}
    dims.update({k: 1 for k in symbolic - set(dims)})
    try:
        feeds = example_inputs(proto, dims=dims)
    except ValueError:  # not a zoo file: integer inputs without recorded ranges
        from mdoc.model_io import load_model
        from mdoc.specialize import bind_dims
        from mdoc.tensors import random_inputs

        ir = load_model(spec)
        feeds = random_inputs(ir, dims=bind_dims(ir, dims))
    path = work / f"{name}.onnx"
    onnx.save(proto, str(path))
    np.savez(work / f"{name}.feeds.npz", **feeds)
    return name, path, dims, feeds, [v.name for v in inputs]


def run_worker(engine: str, job: dict, timeout: float) -> dict:
    out = Path(job["out"])
    job_path = out / "job.json"
    job_path.write_text(json.dumps(job))
    log = out / f"{engine}.log"
    try:
        with open(log, "w") as f:
            subprocess.run([sys.executable, __file__, "--worker", engine, str(job_path)], stdout=f, stderr=f,
                           timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"compile took over {timeout:.0f} s (--compile-timeout)"}
    result_path = out / f"{engine}.json"
    if not result_path.exists():
        tail = log.read_text().strip().splitlines()[-1:] or ["no output"]
        return {"error": f"worker died: {tail[0][:200]}"}
    return json.loads(result_path.read_text())


def tvm_importer_runner(out: Path, feeds: dict, input_order: list[str]):
    import tvm
    from tvm.runtime.vm import VirtualMachine

    dev = tvm.cpu(0)
    vm = VirtualMachine(tvm.runtime.load_module(str(out / "tvm_importer.so")), dev)
    with np.load(out / "tvm_importer_params.npz") as z:
        weights = [tvm.runtime.tensor(z[f"arr_{i}"], dev) for i in range(len(z.files))]

    def run() -> list[np.ndarray]:
        result = vm["main"](*[tvm.runtime.tensor(feeds[n], dev) for n in input_order], *weights)
        if isinstance(result, tvm.runtime.Tensor):
            return [result.numpy()]
        return [result[i].numpy() for i in range(len(result))]

    return run


def agreement(expected: list[np.ndarray], got: list[np.ndarray]) -> tuple[bool, float]:
    if len(expected) != len(got):
        return False, float("inf")
    ok, worst = True, 0.0
    for e, g in zip(expected, got):
        if e.shape != g.shape:
            return False, float("inf")
        if e.size == 0:
            continue
        e64, g64 = e.astype(np.float64), g.astype(np.float64)
        worst = max(worst, float(np.max(np.abs(e64 - g64))))
        ok = ok and bool(np.allclose(g64, e64, rtol=RTOL, atol=ATOL))
    return ok, worst


def bench_model(spec: str, args: argparse.Namespace, work_root: Path) -> Row:
    from mdoc.bench import interleaved, ort_session
    from mdoc.targets.presets import resolve_target

    work = Path(tempfile.mkdtemp(dir=work_root, prefix="model-"))
    name, path, dims, feeds, input_order = prepare(spec, args.dims, work)
    row = Row(name, dims, os.getloadavg()[0])
    target = resolve_target(args.target)
    job = {"onnx": str(path), "feeds": str(work / f"{name}.feeds.npz"), "out": str(work), "dims": dims,
           "target": target.tvm, "target_name": args.target, "input_order": input_order, "tuning_db": None}
    say = (lambda msg: print(f"  [{name}] {msg}", flush=True))

    engines = ["onnxruntime"]
    row.notes["ort-int8"] = "n/a"
    int8 = quantize_for_onnxruntime(path, work)
    if int8 is not None:
        row.notes.pop("ort-int8")
    if args.tvm_importer:
        engines.append("tvm-importer")
    else:
        row.notes["tvm-importer"] = "skipped"
    engines.append("mdoc")
    db = tuning_database(name, args)
    if db is None or not db.exists():
        row.notes["mdoc-tuned"] = "no tuning database"
    else:
        job["tuning_db"] = str(db)
        engines.append("mdoc-tuned")

    for engine in engines:
        say(f"{'session' if engine == 'onnxruntime' else 'compile'} {LABELS[engine]} ...")
        result = run_worker(engine, job, args.compile_timeout)
        if "peak_mib" in result:
            row.peak_mib[engine] = result["peak_mib"]
        if "error" in result:
            row.notes[engine] = result["error"]
            say(f"{LABELS[engine]} failed: {result['error']}")
            continue
        row.compile_s[engine] = result["compile_s"]
        say(f"{LABELS[engine]}: {result['compile_s']:.1f} s, peak {result['peak_mib']:.0f} MiB")

    # the callables timed here, each returning the outputs in onnxruntime's order
    session = ort_session(str(path), args.threads)
    names = [o.name for o in session.get_outputs()]
    candidates = {"onnxruntime": lambda: session.run(names, feeds)}
    if int8 is not None:
        session8 = ort_session(str(int8), args.threads)
        candidates["ort-int8"] = lambda: session8.run(names, feeds)
    if "tvm-importer" in row.compile_s:
        candidates["tvm-importer"] = tvm_importer_runner(work, feeds, input_order)
    for engine in ("mdoc", "mdoc-tuned"):
        if engine in row.compile_s:
            import mdoc

            fn = mdoc.load(work / engine)
            # one call per timed call (not one per output name), outputs in onnxruntime's order
            candidates[engine] = (lambda fn=fn: (lambda: list(map(fn(**feeds).__getitem__, names))))()

    expected = candidates["onnxruntime"]()
    per_call, caps = {}, {}
    for engine, fn in candidates.items():
        start = time.perf_counter()
        got = fn()  # warm-up and a first estimate of the call's length
        first = time.perf_counter() - start
        if engine != "onnxruntime":
            row.agree[engine] = agreement(expected, got)
        start = time.perf_counter()
        fn()
        t = min(first, time.perf_counter() - start)
        per_call[engine] = max(1, min(args.max_calls, round(args.block_ms / 1000 / max(t, 1e-6))))
        if engine == "tvm-importer" or t > args.slow_s:
            caps[engine] = args.tvm_rounds
        if t <= args.slow_s:
            for _ in range(args.warmup):
                fn()
    for engine, (ok, diff) in row.agree.items():
        if not ok:
            say(f"{LABELS[engine]} DISAGREES with onnxruntime (max abs diff {diff:.3g})")
    say(f"timing {', '.join(LABELS[e] for e in candidates)}: {args.rounds} rounds, calls per block "
        f"{per_call}" + (f", rounds capped {caps}" if caps else ""))
    timings = interleaved(candidates, rounds=args.rounds, calls=per_call, warmup=0, gap=args.gap, rounds_of=caps)
    for engine, timing in timings.items():
        row.ms[engine] = timing.median_ms
        row.samples[engine] = timing.samples
    shutil.rmtree(work, ignore_errors=True)
    return row


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _ms(row: Row, engine: str, with_ratio: bool = True) -> str:
    if engine not in row.ms:
        return row.notes.get(engine, "n/a")
    text = f"{row.ms[engine]:.2f}"
    if with_ratio and engine != "onnxruntime":
        text += f" ({row.ratio(engine):.2f}x)"
    return text


def _num(values: dict, engine: str, fmt: str) -> str:
    return format(values[engine], fmt) if engine in values else "-"


def markdown(rows: list[Row], args: argparse.Namespace, header: dict) -> str:
    lines = [
        "# Whole-model CPU latency: onnxruntime, TVM's ONNX importer, mdoc",
        "",
        f"Command: `{header['command']}`  ",
        f"Machine: {header['machine']}; load average (1 min) {header['load_start']:.2f} at the start, "
        f"{header['load_end']:.2f} at the end (shared machine: numbers are noisy)  ",
        f"Versions: {header['versions']}  ",
        f"Date: {header['date']}; {header['elapsed_min']:.1f} min; rounds {args.rounds} "
        f"(TVM importer {args.tvm_rounds}), idle gap {args.gap} s, blocks of about {args.block_ms:.0f} ms",
        "",
        "Medians of interleaved timed blocks (ms per call; inputs from numpy, outputs to numpy). "
        "`(Nx)` is the ratio to onnxruntime fp32 (above 1: slower). Compile is the wall time of "
        "import + build + export in a fresh process; peak is that process's max RSS for compile "
        "plus one call (onnxruntime: session + one call), Python and the libraries included. "
        f"Agree: outputs within rtol {RTOL}, atol {ATOL} of onnxruntime's.",
        "",
        "| model | onnxruntime ms | ort int8 | TVM importer ms (x ort) | mdoc -O2 ms (x ort) | mdoc tuned "
        "| compile s TVM / mdoc | peak MiB ort / TVM / mdoc | agree |",
        "| --- | ---: | --- | ---: | ---: | --- | --- | --- | --- |",
    ]
    for r in rows:
        dims = ", ".join(f"{k}={v}" for k, v in r.dims.items())
        agree = []
        for engine in ("ort-int8", "tvm-importer", "mdoc", "mdoc-tuned"):
            if engine in r.agree:
                ok, diff = r.agree[engine]
                agree.append(f"{LABELS[engine]} {'yes' if ok else f'NO ({diff:.2g})'}")
        lines.append(
            f"| {r.model}{f' ({dims})' if dims else ''} | {_ms(r, 'onnxruntime')} | {_ms(r, 'ort-int8')} "
            f"| {_ms(r, 'tvm-importer')} | {_ms(r, 'mdoc')} | {_ms(r, 'mdoc-tuned')} "
            f"| {_num(r.compile_s, 'tvm-importer', '.1f')} / {_num(r.compile_s, 'mdoc', '.1f')} "
            f"| {_num(r.peak_mib, 'onnxruntime', '.0f')} / {_num(r.peak_mib, 'tvm-importer', '.0f')} / "
            f"{_num(r.peak_mib, 'mdoc', '.0f')} | {'; '.join(agree) or '-'} |")
    failures = [(r.model, e, r.notes[e]) for r in rows for e in ("tvm-importer", "mdoc", "mdoc-tuned")
                if e in r.notes and r.notes[e] not in ("skipped", "no tuning database")]
    if failures:
        lines += ["", "Failures:", ""]
        lines += [f"- {m}, {LABELS[e]}: {why}" for m, e, why in failures]
    return "\n".join(lines) + "\n"


def chart(rows: list[Row], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'); no chart"
    engines = [e for e in ("ort-int8", "tvm-importer", "mdoc", "mdoc-tuned") if any(e in r.ms for r in rows)]
    fig, ax = plt.subplots(figsize=(max(6.0, 2.2 + 1.8 * len(rows)), 4.5))
    width = 0.8 / max(1, len(engines))
    ratios = [r.ratio(e) or 0.0 for r in rows for e in engines]
    for i, engine in enumerate(engines):
        xs = [j + (i - (len(engines) - 1) / 2) * width for j in range(len(rows))]
        ys = [r.ratio(engine) or 0.0 for r in rows]
        bars = ax.bar(xs, ys, width, label=LABELS[engine])
        for bar, y in zip(bars, ys):
            if y:
                ax.annotate(f"{y:.2f}x" if y < 10 else f"{y:.0f}x", (bar.get_x() + bar.get_width() / 2, y),
                            ha="center", va="bottom", fontsize=8)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--", label="onnxruntime fp32")
    shown = [r for r in ratios if r > 0]
    if shown and max(shown + [1.0]) / min(shown + [1.0]) > 10:  # else the bars near 1x are unreadable
        ax.set_yscale("log")
    ax.set_xticks(range(len(rows)), [r.model for r in rows])
    ax.set_ylabel("latency / onnxruntime latency (lower is better)")
    ax.set_title("Whole-model CPU latency relative to onnxruntime")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _header(args: argparse.Namespace, load_start: float, started: float) -> dict:
    import onnxruntime
    import tvm

    import mdoc

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from mdoc.targets.presets import resolve_target

    return {
        "command": "/work/venv/bin/python benchmarks/models.py" + (" " + " ".join(args.argv) if args.argv else ""),
        "machine": f"{cpu}, {_cores()} cores, {platform.system()} {platform.machine()}; "
                   f"target {args.target} = {json.dumps(resolve_target(args.target).tvm)}",
        "versions": f"onnxruntime {onnxruntime.__version__}, TVM {tvm.__version__}, mdoc {mdoc.__version__}, "
                    f"Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "elapsed_min": (time.time() - started) / 60,
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma-separated zoo names or .onnx paths (default: %(default)s)")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                   help="size of a symbolic input dim (default N=1, S=128; others 1)")
    p.add_argument("-t", "--target", default="x86", help="mdoc target preset, also used for TVM's importer build")
    p.add_argument("--rounds", type=int, default=None, help="interleaved timed rounds (default 20; --quick: 3)")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 rounds, short blocks, short gaps")
    p.add_argument("--no-tvm-importer", dest="tvm_importer", action="store_false",
                   help="leave out TVM's own ONNX importer")
    p.add_argument("--tvm-rounds", type=int, default=3, help="rounds for TVM's importer (or any call over --slow-s)")
    p.add_argument("--slow-s", type=float, default=0.25, help="a call this long counts as slow: capped rounds")
    p.add_argument("--block-ms", type=float, default=None, help="target length of a timed block (default 150)")
    p.add_argument("--max-calls", type=int, default=50, help="most calls in one timed block")
    p.add_argument("--warmup", type=int, default=3, help="warm-up calls per engine before timing")
    p.add_argument("--gap", type=float, default=None, help="idle seconds before every timed block (default 0.5)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (default: all cores)")
    p.add_argument("--tuning-db", help="tuning database for 'mdoc tuned' (default: benchmarks/tuning/<model>/)")
    p.add_argument("--compile-timeout", type=float, default=900, help="seconds one engine's compile may take")
    p.add_argument("--out", default=str(RESULTS), help="folder for latest.md and latest.png (default: %(default)s)")
    args = p.parse_args(argv)
    args.argv = argv
    args.rounds = args.rounds or (3 if args.quick else 20)
    args.block_ms = args.block_ms or (40.0 if args.quick else 150.0)
    args.gap = args.gap if args.gap is not None else (0.2 if args.quick else 0.5)
    if args.quick:
        args.tvm_rounds = min(args.tvm_rounds, 1)
        args.warmup = min(args.warmup, 1)
    args.dims = {}
    for item in args.dim:
        k, eq, v = item.partition("=")
        if not eq or not v.strip().isdigit():
            p.error(f"--dim {item!r} is not NAME=SIZE")
        args.dims[k.strip()] = int(v)
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1], argv[2])
    args = parse_args(argv)
    started, load_start = time.time(), os.getloadavg()[0]
    print(f"load average {load_start:.2f}; TVM_NUM_THREADS={os.environ['TVM_NUM_THREADS']}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mdoc-bench-models-") as tmp:
        for spec in [s.strip() for s in args.models.split(",") if s.strip()]:
            print(f"{spec}:", flush=True)
            rows.append(bench_model(spec, args, Path(tmp)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, args, _header(args, load_start, started))
    (out / "latest.md").write_text(table)
    problem = chart(rows, out / "latest.png")
    print()
    print(table)
    print(problem or f"wrote {out / 'latest.md'} and {out / 'latest.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
