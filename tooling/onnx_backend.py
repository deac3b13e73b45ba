"""mdoc as an `onnx.backend.base.Backend`: onnx's backend test machinery (and anyone's harness) can drive it.

    from mdoc.tooling.onnx_backend import MdocBackend
    rep = MdocBackend.prepare(model_proto)          # import -> passes -> Relax -> TVM build -> load
    (y,) = rep.run([x])                              # outputs in the model's output order

    import onnx.backend.test
    globals().update(onnx.backend.test.BackendTest(MdocBackend, __name__).test_cases)

`prepare` goes through the same stages as `mdoc compile`: the ONNX frontend
(import and verification), the pass pipeline, lowering into Relax, the TVM build
for the x86 preset of this host, then it loads the artifact (built in a temporary
folder that is removed once the library is loaded).

Symbolic dims. mdoc's kernels need static shapes, but `prepare` runs before any
input is known. When every graph input has static dims, `prepare` compiles at
once. Otherwise it only imports and checks the model, and the first `run`
compiles a version specialized to the shapes of the inputs it is given (every
input type is replaced by the given array's shape); later runs with the same
shapes reuse it, and runs with other shapes compile (and keep) another version.
`MdocRep.compiled_shapes` lists the versions built so far.

Operands needed at compile time (guarded specialization). Most operands ONNX
allows at run time are lowered as run-time values, the way `mdoc compile` takes
them (axes, split sizes, k, pads, repeats, scales, starts/ends/steps, ...). A
few the Relax target still wants as constants (Resize's scales or sizes with
mode=cubic or antialias, its roi beside scales, DFT's axis and length, an axes tensor of unknown
length); when such an operand is computed from graph inputs alone, lowering
raises `NeedsInputValue` naming those inputs. `prepare` then defers, and each
`run` compiles a version with those inputs bound to the values it is given
(`mdoc.specialize.bind_inputs`), kept in a cache keyed by shapes and the bound
values: a run with other values compiles another version (a guard, never a
stale answer). `MdocRep.bound_inputs` names the bound inputs. The conformance
engine "mdoc-artifact" compiles once without binding, as the command line does.

Failures raise `BackendError`, an `MdocError` whose `stage` says where it
happened: "import" (frontend or verifier), "optimize" (pass pipeline), "lower"
(no or a failing Relax converter), "build" (TVM build or export), "load" or
"run". The conformance runner classifies cases by it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep, Device, DeviceType, namedtupledict

from mdoc.errors import MdocError
from mdoc.ir import Model
from mdoc.pass_manager import OPT_LEVELS, PassManager, load_passes, parse_pipeline
from mdoc.specialize import bind_inputs
from mdoc.types import TensorType

STAGES = ("import", "optimize", "lower", "build", "load", "run")

# The TVM backend reports its progress with these step names (targets/tvm_backend.py).
_BACKEND_STEPS = {"lower to Relax": "lower", "build with TVM": "build", "export library": "build"}


class BackendError(MdocError):
    """A model failed in one stage of the backend; `stage` is one of STAGES."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.detail = message


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type's name."""
    line = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
    if isinstance(e, MdocError):
        return line or type(e).__name__
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def available_pipeline(level: int = 2) -> tuple[str, list[str]]:
    """The -O`level` pipeline restricted to the passes installed now, and the names it had to drop.

    The -O levels name passes that are still being written; until they land, the
    backend runs what is there rather than refusing every model.
    """
    installed = load_passes()
    names = [n.strip() for n in OPT_LEVELS[level].split(",") if n.strip()]
    kept = [n for n in names if n in installed]
    missing = sorted({n for n in names if n not in installed})
    return ",".join(kept), missing


def _static(model: Model) -> bool:
    return all(isinstance(v.type, TensorType) and v.type.shape is not None
               and all(isinstance(d, int) for d in v.type.shape) for v in model.graph.inputs)


class _Deferred(Exception):
    """Compilation needs the values of some graph inputs (`inputs`); `error` says which operand."""

    def __init__(self, error: MdocError):
        super().__init__(str(error))
        self.error = error
        self.inputs: tuple[str, ...] = tuple(error.inputs)


