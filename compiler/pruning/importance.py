"""How important each channel is, and which channels each group keeps.

Criteria (scores per output channel of each source layer):

- ``l1`` / ``l2``: the norm of the channel's weights, times the scale of the BatchNormalization
  right after the layer when there is one (|gamma| / sqrt(var + eps): the weight the channel
  really has), so a channel that a BatchNorm silences counts as small;
- ``bn-scale``: |gamma| of that BatchNormalization (network slimming); layers without one fall
  back to ``l1``;
- ``activation``: the mean magnitude of the channel's activation on calibration samples (measured
  by `pruning.api`, after the layer's BatchNorm and activation).

A unit's score (a channel of a group, or a whole head) sums its atoms' scores, each source's
scores first divided by their mean so that layers of different scales weigh alike. Kept counts
are rounded to a multiple of ``round_to`` (the vector width of the target's NCHWc blocks, for
instance: 12 channels cost a 16-lane kernel what 16 do).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import MdocError
from ..ir import Node, Value
from .groups import ChannelAnalysis, Group, Source

CRITERIA = ("l1", "l2", "bn-scale", "activation")


@dataclass
class Decision:
    """What pruning did to one group (what the report prints)."""

    group: str
    layers: list[str]
    units: int
    kept: int
    heads: bool
    reason: str = ""
    channels: dict[str, list[int]] = field(default_factory=dict)  # per pruned layer: the output channels kept

    def as_dict(self) -> dict:
        return {"group": self.group, "layers": self.layers, "heads" if self.heads else "channels": self.units,
                "kept": self.kept, **({"kept_whole": self.reason} if self.reason else {})}


def weight_rows(source: Source) -> np.ndarray:
    """The source's weights as one row per output channel."""
    node = source.node
    w = node.input(1).const_value.astype(np.float64)
    if node.op == "onnx.Conv" or (node.op == "onnx.Gemm" and node.attrs.get("transB", 0)):
        return w.reshape(w.shape[0], -1)
    return w.T


def following_batch_norm(value: Value) -> Node | None:
    uses = value.uses()
    if len(uses) == 1 and uses[0][0].op == "onnx.BatchNormalization" and uses[0][1] == 0:
        return uses[0][0]
    return None


def channel_scores(analysis: ChannelAnalysis, criterion: str,
                   activations: dict[str, np.ndarray] | None = None) -> dict[Node, np.ndarray]:
    """Each source layer's score per output channel (`activations`: measured ones, by layer name)."""
    if criterion not in CRITERIA:
        raise MdocError(f"pruning criterion '{criterion}' is not one of {', '.join(CRITERIA)}")
    scores = {}
    for s in analysis.sources:
        if criterion == "activation":
            if activations is None:
                raise MdocError("the 'activation' criterion needs calibration samples (--calib)")
            scores[s.node] = activations[s.node.name]
            continue
        rows = weight_rows(s)
        bn = following_batch_norm(s.node.output)
        gamma = np.abs(bn.input(1).const_value.astype(np.float64)) if bn is not None else None
        if criterion == "bn-scale" and gamma is not None:
            scores[s.node] = gamma
            continue
        norm = np.sqrt((rows ** 2).sum(axis=1)) if criterion == "l2" else np.abs(rows).sum(axis=1)
        if bn is not None:
            var = bn.input(4).const_value.astype(np.float64)
            norm = norm * gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
        scores[s.node] = norm
    return scores


def round_channels(count: float, total: int, multiple: int) -> int:
    """`count` rounded to the nearest multiple of `multiple`, at least one multiple, at most `total`."""
    multiple = max(1, multiple)
    return int(min(total, max(multiple, round(count / multiple) * multiple)))


def plan(analysis: ChannelAnalysis, groups: list[Group], scores: dict[Node, np.ndarray], *, channels: float,
         heads: float, round_to: int = 1, exclude: tuple[str, ...] = ()) -> tuple[np.ndarray, list[Decision]]:
    """Which atoms stay (a boolean per atom) and a decision per group."""
    for name, ratio in (("channels", channels), ("heads", heads)):
        if not 0 <= ratio < 1:
            raise MdocError(f"pruning ratio --{name} {ratio} must be in [0, 1)")
    kept = np.ones(analysis.atom_count, dtype=bool)
    atom_score = np.zeros(analysis.atom_count)
    for s in analysis.sources:
        v = scores[s.node]
        mean = float(np.mean(v)) if len(v) else 0.0
        atom_score[s.start:s.start + s.count] = v / mean if mean > 0 else v
    decisions = []
    for group in groups:
        names = [s.node.name for s in group.sources]
        ratio = heads if group.heads else channels
        n = len(group.units)
        reason = group.frozen or next((f"'{x}' is excluded" for x in names if x in exclude), "")
        if reason or ratio == 0:
            decisions.append(Decision(group.key, names, n, n, bool(group.heads), reason))
            continue
        keep = max(1, n - round(ratio * n)) if group.heads else round_channels(n * (1 - ratio), n, round_to)
        unit_scores = np.array([atom_score[u].sum() for u in group.units])
        order = np.argsort(-unit_scores, kind="stable")
        for u in order[keep:]:
            kept[group.units[u]] = False
        decisions.append(Decision(group.key, names, n, keep, bool(group.heads),
                                  channels={s.node.name: np.nonzero(kept[s.atoms])[0].tolist() for s in group.sources}))
    return kept, decisions
