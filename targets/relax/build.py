"""Build a lowered Relax module for CPU and run it with the Relax VM.

`build` runs, under the target:

1. dispatch (sampling, sort/scan) and `LegalizeOps` (Relax ops -> TOPI PrimFuncs),
2. `AnnotateTIROpPattern`, `FoldConstant` (weights are packed once here), `FuseOps`, `FuseTIR`,
3. the generic CPU schedule (`schedule.py`): every PrimFunc not marked as already
   scheduled gets parallel outer loops, vectorized inner loops and its
   elementwise stages inlined, so nothing is left as single-threaded scalar code,
4. TVM's dataflow lowering and VM finalization passes, then `tvm.compile`.

The result is a `tvm.runtime.Executable` (`ex.export_library(path)` writes a
self-contained .so when the module was lowered with constants).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
import tvm
from tvm import relax
from tvm.relax.transform import fast_math

from mdoc.errors import MdocError
from mdoc.ir import Model
from mdoc.types import TensorType

from ..cpu_description import CpuSpec
from ..storage import from_storage, to_storage
from .context import contiguous
from .lower import param_constants
from .fold import FoldConstantsNumpy
from .schedule import ScheduleCPU


def _as_target(target) -> tvm.target.Target:
    if isinstance(target, tvm.target.Target):
        return target
    if isinstance(target, str):
        raise MdocError(f"target {target!r}: TVM 0.27 takes targets as dicts, e.g. "
                        f"{{'kind': 'llvm', 'mcpu': 'znver4'}} (see mdoc.targets.presets.resolve_target)")
    return tvm.target.Target(dict(target))


@relax.expr_functor.mutator
class _FastMathCodegen(fast_math.FastMathCodeGenerator._cls):
    """TVM's fast-math rewriter, minus its crash on calls whose callee is a function, not an op."""

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        if isinstance(call.op, tvm.ir.Op):
            return super().visit_call_(call)
        return relax.PyExprMutator.visit_call_(self, call)


