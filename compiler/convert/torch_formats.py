"""PyTorch front doors: an ExportedProgram (.pt2), a TorchScript file (.pt) and live modules, through torch.onnx.

An ExportedProgram carries its example inputs and dynamic dims, so it goes to the
dynamo exporter as it is; --dynamic names its dims, but cannot free an axis the
export fixed (its graph has the size baked into views and reshapes). A TorchScript file keeps no shapes, so every
input needs --input, and it goes through the TorchScript exporter (the dynamo one
cannot trace a ScriptModule). PyTorch is imported inside the functions only.
"""

from __future__ import annotations

import inspect
import tempfile
from pathlib import Path

import onnx

from ..errors import MdocError
from .extras import converting, require
from .formats import EXPORTED_PROGRAM, TORCHSCRIPT
from .specs import DynamicAxis, InputSpec, by_input, check_names, name_dims

TORCHSCRIPT_OPSET = 17


def convert_exported_program(path: Path, inputs: list[InputSpec], dynamic: list[DynamicAxis],
                             opset: int | None) -> onnx.ModelProto:
    where = str(path)
    torch, _ = require(where, EXPORTED_PROGRAM.label, "torch", "torch", "onnxscript")
    if inputs:
        raise MdocError(f"{where}: an ExportedProgram carries its input shapes; --input does not apply "
                        "(re-export it with torch.export to change them)")
    with converting(where, "torch.export"):
        program = torch.export.load(str(path))
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    names = [name for name in program.graph_signature.user_inputs if name in placeholders]
    check_names(where, [d.input for d in dynamic], names, "--dynamic")
    shapes = {name: tuple(placeholders[name].meta["val"].shape) for name in names}
    for d in dynamic:
        if d.axis < len(shapes[d.input]) and isinstance(shapes[d.input][d.axis], int):
            raise MdocError(f"{where}: axis {d.axis} of '{d.input}' was fixed to {shapes[d.input][d.axis]} when "
                            "the program was exported; export it again with dynamic_shapes="
                            f"{{'{d.input}': {{{d.axis}: torch.export.Dim('{d.dim}')}}}}")
    return _export(torch, where, program, (), None, opset)


def convert_torchscript(path: Path, inputs: list[InputSpec], dynamic: list[DynamicAxis],
                        opset: int | None) -> onnx.ModelProto:
    where = str(path)
    (torch,) = require(where, TORCHSCRIPT.label, "torch", "torch")
    with converting(where, "TorchScript"):
        module = torch.jit.load(str(path), map_location="cpu")
    names = [a.name for a in module.forward.schema.arguments[1:]]
    check_names(where, [s.name for s in inputs], names, "--input")
    check_names(where, [d.input for d in dynamic], names, "--dynamic")
    given = {s.name: s for s in inputs}
    if missing := [n for n in names if n not in given]:
        raise MdocError(f"{where}: TorchScript keeps no input shapes; give --input NAME=SHAPE/DTYPE for "
                        f"{', '.join(missing)} (for example --input {missing[0]}=1x3x224x224/float32)")
    args = tuple(torch.from_numpy(given[n].example(seed=i)) for i, n in enumerate(names))
    with tempfile.TemporaryDirectory(prefix="mdoc-import-") as tmp, converting(where, "torch.onnx"):
        out = Path(tmp) / "model.onnx"
        torch.onnx.export(module, args, str(out), dynamo=False, input_names=names,
                          dynamic_axes=by_input(dynamic) or None, opset_version=opset or TORCHSCRIPT_OPSET)
        proto = onnx.load(out)
    _name_outputs(proto)
    return proto


def _name_outputs(proto: onnx.ModelProto) -> None:
    """The TorchScript exporter numbers the outputs ("7"); call them output_0, output_1, ... instead."""
    graph = proto.graph
    inputs = {vi.name for vi in graph.input}
    taken = inputs | {v for n in graph.node for v in n.output}
    renames = {}
    for i, vi in enumerate(graph.output):
        new = f"output_{i}"
        if vi.name.isdigit() and vi.name not in inputs and new not in taken:
            renames[vi.name] = new
            vi.name = new
    for node in graph.node:
        node.input[:] = [renames.get(v, v) for v in node.input]
        node.output[:] = [renames.get(v, v) for v in node.output]
    for vi in graph.value_info:
        vi.name = renames.get(vi.name, vi.name)


def from_torch_module(module, example_inputs, dynamic_shapes=None, opset: int | None = None) -> onnx.ModelProto:
    """ONNX for a live `torch.nn.Module` (or ExportedProgram); torch.export.Dim names become the dim names."""
    where = f"mdoc.from_torch({type(module).__name__})"
    torch, _ = require(where, "PyTorch module", "torch", "torch", "onnxscript")
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if isinstance(module, torch.jit.ScriptModule):
        raise MdocError(f"{where}: a ScriptModule goes through a file: torch.jit.save it and run "
                        "`mdoc import FILE.pt --input ...`")
    proto = _export(torch, where, module, args, dynamic_shapes, opset)
    name_dims(proto, _dim_names(torch, module, proto, dynamic_shapes), where)
    return proto


def _export(torch, where, model, args, dynamic_shapes, opset) -> onnx.ModelProto:
    with converting(where, "torch.onnx"):
        program = torch.onnx.export(model, args, dynamo=True, dynamic_shapes=dynamic_shapes,
                                    opset_version=opset)
        return program.model_proto


def _dim_names(torch, module, proto, dynamic_shapes) -> list[DynamicAxis]:
    """--dynamic-style names from the `torch.export.Dim`s in `dynamic_shapes` (a tuple or a dict by argument)."""
    if not dynamic_shapes:
        return []
    inputs = [vi.name for vi in proto.graph.input]
    if isinstance(dynamic_shapes, dict):
        forward = module.forward if not isinstance(module, torch.export.ExportedProgram) else None
        params = list(inspect.signature(forward).parameters) if forward is not None else inputs
        pairs = [(inputs[params.index(k)], v) for k, v in dynamic_shapes.items()
                 if k in params and params.index(k) < len(inputs)]
    else:
        pairs = list(zip(inputs, dynamic_shapes))
    named = []
    for name, spec in pairs:
        items = spec.items() if isinstance(spec, dict) else enumerate(spec or ())
        named += [DynamicAxis(name, axis, d.__name__) for axis, d in items if isinstance(d, torch.export.Dim)]
    return named
