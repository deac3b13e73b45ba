"""Layer-wise distillation: a compressed student re-fitted to its teacher's activations, layer by
layer, from unlabeled samples, with no training framework (what `mdoc distill` runs).

For every layer the compression touched, in topological order:

- a pruned layer (a Conv, Gemm or MatMul whose weight lost rows or columns) is re-fitted by least
  squares: the student's inputs to it (after the re-fits before it) are the regressors, a conv's
  as im2col patches, and the teacher's output of the same layer is the target (only the output
  channels the student kept, from the metadata `mdoc prune` writes). The fit is a ridge regression
  towards the pruned weights (`ridge` scales the penalty by the mean diagonal of the normal
  matrix), with an intercept where the layer has or can take a bias. A classifier that reads
  GlobalAveragePool + Flatten is fitted at every position before the pooling (pooling and the
  Gemm commute): one row per position instead of one per sample;
- a quantized layer (its weight a DequantizeLinear of an int8 constant, as `mdoc quantize`
  writes it) gets bias correction (`bias`, the default: the mean of the teacher's output minus the
  student's, per channel, added to its bias), or `scale`: per output channel a least-squares line
  (slope and offset) from the student's output to the teacher's, the slope folded into the
  weight's per-channel dequantization scale (its int8 values unchanged) and the offset into its
  bias, so a channel that rounding shrank or grew is stretched back, not only shifted; these two
  also reach depthwise and grouped convs, which need no regressors. Or it is re-fitted the same way as a pruned one from
  its quantized inputs, the solution rounded to the weight's int8 grid with its scales unchanged
  (`requantize`: the rounding chosen by the data, in the spirit of AdaRound/AdaQuant; on the seeded
  ResNet-18 it measured no better than bias correction, see the README).

The report has each layer's relative error (squared error over the target's energy) before and
after, and the whole model's centered cosine against the teacher on held-out samples before and
after, with how much of its gap to 1 it closed.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np

from .errors import MdocError
from .ir import Model, Node
from .onnx_export import export_model
from .pass_manager import PassManager, parse_pipeline
from .pruning import KEPT_CHANNELS
from .quantize import PREPARE as QUANT_PREPARE
from .quantize import outputs_on
from .quantize import accuracy
from .types import TensorType

PRUNE_PREPARE = "infer-shapes,fold-constants{max-bytes=0},simplify,cse,dce"
LAYERS = ("onnx.Conv", "onnx.Gemm", "onnx.MatMul")
INT8_MODES = ("bias", "scale", "requantize")


def distill(student: Model, teacher: Model, samples: list[dict], *, eval_samples: list[dict] | None = None,
            ridge: float = 1e-2, int8: str = "bias",
            progress: Callable[[str], None] | None = None) -> tuple[Model, dict]:
    """The student with its compressed layers re-fitted to the teacher, and the report. Both models are edited
    in place: the student re-fitted, the teacher given the cleanup its student had (BatchNorm folded for int8)."""
    if int8 not in INT8_MODES:
        raise MdocError(f"int8 distillation '{int8}' is not one of {', '.join(INT8_MODES)}")
    if not samples:
        raise MdocError("distillation needs calibration samples (--calib)")
    quantized = any(_dequantized_weight(n) is not None for n in student.graph)
    PassManager(parse_pipeline(QUANT_PREPARE if quantized else PRUNE_PREPARE)).run(teacher)
    kept = json.loads(student.metadata.get(KEPT_CHANNELS, "{}"))
    teachers = {n.name: n for n in teacher.graph if n.op in LAYERS}
    plan = [(n.name, mode) for n in student.graph if (mode := _mode(n, teachers.get(n.name), int8)) is not None]
    if not plan:
        raise MdocError("nothing to distill: no layer of the student is pruned or quantized relative to the teacher "
                        "(layers are matched by node name)")
    teacher_names: dict = {}
    teacher_proto = export_model(teacher, teacher_names)
    targets = {name: teacher_names[teachers[name].output] for name, _ in plan}
    students = {n.name: n for n in student.graph}
    pooled = {name: (vs, vt) for name, mode in plan if mode == "refit" and (vs := _pooled(students[name])) is not None
              and (vt := _pooled(teachers[name])) is not None}
    teacher_run = _Runner(teacher_proto, list(targets.values()) + [teacher_names[vt] for _, vt in pooled.values()])
    held_out = eval_samples or samples
    reference = outputs_on(teacher_proto, held_out)
    before = accuracy(outputs_on(export_model(student), held_out), reference)
    batches = _batches(teacher, samples)
    rows = []
    for name, mode in plan:
        node = next(n for n in student.graph if n.name == name)
        if progress is not None:
            progress(name)
        fit = _Fit(node, mode, kept.get(name), ridge)
        names: dict = {}
        proto = export_model(student, names)
        if name in pooled:
            vs, vt = pooled[name]
            run = _Runner(proto, [names[vs]])
            for feeds in batches:
                fit.add_positions(run(feeds)[0], teacher_run(feeds, teacher_names[vt]), teachers[name])
        else:
            run = _Runner(proto, [names[node.input(0)], names[node.output]])
            for feeds in batches:
                x, y_student = run(feeds)
                fit.add(x, y_student, teacher_run(feeds, targets[name]))
        rows.append({"layer": name, "mode": mode, **fit.apply()})
    PassManager(parse_pipeline("dce")).run(student)  # the replaced weights
    after = accuracy(outputs_on(export_model(student), held_out), reference)
    gap = 1 - before
    return student, {"layers": rows, "accuracy_before": before, "accuracy_after": after,
                     "gap_closed": (after - before) / gap if gap > 0 else 0.0,
                     "samples": len(samples), "held_out": len(held_out)}


def _pooled(node: Node):
    """The 4-D value a Gemm reads through GlobalAveragePool and Flatten (or a flattening Reshape), else None."""
    x = node.input(0)
    plain = node.attrs.get("alpha", 1.0) == 1.0 and node.attrs.get("beta", 1.0) == 1.0
    flat = x.producer() if node.op == "onnx.Gemm" and plain and x is not None else None
    pool = flat.input(0).producer() if flat is not None and flat.op in ("onnx.Flatten", "onnx.Reshape") else None
    return pool.input(0) if pool is not None and pool.op == "onnx.GlobalAveragePool" else None


def _batches(model: Model, samples: list[dict], size: int = 8) -> list[dict]:
    """The samples stacked along the batch axis, `size` at a time, where every input's first dim is symbolic
    (one onnxruntime call per batch instead of per sample); else one at a time."""
    symbolic = all(isinstance(v.type, TensorType) and v.type.shape and isinstance(v.type.shape[0], str)
                   for v in model.graph.inputs)
    if not symbolic or len({tuple((k, a.shape) for k, a in sorted(f.items())) for f in samples}) != 1:
        return samples
    return [{k: np.concatenate([f[k] for f in samples[i:i + size]]) for k in samples[0]}
            for i in range(0, len(samples), size)]


def _dequantized_weight(node: Node):
    w = node.input(1) if node.op in LAYERS else None
    p = w.producer() if w is not None else None
    if p is not None and p.op == "onnx.DequantizeLinear" and p.input(0).const_value is not None:
        return p
    return None


def _mode(node: Node, teacher: Node | None, int8: str) -> str | None:
    """'refit' for a layer whose weights pruning sliced; for a quantized one `int8` ('requantize': least squares
    rounded to the weight's int8 grid, 'bias': bias correction, 'scale': a per-channel slope and offset); else None."""
    if teacher is None or node.op not in LAYERS or node.op != teacher.op:
        return None
    if node.op == "onnx.Gemm" and node.attrs.get("transA", 0):
        return None
    grouped = node.op == "onnx.Conv" and int(node.attrs.get("group", 1)) != 1
    if _dequantized_weight(node) is not None:
        if int8 == "requantize":
            return None if grouped else int8
        return None if node.op == "onnx.MatMul" else int8  # a MatMul has no bias to correct
    if grouped:
        return None
    w, t = node.input(1), teacher.input(1)
    if w is None or w.const_value is None or t is None or t.const_value is None:
        return None
    if node.op == "onnx.Conv" and node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        return None
    # only a layer whose inputs lost channels: one that lost outputs only computes a subset of the teacher's exactly
    axis = 0 if node.op == "onnx.MatMul" or (node.op == "onnx.Gemm" and not node.attrs.get("transB", 0)) else 1
    return "refit" if w.const_value.shape[axis] != t.const_value.shape[axis] else None


class _Runner:
    """An onnxruntime session of a model with some inner values added as outputs."""

    def __init__(self, proto, names: list[str]):
        import onnx
        import onnxruntime as ort

        known = {o.name for o in proto.graph.output}
        for name in dict.fromkeys(names):
            if name not in known:
                proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # extended fusions (Conv + Add of a QDQ model) can swallow a value asked for as an output
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        self.names = names
        self.session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def __call__(self, feeds, name: str | None = None):
        out = self.session.run([name] if name else self.names, feeds)
        return out[0] if name else out


class _Fit:
    """Normal equations of one layer, accumulated sample by sample, then solved and written back."""

    def __init__(self, node: Node, mode: str, kept: list[int] | None, ridge: float):
        self.node, self.mode, self.kept, self.ridge = node, mode, kept, ridge
        self.conv = node.op == "onnx.Conv"
        self.intercept = node.op != "onnx.MatMul"  # a MatMul has no bias to take one
        self.gram = self.cross = None
        self.energy = self.err = 0.0
        self.diff = None
        self.moments = None  # 'scale': per channel sums of y, t, y*y, y*t
        self.count = 0

    def _target(self, y: np.ndarray) -> np.ndarray:
        """The teacher's output as rows [positions, channels kept by the student]."""
        y = np.moveaxis(y, 1, -1) if self.conv else y
        y = y.reshape(-1, y.shape[-1]).astype(np.float64)
        return y[:, self.kept] if self.kept is not None else y

    def add(self, x: np.ndarray, y_student: np.ndarray, y_teacher: np.ndarray) -> None:
        """One batch: the layer's input and output in the student, and the teacher's output."""
        current, target = self._target_student(y_student), self._target(y_teacher)
        if target.shape != current.shape:
            raise MdocError(f"distill: layer '{self.node.name}' gives {current.shape[-1]} channels and the teacher's "
                            f"{target.shape[-1]} with no record of which it kept (prune it with `mdoc prune`)")
        self.energy += float((target ** 2).sum())
        self.err += float(((target - current) ** 2).sum())
        if self.mode == "bias":
            d = (target - current).sum(axis=0)
            self.diff = d if self.diff is None else self.diff + d
            self.count += target.shape[0]
            return
        if self.mode == "scale":
            m = np.stack([current.sum(0), target.sum(0), (current ** 2).sum(0), (current * target).sum(0)])
            self.moments = m if self.moments is None else self.moments + m
            self.count += target.shape[0]
            return
        a = self._regressors(x)
        if self.intercept:
            a = np.concatenate([a, np.ones((a.shape[0], 1))], axis=1)
        self._accumulate(a, target)

    def add_positions(self, x: np.ndarray, x_teacher: np.ndarray, teacher: Node) -> None:
        """One batch for a Gemm after GlobalAveragePool: its inputs before the pooling, position by position, and
        the teacher's Gemm applied to the teacher's features at the same positions as the target."""
        rows = np.moveaxis(x, 1, -1).reshape(-1, x.shape[1]).astype(np.float64)
        a = np.concatenate([rows, np.ones((rows.shape[0], 1))], axis=1)
        t_rows = np.moveaxis(x_teacher, 1, -1).reshape(-1, x_teacher.shape[1]).astype(np.float64)
        w = teacher.input(1).const_value.astype(np.float64)
        c = teacher.input(2).const_value if teacher.input(2) is not None else None
        target = t_rows @ (w.T if teacher.attrs.get("transB", 0) else w) * float(teacher.attrs.get("alpha", 1.0))
        if c is not None:
            target = target + float(teacher.attrs.get("beta", 1.0)) * c.astype(np.float64).reshape(1, -1)
        target = target[:, self.kept] if self.kept is not None else target
        current = a @ self._weights()
        self.energy += float((target ** 2).sum())
        self.err += float(((target - current) ** 2).sum())
        self._accumulate(a, target)

    def _accumulate(self, a: np.ndarray, target: np.ndarray) -> None:
        g, c = a.T @ a, a.T @ target
        self.gram = g if self.gram is None else self.gram + g
        self.cross = c if self.cross is None else self.cross + c
        self.count += a.shape[0]

    def _target_student(self, y: np.ndarray) -> np.ndarray:
        y = np.moveaxis(y, 1, -1) if self.conv else y
        return y.reshape(-1, y.shape[-1]).astype(np.float64)

    def _regressors(self, x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        if not self.conv:
            return x.reshape(-1, x.shape[-1])
        kh, kw = self.node.input(1).type.shape[2:]
        sh, sw = self.node.attrs.get("strides", [1, 1])
        dh, dw = self.node.attrs.get("dilations", [1, 1])
        pt, pl, pb, pr = self.node.attrs.get("pads", [0, 0, 0, 0])
        x = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
        win = np.lib.stride_tricks.sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
        win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # [n, C, Ho, Wo, kh, kw]
        n, c, ho, wo = win.shape[:4]
        return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw)

    def apply(self) -> dict:
        before = self.err / self.energy if self.energy else 0.0
        if self.mode == "bias":
            shift = self.diff / self.count
            self._set_bias(self._bias() + shift)
            after = max(0.0, self.err - self.count * float((shift ** 2).sum())) / self.energy if self.energy else 0.0
            return {"error_before": before, "error_after": after}
        if self.mode == "scale":
            return {"error_before": before, "error_after": self._apply_scale() / self.energy if self.energy else 0.0}
        old = self._weights()  # [inputs (+ 1 for the bias), outputs]
        dim = self.gram.shape[0]
        lam = self.ridge * float(np.trace(self.gram)) / dim
        self._set_weights(np.linalg.solve(self.gram + lam * np.eye(dim), self.cross + lam * old))
        new = self._weights()  # as stored: an int8 layer's rounded to its grid
        # residual from the normal equations: |A W - Y|^2 = W'GW - 2 W'C + |Y|^2; |Y|^2 from the old fit's error
        y2 = self.err - float(np.sum(old * (self.gram @ old)) - 2 * np.sum(old * self.cross))
        err = float(np.sum(new * (self.gram @ new)) - 2 * np.sum(new * self.cross)) + y2
        return {"error_before": before, "error_after": max(err, 0.0) / self.energy if self.energy else 0.0}

    def _apply_scale(self) -> float:
        """Per channel t ~ a*y + c by least squares, a ridged towards 1 (`ridge` times y's variance); a into the
        weight's per-channel scale, a*bias + c into the bias (y = W x + bias). Returns the squared error after."""
        n = self.count
        my, mt = self.moments[0] / n, self.moments[1] / n
        var = np.maximum(self.moments[2] / n - my ** 2, 0.0)
        cov = self.moments[3] / n - my * mt
        dq = _dequantized_weight(self.node)
        scale = dq.input(1).const_value
        axis = int(dq.attrs.get("axis", 1)) % dq.input(0).const_value.ndim
        out_axis = 1 if self.node.op == "onnx.Gemm" and not self.node.attrs.get("transB", 0) else 0
        if scale.size != var.size or axis != out_axis:
            a = np.ones_like(var)  # a per-tensor scale cannot stretch one channel: the offset only
        else:
            a = np.where(var > 0, (cov + self.ridge * var) / np.maximum(var * (1 + self.ridge), 1e-30), 1.0)
            graph = self.node.graph
            dq.set_input(1, graph.constant((scale.astype(np.float64) * a.reshape(scale.shape)).astype(scale.dtype),
                                           name=dq.input(1).name, before=dq))
        c = mt - a * my
        self._set_bias(a * self._bias() + c)
        # sum (t - a y - c)^2 expanded in the moments; sum t^2 = sum (t - y)^2 + 2 sum t y - sum y^2
        t2 = self.err + 2 * self.moments[3].sum() - self.moments[2].sum()
        resid = t2 - 2 * (a * self.moments[3]).sum() - 2 * (c * self.moments[1]).sum() + (a ** 2 * self.moments[2]).sum() \
            + 2 * (a * c * self.moments[0]).sum() + n * (c ** 2).sum()
        return max(float(resid), 0.0)

    def _weight(self) -> np.ndarray:
        """The layer's weight in float, an int8 one dequantized."""
        dq = _dequantized_weight(self.node) if self.mode == "requantize" else None
        if dq is None:
            return self.node.input(1).const_value.astype(np.float64)
        q, scale, zero = dq.input(0).const_value, dq.input(1).const_value, dq.input(2)
        shape = [1] * q.ndim
        if scale.ndim:
            shape[int(dq.attrs.get("axis", 1)) % q.ndim] = -1
        zero = zero.const_value.astype(np.float64).reshape(shape) if zero is not None else 0.0
        return (q.astype(np.float64) - zero) * scale.astype(np.float64).reshape(shape)

    def _store_weight(self, w: np.ndarray) -> None:
        """Write `w` back: as a new constant, or for an int8 layer rounded to its grid (same scales)."""
        node, graph = self.node, self.node.graph
        dq = _dequantized_weight(node) if self.mode == "requantize" else None
        if dq is None:
            old = node.input(1).const_value
            node.set_input(1, graph.constant(np.ascontiguousarray(w.astype(old.dtype)), name=node.input(1).name,
                                             before=node))
            return
        q, scale, zero = dq.input(0).const_value, dq.input(1).const_value, dq.input(2)
        shape = [1] * q.ndim
        if scale.ndim:
            shape[int(dq.attrs.get("axis", 1)) % q.ndim] = -1
        zero = zero.const_value.astype(np.float64).reshape(shape) if zero is not None else 0.0
        info = np.iinfo(q.dtype)
        levels = np.clip(np.round(w / scale.astype(np.float64).reshape(shape) + zero), info.min, info.max)
        dq.set_input(0, graph.constant(levels.astype(q.dtype), name=dq.input(0).name, before=dq))

    def _weights(self) -> np.ndarray:
        node, w = self.node, self._weight()
        if self.conv:
            rows = w.reshape(w.shape[0], -1).T
        elif node.op == "onnx.Gemm" and node.attrs.get("transB", 0):
            rows = w.T
        else:
            rows = w
        return np.concatenate([rows, self._bias()[None, :]], axis=0) if self.intercept else rows

    def _channels(self) -> int:
        w = self.node.input(1).type
        if self.conv or (self.node.op == "onnx.Gemm" and self.node.attrs.get("transB", 0)):
            return w.shape[0]
        return w.shape[1]

    def _bias(self) -> np.ndarray:
        i = 2 if self.node.op in ("onnx.Conv", "onnx.Gemm") else None
        b = self.node.input(i).const_value if i is not None and self.node.input(i) is not None else None
        if i is not None and self.node.input(i) is not None and b is None:
            raise MdocError(f"distill: layer '{self.node.name}' has a bias that is not a constant")
        if b is not None and b.size == self._channels():
            return b.reshape(-1).astype(np.float64)
        if b is not None:
            return np.broadcast_to(b.reshape(-1), (self._channels(),)).astype(np.float64)
        return np.zeros(self._channels())

    def _set_bias(self, bias: np.ndarray) -> None:
        if self.node.op == "onnx.MatMul":
            return
        graph, dtype = self.node.graph, np.float32
        self.node.set_input(2, graph.constant(bias.astype(dtype), name=f"{self.node.name}.bias", before=self.node))

    def _set_weights(self, rows: np.ndarray) -> None:
        node = self.node
        weights = rows[:-1] if self.intercept else rows
        if self.conv:
            w = weights.T.reshape(node.input(1).type.shape)
        elif node.op == "onnx.Gemm" and node.attrs.get("transB", 0):
            w = weights.T
        else:
            w = weights
        self._store_weight(w)
        if self.intercept:
            self._set_bias(rows[-1])
