"""The README's plugin examples are real: each is at most 15 lines and works through `mdoc opt --plugin`."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
from onnx import TensorProto, helper

README = Path(__file__).resolve().parents[1] / "README.md"


def _plugin(name: str) -> str:
    blocks = re.findall(r"```python\n(# (\S+)\n.*?)```", README.read_text(), flags=re.S)
    return next(code for code, file in blocks if file == name)


def _chain_model(path: Path, ops: list[str]) -> None:
    nodes, prev = [], "x"
    for i, op in enumerate(ops):
        nodes.append(helper.make_node(op, [prev], [f"t{i}"], name=f"n{i}"))
        prev = f"t{i}"
    nodes.append(helper.make_node("Relu", [prev], ["y"], name="relu"))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _check(mdoc_cli, tmp_path, file: str, pipeline: str, ops: list[str], left: list[str]) -> None:
    code = _plugin(file)
    assert len(code.strip().splitlines()) <= 16  # the file-name comment line plus at most 15 lines
    plugin = tmp_path / file
    plugin.write_text(code)
    model, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    _chain_model(model, ops)
    r = mdoc_cli("opt", model, "-o", out, "--plugin", plugin, "-p", pipeline)
    assert r.code == 0, r.err
    assert [n.op_type for n in onnx.load(out).graph.node] == left
    assert mdoc_cli("compare", model, out).code == 0


def test_custom_pass_plugin(mdoc_cli, tmp_path):
    _check(mdoc_cli, tmp_path, "drop_identity.py", "drop-identity,dce", ["Identity", "Neg", "Identity"], ["Neg", "Relu"])


def test_custom_rule_plugin(mdoc_cli, tmp_path):
    _check(mdoc_cli, tmp_path, "cancel_neg.py", "cancel-negations", ["Neg", "Neg", "Neg"], ["Neg", "Relu"])
