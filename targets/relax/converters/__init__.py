"""The converters, one module per op family; importing this package registers them all."""

from . import elementwise, matmul, nn, quantize, reduce, resize, tensor  # noqa: F401
from . import activations, attention, bitcast, cumulative, detection, image, losses, norms, stateful  # noqa: F401
