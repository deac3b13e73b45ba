"""What every CPU kernel builder shares: the machine it builds for, the kernel record, epilogues.

Why this file exists: the conv, matmul and pooling builders all need the same three
things, and they must agree on them so that the Relax lowering can treat every kernel
alike.

* `CpuSpec` (`targets/cpu_description.py`, the target's one description of the CPU) says
  how wide a vector is, how many vector registers there are (this sizes the register tile)
  and how many cores run the parallel loop.  A builder given no spec builds for this host.
* `Kernel` is what a builder returns: a scheduled PrimFunc plus its ordered parameters,
  the constants that were packed at compile time, and a FLOP count.  `Kernel.compile`
  builds it for quick checks and benchmarks; the lowering uses `func` and `params`.
* `Epilogue` describes the tail fused into a conv or matmul (bias, residual, activation).
  Activations are written with vectorizable polynomial `exp`/`erf`, because TVM lowers
  `tirx.exp` / `tirx.erf` / `tirx.sigmoid` on LLVM to scalar libm calls (`expf@PLT`),
  which silently unvectorizes the whole register tile.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import te, tirx

from mdoc.activations import ACTIVATIONS, Applied
from mdoc.errors import MdocError

from ..cpu_description import CpuSpec

__all__ = [
    "TE_ACTIVATIONS",
    "CpuSpec",
    "Epilogue",
    "Kernel",
    "KernelError",
    "Param",
    "ensure_runtime_threads",
    "fast_erf",
    "fast_exp",
]


class KernelError(MdocError):
    """A kernel builder was asked for something it does not support; the message says what and why."""


# --------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------


def ensure_runtime_threads(cores: int) -> None:
    """Make TVM's runtime thread pool use `cores` threads.

    TVM's runtime halves `hardware_concurrency()` on x86 ("ignore hyper-threading"), so on
    a 2-core VM with one thread per core every parallel loop runs on ONE thread: half
    speed.  TVM_NUM_THREADS overrides it, but it is read once, when the pool is first
    used, so call this before running any TVM function.
    """
    os.environ.setdefault("TVM_NUM_THREADS", str(cores))


# --------------------------------------------------------------------------------------------
# The kernel record
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One argument of a kernel's PrimFunc, in order.

    value is the packed constant for parameters packed at compile time (weights), else None:
    the lowering passes `relax.const(value)` for those and the graph's tensor for the rest.
    The last parameter of a kernel is always its output.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    value: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def is_constant(self) -> bool:
        return self.value is not None


@dataclass(frozen=True)
class Kernel:
    """A scheduled kernel: `func(*inputs, out)` in destination-passing style.

    name: the PrimFunc's global symbol.
    func: the scheduled `tvm.tirx.PrimFunc`.
    params: every argument of `func` in order; the last one is the output.
    flops: useful floating-point operations of one call (2 per multiply-add), for GFLOP/s.
    notes: the tiling decisions taken, for logs and benchmark tables.
    packers: for a parameter whose packed layout the kernel expects but whose value was not
        given at build time, `packers[name](array)` packs it (e.g. a conv weight known later).
    logical_shapes: the shape `packers[name]` takes, for kernels with several packed
        parameters (otherwise it is the weight shape the kernel's request names).
    """

    name: str
    func: tirx.PrimFunc
    params: tuple[Param, ...]
    flops: int
    notes: str = ""
    packers: dict = field(default_factory=dict, compare=False, repr=False)
    logical_shapes: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def inputs(self) -> tuple[Param, ...]:
        return self.params[:-1]

    @property
    def output(self) -> Param:
        return self.params[-1]

    @property
    def runtime_inputs(self) -> tuple[Param, ...]:
        """The inputs the caller provides at run time (the others are packed constants)."""
        return tuple(p for p in self.inputs if not p.is_constant)

    def constant(self, name: str) -> np.ndarray:
        for p in self.params:
            if p.name == name and p.is_constant:
                return p.value
        raise KernelError(f"kernel {self.name} has no constant parameter {name!r}; "
                          f"its constants are {[p.name for p in self.params if p.is_constant]}")

    def module(self) -> tvm.IRModule:
        return tvm.IRModule({self.name: self.func.with_attr("global_symbol", self.name)})

    def compile(self, target=None) -> CompiledKernel:
        """Build with TVM for `target` (default: this host) -- for tests and benchmarks; the model
        build goes through Relax."""
        tgt = target if target is not None else CpuSpec.host().target
        ex = tvm.compile(self.module(), tvm.target.Target(tgt) if isinstance(tgt, dict) else tgt)
        return CompiledKernel(self, ex[self.name])


class CompiledKernel:
    """A built kernel that takes numpy arrays for the runtime inputs and returns the output."""

    def __init__(self, kernel: Kernel, fn):
        self.kernel = kernel
        self.fn = fn
        self.dev = tvm.cpu()
        self._consts = {p.name: tvm.runtime.tensor(p.value, self.dev) for p in kernel.inputs if p.is_constant}

    def prepare(self, *arrays: np.ndarray) -> list:
        """Device arrays for one call: runtime inputs converted, constants bound, output allocated."""
        rt = self.kernel.runtime_inputs
        if len(arrays) != len(rt):
            raise KernelError(f"kernel {self.kernel.name} takes {len(rt)} runtime inputs "
                              f"({', '.join(p.name for p in rt)}), got {len(arrays)}")
        it = iter(arrays)
        args = []
        sizes: dict = {}  # symbolic extent -> its size in this call
        for p in self.kernel.inputs:
            if p.is_constant:
                args.append(self._consts[p.name])
            else:
                a = np.ascontiguousarray(next(it), dtype=p.dtype)
                if len(a.shape) != len(p.shape) or any(
                        sizes.setdefault(d, n) != n if is_symbolic(d) else d != n for d, n in zip(p.shape, a.shape)):
                    raise KernelError(f"kernel {self.kernel.name}: input {p.name} has shape {a.shape}, expected {p.shape}")
                args.append(tvm.runtime.tensor(a, self.dev))
        out = self.kernel.output
        shape = tuple(sizes[d] if is_symbolic(d) else d for d in out.shape)
        args.append(tvm.runtime.tensor(np.zeros(shape, out.dtype), self.dev))
        return args

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        args = self.prepare(*arrays)
        self.fn(*args)
        return args[-1].numpy()


# --------------------------------------------------------------------------------------------
# Vectorizable math
# --------------------------------------------------------------------------------------------


def _f(v: float) -> tirx.PrimExpr:
    return tirx.const(v, "float32")


def fast_exp(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """exp(x) for float32 that LLVM vectorizes: range reduction to [-ln2/2, ln2/2], a degree-6
    polynomial, and 2**n built in the exponent bits.  Relative error about 2e-7."""
    # clamp so that 2**n stays a normal float: n in [-126, 127]
    x = tirx.max(tirx.min(x, _f(88.0)), _f(-87.3365447504))
    n = tirx.floor(x * _f(1.44269504088896341) + _f(0.5))
    r = x - n * _f(0.693359375) + n * _f(2.12194440e-4)
    p = _f(1.9875691500e-4)
    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = p * r + _f(c)
    p = p * r * r + r + _f(1.0)
    two_n = tirx.reinterpret("float32", tirx.shift_left(n.astype("int32") + 127, 23))
    return p * two_n


def fast_erf(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """erf(x) for float32 without libm (Abramowitz-Stegun 7.1.26, absolute error < 1.5e-7)."""
    ax = tirx.abs(x)
    t = _f(1.0) / (_f(1.0) + _f(0.3275911) * ax)
    p = _f(1.061405429)
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        p = p * t + _f(c)
    y = _f(1.0) - p * t * fast_exp(-ax * ax)
    return tirx.if_then_else(x < _f(0.0), -y, y)


def _sigmoid(x):
    return _f(1.0) / (_f(1.0) + fast_exp(-x))


def _tanh(x):
    # tanh(x) = sign(x) * (1 - 2 / (exp(2|x|) + 1)), no cancellation for large |x|
    e = fast_exp(_f(2.0) * tirx.abs(x))
    y = _f(1.0) - _f(2.0) / (e + _f(1.0))
    return tirx.if_then_else(x < _f(0.0), -y, y)


# the TE form of every activation of `mdoc.activations` (the one list: same names, whose defaults
# and numpy reference live there): fn(x, alpha, beta), alpha/beta ONNX's attributes
TE_ACTIVATIONS: dict[str, Callable] = {
    "relu": lambda x, a, b: tirx.max(x, _f(0.0)),
    "clip": lambda x, a, b: tirx.min(tirx.max(x, _f(a)), _f(b)),  # alpha=min, beta=max
    "leaky_relu": lambda x, a, b: tirx.if_then_else(x >= _f(0.0), x, x * _f(a)),
    "sigmoid": lambda x, a, b: _sigmoid(x),
    "silu": lambda x, a, b: x * _sigmoid(x),
    "hardsigmoid": lambda x, a, b: tirx.min(tirx.max(x * _f(a) + _f(b), _f(0.0)), _f(1.0)),
    "hardswish": lambda x, a, b: x * tirx.min(tirx.max(x * _f(1.0 / 6.0) + _f(0.5), _f(0.0)), _f(1.0)),
    "tanh": lambda x, a, b: _tanh(x),
    "gelu": lambda x, a, b: _f(0.5) * x * (_f(1.0) + fast_erf(x * _f(0.7071067811865476))),
    "gelu_tanh": lambda x, a, b: _f(0.5) * x * (_f(1.0) + _tanh(_f(0.7978845608028654) * (x + _f(0.044715) * x * x * x))),
}


@dataclass(frozen=True)
class Epilogue:
    """The elementwise tail fused into a conv / matmul, applied in the register tile before the store.

    Order: acc (* scale) (+ bias[channel]) (+ residual[same shape as the output]) -> activation.
    scale: a constant factor (attention's 1/sqrt(d)), None for none.
    activation: None or a name of `mdoc.activations`; alpha/beta are its ONNX attributes when it has
    any (clip: min/max, leaky_relu: alpha, hardsigmoid: alpha/beta); None means the default.
    """

    scale: float | None = None
    bias: bool = False
    residual: bool = False
    activation: str | None = None
    alpha: float | None = None
    beta: float | None = None

    def __post_init__(self):
        if self.activation is not None and self.activation not in TE_ACTIVATIONS:
            raise KernelError(f"unknown fused activation {self.activation!r}; supported: {', '.join(TE_ACTIVATIONS)}")

    def activate(self, x: tirx.PrimExpr) -> tirx.PrimExpr:
        if self.activation is None:
            return x
        spec = ACTIVATIONS[self.activation]
        return TE_ACTIVATIONS[self.activation](x, spec.alpha if self.alpha is None else self.alpha,
                                               spec.beta if self.beta is None else self.beta)

    def tag(self) -> str:
        parts = (["scale"] if self.scale is not None else []) + (["bias"] if self.bias else []) + (["res"] if self.residual else []) + ([self.activation] if self.activation else [])
        return "_".join(parts)


def epilogue_inputs(epi: Epilogue, bias_shape: tuple, res_shape: tuple):
    """The placeholders a fused epilogue reads (bias, residual), as (tensors, Params, bias, residual)."""
    extra, extra_params = [], []
    bias = residual = None
    if epi.bias:
        bias = te.placeholder(bias_shape, "float32", name="bias")
        extra.append(bias)
        extra_params.append(Param("bias", bias_shape))
    if epi.residual:
        residual = te.placeholder(res_shape, "float32", name="residual")
        extra.append(residual)
        extra_params.append(Param("residual", res_shape))
    return extra, extra_params, bias, residual


def apply_nchw_epilogue(epi: Epilogue, val, bias, residual, i, o, y, x):
    """An NCHW conv result at (i, o, y, x) with the epilogue's bias, residual and activation applied."""
    if bias is not None:
        val = val + bias[o]
    if residual is not None:
        val = val + residual[i, o, y, x]
    return epi.activate(val)


def apply_nchwc_epilogue(epi: Epilogue, val, bias, residual, lanes: int, i, b, y, x, v):
    """An NCHWc result at (i, b, y, x, v) (channel b * lanes + v) with the epilogue applied; the
    residual is blocked like the output, the bias stays per channel."""
    if bias is not None:
        val = val + bias[b * lanes + v]
    if residual is not None:
        val = val + residual[i, b, y, x, v]
    return epi.activate(val)


def activation_reference(name: str | None, x: np.ndarray, alpha: float | None = None, beta: float | None = None) -> np.ndarray:
    """numpy reference of a fused activation (tests and benchmarks): `mdoc.activations`'."""
    return x if name is None else Applied(name, alpha, beta)(x)


# --------------------------------------------------------------------------------------------
# Small helpers shared by the builders
# --------------------------------------------------------------------------------------------


LAYOUTS = ("NCHW", "NCHWc")


def as_dims(shape: Sequence) -> tuple:
    """A request's shape as the builders' TE extents: ints stay ints, a name (str) is a
    symbolic extent, an int32 TIR var of that name (one var per name within a call).

    Why int32: the kernels' other extents are int32 constants, and a schedule that mixes an
    int64 var into them casts the fused loop index, which the schedule primitives then refuse
    as not quasi-affine. Relax binds the var from the int64 shape of the argument at the call.
    """
    vars_: dict[str, tirx.Var] = {}
    out = []
    for d in shape:
        if isinstance(d, str):
            out.append(vars_.setdefault(d, tirx.Var(d, "int32")))
        elif isinstance(d, tirx.Var):
            out.append(d)
        else:
            out.append(int(d))
    return tuple(out)


def batch_dims(op: str, shape: Sequence) -> tuple:
    """An activation's shape for a kernel that may take a run-time batch: the first dim may be
    symbolic (`as_dims`), the others must be static (the tiling needs them)."""
    shape = as_dims(shape)
    require_static(op, "all dims but the batch", *shape[1:])
    return shape


def planned(d) -> int:
    """The size a plan's choices (tiles, cost models) assume for a dim: its own, or one for a
    run-time batch (the kernels' work per image does not depend on the batch)."""
    return 1 if is_symbolic(d) else int(d)


def is_symbolic(d) -> bool:
    """Whether an extent (of `as_dims`, or a product of them) is known only at run time."""
    return not isinstance(d, (int, np.integer))


def require_static(op: str, what: str, *dims) -> None:
    """Refuse symbolic extents where a builder's tiling needs the size (the caller falls back)."""
    if any(is_symbolic(d) for d in dims):
        raise KernelError(f"{op}: {what} must be static for this kernel, got {tuple(dims)}")


def blocked_shape(shape: Sequence[int], lanes: int) -> tuple[int, int, int, int, int]:
    """The NCHWc shape of an NCHW activation: (N, ceil(C / lanes), H, W, lanes), channel c at
    [c // lanes, ..., c % lanes].

    Kernels built with layout="NCHWc" take and return activations (data, residual, output)
    in this layout; their shapes and plans are still stated in NCHW terms.  When C is not a
    whole number of vectors (MobileNetV2's 24 channels) the last vector is padded: its extra
    lanes hold finite values that no reader uses (a dense conv weighs them by zero, the copy
    back to NCHW drops them).  The per-channel kernels (depthwise, pooling) need whole vectors.
    """
    n, c, h, w = shape
    require_static("NCHWc", "channels and spatial size", c, h, w)
    return (n, ceil_div(int(c), lanes), int(h), int(w), lanes)


def check_layout(op: str, layout: str) -> None:
    if layout not in LAYOUTS:
        raise KernelError(f"{op}: layout {layout!r} is not one of {', '.join(LAYOUTS)}")


def ceil_div(a: int, b: int) -> int:
    # (a + b - 1) // b for a symbolic `a`: the form TVM's region analysis proves covers `a`
    return (a + b - 1) // b if is_symbolic(a) else -(-a // b)


def check_dtype(op: str, dtype: str) -> None:
    if dtype != "float32":
        raise KernelError(f"{op}: dtype {dtype!r} is not supported by the default CPU kernels yet (float32 only); "
                          "quantized and half-precision kernels go through their own builders")


def pick_block(extent: int, limit: int, low: int | None = None) -> int:
    """A block size for a loop of `extent` under `limit`: the extent itself if it fits, else the
    largest divisor in [low, limit] (no remainder), else the size in [low, limit] that wastes least
    when the loop is padded up to a multiple of it."""
    if extent <= limit:
        return extent
    low = low if low is not None else max(1, limit // 2)
    divisors = [d for d in range(low, limit + 1) if extent % d == 0]
    if divisors:
        return max(divisors)
    return min(range(low, limit + 1), key=lambda d: (ceil_div(extent, d) * d - extent, -d))


def largest_divisor(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def as_pair(v, name: str, op: str) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(x) for x in v)
    if len(v) != 2:
        raise KernelError(f"{op}: {name} must be an int or 2 ints, got {v}")
    return v


def as_pads(v, op: str) -> tuple[int, int, int, int]:
    """(top, left, bottom, right), the ONNX `pads` order for 2-D; an int or (h, w) pads both sides."""
    if isinstance(v, int):
        return (v, v, v, v)
    v = tuple(int(x) for x in v)
    if len(v) == 2:
        return (v[0], v[1], v[0], v[1])
    if len(v) != 4:
        raise KernelError(f"{op}: padding must be an int, (h, w) or ONNX's (top, left, bottom, right), got {v}")
    return v


def finish(func: tirx.PrimFunc, name: str) -> tirx.PrimFunc:  # noqa: ARG001 - name kept for symmetry
    """Mark a PrimFunc scheduled, so that the lowering's fusion and generic schedule
    (targets/relax/schedule.py) and TVM's default passes leave it alone.

    No `global_symbol`: the Relax build gives each PrimFunc the (unique) name of the GlobalVar
    `bb.add_func(func, kernel.name)` returns; a symbol fixed here would clash at link time when
    two call sites add the same kernel under two GlobalVars.  `Kernel.module()` adds it for
    standalone builds.
    """
    if func.attrs is not None and "global_symbol" in func.attrs:  # te.create_prim_func names it "main"
        func = func.without_attr("global_symbol")
    # op_pattern 8 (kOpaque): Relax's FuseOps must not merge a scheduled kernel with its
    # neighbours (FuseTIR would rebuild it unscheduled); AnnotateTIROpPattern keeps a set pattern
    return func.with_attrs({"mdoc.scheduled": True, "tir.is_scheduled": True, "op_pattern": 8})


def window_geometry(op: str, data_shape, kernel, strides, padding, dilation, ceil_mode: bool = False):
    """Check a window op's attributes and return ((kh, kw), (sh, sw), pads, (dh, dw), (oh, ow)) for NCHW data_shape."""
    _, _, h, w = batch_dims(op, data_shape)
    kh, kw = as_pair(kernel, "kernel", op)
    (sh, sw), (dh, dw), pads = as_pair(strides, "strides", op), as_pair(dilation, "dilation", op), as_pads(padding, op)
    if min(sh, sw, dh, dw, kh, kw) < 1 or min(pads) < 0:
        raise KernelError(f"{op}: kernel {kernel}, strides {strides} and dilation {dilation} must be >= 1 "
                          f"and pads {pads} >= 0")
    pt, pl, pb, pr = pads
    rnd = (lambda a, b: ceil_div(a, b)) if ceil_mode else (lambda a, b: a // b)
    oh = rnd(h + pt + pb - dh * (kh - 1) - 1, sh) + 1
    ow = rnd(w + pl + pr - dw * (kw - 1) - 1, sw) + 1
    if ceil_mode:  # the last window must start inside the input or its left padding (ONNX / PyTorch)
        if (oh - 1) * sh >= h + pt:
            oh -= 1
        if (ow - 1) * sw >= w + pl:
            ow -= 1
    if oh < 1 or ow < 1:
        raise KernelError(f"{op}: output would be empty ({oh}x{ow}) for input {h}x{w} and kernel {kh}x{kw}")
    return (kh, kw), (sh, sw), pads, (dh, dw), (oh, ow)


def window_tag(kernel, strides, pads, dilation) -> str:
    """'3x3s2p1' style: kernel, stride, pads (one number when all equal), dilation when not 1."""
    kh, kw = kernel
    sh, sw = strides
    tag = f"{kh}x{kw}s{sh}" + ("" if sh == sw else f"x{sw}")
    tag += f"p{pads[0]}" if len(set(pads)) == 1 else "p" + "-".join(map(str, pads))
    if tuple(dilation) != (1, 1):
        tag += f"d{dilation[0]}" + ("" if dilation[0] == dilation[1] else f"x{dilation[1]}")
    return tag


def shape_of(t: te.Tensor) -> tuple[int, ...]:
    return tuple(int(s) if isinstance(s, tirx.IntImm) else s for s in t.shape)


def flat_spatial(shape: Sequence[int]) -> int:
    """The product of `shape` (1 for none); a TIR expression when a dim is symbolic."""
    size = 1
    for d in shape:
        size = size * (int(d) if not is_symbolic(d) else d)
    return size
