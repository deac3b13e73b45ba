"""Deprecated ops that are another op under an older name: Scatter (opsets 9, 10) is ScatterElements."""

from __future__ import annotations

from ..registry import converter
from .tensor import scatter_elements

converter("onnx.Scatter", since=9)(scatter_elements)
