"""fuse-attention: multi-head attention as exporters write it ==> one `mdoc.attention` on merged heads.

    q4 = Transpose(Reshape(Q, [B, S, H, D]), perm=[0, 2, 1, 3])
    kT = Transpose(Reshape(K, [B, S, H, D]), perm=[0, 2, 3, 1])   (or [0, 2, 1, 3], then Transpose [0, 1, 3, 2])
    v4 = Transpose(Reshape(V, [B, S, H, D]), perm=[0, 2, 1, 3])
    p  = Softmax(Add(Div(MatMul(q4, kT), c), mask), axis=-1)      (Mul by 1/c too; the mask Add may be absent)
    y  = Reshape(Transpose(MatMul(p, v4), perm=[0, 2, 1, 3]), [B, S, H * D])
                          -> mdoc.attention(Q, K, V, mask?) {num_heads = H, scale = 1 / c}

This is what torch.onnx writes for Hugging Face's eager BERT/ViT self-attention
and what `mdoc.models.layers.self_attention` builds. The reshapes must split the
last axis into heads and merge it back: either their shape operands are
constants ([0, 0, H, D] / [0, 0, H * D], 0 copying a dim, -1 inferring one) or
the value types show it. Q, K and V keep their projections (MatMul + bias):
the backend fuses those into its dense kernels. The mask must be a float
tensor of rank at most 4 that broadcasts over the scores.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdoc.pass_manager import register_pass
from mdoc.rewrite import RewritePass, Rule, rewrite_rule

from .fusion_util import float_tensor, scalar, shape_of, shape_operand

SPLIT, MERGE = (0, 2, 1, 3), (0, 2, 1, 3)
KEY_T = (0, 2, 3, 1)


def _keeps(target: list, src: tuple) -> bool:
    """Whether Reshape target entries keep the source's leading dims: 0 (copy) or the same dim."""
    return all(t == 0 or t == s for t, s in zip(target, src))


def _heads_of_split(node) -> tuple[int, int] | str:
    """(H, D) when Reshape `node` turns [B, S, H*D] into [B, S, H, D], else why not."""
    src, out = shape_of(node.inputs[0]), shape_of(node.output)
    if src is None or len(src) != 3:
        return f"Reshape '{node.name}' does not read a rank-3 [batch, seq, hidden] tensor"
    target = shape_operand(node.input(1))
    if target is not None and len(target) == 4 and all(isinstance(t, int) and t > 0 for t in target[2:]):
        h, d = target[2], target[3]
    elif out is not None and len(out) == 4 and all(isinstance(x, int) for x in out[2:]):
        h, d = out[2], out[3]
    else:
        return f"Reshape '{node.name}' has no static [heads, head_dim] split"
    if not ((target is not None and len(target) == 4 and _keeps(target[:2], src[:2]))
            or (out is not None and len(out) == 4 and tuple(out[:2]) == tuple(src[:2]))):
        return f"Reshape '{node.name}' may change the batch or sequence axes"
    if isinstance(src[2], int) and src[2] != h * d:
        return f"Reshape '{node.name}' splits {src[2]} into {h} x {d}"
    return h, d


def _merges_heads(node, hidden: int, q: tuple) -> str | None:
    """None when Reshape `node` turns [B, S, H, D] into [B, S, H*D], else why not. The context's batch
    and sequence are q's, so target dims read from q's shape (or its source's) count as kept."""
    src, out = shape_of(node.inputs[0]), shape_of(node.output)
    target = shape_operand(node.input(1))
    if src is not None and target is not None and len(target) == 3 and target[2] in (hidden, -1) \
            and (_keeps(target[:2], src[:2]) or _keeps(target[:2], q[:2])):
        return None
    if src is not None and out is not None and len(out) == 3 and tuple(out[:2]) == tuple(src[:2]) \
            and out[2] == hidden:
        return None
    return f"Reshape '{node.name}' does not merge the heads back into [batch, seq, {hidden}]"


