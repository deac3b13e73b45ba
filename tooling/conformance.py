"""The ONNX conformance runner: onnx's operator test cases through mdoc, with onnxruntime beside it.

onnx ships its operator conformance suite as generators
(`onnx.backend.test.case.node.collect_testcases`, plus a few small whole models
in `...case.model`): each case is a model with input tensors and the expected
outputs. This module runs every case through mdoc (engine "mdoc", `MdocBackend`:
import, passes, Relax, TVM build for this host's x86 preset, run; operands that
lowering wants as constants are bound, one version per value) and through
onnxruntime, classifies each result and writes a table by op type. Engine
"mdoc-artifact" runs mdoc as the command line does: one artifact per case, built
with no input bound (`mdoc compile`), run on every data set of the case (`mdoc run`).

Classification (the same for both engines):

    passed         every output matches in count, shape, dtype and values
    import failure mdoc's frontend or verifier refused the model
    build failure  the pass pipeline, the Relax lowering or the TVM build failed
                   (onnxruntime: creating the session failed)
    run failure    running the compiled model failed, or the worker died running it
    wrong result   outputs differ: count, shape, dtype, or values beyond tolerance
    timeout        the case ran past the time limit; its worker was killed
    out of scope   training ops and string processing, which mdoc does not aim at
                   (OUT_OF_SCOPE_OPS, or any string tensor among the graph's inputs
                   and outputs); mdoc does not run them, onnxruntime does
    not tensor     an input or output is a sequence, optional or map; skipped by both

Values are compared as onnx's own backend test runner compares them
(`np.testing.assert_allclose`, NaN equal to NaN, bfloat16 with two ulps), with
rtol and atol the looser of the case's own and the floors given (1e-3 and 1e-5
by default; onnx's cases carry rtol 1e-3, atol 1e-7).

Cases run in a pool of worker processes (spawned, so that no TVM thread pool is
forked; one thread each for TVM and onnxruntime), one case at a time per
worker. A case that runs past the limit is a timeout: its worker is killed and
replaced. A worker that dies (a crash in TVM) fails the case in the stage it
had reported last. Workers are recycled after `RECYCLE_AFTER` cases.

Results are cached under `.cache/conformance/` of the source checkout (or
`~/.cache/mdoc/conformance` for an installed mdoc), one JSON file per engine
and configuration: for mdoc the key holds the mdoc version, a hash of every
`.py` file of `mdoc`, `mdoc.passes` and `mdoc.targets`, the pipeline, the
tolerances and the onnx and TVM versions, so any edit to the compiler reruns
everything; onnxruntime's results are keyed by its and onnx's versions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import multiprocessing
import os
import random
import re
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import numpy as np

# -- classification -----------------------------------------------------------
PASS, IMPORT, BUILD, RUN, WRONG, TIMEOUT, SCOPE, NOT_TENSOR = (
    "pass", "import", "build", "run", "wrong", "timeout", "out-of-scope", "not-tensor")
FAILURES = (IMPORT, BUILD, RUN, WRONG, TIMEOUT)
LABELS = {PASS: "passed", IMPORT: "import failure", BUILD: "build failure", RUN: "run failure",
          WRONG: "wrong result", TIMEOUT: "timeout", SCOPE: "out of scope", NOT_TENSOR: "not tensor"}

# Backend stages (MdocBackend's BackendError.stage, and the worker's progress reports) -> status.
STAGE_STATUS = {"import": IMPORT, "optimize": BUILD, "lower": BUILD, "build": BUILD, "load": BUILD,
                "run": RUN, "compare": WRONG, "session": BUILD, "start": RUN}

# Ops mdoc does not aim to compile: training (ai.onnx.preview.training and Gradient) and
# string processing. Cases with any string tensor among the graph's inputs and outputs
# (LabelEncoder and CategoryMapper on strings, Equal on strings, ...) are out of scope too.
OUT_OF_SCOPE_OPS = {
    "Adagrad": "training", "Adam": "training", "Momentum": "training", "Gradient": "training",
    "StringNormalizer": "strings", "RegexFullMatch": "strings", "StringConcat": "strings",
    "StringSplit": "strings", "CategoryMapper": "strings",
}

ENGINES = ("mdoc", "onnxruntime")
# The engines that run mdoc: "mdoc" is the onnx Backend (it binds the operands that lowering needs as
# constants and compiles one version per value), "mdoc-artifact" does what `mdoc compile` + `mdoc run` do.
MDOC_ENGINES = ("mdoc", "mdoc-artifact")
DEFAULT_RTOL, DEFAULT_ATOL = 1e-3, 1e-5
DEFAULT_TIMEOUT = 60.0
RECYCLE_AFTER = 100


@dataclass
class Case:
    """One test case, ready to send to a worker (plain data, picklable)."""

    name: str
    op: str
    model: bytes
    inputs: list[list[np.ndarray]]
    outputs: list[list[np.ndarray]]
    rtol: float = 1e-3
    atol: float = 1e-7
    skip: str | None = None  # SCOPE or NOT_TENSOR
    skip_reason: str = ""
    source: str = "node"

    @classmethod
    def from_model(cls, name: str, model, inputs: list[np.ndarray], outputs: list[np.ndarray], *,
                   op: str | None = None, rtol: float = 1e-3, atol: float = 1e-7) -> "Case":
        """A case from an onnx ModelProto and one data set (what onnx's generators make, or your own)."""
        skip, reason = scope_of(model)
        op = op or (model.graph.node[0].op_type if model.graph.node else "?")
        return cls(name, op, model.SerializeToString(), [[_array(a) for a in inputs]],
                   [[_array(a) for a in outputs]], rtol, atol, skip, reason, "custom")


# -- collecting the cases ---------------------------------------------------------
def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


class _OpNamer:
    """The op a case tests: its node's op for one-node graphs, else guessed from the case name."""

    def __init__(self, single: dict[str, str]):
        import onnx.defs

        self.single = single
        self.prefixes: list[tuple[str, str]] = []
        for schema in onnx.defs.get_all_schemas_with_history():
            for spelling in {_snake(schema.name), schema.name.lower()}:
                self.prefixes.append((spelling, schema.name))
        self.prefixes.sort(key=lambda p: -len(p[0]))

    def __call__(self, name: str, ops: list[str]) -> str:
        m = re.match(r"(.*?)_expanded(_ver\d+)?$", name)
        base = m.group(1) if m else name
        op = self.single.get(base) if m else (ops[0] if len(set(ops)) == 1 else None)
        if op is None:
            stem = base[len("test_"):] if base.startswith("test_") else base
            stem = stem[len("ai_onnx_ml_"):] if stem.startswith("ai_onnx_ml_") else stem
            op = next((o for p, o in self.prefixes if stem == p or stem.startswith(p + "_")), None)
        op = op or (Counter(ops).most_common(1)[0][0] if ops else "?")
        return f"{op} (expanded)" if m else op


def scope_of(proto) -> tuple[str | None, str]:
    """(NOT_TENSOR or SCOPE, why) for a model mdoc does not run, else (None, "")."""
    from onnx import TensorProto

    g = proto.graph
    for v in list(g.input) + list(g.output):
        if not v.type.HasField("tensor_type"):
            return NOT_TENSOR, f"'{v.name}' is a {v.type.WhichOneof('value')}"
    for n in g.node:
        if n.op_type in OUT_OF_SCOPE_OPS:
            return SCOPE, f"{n.op_type} ({OUT_OF_SCOPE_OPS[n.op_type]})"
    for v in list(g.input) + list(g.output):
        if v.type.tensor_type.elem_type == TensorProto.STRING:
            return SCOPE, f"string tensor '{v.name}'"
    return None, ""


def _array(a: Any) -> Any:
    """A case's datum as numpy: TensorProto (float8, int4, ...) and numpy scalars too; lists and None stay."""
    from onnx import TensorProto, numpy_helper

    if isinstance(a, TensorProto):
        return numpy_helper.to_array(a)
    if isinstance(a, np.generic):
        return np.asarray(a)
    return a


def collect_cases(include_models: bool = True) -> list[Case]:
    """onnx's node test cases (and its small whole-model cases), sorted by name."""
    import warnings

    with warnings.catch_warnings():  # the generators divide by zero and overflow on purpose
        warnings.simplefilter("ignore")
        from onnx.backend.test.case import model as model_cases
        from onnx.backend.test.case import node as node_cases

        raw = [("node", c) for c in node_cases.collect_testcases(None)]
        if include_models:
            raw += [("model", c) for c in model_cases.collect_testcases() if c.model is not None and c.data_sets]
    single = {c.name: c.model.graph.node[0].op_type for _, c in raw if len(c.model.graph.node) == 1}
    namer = _OpNamer(single)
    cases = []
    for source, c in raw:
        proto = c.model
        skip, reason = scope_of(proto)
        ins = [[_array(a) for a in i] for i, _ in c.data_sets]
        outs = [[_array(a) for a in o] for _, o in c.data_sets]
        if skip is None and any(not isinstance(a, np.ndarray) for a in (x for d in ins + outs for x in d)):
            skip, reason = NOT_TENSOR, "its data are sequences or optionals"
        cases.append(Case(c.name, namer(c.name, [n.op_type for n in proto.graph.node]), proto.SerializeToString(),
                          ins, outs, float(c.rtol), float(c.atol), skip, reason, source))
    cases.sort(key=lambda c: c.name)
    return cases


def select(cases: list[Case], pattern: str | None = None, sample: int | None = None, seed: int = 0) -> list[Case]:
    """Cases whose name matches `pattern`; then a fixed sample of `sample` runnable cases.

    The sample is deterministic: one case per op type (chosen with `seed`), then
    every k-th of the remaining cases sorted by name until there are `sample`.
    """
    if pattern:
        rx = re.compile(pattern)
        cases = [c for c in cases if rx.search(c.name)]
    if sample is None or sample >= len(cases):
        return cases
    runnable = sorted((c for c in cases if c.skip is None), key=lambda c: c.name)
    rng = random.Random(seed)
    by_op: dict[str, list[Case]] = defaultdict(list)
    for c in runnable:
        by_op[c.op].append(c)
    ops = sorted(by_op)
    if sample < len(ops):
        ops = sorted(rng.sample(ops, sample))
    chosen = {rng.choice(by_op[op]).name for op in ops}
    rest = [c for c in runnable if c.name not in chosen]
    extra = sample - len(chosen)
    if extra > 0 and rest:
        step = len(rest) / extra
        chosen |= {rest[int(i * step)].name for i in range(min(extra, len(rest)))}
    return [c for c in runnable if c.name in chosen]


# -- comparing ----------------------------------------------------------------------
def compare(outputs: Sequence[Any], expected: Sequence[np.ndarray], rtol: float, atol: float,
            names: Sequence[str] = ()) -> str | None:
    """None when `outputs` match `expected` as onnx's backend test runner checks; else why not."""
    if len(outputs) != len(expected):
        return f"{len(outputs)} outputs, expected {len(expected)}"
    for i, (out, ref) in enumerate(zip(outputs, expected)):
        label = f"output {i}" + (f" ('{names[i]}')" if i < len(names) else "")
        out, ref = np.asarray(out), np.asarray(ref)
        if out.shape != ref.shape:
            return f"{label}: shape {list(out.shape)}, expected {list(ref.shape)}"
        if ref.dtype == object:
            if not np.array_equal(out, ref):
                return f"{label}: strings differ"
            continue
        if out.dtype != ref.dtype:
            return f"{label}: dtype {out.dtype}, expected {ref.dtype}"
        r = rtol
        if out.dtype.name == "bfloat16":
            r, out, ref = max(rtol, 2 ** -6), out.astype(np.float32), ref.astype(np.float32)
        elif out.dtype.kind not in "biufc":  # float8 and other ml_dtypes: compare as float32
            out, ref = out.astype(np.float32), ref.astype(np.float32)
        if out.dtype == bool:
            bad = out != ref
        else:
            with np.errstate(all="ignore"):
                close = np.isclose(out, ref, rtol=r, atol=atol, equal_nan=True)
            bad = ~close
        if bad.any():
            n = int(bad.sum())
            where = tuple(int(k) for k in np.argwhere(bad)[0])
            got, want = (out[where], ref[where]) if out.ndim else (out, ref)
            return (f"{label}: {n} of {out.size} values differ "
                    f"(first at {list(where)}: {_item(got)}, expected {_item(want)})")
    return None


def _item(v: Any) -> str:
    return repr(v.item()) if isinstance(v, np.ndarray | np.generic) else repr(v)


# -- running one case (in a worker) --------------------------------------------------
@dataclass(frozen=True)
class Options:
    pipeline: str | None = None
    opt_level: int = 2
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL

    def tolerances(self, case: Case) -> tuple[float, float]:
        return max(self.rtol, case.rtol), max(self.atol, case.atol)


def _feeds(proto, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    inits = {t.name for t in proto.graph.initializer}
    names = [v.name for v in proto.graph.input if v.name not in inits]
    return dict(zip(names, arrays))


def _run_mdoc(case: Case, opts: Options, progress: Callable[[str], None]) -> dict:
    import onnx

    from .onnx_backend import BackendError, MdocBackend, first_line

    proto = onnx.load_from_string(case.model)
    rtol, atol = opts.tolerances(case)
    try:
        rep = MdocBackend.prepare(proto, pipeline=opts.pipeline, opt_level=opts.opt_level, progress=progress)
        for ins, outs in zip(case.inputs, case.outputs):
            got = rep.run(_feeds(proto, ins))
            progress("compare")
            why = compare(list(got), outs, rtol, atol, rep.output_names)
            if why:
                return {"status": WRONG, "stage": "compare", "message": why}
    except BackendError as e:
        return {"status": STAGE_STATUS[e.stage], "stage": e.stage, "message": e.detail}
    except Exception as e:  # a bug in the backend itself
        return {"status": RUN, "stage": "backend", "message": first_line(e)}
    return {"status": PASS}


def _run_mdoc_artifact(case: Case, opts: Options, progress: Callable[[str], None]) -> dict:
    """What `mdoc compile` + `mdoc run` do: ONE artifact per case, no input bound, run on every data set.

    The onnx Backend ("mdoc") compiles a version per value of an operand that lowering wants as a
    constant, which hides operands the artifact cannot take at run time; this engine does not.
    """
    import onnx

    from mdoc.api import compile as compile_model
    from mdoc.api import load
    from mdoc.onnx_import import import_model

    from .onnx_backend import first_line

    proto = onnx.load_from_string(case.model)
    rtol, atol = opts.tolerances(case)
    names = [v.name for v in proto.graph.output]
    progress("import")
    try:
        model = import_model(proto)
    except Exception as e:
        return {"status": IMPORT, "stage": "import", "message": first_line(e)}
    with tempfile.TemporaryDirectory(prefix="mdoc-conformance-") as tmp:
        progress("build")
        try:
            artifact = load(compile_model(model, "x86", Path(tmp) / "case.mdoc", pipeline=opts.pipeline,
                                          show_progress=False))
        except Exception as e:
            return {"status": BUILD, "stage": "build", "message": first_line(e)}
        for ins, outs in zip(case.inputs, case.outputs):
            progress("run")
            try:
                got = list(artifact(**_feeds(proto, ins)).values())
            except Exception as e:
                return {"status": RUN, "stage": "run", "message": first_line(e).replace(f"{tmp}/case.mdoc: ", "")}
            progress("compare")
            why = compare(got, outs, rtol, atol, names)
            if why:
                return {"status": WRONG, "stage": "compare", "message": why}
    return {"status": PASS}


def _run_onnxruntime(case: Case, opts: Options, progress: Callable[[str], None]) -> dict:
    import onnx
    import onnxruntime as ort

    from .onnx_backend import first_line

    proto = onnx.load_from_string(case.model)
    rtol, atol = opts.tolerances(case)
    progress("session")
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.log_severity_level = 4
    try:
        sess = ort.InferenceSession(case.model, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        return {"status": BUILD, "stage": "session", "message": first_line(e)}
    names = [o.name for o in sess.get_outputs()]
    for ins, outs in zip(case.inputs, case.outputs):
        progress("run")
        try:
            got = sess.run(None, _feeds(proto, ins))
        except Exception as e:
            return {"status": RUN, "stage": "run", "message": first_line(e)}
        progress("compare")
        why = compare(got, outs, rtol, atol, names)
        if why:
            return {"status": WRONG, "stage": "compare", "message": why}
    return {"status": PASS}


def _engine(name: str) -> Callable[[Case, Options, Callable[[str], None]], dict]:
    """'mdoc', 'mdoc-artifact', 'onnxruntime', or 'module:function' (another backend, or the harness's own tests)."""
    if name == "mdoc":
        return _run_mdoc
    if name == "mdoc-artifact":
        return _run_mdoc_artifact
    if name == "onnxruntime":
        return _run_onnxruntime
    module, _, fn = name.partition(":")
    return getattr(importlib.import_module(module), fn)


def run_case(engine: str, case: Case, opts: Options = Options(),
             progress: Callable[[str], None] = lambda stage: None) -> dict:
    """Run one case with `engine` in this process; a result dict with status, stage, message, seconds."""
    start = time.perf_counter()
    if case.skip:
        result = {"status": case.skip, "message": case.skip_reason}
    else:
        result = _engine(engine)(case, opts, progress)
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result


# -- the worker pool -------------------------------------------------------------------
def _worker_main(conn, quiet: bool) -> None:
    """A worker: imports the engines once, then runs (engine, case, options) tasks until told to stop."""
    if quiet:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles ^C
    _exit_with_parent()
    import warnings

    warnings.simplefilter("ignore")
    try:
        import onnxruntime  # noqa: F401
        import tvm  # noqa: F401

        from . import onnx_backend  # noqa: F401
    except Exception:
        pass  # reported per case by the engine that needs it
    conn.send(("ready", None))
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        engine, case, opts = task
        try:
            result = run_case(engine, case, opts, progress=lambda stage: conn.send(("stage", stage)))
        except BaseException as e:  # noqa: BLE001  (anything the engine let through)
            tb = traceback.extract_tb(e.__traceback__)
            where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
            result = {"status": RUN, "stage": "engine", "message": f"{type(e).__name__}: {e}"[:300] + where}
        conn.send(("done", result))


def _exit_with_parent() -> None:
    """End this worker when the runner dies without stopping it (killed, or a case stuck in C code)."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class _Worker:
    def __init__(self, ctx, quiet: bool):
        parent, child = ctx.Pipe()
        self.conn = parent
        self.proc = ctx.Process(target=_worker_main, args=(child, quiet), daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.task: tuple | None = None
        self.started = 0.0
        self.stage = "start"
        self.done = 0

    def send(self, task: tuple) -> None:
        self.task, self.started, self.stage = task, time.monotonic(), "start"
        self.conn.send(task[1:])

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.conn.close()


def run_pool(tasks: Iterable[tuple[Any, str, Case, Options]], jobs: int, timeout: float,
             on_result: Callable[[Any, dict], None], quiet: bool = True) -> None:
    """Run (key, engine, case, options) tasks on `jobs` spawned workers; `on_result(key, result)` for each."""
    ctx = multiprocessing.get_context("spawn")
    pending = deque(tasks)
    workers = [_Worker(ctx, quiet) for _ in range(max(1, min(jobs, len(pending))))] if pending else []

    def replace(w: _Worker) -> None:
        w.kill()
        workers[workers.index(w)] = _Worker(ctx, quiet)

    try:
        while pending or any(w.task for w in workers):
            for w in workers:
                if w.ready and w.task is None and pending:
                    w.send(pending.popleft())
            busy = [w for w in workers if w.task]
            deadlines = [w.started + timeout for w in busy]
            wait_for = min(deadlines) - time.monotonic() if deadlines else 1.0
            wait([w.conn for w in workers] + [w.proc.sentinel for w in workers], timeout=max(0.0, min(wait_for, 1.0)))
            for w in list(workers):
                finished = None
                try:
                    while w.conn.poll():
                        kind, payload = w.conn.recv()
                        if kind == "ready":
                            w.ready = True
                        elif kind == "stage":
                            w.stage = payload
                        elif kind == "done":
                            finished = payload
                            break
                except (EOFError, OSError):
                    pass
                if finished is not None:
                    task, w.task = w.task, None
                    w.done += 1
                    on_result(task[0], finished)
                    if w.done >= RECYCLE_AFTER:
                        w.stop()
                        workers[workers.index(w)] = _Worker(ctx, quiet)
                    continue
                if not w.proc.is_alive():
                    code = w.proc.exitcode
                    if w.task is not None:
                        how = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit status {code}"
                        on_result(w.task[0], {"status": STAGE_STATUS.get(w.stage, RUN), "stage": w.stage,
                                              "message": f"worker died ({how}) during {w.stage}",
                                              "seconds": round(time.monotonic() - w.started, 3)})
                    elif not w.ready:
                        raise RuntimeError(f"a conformance worker failed to start (exit status {code})")
                    replace(w)
                elif w.task is not None and time.monotonic() - w.started > timeout:
                    on_result(w.task[0], {"status": TIMEOUT, "stage": w.stage, "timeout_s": timeout,
                                          "message": f"timed out after {timeout:g} s during {w.stage}",
                                          "seconds": round(time.monotonic() - w.started, 3)})
                    replace(w)
    finally:
        for w in workers:
            if w.task is None:
                w.stop()
            else:
                w.kill()


# -- the cache ---------------------------------------------------------------------------
def source_hash() -> str:
    """sha256 over every .py file of mdoc, mdoc.passes, mdoc.targets and mdoc.tooling (paths and contents)."""
    h = hashlib.sha256()
    for pkg in ("mdoc", "mdoc.passes", "mdoc.targets", "mdoc.tooling"):
        spec = importlib.util.find_spec(pkg)
        for root in spec.submodule_search_locations or []:
            root = Path(root)
            for f in sorted(root.rglob("*.py")):
                if "__pycache__" in f.parts:
                    continue
                h.update(f"{pkg}/{f.relative_to(root).as_posix()}\0".encode())
                h.update(f.read_bytes())
                h.update(b"\0")
    return h.hexdigest()


def default_cache_dir() -> Path:
    spec = importlib.util.find_spec("mdoc.tooling")
    here = Path(next(iter(spec.submodule_search_locations))).resolve()
    if (here.parent / "pyproject.toml").is_file():
        return here.parent / ".cache" / "conformance"
    return Path.home() / ".cache" / "mdoc" / "conformance"


def _version(module: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return "?"


def cache_identity(engine: str, opts: Options) -> dict:
    """What a cached result of `engine` depends on, besides the case's name."""
    ident = {"engine": engine, "onnx": _version("onnx"), "rtol": opts.rtol, "atol": opts.atol}
    if engine in MDOC_ENGINES:
        from mdoc import __version__

        ident.update(mdoc=__version__, source=source_hash(), pipeline=_pipeline_text(opts),
                     tvm=_version("apache-tvm"))
    elif engine == "onnxruntime":
        ident.update(onnxruntime=_version("onnxruntime"))
    else:
        ident.update(source=source_hash())
    return ident


class ResultCache:
    """Results of one engine and configuration: {case name: result}, in one JSON file."""

    def __init__(self, folder: Path | None, identity: dict):
        self.identity = identity
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        label = re.sub(r"\W", "_", identity["engine"])
        version = identity.get("mdoc") or identity.get("onnxruntime") or ""
        self.path = folder / f"{label}-{version}-{key}.json" if folder else None
        self.results: dict[str, dict] = {}
        self._dirty = 0
        self._last = time.monotonic()
        if self.path and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                if data.get("identity") == identity:
                    self.results = data.get("results", {})
            except (OSError, ValueError):
                pass

    def get(self, name: str, timeout: float) -> dict | None:
        r = self.results.get(name)
        if r is not None and r.get("status") == TIMEOUT and r.get("timeout_s", 0) < timeout:
            return None  # a longer limit might let it finish
        return r

    def put(self, name: str, result: dict) -> None:
        self.results[name] = result
        self._dirty += 1
        if self._dirty >= 50 or time.monotonic() - self._last > 30:
            self.save()

    def save(self) -> None:
        if not self.path or not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        from mdoc.atomic import write_text

        write_text(self.path, json.dumps({"identity": self.identity, "results": self.results}, indent=0, sort_keys=True))
        self._dirty, self._last = 0, time.monotonic()


# -- the run -----------------------------------------------------------------------------------
def _pipeline_text(opts: Options) -> str:
    if opts.pipeline is not None:
        return opts.pipeline
    from .onnx_backend import available_pipeline

    return available_pipeline(opts.opt_level)[0]


@dataclass
class Report:
    cases: list[Case]
    results: dict[str, dict[str, dict]]  # engine -> case name -> result
    engines: tuple[str, ...]
    meta: dict = field(default_factory=dict)

    def status(self, engine: str, case: Case) -> str:
        return self.results[engine][case.name]["status"]

    def as_json(self) -> dict:
        return {"meta": self.meta,
                "cases": [{"name": c.name, "op": c.op, "source": c.source,
                           **{e: self.results[e][c.name] for e in self.engines}} for c in self.cases]}


def run_conformance(cases: list[Case], *, engines: Sequence[str] = ENGINES, jobs: int | None = None,
                    timeout: float = DEFAULT_TIMEOUT, opts: Options = Options(), cache_dir: Path | None = None,
                    use_cache: bool = True, echo: Callable[[str], None] | None = None,
                    quiet_workers: bool = True) -> Report:
    """Run `cases` with each engine (cached results reused), echoing one line per case as it completes."""
    jobs = jobs or os.cpu_count() or 1
    start = time.time()
    mdoc_engine = next((e for e in engines if e in MDOC_ENGINES), None)
    opts = dataclasses.replace(opts, pipeline=_pipeline_text(opts)) if mdoc_engine else opts
    caches = {e: ResultCache(cache_dir, cache_identity(e, opts)) for e in engines}
    results: dict[str, dict[str, dict]] = {e: {} for e in engines}
    tasks = []
    for case in cases:
        for e in engines:
            # Out-of-scope cases: mdoc does not run them; onnxruntime and other engines do.
            if case.skip == NOT_TENSOR or (case.skip == SCOPE and e in MDOC_ENGINES):
                results[e][case.name] = {"status": case.skip, "message": case.skip_reason, "seconds": 0.0}
                continue
            cached = caches[e].get(case.name, timeout) if use_cache else None
            if cached is not None:
                results[e][case.name] = dict(cached, cached=True)
            else:
                runnable = case if case.skip is None else dataclasses.replace(case, skip=None)
                tasks.append(((e, case.name), e, runnable, opts))
    fresh = len(tasks)
    total = len(cases)
    done_cases = {c.name for c in cases if all(c.name in results[e] for e in engines)}
    if echo:
        echo(f"{total} cases, {len(done_cases)} complete from the cache, {fresh} runs to do on {jobs} workers "
             f"(timeout {timeout:g} s)")

    def on_result(key: tuple[str, str], result: dict) -> None:
        engine, name = key
        results[engine][name] = result
        caches[engine].put(name, result)
        if echo and all(name in results[e] for e in engines):
            done_cases.add(name)
            cols = "  ".join(f"{e}: {_short(results[e][name])}" for e in engines)
            echo(f"[{len(done_cases):>5}/{total}] {name:<58} {cols}")

    try:
        run_pool(tasks, jobs, timeout, on_result, quiet=quiet_workers)
    finally:
        for c in caches.values():
            c.save()
    missing = [(e, c.name) for c in cases for e in engines if c.name not in results[e]]
    if missing:
        raise RuntimeError(f"{len(missing)} runs produced no result (first: {missing[0]})")
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "wall_s": round(time.time() - start, 1), "jobs": jobs,
        "timeout_s": timeout, "rtol": opts.rtol, "atol": opts.atol, "cases": total, "fresh_runs": fresh,
        "versions": {"onnx": _version("onnx"), "onnxruntime": _version("onnxruntime"),
                     "apache-tvm": _version("apache-tvm")},
    }
    if mdoc_engine:
        from mdoc import __version__

        source = caches[mdoc_engine].identity["source"]
        meta.update(mdoc=__version__, source=source[:12], pipeline=opts.pipeline)
        if fresh and source_hash() != source:
            meta["warning"] = ("mdoc's sources changed during the run: workers started after the change ran the "
                               "new code, but the results are filed under the old source hash")
    return Report(cases, results, tuple(engines), meta)


def _short(r: dict) -> str:
    s = r["status"]
    text = LABELS.get(s, s)
    return f"{text:<14}" if s == PASS else f"{text:<14} {r.get('message', '')[:60]}"


# -- the report --------------------------------------------------------------------------------
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"(?<![\w.])-?\d+(\.\d+)?(e[-+]?\d+)?(?![\w.])")


def message_group(message: str) -> str:
    """A failure message with its case-specific parts (names, numbers, values) blanked, for grouping."""
    m = re.sub(r"\(first at .*\)$", "", message or "")
    m = _QUOTED.sub("'…'", m)
    m = re.sub(r"%[\w.]+", "%…", m)
    m = re.sub(r"(?<![\w.])/[^\s:'\"]+", "<path>", m)
    m = re.sub(r"\[[^\[\]]*\]", "[…]", m)
    m = _NUMBER.sub("N", m)
    return re.sub(r"\s+", " ", m).strip()


# Coarse families of mdoc failures, first match wins: the summary that says what to work on next.
FAMILIES = (
    ("importer's opset range", re.compile(r"default-domain opset \d+ is outside")),
    ("no Relax converter", re.compile(r"has no Relax converter")),
    ("operand must be a compile-time constant", re.compile(r"must be a constant|must be known at compile time")),
    ("needs static dims", re.compile(r"needs static")),
    ("element type without a TVM equivalent", re.compile(r"has no TVM equivalent|is not a valid DType")),
    ("TVM check failed", re.compile(r"InternalError|Check failed|TVMError")),
    ("converter refuses an attribute", re.compile(r"is not supported")),
)


def failure_family(message: str) -> str:
    return next((name for name, rx in FAMILIES if rx.search(message or "")), "other")


def _pct(n: int, d: int) -> str:
    return f"{n} ({100.0 * n / d:.1f}%)" if d else str(n)


def _cell(n: int) -> str:
    return str(n) if n else ""


def render_markdown(report: Report, top: int = 30) -> str:
    cases, engines = report.cases, report.engines
    m = report.meta
    tensor = [c for c in cases if c.skip != NOT_TENSOR]
    in_scope = [c for c in tensor if c.skip != SCOPE]
    lines = ["# ONNX conformance: mdoc and onnxruntime", ""]
    desc = []
    if "mdoc" in m:
        desc.append(f"mdoc {m['mdoc']} (source {m['source']}, pipeline `{m['pipeline'] or '(none)'}`)")
    v = m.get("versions", {})
    desc.append(f"onnx {v.get('onnx')} test cases, onnxruntime {v.get('onnxruntime')}, "
                f"TVM {v.get('apache-tvm')}")
    lines += ["; ".join(desc) + ".",
              f"{len(cases)} cases ({len(tensor)} with plain tensor inputs and outputs, {len(in_scope)} in scope); "
              f"rtol {m.get('rtol')}, atol {m.get('atol')} (or the case's own when looser); "
              f"time limit {m.get('timeout_s'):g} s per case; {m.get('jobs')} workers; run {m.get('date')}, "
              f"{m.get('wall_s')} s wall ({m.get('fresh_runs')} fresh runs, the rest from the cache).", ""]
    if m.get("warning"):
        lines += [f"**Warning:** {m['warning']}.", ""]

    lines += ["## Totals", "", "| result | " + " | ".join(engines) + " |",
              "| --- |" + " ---: |" * len(engines)]
    counts = {e: Counter(report.status(e, c) for c in cases) for e in engines}
    for s in (PASS,) + FAILURES + (SCOPE, NOT_TENSOR):
        lines.append(f"| {LABELS[s]} | " + " | ".join(str(counts[e][s]) for e in engines) + " |")
    lines.append("| **pass rate, tensor cases** | " + " | ".join(
        f"**{_pct(sum(report.status(e, c) == PASS for c in tensor), len(tensor))}**" for e in engines) + " |")
    lines.append("| pass rate, in-scope cases | " + " | ".join(
        _pct(sum(report.status(e, c) == PASS for c in in_scope), len(in_scope)) for e in engines) + " |")
    if "mdoc" in engines and "onnxruntime" in engines:
        behind = sum(report.status("onnxruntime", c) == PASS and report.status("mdoc", c) != PASS for c in in_scope)
        ahead = sum(report.status("mdoc", c) == PASS and report.status("onnxruntime", c) != PASS for c in in_scope)
        lines += ["", f"In scope, onnxruntime passes and mdoc fails {behind} cases; mdoc passes and onnxruntime "
                      f"fails {ahead}."]
    lines.append("")

    if "mdoc" in engines:
        families: dict[str, list[Case]] = defaultdict(list)
        for c in in_scope:
            r = report.results["mdoc"][c.name]
            if r["status"] in FAILURES:
                families[failure_family(r.get("message", ""))].append(c)
        lines += ["## mdoc's failures by family", "", "| cases | family | ops (cases) |", "| ---: | --- | --- |"]
        for name, cs in sorted(families.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"| {len(cs)} | {name} | {_md(_ops(cs, 12))} |")
        lines.append("")

    for e in engines:
        groups: dict[tuple[str, str], list[Case]] = defaultdict(list)
        for c in in_scope:
            r = report.results[e][c.name]
            if r["status"] in FAILURES:
                groups[(r["status"], message_group(r.get("message", "")))].append(c)
        if not groups:
            continue
        ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        limit = top if e == "mdoc" else min(top, 10)
        lines += [f"## Most common failures: {e}", "",
                  f"{len(ranked)} distinct causes (messages with names and numbers blanked); the top {limit}:", "",
                  "| cases | kind | message (first line) | ops |", "| ---: | --- | --- | --- |"]
        for (status, msg), cs in ranked[:limit]:
            lines.append(f"| {len(cs)} | {LABELS[status]} | {_md(msg)[:220]} | {_md(_ops(cs, 6))} |")
        lines.append("")

    lines += ["## By op type", "", "Passed / cases; failure columns count mdoc's failures.", "",
              "| op | " + " | ".join(f"{e} passed" for e in engines) + " | "
              + " | ".join(LABELS[s] for s in FAILURES) + " | not run |",
              "| --- |" + " ---: |" * (len(engines) + len(FAILURES) + 1)]
    by_op: dict[str, list[Case]] = defaultdict(list)
    for c in cases:
        by_op[c.op].append(c)
    main_engine = next((e for e in engines if e in MDOC_ENGINES), engines[0])
    for op in sorted(by_op, key=str.lower):
        cs = by_op[op]
        st = Counter(report.status(main_engine, c) for c in cs)
        passed = " | ".join(_ratio(report, e, cs) for e in engines)
        skipped = sum(1 for c in cs if c.skip)
        note = f"{skipped} ({'; '.join(sorted({LABELS[c.skip] for c in cs if c.skip}))})" if skipped else ""
        lines.append(f"| {_md(op)} | {passed} | " + " | ".join(_cell(st[s]) for s in FAILURES) + f" | {note} |")
    lines.append("")
    return "\n".join(lines)


def _ops(cases: list[Case], most: int) -> str:
    ops = Counter(c.op for c in cases)
    shown = ", ".join(f"{op} ({n})" if n > 1 else op for op, n in ops.most_common(most))
    return shown + (f", +{len(ops) - most} more" if len(ops) > most else "")


def _ratio(report: Report, engine: str, cases: list[Case]) -> str:
    ran = [c for c in cases if report.status(engine, c) not in (SCOPE, NOT_TENSOR)]
    return f"{sum(report.status(engine, c) == PASS for c in ran)}/{len(ran)}" if ran else "–"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# -- the command line ------------------------------------------------------------------------------
def main(*, filter: str | None = None, sample: int | None = None, seed: int = 0, jobs: int | None = None,
         timeout: float = DEFAULT_TIMEOUT, opt_level: int = 2, pipeline: str | None = None,
         rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL, use_cache: bool = True,
         cache_dir: str | Path | None = None, json_out: str | Path | None = None,
         markdown_out: str | Path | None = None, engines: Sequence[str] = ENGINES, with_models: bool = True,
         verbose: bool = True, echo: Callable[[str], None] = print) -> Report:
    """Collect, select, run, report: what `benchmarks/conformance.py` and `mdoc conformance` do."""
    def on_term(signum, frame):  # `kill PID` stops the workers and saves the cache, as ^C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background: let ^C-like SIGINT work
        signal.signal(signal.SIGINT, signal.default_int_handler)
    cases = select(collect_cases(with_models), filter, sample, seed)
    if not cases:
        raise ValueError(f"no case matches the filter '{filter}'")
    opts = Options(pipeline=pipeline, opt_level=opt_level, rtol=rtol, atol=atol)
    report = run_conformance(cases, engines=engines, jobs=jobs, timeout=timeout, opts=opts,
                             cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(),
                             use_cache=use_cache, echo=echo if verbose else None)
    if sample is not None:
        report.meta["sample"] = {"size": sample, "seed": seed}
    if filter:
        report.meta["filter"] = filter
    text = render_markdown(report)
    from mdoc.atomic import write_text

    if markdown_out:
        write_text(markdown_out, text)
    if json_out:
        write_text(json_out, json.dumps(report.as_json(), indent=1, default=str))
    echo("")
    echo(text)
    return report


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run benchmarks/conformance.py or `mdoc conformance`")
