"""`mdoc import SRC -o OUT.onnx`: convert a TensorFlow or PyTorch model file to ONNX."""

from __future__ import annotations

import click
import onnx

from ..convert import DynamicAxis, InputSpec, convert_to_onnx, write_onnx
from ..cli_options import emit_json, json_option
from .group import cli


@cli.command("import")
@click.argument("src", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="ONNX file to write.")
@click.option("--opset", type=click.IntRange(7), help="ONNX opset to convert to (default: the converter's).")
@click.option("--input", "inputs", multiple=True, metavar="NAME=SHAPE/DTYPE",
              help="Example shape and dtype of an input, e.g. image=1x3x224x224/float32 "
                   "(needed for TorchScript; overrides a Keras or SavedModel signature).")
@click.option("--dynamic", "dynamic", multiple=True, metavar="NAME:AXIS=DIMNAME",
              help="Make axis AXIS of input NAME symbolic and call it DIMNAME, e.g. image:0=batch.")
@click.option("--signature", default="serving_default", show_default=True, help="SavedModel signature to convert.")
@json_option
def import_cmd(src, output, opset, inputs, dynamic, signature, as_json) -> None:
    """Convert SRC to the ONNX file OUTPUT; SRC is a SavedModel folder, .keras, .h5, .tflite, .pt2 or .pt.

    `mdoc compile`, `opt` and `inspect` take these files directly too (converted in
    memory, with their declared shapes); import first to give --input or --dynamic.
    """
    proto = convert_to_onnx(src, inputs=[InputSpec.parse(s) for s in inputs],
                            dynamic=[DynamicAxis.parse(s) for s in dynamic], opset=opset, signature=signature)
    write_onnx(proto, output)
    ios = {kind: [(vi.name, _type(vi)) for vi in values]
           for kind, values in (("inputs", proto.graph.input), ("outputs", proto.graph.output))}
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if as_json:
        emit_json({"output": output, "opset": opset_used, "producer": proto.producer_name,
                   **{k: dict(v) for k, v in ios.items()}})
        return
    for kind, items in ios.items():
        click.echo(f"{kind}: " + ", ".join(f"{name}: {t}" for name, t in items))
    click.echo(f"wrote {output} (opset {opset_used}, {len(proto.graph.node)} nodes, by {proto.producer_name})")


def _type(vi: onnx.ValueInfoProto) -> str:
    """`float32[batch,224,224,3]`, as the ONNX file declares it."""
    t = vi.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "?"
    dims = ",".join(d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?") for d in t.shape.dim)
    return f"{dtype}[{dims}]"