@tvm.transform.module_pass(opt_level=0, name="MdocFastMath")
class FastMath:
    """`relax.transform.FastMathTransform` for modules whose functions call each other (a lowered Loop
    is a recursive function): TVM's reads `call.op.name`, which a GlobalVar callee lacks."""

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        codegen = _FastMathCodegen(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                codegen.builder_.update_func(gv, codegen.visit_expr(func))
        return codegen.builder_.get()


@tvm.transform.module_pass(opt_level=0, name="MdocUnfusedScalarArgs")
class UnfusedScalarArgs:
    """Marks opaque every PrimFunc that some call_tir passes only scalars (run-time sizes, of
    `PrimType`), so that FuseOps keeps it out of groups.

    Such a kernel fused with the arithmetic after it makes FuseTIR fail ("VarRemapGet(source) ==
    nullptr") once the group also takes other shape vars: GPT-2's position ids start at the cache
    length (`shape_to_tensor(p)`), a decoder's `Range(past, past + seq)` is `arange(past)`.
    Unfused, each is one tiny kernel.
    """

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        call_tir = tvm.ir.Op.get("relax.call_tir")
        scalar_callees = set()

        def visit(expr) -> None:
            if isinstance(expr, relax.Call) and expr.op.same_as(call_tir) and isinstance(expr.args[1], relax.Tuple):
                fields = expr.args[1].fields
                # only scalars in: a tensor op that also takes its shape vars as scalars fuses as before
                if fields and all(isinstance(getattr(a, "ty", None), tvm.ir.PrimType) for a in fields):
                    scalar_callees.add(expr.args[0].name_hint)

        for _, func in mod.functions_items():
            if isinstance(func, relax.Function):
                relax.analysis.post_order_visit(func, visit)
        for gv, func in mod.functions_items():
            if isinstance(func, tvm.tirx.PrimFunc) and gv.name_hint in scalar_callees:
                mod[gv] = func.with_attr("op_pattern", 8)  # kOpaque
        return mod


def _front_passes(target: tvm.target.Target, schedule: bool, before_schedule=(), cpu: CpuSpec | None = None) -> list:
    passes = [
        # the NCHW copies of NCHWc kernel results that nothing reads (cpu_strategy._unpack)
        relax.transform.DeadCodeElimination(),
        # channels-last for the convs left as relax ops (those the kernel strategy in
        # cpu_strategy.py did not take, which keep NCHW): the generic schedule then vectorizes
        # over output channels, for any width, stride and group count
        # (conv2d_transpose stays NCHW: TOPI legalizes no other layout of it, and an NHWC one
        # inherited from a conv before it reached VM codegen unlowered)
        relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"],
                                       "relax.nn.conv2d_transpose": ["NCHW", "IOHW"]}),
        relax.transform.Normalize(),
        FoldConstantsNumpy(),  # the weight transposes above, in numpy (FoldConstant compiles each)
        # exp / erf / tanh / softmax as TOPI's polynomial versions: they vectorize, where the
        # libm calls that `exp` lowers to run one lane at a time (relative error ~1e-7)
        FastMath(),
        relax.backend.DispatchSampling(),
        relax.backend.DispatchSortScan(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        UnfusedScalarArgs(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ]
    # -- hook: tuned kernels (targets/tuning/apply.py) replace PrimFuncs here, before mdoc's schedule --
    return passes + list(before_schedule) + ([ScheduleCPU(cpu or CpuSpec.from_target(target))] if schedule else [])


def _back_passes() -> list:
    return [
        relax.transform.RewriteDataflowReshape(),
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
        relax.transform.StaticPlanBlockMemory(),
        relax.transform.LowerAllocTensor(),
        relax.transform.KillAfterLastUse(),
        relax.transform.LowerRuntimeBuiltin(),
        relax.transform.ComputePrimValue(),
        relax.transform.VMShapeLower(),
        relax.transform.AttachGlobalSymbol(),
    ]


def pipeline(target: tvm.target.Target, *, schedule: bool = True, before_schedule=(),
             cpu: CpuSpec | None = None) -> tvm.transform.Pass:
    """The Relax pass pipeline `build` runs (exposed for inspection and tests); the generic schedule
    tiles for `cpu`, by default the CPU the target names."""
    return tvm.transform.Sequential(_front_passes(target, schedule, before_schedule, cpu) + _back_passes(),
                                    name="mdoc_cpu_pipeline")


def optimize(mod: tvm.IRModule, target, *, schedule: bool = True) -> tvm.IRModule:
    """Legalize, fold, fuse and schedule `mod`, stopping before the VM lowering (for inspection)."""
    tgt = _as_target(target)
    with tgt:
        return tvm.transform.Sequential(_front_passes(tgt, schedule))(mod)


def build(mod: tvm.IRModule, target, *, schedule: bool = True, before_schedule=(),
          cpu: CpuSpec | None = None) -> tvm.runtime.Executable:
    """Compile a module from `lower` for a CPU target dict (`mdoc.targets.presets.resolve_target("x86").tvm`).

    `before_schedule`: module passes run on the fused PrimFuncs just before mdoc's generic
    schedule (the tuning database's `ApplyTuned`).
    """
    tgt = _as_target(target)
    with tgt:
        return _link(pipeline(tgt, schedule=schedule, before_schedule=before_schedule, cpu=cpu)(mod), tgt)


def _link(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.runtime.Executable:
    """`relax.build` after the Relax pipeline, with the host-side shape functions compiled apart.

    Why: a model with symbolic dims gets TIR shape functions (`tirx.is_host_func`, from
    VMShapeLower). Built in one `tirx.build` with them, every kernel of the module lost its
    separate noalias compute function (LLVM inlined it into the packed entry) and ran 2-2.5x
    slower: an NCHWc 512x7x7 conv took 2.5 ms in the VM against 1.06 ms alone, a static
    kernel just as much as a symbolic one. Built apart and linked as an import, they run at
    their standalone speed.
    """
    from tvm.relax import vm_build

    attrs = dict(mod.attrs) if mod.attrs is not None else {}
    builder = relax.ExecBuilder()
    mod = vm_build._vmcodegen(builder, mod, "bytecode")
    prims = {gv: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    host = {gv: f for gv, f in prims.items() if f.attrs is not None and bool(f.attrs.get("tirx.is_host_func", False))}
    kernels = {gv: f for gv, f in prims.items() if gv not in host}
    lib = tvm.tirx.build(tvm.IRModule(kernels, attrs=mod.attrs), target=target) if kernels else None
    if host:
        shapes = tvm.tirx.build(tvm.IRModule(host, attrs=mod.attrs), target=target)
        if lib is None:
            lib = shapes
        else:
            lib.import_module(shapes)
    linked = vm_build._ffi_api.VMLink(builder, target, lib, list(attrs.get("external_mods", [])),
                                      dict(attrs.get("const_name_to_constant", {})))
    return vm_build.VMExecutable(linked)


# -- running ------------------------------------------------------------------


class Runner:
    """A VM over a built executable that maps named numpy inputs to named numpy outputs.

    Keeps the VM (and the weights of a module lowered with `params_as_constants=False`)
    between calls, so timing loops measure the model and not the setup.
    """

    def __init__(self, ex: tvm.runtime.Executable, model: Model, device=None):
        self.model = model
        self.device = device or tvm.cpu()
        self.vm = relax.VirtualMachine(ex, self.device)
        self.inputs = list(model.graph.inputs)
        self.output_names = [v.name for v in model.graph.outputs]
        arity = self.vm._get_function_arity("main")
        self.params: list = []
        if arity > len(self.inputs):
            weights = param_constants(model)
            if arity != len(self.inputs) + len(weights):
                raise MdocError(f"the executable's main takes {arity} arguments, but the model has "
                                f"{len(self.inputs)} inputs and {len(weights)} weights")
            self.params = [tvm.runtime.tensor(contiguous(w.const_value), self.device) for w in weights]

    def prepare(self, inputs: Mapping[str, np.ndarray]) -> list:
        """The VM arguments for named numpy `inputs` (checked against the graph inputs)."""
        names = {v.name for v in self.inputs}
        unknown = sorted(set(inputs) - names)
        if unknown:
            raise MdocError(f"unknown input {unknown[0]!r}; the model's inputs are "
                            f"{', '.join(repr(v.name) for v in self.inputs)}")
        args = []
        for v in self.inputs:
            if v.name not in inputs:
                raise MdocError(f"missing input {v.name!r}")
            array = np.asarray(inputs[v.name])
            if isinstance(v.type, TensorType):
                want = v.type.dtype.numpy.name
                if array.dtype.name != want:
                    raise MdocError(f"input {v.name!r} has dtype {array.dtype}, the model expects {want}")
                if v.type.shape is not None and array.ndim != len(v.type.shape):
                    raise MdocError(f"input {v.name!r} has rank {array.ndim}, the model expects "
                                    f"{len(v.type.shape)} ({v.type})")
                for k, d in enumerate(v.type.shape or ()):
                    if isinstance(d, int) and array.shape[k] != d:
                        raise MdocError(f"input {v.name!r} has shape {list(array.shape)}, the model expects {v.type}")
            args.append(tvm.runtime.tensor(contiguous(to_storage(array)), self.device))
        return args + self.params

    def run_args(self, args: list):
        return self.vm["main"](*args)

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self.run_args(self.prepare(inputs))
        return {v.name: _returned(result[i].numpy(), v) for i, v in enumerate(self.model.graph.outputs)}

    def time(self, inputs: Mapping[str, np.ndarray], repeat: int = 20, warmup: int = 3) -> float:
        """The median wall time of one call, in seconds."""
        args = self.prepare(inputs)
        for _ in range(warmup):
            self.run_args(args)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            self.run_args(args)
            times.append(time.perf_counter() - t0)
        return float(np.median(times))


def _returned(array: np.ndarray, value) -> np.ndarray:
    """An output as the graph declares it (float8 and 4-bit types come back from their storage type)."""
    return from_storage(array, value.type.dtype.numpy.name) if isinstance(value.type, TensorType) else array


def run(ex: tvm.runtime.Executable, inputs: Mapping[str, np.ndarray], model: Model) -> dict[str, np.ndarray]:
    """Run a built executable once: named numpy inputs in, named numpy outputs out."""
    return Runner(ex, model)(inputs)
