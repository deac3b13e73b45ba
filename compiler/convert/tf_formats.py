"""TensorFlow front doors: a SavedModel folder, a Keras file and a TFLite file, through tf2onnx.

Keras files and SavedModels are traced with the input signature the user asked for
(their declared shapes, overridden by --input, with --dynamic axes left unknown),
so the ONNX graph is built for those shapes. A TFLite flatbuffer fixes its shapes,
so it takes no --input. TensorFlow is imported here, inside the functions, only
when such a file arrives.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from ..errors import MdocError
from .extras import converting, require
from .formats import KERAS, SAVED_MODEL, TFLITE, Format
from .specs import DynamicAxis, InputSpec, by_input, check_names


def convert_tensorflow(path: Path, fmt: Format, inputs: list[InputSpec], dynamic: list[DynamicAxis],
                       opset: int | None, signature: str = "serving_default") -> onnx.ModelProto:
    where = str(path)
    tf, keras, tf2onnx = require(where, fmt.label, "tensorflow", "tensorflow", "keras", "tf2onnx")
    if fmt is TFLITE:
        if inputs:
            raise MdocError(f"{where}: a TFLite file fixes its input shapes; --input does not apply")
        with converting(where, "tf2onnx"):
            proto, _ = tf2onnx.convert.from_tflite(str(path), opset=opset)
        return proto
    if fmt is KERAS:
        with converting(where, "Keras"):
            model = keras.models.load_model(path, compile=False)
        declared = [(t.name, tuple(t.shape), t.dtype) for t in model.inputs]
        specs = _signature(tf, where, declared, inputs, dynamic)
        with converting(where, "tf2onnx"):
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=specs, opset=opset)
        return proto
    assert fmt is SAVED_MODEL
    with converting(where, "TensorFlow"):
        loaded = tf.saved_model.load(str(path))
    if signature not in loaded.signatures:
        raise MdocError(f"{where}: the SavedModel has no signature '{signature}' "
                        f"(it has {', '.join(loaded.signatures) or 'none'}; pick one with --signature)")
    fn = loaded.signatures[signature]
    kwargs = fn.structured_input_signature[1]
    declared = [(name, tuple(spec.shape), spec.dtype) for name, spec in kwargs.items()]
    specs = _signature(tf, where, declared, inputs, dynamic)
    names = [name for name, _, _ in declared]

    @tf.function(input_signature=specs)
    def call(*args):
        return fn(**dict(zip(names, args)))

    with converting(where, "tf2onnx"):
        proto, _ = tf2onnx.convert.from_function(call, input_signature=specs, opset=opset)
    return proto


def _signature(tf, where: str, declared: list[tuple], inputs: list[InputSpec], dynamic: list[DynamicAxis]):
    """TensorSpecs for the declared inputs: --input replaces a shape and dtype, --dynamic unsets an axis."""
    names = [name for name, _, _ in declared]
    check_names(where, [s.name for s in inputs], names, "--input")
    check_names(where, [d.input for d in dynamic], names, "--dynamic")
    given = {s.name: s for s in inputs}
    axes = by_input(dynamic)
    specs = []
    for name, shape, dtype in declared:
        if name in given:
            shape, dtype = given[name].shape, tf.as_dtype(given[name].dtype)
        shape = list(shape)
        for axis in axes.get(name, {}):
            if axis >= len(shape):
                raise MdocError(f"{where}: --dynamic {name}:{axis}: input '{name}' has {len(shape)} dims")
            shape[axis] = None
        specs.append(tf.TensorSpec(shape, dtype, name=name))
    return specs
