"""Magnitude sparsity: zero the smallest weights of every Conv, Gemm and MatMul, in place.

Unlike structured pruning this changes no shape, so it makes nothing faster by itself on
dense kernels; it is the form sparse kernels (and 2:4 sparse tensor cores) take. ``pattern``
``"N:M"`` zeros the N smallest of every M consecutive weights along the reduction axis (2:4
keeps two of each four); without one, the smallest `ratio` of each layer's weights go.
"""

from __future__ import annotations

import numpy as np

from ..errors import MdocError
from ..ir import Graph

LAYERS = ("onnx.Conv", "onnx.Gemm", "onnx.MatMul")


def sparsify(graph: Graph, ratio: float = 0.5, pattern: str = "") -> int:
    """Zero weights of every layer with a constant float weight; how many weights were zeroed."""
    if not 0 <= ratio < 1:
        raise MdocError(f"sparsity ratio {ratio} must be in [0, 1)")
    n_of_m = _pattern(pattern) if pattern else None
    zeroed = 0
    for node in graph.nodes():
        w = node.input(1).const_value if node.op in LAYERS and node.input(1) is not None else None
        if w is None or w.dtype.kind != "f" or w.ndim < 2:
            continue
        # the reduction axis last: Conv [O, I, kh, kw] -> [O, I*kh*kw]; Gemm(transB) [N, K]; MatMul [K, N] -> [N, K]
        transposed = node.op == "onnx.MatMul" or (node.op == "onnx.Gemm" and not node.attrs.get("transB", 0))
        rows = w.T if transposed else w.reshape(w.shape[0], -1)
        mask = _mask(np.abs(rows), ratio, n_of_m)
        if mask is None:
            continue
        pruned = np.where(mask, rows, 0).astype(w.dtype)
        array = pruned.T if transposed else pruned.reshape(w.shape)
        zeroed += int((~mask).sum())
        node.set_input(1, graph.constant(np.ascontiguousarray(array), name=node.input(1).name, before=node))
    return zeroed


def _pattern(text: str) -> tuple[int, int]:
    n, _, m = text.partition(":")
    if not (n.isdigit() and m.isdigit()) or not 0 < int(n) < int(m):
        raise MdocError(f"sparsity pattern '{text}' is not N:M with 0 < N < M (say 2:4)")
    return int(n), int(m)


def _mask(magnitude: np.ndarray, ratio: float, n_of_m: tuple[int, int] | None) -> np.ndarray | None:
    """True where a weight stays."""
    if n_of_m is None:
        k = int(ratio * magnitude.size)
        if k == 0:
            return None
        threshold = np.partition(magnitude.reshape(-1), k - 1)[k - 1]
        return magnitude > threshold
    n, m = n_of_m
    if magnitude.shape[1] % m:
        return None
    blocks = magnitude.reshape(magnitude.shape[0], -1, m)
    order = np.argsort(blocks, axis=-1, kind="stable")
    mask = np.ones_like(blocks, dtype=bool)
    np.put_along_axis(mask, order[..., :n], False, axis=-1)
    return mask.reshape(magnitude.shape)
