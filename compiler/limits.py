"""Bounds on what a model file may declare, so a hostile one is refused before it costs memory or stack.

A file of a few bytes can declare a sparse initializer that expands to terabytes,
an input of shape [10**12, 10**12] that `mdoc compare` would fill with random
numbers, or bodies nested deeper than ONNX can serialize. Each of these is
refused with one line that names the tensor and the limit, before anything is
allocated. Tensors whose bytes are really in the file (raw data, external data,
which is memory-mapped) are not limited: their size is the file's.
"""

from __future__ import annotations

import math

from .errors import MdocError

# protobuf (upb) refuses messages nested more than 100 deep and an If/Loop/Scan body costs
# three levels (NodeProto, AttributeProto, GraphProto): an ONNX file holds at most 31 bodies
# inside bodies (measured: 31 parse, 32 do not), so a .mdir file deeper could never be exported.
MAX_NESTED_BODIES = 31

# numpy's largest rank (NPY_MAXDIMS in numpy 2).
MAX_RANK = 64

# No dim of any tensor of any real model comes near 2**40 elements; a declared one that
# does is an attack or a bug, and its products would overflow int64 index arithmetic.
MAX_DIM = 1 << 40

# The most bytes mdoc makes up for one tensor from a declaration alone (a sparse
# initializer made dense, the seeded inputs of `compare`, `bench`, `opt --check-each`).
MAX_MATERIALIZED_BYTES = 1 << 32


def gib(nbytes: int) -> str:
    return f"{nbytes / (1 << 30):.3g} GiB" if nbytes >= 1 << 30 else f"{nbytes} bytes"


def check_dims(dims, where: str) -> int:
    """The element count of `dims` (ints), refusing negative, absurd or too many dims."""
    dims = [int(d) for d in dims]
    if len(dims) > MAX_RANK:
        raise MdocError(f"{where}: rank {len(dims)} is more than mdoc supports ({MAX_RANK})")
    for d in dims:
        if d < 0:
            raise MdocError(f"{where}: dim {d} is negative")
        if d > MAX_DIM:
            raise MdocError(f"{where}: dim {d} is absurd (more than 2**40)")
    return math.prod(dims)


def check_materialized(nbytes: int, where: str, hint: str = "") -> None:
    """Refuse making up a tensor of `nbytes` from a declaration alone."""
    if nbytes > MAX_MATERIALIZED_BYTES:
        raise MdocError(f"{where} would take {gib(nbytes)}, more than mdoc makes up from a declaration "
                        f"({gib(MAX_MATERIALIZED_BYTES)}){hint}")


# The most bytes one value of static shape may take in a compiled model: a declaration past
# this (a ConstantOfShape of [10**6, 10**6] is 3.6 TiB) can only fail at run time, deep in TVM.
MAX_STATIC_VALUE_BYTES = 1 << 37


def check_static_sizes(model) -> None:
    """Refuse a model (shapes inferred) in which a node makes a value of static shape past
    MAX_STATIC_VALUE_BYTES, naming the node, before it is compiled."""
    from .ir import CONSTANT
    from .types import TensorType

    for node in model.graph.walk():
        if node.op == CONSTANT:
            continue  # its bytes exist already
        for v in node.outputs:
            t = v.type
            if not isinstance(t, TensorType) or t.shape is None or not all(isinstance(d, int) for d in t.shape):
                continue
            nbytes = math.prod(t.shape) * t.dtype.itemsize
            if nbytes > MAX_STATIC_VALUE_BYTES:
                who = f"node '{node.name}' ({node.op})" if node.name else f"an unnamed {node.op}"
                raise MdocError(f"{who} makes '{v.name}' of shape {list(t.shape)}, "
                                f"{gib(int(nbytes))}: more than any target can hold "
                                f"({gib(MAX_STATIC_VALUE_BYTES)}); the model's shapes are wrong")