def _stage(stage: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except BackendError:
        raise
    except Exception as e:  # MdocError and anything TVM or a pass raises: one line naming the stage
        raise BackendError(stage, first_line(e)) from e


class MdocRep(BackendRep):
    """A prepared model: compiled now (static inputs) or on the first `run` (symbolic dims, bound inputs)."""

    def __init__(self, proto: onnx.ModelProto, *, target: str = "x86", opt_level: int = 2,
                 pipeline: str | None = None, progress: Callable[[str], None] | None = None,
                 keep_artifact: str | Path | None = None):
        self.proto = proto
        self.target = target
        self.pipeline = pipeline if pipeline is not None else available_pipeline(opt_level)[0]
        self.keep_artifact = Path(keep_artifact) if keep_artifact else None
        self._progress = progress or (lambda stage: None)
        inits = {t.name for t in proto.graph.initializer}
        self.input_names = [v.name for v in proto.graph.input if v.name not in inits]
        self.output_names = [v.name for v in proto.graph.output]
        self.bound_inputs: tuple[str, ...] = ()  # inputs whose values each compiled version is specialized to
        self._runners: dict[tuple, Callable[..., dict[str, np.ndarray]]] = {}
        model = self._import()
        self.static = _static(model)
        if self.static:
            try:
                self._runners[self._key(model, {})] = self._compile(model)
            except _Deferred as d:
                self.bound_inputs = d.inputs

    @property
    def compiled_shapes(self) -> list[tuple]:
        return [shapes for shapes, _ in self._runners]

    def _key(self, model: Model | None, feeds: dict[str, np.ndarray]) -> tuple:
        if model is not None:  # a static model compiled in `prepare`: its declared shapes
            shapes = tuple(tuple(v.type.shape) for v in model.graph.inputs)
        else:
            shapes = tuple(tuple(int(d) for d in np.shape(feeds[n])) for n in self.input_names if n in feeds)
        values = tuple((n, str(feeds[n].dtype), feeds[n].shape, feeds[n].tobytes()) for n in self.bound_inputs)
        return shapes, values

    def _import(self) -> Model:
        from mdoc.onnx_import import import_model
        from mdoc.verifier import verify

        self._progress("import")

        def run() -> Model:
            model = import_model(self.proto)
            verify(model)
            return model

        return _stage("import", run)

    def _compile(self, model: Model) -> Callable[..., dict[str, np.ndarray]]:
        from mdoc.targets.artifact import load
        from mdoc.targets.relax.context import NeedsInputValue
        from mdoc.targets.tvm_backend import BACKEND

        self._progress("optimize")
        passes = _stage("optimize", lambda: parse_pipeline(self.pipeline))
        _stage("optimize", lambda: PassManager(passes).run(model))
        stage = ["lower"]

        def step(name: str) -> None:
            stage[0] = _BACKEND_STEPS.get(name, stage[0])
            self._progress(stage[0])

        workdir = Path(tempfile.mkdtemp(prefix="mdoc-onnx-backend-"))
        try:
            out = self.keep_artifact or workdir / "model.mdoc"
            try:
                BACKEND.compile(model, self.target, out, pipeline=self.pipeline, progress=step)
            except NeedsInputValue as e:
                raise _Deferred(e) from e
            except Exception as e:
                raise BackendError(stage[0], first_line(e)) from e
            self._progress("load")
            return _stage("load", lambda: load(out))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _specialized(self, feeds: dict[str, np.ndarray]) -> Callable[..., dict[str, np.ndarray]]:
        if self.static and not self.bound_inputs:
            return next(iter(self._runners.values()))  # the artifact refuses other shapes, naming them
        key = self._key(None, feeds)
        if key in self._runners:
            return self._runners[key]
        for v in self.proto.graph.input:
            if v.name in self.input_names and v.name not in feeds:
                raise BackendError("run", f"input '{v.name}' is missing")
        while True:
            model = self._import()
            if not self.static:
                for v in model.graph.inputs:
                    t, shape = v.type, tuple(int(d) for d in np.shape(feeds[v.name]))
                    if not isinstance(t, TensorType) or (t.shape is not None and len(t.shape) != len(shape)):
                        raise BackendError("run", f"input '{v.name}' has shape {list(shape)}, the model declares {t}")
                    v.type = TensorType(t.dtype, shape)
            _stage("lower", lambda: bind_inputs(model, {n: feeds[n] for n in self.bound_inputs}))
            try:
                runner = self._compile(model)
            except _Deferred as d:
                new = tuple(n for n in d.inputs if n not in self.bound_inputs)
                if not new:
                    raise BackendError("lower", str(d.error)) from d
                self.bound_inputs = tuple(sorted(self.bound_inputs + new))
                key = self._key(None, feeds)
                continue
            self._runners[key] = runner
            return runner

    def run(self, inputs: Sequence[np.ndarray] | Mapping[str, np.ndarray] | np.ndarray, **kwargs: Any):
        """Outputs in the model's output order (a tuple that can also be indexed by output name)."""
        if isinstance(inputs, Mapping):
            feeds = {k: np.asarray(v) for k, v in inputs.items()}
        else:
            if isinstance(inputs, np.ndarray):
                inputs = [inputs]
            if len(inputs) > len(self.input_names):
                raise BackendError("run", f"{len(inputs)} inputs given, the model takes {len(self.input_names)} "
                                          f"({', '.join(self.input_names)})")
            feeds = {n: np.asarray(a) for n, a in zip(self.input_names, inputs)}
        runner = self._specialized(feeds)
        self._progress("run")
        try:
            results = runner(**{n: a for n, a in feeds.items() if n not in self.bound_inputs})
        except Exception as e:  # the artifact's messages name its temporary folder, which is gone: say "the model"
            path = getattr(runner, "path", None)
            message = first_line(e).replace(f"{path}: ", "") if path else first_line(e)
            raise BackendError("run", message) from e
        values = list(results.values())
        if len(values) != len(self.output_names):
            raise BackendError("run", f"the artifact returned {len(values)} outputs, the model has "
                                      f"{len(self.output_names)}")
        return namedtupledict("Outputs", self.output_names)(*values)


class MdocBackend(Backend):
    """onnx's Backend interface over mdoc: CPU only (the x86 preset of this host).

    Keyword arguments of `prepare` / `run_model`: `opt_level` (default 2, run with
    the passes installed now), `pipeline` (text, instead of `opt_level`), `target`
    (default "x86"), `progress` (called with each stage name), `keep_artifact`
    (a folder to keep the compiled artifact in).
    """

    @classmethod
    def supports_device(cls, device: str) -> bool:
        try:
            return Device(device).type == DeviceType.CPU
        except AttributeError:
            return False

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return cls.supports_device(device)

    @classmethod
    def prepare(cls, model: onnx.ModelProto | str | Path, device: str = "CPU", **kwargs: Any) -> MdocRep:
        if not cls.supports_device(device):
            raise BackendError("import", f"device '{device}' is not supported (mdoc's ONNX backend runs on CPU)")
        if not isinstance(model, onnx.ModelProto):
            model = onnx.load(str(model))
        allowed = {"opt_level", "pipeline", "target", "progress", "keep_artifact"}
        return MdocRep(model, **{k: v for k, v in kwargs.items() if k in allowed})

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Any, device: str = "CPU",
                 outputs_info: Sequence[tuple[np.dtype, tuple[int, ...]]] | None = None, **kwargs: Any):
        """Run one node on `inputs` (a list in the node's input order, or a dict by input name)."""
        from mdoc.onnx_import import MAX_OPSET

        names = [n for n in node.input if n]
        if isinstance(inputs, Mapping):
            arrays = [np.asarray(inputs[n]) for n in names]
        else:
            arrays = [np.asarray(a) for a in inputs]
        graph_inputs = [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                        for n, a in zip(names, arrays)]
        if outputs_info:
            graph_outputs = [onnx.helper.make_tensor_value_info(
                n, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dt)), shape)
                for n, (dt, shape) in zip(node.output, outputs_info)]
        else:
            graph_outputs = [onnx.helper.make_empty_tensor_value_info(n) for n in node.output if n]
        opset = kwargs.pop("opset_version", None) or min(onnx.defs.onnx_opset_version(), MAX_OPSET)
        graph = onnx.helper.make_graph([node], f"run_node_{node.op_type}", graph_inputs, graph_outputs)
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid(node.domain or "", opset)])
        if not outputs_info:
            inferred = onnx.shape_inference.infer_shapes(model)
            types = {v.name: v for v in inferred.graph.value_info}
            types.update({v.name: v for v in inferred.graph.output})
            del model.graph.output[:]
            model.graph.output.extend(types.get(n, onnx.helper.make_empty_tensor_value_info(n))
                                      for n in node.output if n)
        return cls.run_model(model, dict(zip(names, arrays)), device, **kwargs)


prepare = MdocBackend.prepare
run_model = MdocBackend.run_model
run_node = MdocBackend.run_node
supports_device = MdocBackend.supports_device
