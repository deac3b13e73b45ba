"""Lowering of mdoc IR straight into TVM Relax, and its build and run on CPU.

    from mdoc.targets.relax import lower, build, run
    from mdoc.targets.presets import resolve_target

    mod = lower(model)                      # tvm.IRModule, main(inputs...) -> tuple of outputs
    ex = build(mod, resolve_target("x86").tvm)  # legalize, fold, fuse, schedule every PrimFunc, compile
    outputs = run(ex, {"x": array}, model)  # {output name: numpy array}
"""

from .build import build, run, Runner
from .context import LowerCtx, SymTensor
from .kernels import Kernels
from .lower import lower, param_constants
from .registry import converter, lookup, registered

__all__ = ["lower", "build", "run", "Runner", "LowerCtx", "SymTensor", "Kernels", "converter", "lookup",
           "registered", "param_constants"]
