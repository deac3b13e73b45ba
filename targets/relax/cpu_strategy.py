"""The CPU kernel strategy: matmuls and 2-D convs lowered to mdoc's hand-scheduled kernels.

Why: the generic schedule (`schedule.py`) reaches about half of the machine's FMA rate on
matrix products (BERT-mini's dense layers at ~105 GFLOP/s on 2 Zen 4 cores); the kernels of
`targets/cpu_kernels` reach onnxruntime's rate (~200) with weights packed at compile time
and the elementwise tail fused into the register tile.

`CpuKernels` is the `Kernels` hook (see `kernels.py`) for x86 and aarch64 targets:

* MatMul / Gemm with a constant 2-D B (`dense`): B is packed at compile time into the
  kernel's [N / lanes, K, lanes] panels; leading axes of A fold into its rows.
* MatMul of two activations (`batch_matmul`; attention's Q K^T and P V): batch axes
  flatten to one when they are equal or one side's are all ones.
* Conv with 2-D windows and constant weights (`conv2d`: dense, grouped, strided, dilated,
  1x1 as a GEMM, depthwise): NCHW activations in and out, weights packed into the kernel's
  blocked layout, the conv's bias fused.
* MaxPool / AveragePool with 2-D windows (`pool2d`), NCHW like the convs; GlobalAveragePool
  over 2-D planes (`global_avg_pool2d`).
* MobileNet-style blocks (mdoc.inverted_residual, made by `fuse_inverted_residual`) as one
  kernel per block (`cpu_kernels.inverted_residual`), where plan-layout runs them NCHWc
  (elsewhere the converter lowers their three convs).
* Softmax over the last axis and LayerNorm (the ONNX op or mdoc.layer_norm; -O2's
  fuse-layer-norm finds the decompositions exporters write) as one-task-per-row kernels
  (`lower_node`); mdoc.attention as batch_matmul + softmax kernels (`cpu_transformer.py`).
* The tail an mdoc.conv / mdoc.matmul carries (`fuse-epilogue`: MatMul's scale, bias,
  residual, activation; Conv's residual, activation) is the kernel's epilogue, applied in its
  register tile; nothing else is fused, and no node after the product is looked at. Gemm
  keeps its own alpha / beta / C.

Layout: a conv that reaches a kernel keeps the graph's NCHW activations (the kernels'
register tiles broadcast the input, so NCHW costs them nothing) and only its weights change
layout, so no transposes appear between neighbours, unless `plan-layout` annotated it
`mdoc.layout = "NCHWc"` (then it reads and writes blocked activations, packed and unpacked
where a neighbour disagrees). `build.py` converts to NHWC only the
convs left as `relax.nn.conv2d` (the fallbacks), which the generic schedule can vectorize
only over channels-last outputs.

Fallbacks to `Kernels` (the generic schedule): symbolic dims, 1-D operands, dtypes other
than float32, batch axes that truly broadcast, weights given at run time (convs), and 1-d /
3-d convs. Kernels are built once per shape and epilogue and reused across layers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import tvm
from tvm import relax

from mdoc.activations import applied_from_attrs
from mdoc.fused_ops import ir_activation_attrs
from mdoc.ir import Node
from mdoc.types import TensorType

from ..cpu_kernels import CpuSpec, Epilogue, Kernel
from ..cpu_kernels.common import flat_spatial, is_symbolic
from ..cpu_kernels.request import KernelRequest
from .context import is_static, reshaped as _reshaped, same_dims as _same_dims
from .cpu_quantized import LOWER as QUANTIZED_OPS
from .request_dims import request_dims
from .cpu_transformer import LOWER as TRANSFORMER_OPS
from .kernels import Kernels, Tail
from .layout_plan import candidate_kind
from .plan_layout import LAYOUT

if TYPE_CHECKING:  # pragma: no cover
    from .context import LowerCtx

def cpu_kernels_for(cpu: CpuSpec, tiles: Mapping[str, tuple[tuple, str]] | None = None) -> Kernels:
    """The kernel strategy for the target's CPU: `CpuKernels` where it has FMA vectors (AVX2,
    AVX-512, NEON), else the default `Kernels` (a generic x86-64 has none worth a hand schedule)."""
    return CpuKernels(cpu, tiles) if cpu.fma_vectors else Kernels()


class CpuKernels(Kernels):
    """`Kernels` with matrix products on `targets/cpu_kernels` (see the module docstring)."""

    def __init__(self, spec: CpuSpec, tiles: Mapping[str, tuple[tuple, str]] | None = None):
        self.spec = spec
        # request key -> (register tile chosen by `mdoc tune`, name of the default kernel it beat)
        self.tiles = dict(tiles or {})
        self.requests: Counter[KernelRequest] = Counter()  # what the model asked for, and how often
        self.tiled: dict[str, tuple] = {}  # the tuned tiles this lowering used
        self._built: dict[KernelRequest, Kernel] = {}
        self.blocked: dict[relax.Expr, relax.Expr] = {}  # NCHW value -> the same in NCHWc
        self.fallbacks: list[str] = []  # nodes left to the generic kernels by run-time dims
        self.chosen: dict[str, list[str]] = {}  # node -> its kernels, layout copies aside (the compile report)

    def start(self, model) -> None:
        self.blocked = {}
        self.requests.clear()
        self.fallbacks = []
        self.chosen = {}

    def matmul(self, ctx: "LowerCtx", a: relax.Expr, b: relax.Expr, *, transpose_b: bool = False,
               tail: Tail | None = None) -> relax.Expr:
        constant_b = isinstance(b, tvm.ir.GenericConst) and b.ty.ndim == 2
        if not constant_b and _f32_shape(ctx, a) is not None and _f32_shape(ctx, b) is not None:
            a, b = ctx.contracted(a, b, transpose_b=transpose_b)
        # dims may be symbolic (batch, sequence): one kernel serves every size; a dense layer's
        # K and N are its weight's
        a_shape, b_shape = _f32_shape(ctx, a), _f32_shape(ctx, b)
        if (a_shape is None or b_shape is None or len(a_shape) < 2 or len(b_shape) < 2
                or (constant_b and not is_static(a_shape[-1]))):
            self._note_symbolic(ctx, a, b)
            return super().matmul(ctx, a, b, transpose_b=transpose_b, tail=tail)
        n = b_shape[-2] if transpose_b else b_shape[-1]
        batch = _batch_axes(a_shape, b_shape)
        if batch is None:
            return super().matmul(ctx, a, b, transpose_b=transpose_b, tail=tail)
        out_shape = (*a_shape[:-1], n) if constant_b else (*batch, a_shape[-2], n)
        tail = tail or Tail()
        epilogue = _epilogue(tail, bias=tail.bias is not None)
        # leading axes flattened here (free reshapes): the kernels tile one row / one batch loop
        if constant_b:
            a2 = (flat_spatial(a_shape[:-1]), a_shape[-1])
            built = self._kernel(KernelRequest.of("dense", *request_dims(a2), b_shape, transpose_b=transpose_b,
                                                  epilogue=epilogue))
            args = [_reshaped(ctx, a, a2), relax.const(built.packers["weight"](b.value.numpy()))]
        else:
            a3, b3 = _flat_batch(a_shape), _flat_batch(b_shape)
            built = self._kernel(KernelRequest.of("batch_matmul", *request_dims(a3, b3), transpose_b=transpose_b,
                                                  epilogue=epilogue))
            args = [_reshaped(ctx, a, a3), _reshaped(ctx, b, b3)]
        if tail.bias is not None:
            args.append(relax.const(np.ascontiguousarray(tail.bias, np.float32)))
        if tail.residual is not None:
            args.append(_reshaped(ctx, tail.residual, (*args[0].ty.shape.values[:-1], n)))
        return _reshaped(ctx, self._call(ctx, built, args), out_shape)

    def conv(self, ctx: "LowerCtx", x: relax.Expr, w: relax.Expr, *, strides, pads, dilations, groups: int,
             bias: relax.Expr | None = None, tail: Tail | None = None) -> relax.Expr:
        x_shape = _batch_shape(ctx, x)
        constant = isinstance(w, tvm.ir.GenericConst) and (bias is None or isinstance(bias, tvm.ir.GenericConst))
        if len(strides) != 2 or x_shape is None or not constant or str(w.ty.dtype) != "float32":
            self._note_symbolic(ctx, x)
            return super().conv(ctx, x, w, strides=strides, pads=pads, dilations=dilations, groups=groups, bias=bias,
                                tail=tail)
        weight = w.value.numpy()
        out_shape = _conv_out_shape(x_shape, weight.shape, strides, pads, dilations)
        node = ctx.node
        tail = tail or Tail()
        epilogue = _epilogue(tail, bias=bias is not None)
        layouts = {}
        if _nchwc(node):
            # depthwise and Winograd kernels read NCHWc only; a direct one reads NCHW too (packing costs a copy)
            if x not in self.blocked and candidate_kind(node, self.spec.lanes) in ("depthwise", "winograd"):
                self._pack(ctx, x)
            layouts = {"layout": "NCHWc", "data_layout": "NCHWc" if x in self.blocked else "NCHW"}
        # ONNX pads are (top, left, bottom, right), the builder's order too
        built = self._kernel(KernelRequest.of("conv2d", *request_dims(x_shape), _ints(weight.shape),
                                              strides=_ints(strides),
                                              padding=_ints(pads), dilation=_ints(dilations), groups=int(groups),
                                              epilogue=epilogue, **layouts))
        args = [self.blocked[x] if layouts.get("data_layout") == "NCHWc" else x,
                relax.const(np.ascontiguousarray(built.packers["weight"](weight)))]
        if bias is not None:
            args.append(relax.const(bias.value.numpy().reshape(-1)))
        if tail.residual is not None:
            args.append(self._pack(ctx, tail.residual) if layouts else tail.residual)
        y = self._call(ctx, built, args)
        if layouts:
            y = self._unpack(ctx, y, out_shape)
        return y

    def _inverted_residual(self, ctx: "LowerCtx", node: Node) -> list | None:
        """An mdoc.inverted_residual (`fuse_inverted_residual`) that plan-layout runs NCHWc, as its
        one kernel; None leaves it to the converter, which lowers its three convs."""
        x = ctx.input(0)
        x_shape = _batch_shape(ctx, x) if isinstance(x, relax.Expr) else None
        if not _nchwc(node) or x_shape is None:
            return None
        weights = [np.asarray(node.inputs[i].const_value, np.float32) for i in (1, 3, 5)]
        biases = [np.asarray(b.const_value, np.float32).reshape(-1) if (b := node.input(i)) is not None
                  else np.zeros(w.shape[0], np.float32) for i, w in zip((2, 4, 6), weights)]
        data_layout = "NCHWc" if x in self.blocked else "NCHW"
        attr = (lambda key, default: _ints(node.attrs.get(key, default)))
        built = self._kernel(KernelRequest.of(
            "inverted_residual", *request_dims(x_shape), *(_ints(w.shape) for w in weights),
            strides=attr("strides", (1, 1)), padding=attr("pads", (0, 0, 0, 0)),
            expand_strides=attr("expand_strides", (1, 1)), expand_padding=attr("expand_pads", (0, 0, 0, 0)),
            expand=_block_epilogue(node, "expand"), depthwise=_block_epilogue(node, "dw"),
            project=_block_epilogue(node, "project"), data_layout=data_layout))
        values = dict(zip(("expand_weight", "dw_weight", "weight"), weights))
        values.update(zip(("expand_bias", "dw_bias", "bias"), biases))
        args = [self.blocked[x] if data_layout == "NCHWc" else x]
        args += [relax.const(built.packers[p.name](values[p.name])) for p in built.params[1:7]]
        if node.input(7) is not None:
            args.append(self._pack(ctx, ctx.input(7)))
        return [self._unpack(ctx, self._call(ctx, built, args), _node_shape(node))]

    def pool(self, ctx: "LowerCtx", x: relax.Expr, kind: str, *, kernel, strides, pads, dilations, ceil_mode: bool,
             count_include_pad: bool) -> relax.Expr:
        x_shape = _batch_shape(ctx, x)
        if len(kernel) != 2 or x_shape is None:
            self._note_symbolic(ctx, x)
            return super().pool(ctx, x, kind, kernel=kernel, strides=strides, pads=pads, dilations=dilations,
                                ceil_mode=ceil_mode, count_include_pad=count_include_pad)
        blocked = _nchwc(ctx.node)
        built = self._kernel(KernelRequest.of("pool2d", *request_dims(x_shape), kind, _ints(kernel), _ints(strides), _ints(pads),
                                              dilation=_ints(dilations), ceil_mode=bool(ceil_mode),
                                              count_include_pad=bool(count_include_pad),
                                              **({"layout": "NCHWc"} if blocked else {})))
        if not blocked:
            return self._call(ctx, built, [x])
        y = self._call(ctx, built, [self._pack(ctx, x)])
        return self._unpack(ctx, y, _nchw_of(ctx.shape_of(y)))

    def _note_symbolic(self, ctx: "LowerCtx", *operands: relax.Expr) -> None:
        """Record a node that takes the generic kernel because an operand's dims are known only
        at run time where its kernel needs them (the compile report lists these)."""
        shapes = [_f32_shape(ctx, x) for x in operands]
        dynamic = [s for s in shapes if s is not None and not all(is_static(d) for d in s)]
        if ctx.node is not None and dynamic:
            dims = " and ".join("[" + ", ".join(str(d) for d in s) + "]" for s in dynamic)
            self.fallbacks.append(f"{ctx.node.op} '{ctx.node.name}' on {dims}")

    def _pack(self, ctx: "LowerCtx", x: relax.Expr) -> relax.Expr:
        """`x` (NCHW) in NCHWc: the kernel that computed it blocked, or one copy per value."""
        if x not in self.blocked:
            request = KernelRequest.of("to_nchwc", *request_dims(ctx.shape_of(x)))
            self.blocked[x] = self._call(ctx, self._kernel(request), [x])
        return self.blocked[x]

    def _unpack(self, ctx: "LowerCtx", y: relax.Expr, shape: tuple) -> relax.Var:
        """The NCHW view of a blocked kernel result (NCHW `shape`: its channels, height and width;
        the batch is the result's own), for the graph's other consumers; the blocked value stays
        at hand for NCHWc consumers (`_pack` finds it), and an unpack that no one reads is dead
        code the build removes."""
        dims = (ctx.shape_of(y)[0], *_ints(shape[1:]))
        nchw = self._call(ctx, self._kernel(KernelRequest.of("from_nchwc", *request_dims(dims))), [y])
        self.blocked[nchw] = y
        return nchw

    def lower_node(self, ctx: "LowerCtx", node: Node) -> list | None:
        """Softmax over the last axis, LayerNorm and a 2-D GlobalAveragePool (NCHWc when its input was computed blocked: no unpack of the wide
        input, only of the pooled vector); mdoc's transformer ops (`cpu_transformer`)."""
        if node.op in TRANSFORMER_OPS:
            return TRANSFORMER_OPS[node.op](self, ctx, node)
        if node.op in QUANTIZED_OPS:
            return QUANTIZED_OPS[node.op](self, ctx, node)
        if node.op == "mdoc.inverted_residual":
            return self._inverted_residual(ctx, node)
        if node.op == "onnx.GlobalAveragePool":
            x = ctx.input(0)
            shape = _batch_shape(ctx, x) if isinstance(x, relax.Expr) else None
            if shape is None or len(shape) != 4:
                return None
            if x in self.blocked and shape[1] % self.spec.lanes == 0:
                built = self._kernel(KernelRequest.of("global_avg_pool2d", *request_dims(shape), layout="NCHWc"))
                return [self._unpack(ctx, self._call(ctx, built, [self.blocked[x]]), (shape[0], shape[1], 1, 1))]
            return [self._call(ctx, self._kernel(KernelRequest.of("global_avg_pool2d", *request_dims(shape))), [x])]
        if node.op == "onnx.LayerNormalization":
            shape = _rows_shape(ctx, ctx.input(0))
            scale, bias = (node.inputs + (None,))[1:3]
            axis = int(node.attrs.get("axis", -1))
            if (shape is None or axis not in (-1, len(shape) - 1) or any(v.has_uses() for v in node.outputs[1:])
                    or scale.const_value is None or (bias is not None and bias.const_value is None)):
                return None
            gamma = np.asarray(scale.const_value, np.float32).reshape(-1)
            beta = (np.asarray(bias.const_value, np.float32).reshape(-1) if bias is not None
                    else np.zeros_like(gamma))
            if gamma.shape != (shape[-1],) or beta.shape != (shape[-1],):
                return None
            return [self._layer_norm(ctx, ctx.input(0), gamma, beta, float(node.attrs.get("epsilon", 1e-5)))]
        if node.op == "onnx.Softmax" and ctx.opset >= 13:
            shape = _rows_shape(ctx, ctx.input(0), static_row=False)
            if shape is None or int(node.attrs.get("axis", -1)) not in (-1, len(shape) - 1):
                return None
            rows = (flat_spatial(shape[:-1]), shape[-1])
            built = self._kernel(KernelRequest.of("softmax", *request_dims(rows)))
            return [_reshaped(ctx, self._call(ctx, built, [_reshaped(ctx, ctx.input(0), rows)]), shape)]
        return None

    def _layer_norm(self, ctx, x, gamma, beta, epsilon: float) -> relax.Expr:
        shape = ctx.shape_of(x)
        rows = (flat_spatial(shape[:-1]), shape[-1])  # one row axis: the kernels tile a single row loop
        built = self._kernel(KernelRequest.of("layer_norm", *request_dims(rows), epsilon=epsilon))
        y = self._call(ctx, built, [_reshaped(ctx, x, rows), relax.const(gamma), relax.const(beta)])
        return _reshaped(ctx, y, shape)

    def _kernel(self, request: KernelRequest) -> Kernel:
        """The kernel for `request` (built once per model), with the tuned tile when there is one."""
        self.requests[request] += 1
        if request not in self._built:
            kernel = request.build(self.spec)
            tile, measured_against = self.tiles.get(request.key, (None, None))
            # a tile won against the default kernel of its time; after mdoc's default changed
            # (another algorithm, another tile rule) the record says nothing about the new one
            if tile is not None and measured_against == kernel.name:
                kernel = request.build(self.spec, tile)
                self.tiled[request.key] = tuple(tile)
            self._built[request] = kernel
        return self._built[request]

    def _call(self, ctx: "LowerCtx", built: Kernel, args: list) -> relax.Var:
        if ctx.node is not None and not built.name.startswith(("to_nchwc", "from_nchwc")):  # not layout copies
            self.chosen.setdefault(f"{ctx.node.op} '{ctx.node.name}'", []).append(built.name)
        gv = ctx.add_kernel(built.func, built.name)
        shape = _output_dims(ctx, built, args)
        return ctx.emit(relax.call_tir(gv, args, relax.TensorType(shape, built.output.dtype)))



def _nchwc(node: Node | None) -> bool:
    """Whether `plan-layout` runs `node`'s kernel on NCHWc activations."""
    return node is not None and node.attrs.get(LAYOUT) == "NCHWc"


def kernel_family(name: str) -> str:
    """The family of a kernel from its name: the words before its first shape (`conv2d_wino4`,
    `dense`, `dwconv2d`, `invres`, `from_nchwc`, ...)."""
    words = []
    for word in name.split("_"):
        if word[:1].isdigit():
            break
        words.append(word)
    return "_".join(words) or name


def _epilogue(tail: Tail, *, bias: bool) -> Epilogue:
    """The kernels' epilogue for a fused op's `tail` (bias: whether the kernel adds a bias vector)."""
    act = tail.activation
    return Epilogue(scale=tail.scale, bias=bias, residual=tail.residual is not None,
                    activation=act.name if act is not None else None,
                    alpha=act.alpha if act is not None else None, beta=act.beta if act is not None else None)


def _block_epilogue(node: Node, stage: str) -> Epilogue:
    """The epilogue of one conv (`stage`) of an mdoc.inverted_residual: its activation, and the
    residual for the project conv (the block's kernel adds every conv's bias itself)."""
    residual = stage == "project" and node.input(7) is not None
    act = applied_from_attrs(ir_activation_attrs(node, stage))
    return Epilogue(residual=residual, activation=act.name if act is not None else None,
                    alpha=act.alpha if act is not None else None, beta=act.beta if act is not None else None)


def _nchw_of(blocked: tuple[int, ...]) -> tuple[int, int, int, int]:
    n, cb, h, w, lanes = blocked
    return (n, cb * lanes, h, w)


def _ints(values) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def _conv_out_shape(x_shape, w_shape, strides, pads, dilations) -> tuple[int, ...]:
    n, _, h, w = x_shape
    kh, kw = w_shape[2:]
    oh = (h + pads[0] + pads[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (w + pads[1] + pads[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    return (n, int(w_shape[0]), oh, ow)


def _node_shape(node: Node) -> tuple | None:
    t = node.output.type
    return tuple(t.shape) if isinstance(t, TensorType) and t.shape is not None else None


def _batch_axes(a_shape, b_shape) -> tuple | None:
    """The output's batch axes when one side's batch is all ones or both sides' are equal (the
    batch then flattens to one axis), else None (a true broadcast: left to the default)."""
    a, b = tuple(a_shape[:-2]), tuple(b_shape[:-2])
    ones = (lambda dims: all(is_static(d) and d == 1 for d in dims))
    if _same_dims(a, b) or ones(b):
        return a if len(a) >= len(b) else (1,) * (len(b) - len(a)) + a
    if ones(a):
        return b if len(b) >= len(a) else (1,) * (len(a) - len(b)) + b
    return None


def _flat_batch(shape: tuple) -> tuple:
    return (flat_spatial(shape[:-2]), *shape[-2:])


def _output_dims(ctx: "LowerCtx", built: Kernel, args: list) -> list:
    """The Relax shape of a kernel's output: its static dims, and each symbolic extent of the
    kernel (`cpu_kernels.common.as_dims`) as the Relax dim of the argument it came in with."""
    sizes: dict = {}
    for p, arg in zip(built.inputs, args):
        for d, e in zip(p.shape, ctx.shape_of(arg)):
            if is_symbolic(d):
                sizes.setdefault(d, e)
    # every kernel's output extents are its inputs' own (a run-time batch, rows, keys)
    return [sizes[d] if is_symbolic(d) else d for d in built.output.shape]


def _f32_shape(ctx: "LowerCtx", expr: relax.Expr) -> tuple | None:
    """The float32 shape of `expr` with its symbolic dims, or None (another dtype, unknown rank)."""
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or str(ty.dtype) != "float32" or ty.ndim < 0:
        return None
    return tuple(ctx.shape_of(expr))


def _rows_shape(ctx: "LowerCtx", expr, static_row: bool = True) -> tuple | None:
    """The shape of a row-wise kernel's input (layer norm, softmax): float32, at least 2-D; the
    rows may be symbolic, the row length too unless `static_row`."""
    shape = _f32_shape(ctx, expr) if isinstance(expr, relax.Expr) else None
    ok = shape is not None and len(shape) >= 2 and (is_static(shape[-1]) or not static_row)
    return shape if ok else None


def _batch_shape(ctx: "LowerCtx", expr: relax.Expr) -> tuple | None:
    """The float32 shape of an activation for the conv-family kernels: static but for the batch
    (`cpu_kernels.common.batch_dims`), else None."""
    shape = _f32_shape(ctx, expr)
    return shape if shape is not None and len(shape) > 1 and all(is_static(d) for d in shape[1:]) else None
