"""mdoc: an MLIR-style graph compiler for ONNX models.

The core lives here: the IR (`mdoc.ir`), its textual form, the ONNX frontend and
exporter, the pass manager and the CLI. Passes (`mdoc.passes`) and targets
(`mdoc.targets`) plug in through registries, so this package never imports them
by name.
"""

from . import fused_ops, quant_ops, quantized_ops, transformer_ops, weight_quant_ops  # noqa: F401 - register mdoc's ops (conv, layer_norm, observe, qconv, matmul_nbits, ...)
from .api import compile, from_torch, generate, load, optimize
from .errors import CheckFailed, MdocError
from .model_io import load_model, save_model
from .version import __version__

__all__ = ["__version__", "CheckFailed", "MdocError", "compile", "from_torch", "generate", "load", "load_model", "optimize",
           "save_model"]
