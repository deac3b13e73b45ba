"""GridSample (through Relax's `image.grid_sample`) and AffineGrid (composed).

ONNX keeps the sampling coordinates last ([N, H_out, W_out, 2]); Relax wants them second
([N, 2, H_out, W_out]), so the grid is transposed on the way in. TOPI has no volumetric
cubic sampling: that one combination is refused.
"""

from __future__ import annotations

from tvm import relax

from mdoc.ir import Node

from ..context import LowerCtx, is_static
from ..registry import converter
from ._common import attr_str, prod, relax_dims

R = relax.op
_METHODS = {"linear": "bilinear", "bilinear": "bilinear", "nearest": "nearest", "cubic": "bicubic",
            "bicubic": "bicubic"}


@converter("onnx.GridSample", since=16)
def grid_sample(ctx: LowerCtx, node: Node):
    x, grid = ctx.input(0), ctx.input(1)
    rank = ctx.rank(0)
    mode = attr_str(ctx, "mode", "linear" if ctx.opset >= 20 else "bilinear")
    padding = attr_str(ctx, "padding_mode", "zeros")
    if mode not in _METHODS:
        raise ctx.error(f"mode '{mode}' is not one of linear, nearest, cubic")
    if padding not in ("zeros", "border", "reflection"):
        raise ctx.error(f"padding_mode '{padding}' is not one of zeros, border, reflection")
    if rank not in (4, 5):
        raise ctx.error(f"input has rank {rank}; the Relax target samples 2-D and 3-D images (rank 4, 5)")
    if rank == 5 and _METHODS[mode] == "bicubic":
        raise ctx.error("volumetric (rank 5) cubic sampling has no TVM implementation")
    grid = ctx.emit(R.permute_dims(grid, [0, rank - 1] + list(range(1, rank - 1))))
    return [R.image.grid_sample(x, grid, method=_METHODS[mode], layout="NCHW" if rank == 4 else "NCDHW",
                                padding_mode=padding, align_corners=bool(ctx.attr("align_corners", 0)))]


def _normalized_positions(ctx: LowerCtx, n, align_corners: bool, dtype: str) -> relax.Expr:
    """The n sampling positions along one axis in [-1, 1]: pixel corners or pixel centers."""
    i = ctx.emit(R.astype(ctx.emit(R.arange(0, n, 1, "int64")), dtype))
    if is_static(n):
        nf = relax.const(float(n), dtype)
    else:
        nf = ctx.emit(R.astype(ctx.emit(R.reshape(ctx.emit(R.shape_to_tensor(relax.ShapeExpr([n]))), [])), dtype))
    one, two = relax.const(1.0, dtype), relax.const(2.0, dtype)
    if align_corners:  # -1 + 2 i / (n - 1)
        return ctx.emit(R.subtract(ctx.emit(R.divide(ctx.emit(R.multiply(i, two)), ctx.emit(R.subtract(nf, one)))), one))
    return ctx.emit(R.subtract(ctx.emit(R.divide(ctx.emit(R.add(ctx.emit(R.multiply(i, two)), one)), nf)), one))


@converter("onnx.AffineGrid", since=20)
def affine_grid(ctx: LowerCtx, node: Node):
    """grid[n, *p] = theta[n] @ (x, y[, z], 1) for every output position p (coordinates innermost).

    Composed from Relax ops rather than `R.image.affine_grid`, whose legalization needs a
    static size: the size is often a runtime tensor (its dims then become symbolic).
    """
    size = ctx.shape_arg(1, "size")
    if len(size) not in (4, 5):
        raise ctx.error(f"size {size} must be [N, C, H, W] or [N, C, D, H, W]")
    theta = ctx.input(0)
    dt = str(theta.ty.dtype)
    align = bool(ctx.attr("align_corners", 0))
    spatial = list(size[2:])  # (H, W) or (D, H, W)
    nd = len(spatial)
    axes = []  # x varies along the last spatial axis, y the one before, ...
    for k, n in enumerate(reversed(spatial)):
        pos = _normalized_positions(ctx, n, align, dt)
        shape = [1] * nd
        shape[nd - 1 - k] = n
        axes.append(ctx.emit(R.broadcast_to(ctx.emit(R.reshape(pos, relax_dims(shape + [1]))),
                                            relax_dims(spatial + [1]))))
    axes.append(ctx.emit(R.ones(relax.ShapeExpr(relax_dims(spatial + [1])), dt)))
    # [*spatial, nd + 1] (concat, not stack: ConvertLayout fails on stack)
    base = ctx.emit(R.concat(axes, axis=nd))
    base = ctx.emit(R.reshape(base, relax_dims([1, prod(spatial), nd + 1])))
    grid = ctx.emit(R.matmul(base, ctx.emit(R.permute_dims(theta, [0, 2, 1]))))  # [N, P, nd]
    return [R.reshape(grid, relax_dims([size[0]] + spatial + [nd]))]
