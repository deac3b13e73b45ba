"""mdoc's version, in a module of its own so that the modules that stamp it (the ONNX exporter, the
CLI) need not import the `mdoc` package, whose `__init__` imports them."""

__version__ = "0.1.0"
