"""The converters, one module per op family; importing this package registers them all."""

from . import elementwise, matmul, nn, reduce, resize, tensor  # noqa: F401
