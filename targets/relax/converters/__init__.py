"""The converters, one module per op family; importing this package registers them all."""

from . import elementwise, matmul, nn, quantize, reduce, resize, tensor  # noqa: F401
from . import activations, aliases, attention, bitcast, cumulative, detection, generators, image, losses, norms, signal, stateful  # noqa: F401
