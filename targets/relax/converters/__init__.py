"""The converters, one module per op family; importing this package registers them all."""

from . import elementwise, matmul, nn, quantize, reduce, resize, tensor  # noqa: F401
from . import activations, aliases, attention, bitcast, cumulative, detection, generators, image, losses, norms  # noqa: F401
from . import reverse_sequence, signal, stateful  # noqa: F401