class _Attention(Rule):
    """Split heads, softmax(q k^T / c + mask), v, merge heads ==> mdoc.attention."""

    commute = True
    scale_op = "Div"
    masked = True
    key = "merged"  # K's transposes: one Transpose [0, 2, 3, 1], or "two": [0, 2, 1, 3] then [0, 1, 3, 2]

    def pattern(self, op, q, k, v, mask, sq, sk, sv, sy):
        return self.build(op, q, k, v, mask, sq, sk, sv, sy)

    def build(self, op, q, k, v, mask, sq, sk, sv, sy):
        q4 = op.Transpose(op.Reshape(q, sq, _name="split_q"), perm=SPLIT)
        if self.key == "merged":
            kt = op.Transpose(op.Reshape(k, sk, _name="split_k"), perm=KEY_T)
        else:
            kt = op.Transpose(op.Transpose(op.Reshape(k, sk, _name="split_k"), perm=SPLIT), perm=(0, 1, 3, 2))
        v4 = op.Transpose(op.Reshape(v, sv, _name="split_v"), perm=SPLIT)
        scores = op.call(f"onnx.{self.scale_op}", op.MatMul(q4, kt), op.constant(_name="c"))
        if mask is not None:
            scores = op.Add(scores, mask)
        probs = op.Softmax(scores, _name="softmax")
        return op.Reshape(op.Transpose(op.MatMul(probs, v4), perm=MERGE), sy, _name="merge")

    def check(self, m):
        for name in ("q", "k", "v"):
            if (why := float_tensor(m[name])) is not None:
                return f"{name}: {why}"
        heads = [_heads_of_split(m.node(f"split_{n}")) for n in "qkv"]
        for h in heads:
            if isinstance(h, str):
                return h
        if heads[0] != heads[1] or heads[0][0] != heads[2][0]:
            return f"q, k and v are split into different heads ({heads})"
        rank = len(shape_of(m.node("softmax").inputs[0]) or (0,) * 4)
        axis = int(m.attr("softmax", "axis", -1))
        if axis % max(rank, 1) != 3:
            return f"the Softmax is over axis {axis}, not the key axis"
        h, d = heads[2]
        if (why := _merges_heads(m.node("merge"), h * d, shape_of(m["q"]))) is not None:
            return why
        c = scalar(m, "c")
        if c is None or c == 0.0:
            return "the scores are not scaled by a nonzero scalar constant"
        if self.masked:
            mask = shape_of(m["mask"])
            if mask is None or len(mask) > 4:
                return "the mask's rank is unknown or above 4"
            if (why := float_tensor(m["mask"])) is not None or m["mask"].type.dtype != m["q"].type.dtype:
                return "the mask is not a float tensor of the scores' type"
            full = (None, h, None, None)[4 - len(mask):]
            if any(isinstance(a, int) and isinstance(b, int) and a not in (1, b) for a, b in zip(mask, full)):
                return f"the mask's shape {list(mask)} does not broadcast over {h} heads"
        return None

    def rewrite(self, op, m):
        c = scalar(m, "c")
        scale = 1.0 / c if self.scale_op == "Div" else c
        inputs = [m["q"], m["k"], m["v"]] + ([m["mask"]] if self.masked else [])
        return op.mdoc.attention(*inputs, num_heads=_heads_of_split(m.node("split_q"))[0], scale=float(scale))


class _Unmasked(_Attention):
    masked = False

    def pattern(self, op, q, k, v, sq, sk, sv, sy):
        return self.build(op, q, k, v, None, sq, sk, sv, sy)


def _rule(name: str, scale_op: str, masked: bool, key: str):
    what = ("Div by sqrt(d)" if scale_op == "Div" else "Mul by 1/sqrt(d)") + (", mask Add" if masked else "")
    cls = type(f"Attention_{name.replace('-', '_')}", (_Attention if masked else _Unmasked,), {
        "scale_op": scale_op, "masked": masked, "key": key, "__module__": __name__,
        "__doc__": f"split heads, softmax(q k^T ({what})), v, merge heads; K transposed "
                   f"{'once' if key == 'merged' else 'twice'} ==> mdoc.attention"})
    return rewrite_rule(name, benefit=3 if masked else 2)(cls)


RULES = tuple(
    _rule(f"attention{'' if masked else '-unmasked'}{'' if op == 'Div' else '-mul'}{'' if key == 'merged' else '-kt2'}",
          op, masked, key)
    for masked in (True, False) for op in ("Div", "Mul") for key in ("merged", "two"))


@register_pass("fuse-attention")
@dataclass(frozen=True)
class FuseAttention(RewritePass):
    """Multi-head attention as exporters write it (split heads, scaled scores, mask, softmax, merge) ==>
    mdoc.attention."""

    rule_names = RULES
