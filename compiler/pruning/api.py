"""`mdoc prune` as a Python call: prepare, score, prune, keep an accuracy budget, report.

IR-to-IR steps, as `mdoc quantize` does them: a light cleanup (shapes, constants; with heads to
prune, the transformer fusions that make mdoc.attention), then `prune_graph`. The model before
pruning is the reference: with samples, the pruned model's outputs are compared with its
outputs (`quantize.accuracy`, the centered cosine). With `max_drop`, while 1 - accuracy exceeds
the budget, the pruned group whose return to full width gains the most is restored, one at a
time; the ranking is measured once, each group alone at full width.
"""

from __future__ import annotations

import numpy as np

from ..errors import MdocError
from ..ir import Model
from ..onnx_export import export_model
from ..clone import clone_graph
from ..pass_manager import PassManager, parse_pipeline
from ..quantize import outputs_on
from ..quantize import accuracy
from ..stats import model_stats, node_flops
from . import prune_graph, record_kept_channels
from .groups import UNARY, ChannelAnalysis

PREPARE = "infer-shapes,fold-constants{max-bytes=0},simplify,cse,dce"
FUSE_HEADS = "fuse-layer-norm,fuse-gelu,fuse-attention,cse,dce"
LAYERS = ("onnx.Conv", "onnx.Gemm", "onnx.MatMul")


def prune_pipeline(ratio: float, round_to: int) -> str:
    """The pass pipeline that prunes channels ahead of an -O pipeline (`mdoc compile --prune`)."""
    return f"{PREPARE},prune-channels{{ratio={ratio},round-to={round_to}}},dce"


def prune_model(model: Model, *, channels: float = 0.0, heads: float = 0.0, criterion: str = "l1",
                round_to: int = 1, exclude: tuple[str, ...] = (), samples: list[dict] | None = None,
                max_drop: float | None = None, eval_samples: list[dict] | None = None) -> tuple[Model, dict]:
    """The pruned model and its report (groups, per-layer changes, sizes, FLOPs, accuracy)."""
    if channels == 0 and heads == 0:
        raise MdocError("nothing to prune: give --channels or --heads a ratio above 0")
    if (criterion == "activation" or max_drop is not None) and not samples:
        raise MdocError(f"{'the activation criterion' if criterion == 'activation' else '--max-drop'} "
                        "needs calibration samples (--calib)")
    PassManager(parse_pipeline(PREPARE + (f",{FUSE_HEADS},{PREPARE},{FUSE_HEADS}" if heads else ""))).run(model)
    reference = export_model(model)
    activations = _activations(model, samples) if criterion == "activation" else None
    options = dict(channels=channels, heads=heads, criterion=criterion, round_to=round_to, activations=activations,
                   opset=model.opset)

    def build(excluded: list[str]):
        m = _copy(model)
        decisions = prune_graph(m.graph, exclude=tuple(excluded), **options)
        PassManager(parse_pipeline("dce")).run(m)
        record_kept_channels(m, decisions)
        return m, decisions

    excluded = list(exclude)
    pruned, decisions = build(excluded)
    report: dict = {}
    held_out = eval_samples or samples
    if held_out:
        want = outputs_on(reference, held_out)
        score = accuracy(outputs_on(export_model(pruned), held_out), want)
        restored = []
        if max_drop is not None and 1 - score > max_drop:
            cut = [d for d in decisions if d.kept < d.units]
            gains = sorted(((accuracy(outputs_on(export_model(build(excluded + [d.layers[0]])[0]), held_out), want)
                             - score, d.group) for d in cut), reverse=True)
            for gain, key in gains:
                if 1 - score <= max_drop:
                    break
                excluded.append(key)
                pruned, decisions = build(excluded)
                score = accuracy(outputs_on(export_model(pruned), held_out), want)
                restored.append({"group": key, "alone": round(gain, 6), "accuracy": round(score, 6)})
            report.update(max_drop=max_drop, restored=restored, within_budget=1 - score <= max_drop)
        report["accuracy"] = score
    report.update(groups=[d.as_dict() for d in decisions], layers=_layers(model, pruned),
                  before=_size(model, reference), after=_size(pruned, export_model(pruned)))
    return pruned, report


def _copy(model: Model) -> Model:
    """A copy of the IR (an export would write mdoc.attention back as its expansion); arrays are shared,
    which is safe: the rewrite puts new constants in, it never writes into one."""
    graph = clone_graph(model.graph, {})
    for old, new in zip(model.graph, graph):
        new.name = old.name  # clone_graph names copies only under a prefix; here they are the same layers
    return Model(graph, model.opset_imports, model.ir_version, model.producer_name, model.producer_version,
                 model.metadata)


def _activations(model: Model, samples: list[dict]) -> dict[str, np.ndarray]:
    """Mean |activation| per channel of each source layer, after its BatchNorm and activation."""
    import onnx

    analysis = ChannelAnalysis(model.graph)
    taps = {}
    for s in analysis.sources:
        value = s.node.output
        while len(value.uses()) == 1 and (user := value.uses()[0][0]).op in UNARY | {"onnx.BatchNormalization"} \
                and value.uses()[0][1] == 0 and user.outputs[0] in analysis.layouts:
            value = user.outputs[0]
        taps[s.node.name] = (value, analysis.layouts[s.node.output].axis)
    names: dict = {}
    proto = export_model(model, names)
    wanted = {layer: names[v] for layer, (v, _) in taps.items()}
    known = {o.name for o in proto.graph.output}
    for name in dict.fromkeys(wanted.values()):
        if name not in known:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    order = [o.name for o in proto.graph.output]
    runs = outputs_on(proto, samples)
    result = {}
    for layer, (_, axis) in taps.items():
        x = np.abs(runs[order.index(wanted[layer])].astype(np.float64))  # [samples, *shape]
        result[layer] = x.mean(axis=tuple(i for i in range(x.ndim) if i != axis + 1))
    return result


def _layers(before: Model, after: Model) -> list[dict]:
    """Per Conv / Gemm / MatMul whose weights changed: weight shape, parameters and FLOPs before and after."""
    old = {n.name: n for n in before.graph if n.op in LAYERS}
    rows = []
    for node in after.graph:
        o = old.get(node.name)
        if o is None or node.op not in LAYERS or o.input(1).type == node.input(1).type:
            continue
        w0, w1 = o.input(1).type.shape, node.input(1).type.shape
        rows.append({"layer": node.name, "weight": [list(w0), list(w1)],
                     "parameters": [int(np.prod(w0)), int(np.prod(w1))], "flops": [node_flops(o), node_flops(node)]})
    return rows


def _size(model: Model, proto) -> dict:
    stats = model_stats(model)
    return {"parameters": stats.parameters, "flops": stats.flops, "bytes": proto.ByteSize()}
