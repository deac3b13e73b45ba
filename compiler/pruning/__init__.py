"""Structured pruning on mdoc's IR: whole output channels (and attention heads) out of the layers
that make them, and out of every op that reads them, so the model gets smaller *and* faster.

`groups` finds which channels must go together (networkx over the IR's def-use graph),
`importance` scores them and picks what each group keeps (rounded to the target's vector
width), `rewrite` slices the weights; `prune_graph` is the three in a row (what the
`prune-channels` and `prune-heads` passes run); `api.prune_model` adds calibration-driven
criteria, an accuracy budget and the report (what `mdoc prune` runs).
"""

from __future__ import annotations

import json

import numpy as np

from ..ir import Graph, Model
from .groups import ChannelAnalysis
from .importance import Decision, channel_scores, plan
from .rewrite import apply_pruning


def prune_graph(graph: Graph, *, channels: float = 0.0, heads: float = 0.0, criterion: str = "l1",
                round_to: int = 1, exclude: tuple[str, ...] = (),
                activations: dict[str, np.ndarray] | None = None, opset: int = 17) -> list[Decision]:
    """Prune `graph` in place: `channels` of every channel group, `heads` of every attention's heads
    (`opset`: the model's, which says how a Split takes its sizes)."""
    analysis = ChannelAnalysis(graph)
    groups = analysis.groups()
    scores = channel_scores(analysis, criterion, activations)
    kept, decisions = plan(analysis, groups, scores, channels=channels, heads=heads, round_to=round_to,
                           exclude=exclude)
    apply_pruning(analysis, kept, opset)
    return decisions


KEPT_CHANNELS = "mdoc.pruned_channels"
"""Model metadata key: JSON {layer name: [indices of the output channels kept]}, what `mdoc distill`
reads to match a pruned layer's outputs with the teacher's."""


def record_kept_channels(model: Model, decisions: list[Decision]) -> None:
    """Add the kept output channels of every layer pruned by `decisions` to the model's metadata."""
    if not any(d.channels for d in decisions):
        return
    kept = json.loads(model.metadata.get(KEPT_CHANNELS, "{}"))
    for d in decisions:
        for layer, channels in d.channels.items():
            if layer in kept:  # pruned before: compose the selections
                channels = [kept[layer][c] for c in channels]
            kept[layer] = channels
    model.metadata[KEPT_CHANNELS] = json.dumps(kept, separators=(",", ":"))


__all__ = ["KEPT_CHANNELS", "ChannelAnalysis", "Decision", "prune_graph", "record_kept_channels"]
