"""Shapes of graph values as the CPU kernel planners read them.

Why one module: the layout plan, the inverted-residual matcher and the kernel strategy all
ask the same question of an mdoc value ("a float32 activation whose shape a kernel can
take?") and must agree on the answer, or a block planned NCHWc would meet a strategy that
declines it. The kernels take a run-time batch (`cpu_kernels.common.batch_dims`), so the
first dim may be a symbol; every other dim must be an int.
"""

from __future__ import annotations

from mdoc.ir import Value
from mdoc.types import DType, TensorType


def activation_shape(value: Value | None) -> tuple | None:
    """The shape of a float32 value whose dims are ints but for a symbolic batch, else None."""
    t = value.type if value is not None else None
    if not isinstance(t, TensorType) or t.shape is None or t.dtype != DType.F32:
        return None
    shape = tuple(t.shape)
    if not shape or not all(isinstance(d, int) for d in shape[1:]) or shape[0] is None:
        return None
    return shape
