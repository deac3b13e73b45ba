"""The converters, one module per op family; importing this package registers them all."""

from . import cast, elementwise, matmul, nn, qlinear, quantize, reduce, resize, tensor  # noqa: F401
