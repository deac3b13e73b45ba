"""The converters, one module per op family; importing this package registers them all."""

from . import cast, elementwise, matmul, nn, qlinear, quantize, reduce, resize, tensor  # noqa: F401
from . import activations, aliases, attention, cumulative, detection, generators, image, losses, norms  # noqa: F401
from . import compaction, fused, quantized, reverse_sequence, signal, stateful, transformer, weight_quant  # noqa: F401
