"""decompose-rnn: LSTM, GRU and RNN become their cell equations, unrolled over a static sequence, else a Loop.

TVM has no recurrent ops. For each direction, the input projection of every
step is one MatMul before the loop (X·Wᵀ plus both biases, folded into one
constant when B is constant), and each step is a Gather of its row, a Gemm with
the recurrent weights and the gates' pointwise ops (f, g, h are the activations,
Sigmoid, Tanh, Tanh by default):

    LSTM  gi, go, gf, gc = x·Wᵀ + h·Rᵀ + Wb + Rb          (peepholes: gi += Pi·c, gf += Pf·c, go += Po·C)
          C = f(gf)·c + f(gi)·g(gc)     H = f(go)·h(C)      (input_forget: 1 - f(gi) for f(gf))
    GRU   z, r = f(x·Wzrᵀ + h·Rzrᵀ + Wbzr + Rbzr)
          linear_before_reset=0: n = g(x·Whᵀ + (r·h)·Rhᵀ + Wbh + Rbh)
          linear_before_reset=1: n = g(x·Whᵀ + Wbh + r·(h·Rhᵀ + Rbh))
          H = n + z·(h - n)
    RNN   H = f(x·Wᵀ + h·Rᵀ + Wb + Rb)

Covered: the `activations` attribute (per direction; Relu, Tanh, Sigmoid,
Affine, LeakyRelu, ThresholdedRelu, ScaledTanh, HardSigmoid, Elu, Softsign,
Softplus, with alphas and betas consumed in order as onnxruntime does); `clip`
on the input of every activation except h(C) of the LSTM (onnxruntime does not
clip the cell state); directions forward, reverse and bidirectional; layout 0
and 1; optional B, initial_h, initial_c and P. A zero initial state is not
materialized: the first step skips its recurrent Gemm. `sequence_lens` masks
the steps past a batch entry's length with Where (its state stays, its Y rows
are 0), unless it is a constant equal to the full length everywhere. Y is one
Concat of the steps and a Reshape; Y_h and Y_c one Concat and Reshape each;
outputs nothing reads are not built. Weights that are constants are sliced and
transposed at compile time; weights computed at run time get Gather/Transpose.

A sequence length that is symbolic or unknown, or an X of unknown rank (what
a body that reads outer values may leave even after infer-shapes), takes the
generic path: the input projections are computed for all steps as above, and
one cell step becomes the body of an onnx.Loop whose trip count is read from
Shape(X) at run time, carrying h (and c) and stacking the Y rows as its scan
output. What a step reads per position (its projections, its sequence_lens
mask) is computed for every position before the Loop, in the order the
direction visits them (a reverse direction Gathers by a reversed Range, and
its Y rows back after the Loop). Zero initial states are Expanded to the
run-time batch size. The TVM target lowers that Loop to a Relax while loop.

Refused with an MdocError naming the node: malformed attributes, an X whose
rank is known and not 3, Affine/ScaledTanh/ThresholdedRelu without their
alpha/beta (onnxruntime's defaults differ from ONNX's), and a reverse
direction or sequence_lens over a run-time length before opset 11.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdoc.clone import erase_unused_constants, is_read, replace_results
from mdoc.errors import MdocError
from mdoc.ir import Graph, Node, Value
from mdoc.pass_manager import GraphPass, PassContext, register_pass
from mdoc.passes.decompose_util import Builder, Operand, describe, shape_of
from mdoc.shape_inference import merge
from mdoc.types import DType, TensorType

RECURRENT = {"onnx.LSTM": 4, "onnx.GRU": 3, "onnx.RNN": 1}
DEFAULT_ACTIVATIONS = {"onnx.LSTM": ("Sigmoid", "Tanh", "Tanh"), "onnx.GRU": ("Sigmoid", "Tanh"), "onnx.RNN": ("Tanh",)}

# lower-case name -> (alpha default, beta default); None where the function takes no such parameter.
# onnxruntime's defaults are those of the standalone ONNX ops for LeakyRelu, HardSigmoid and Elu,
# but 0 for Affine, ScaledTanh and ThresholdedRelu (where ONNX's ops say 1.0 or nothing): those must
# be given, so the unrolled graph never silently disagrees with one of the two.
REQUIRED = "required"
ACTIVATIONS = {
    "relu": (None, None), "tanh": (None, None), "sigmoid": (None, None),
    "softsign": (None, None), "softplus": (None, None),
    "leakyrelu": (0.01, None), "hardsigmoid": (0.2, 0.5), "elu": (1.0, None),
    "affine": (REQUIRED, REQUIRED), "scaledtanh": (REQUIRED, REQUIRED), "thresholdedrelu": (REQUIRED, None),
}


@register_pass("decompose-rnn")
@dataclass(frozen=True)
class DecomposeRnn(GraphPass):
    """LSTM, GRU and RNN into MatMul, Gemm and pointwise ops: unrolled over a static length, else a Loop."""

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        return _walk(graph, ctx)


def _walk(graph: Graph, ctx: PassContext) -> bool:
    changed = False
    for node in graph.nodes():
        for sub in node.subgraphs():
            changed |= _walk(sub, ctx)
        if node.op in RECURRENT:
            _Unroll(node, ctx).run()
            changed = True
    return changed


@dataclass
class _Act:
    """One activation function with its parameters."""

    name: str
    alpha: float | None
    beta: float | None


class _Unroll:
    def __init__(self, node: Node, ctx: PassContext):
        self.node = node
        self.op = node.op
        self.kind = node.op_type
        self.label = describe(node)
        self.opset = ctx.model.opset
        self.b = Builder(node.graph, node, self.opset, "decompose-rnn", node.name)

    def fail(self, why: str):
        raise MdocError(f"decompose-rnn: {self.label}: {why}")

    # -- attributes and operands ---------------------------------------------------
    def run(self) -> None:
        node, attrs = self.node, self.node.attrs
        x = node.input(0)
        shape = shape_of(x)
        if shape is not None and len(shape) != 3:
            self.fail(f"X has type {x.type}; it must have rank 3")
        self.layout = attrs.get("layout", 0)
        if self.layout not in (0, 1):
            self.fail(f"layout={self.layout} is not 0 or 1")
        self.seq_axis = self.layout  # X is [seq, batch, input] (layout 0) or [batch, seq, input]
        steps = None if shape is None else shape[self.seq_axis]
        self.steps = steps if isinstance(steps, int) else None  # None: known at run time only, a Loop
        # a symbolic length names the Loop's results' dims, so the backend can prove the directions agree
        self.seq_dim = steps if isinstance(steps, str) else None
        if self.steps is not None and self.steps < 1:
            self.fail(f"sequence length is {steps}; there is nothing to unroll")
        self.batch = None if shape is None else shape[1 - self.seq_axis]
        typed = next((v.type for v in (x, node.input(1)) if isinstance(v.type, TensorType)), None)
        if typed is None:
            self.fail("neither X nor W has a known element type")
        self.dtype = typed.dtype
        direction = attrs.get("direction", "forward")
        if direction not in ("forward", "reverse", "bidirectional"):
            self.fail(f"direction '{direction}' is not forward, reverse or bidirectional")
        self.reverse = [direction == "reverse"] if direction != "bidirectional" else [False, True]
        self.hidden = attrs.get("hidden_size") or self._hidden_from_r()
        self.clip_bound = attrs.get("clip")
        self.acts = self._activations(len(self.reverse))
        for flag in ("input_forget", "linear_before_reset"):
            if attrs.get(flag, 0) not in (0, 1):
                self.fail(f"{flag}={attrs[flag]} is not 0 or 1")
        if self.steps is None:
            self._check_loop()  # the last check; from here on nodes are emitted
            self._finish_loop(self._looped())
            return
        self.mask = self._masks()  # the last check; from here on nodes are emitted
        self._finish(self._unrolled())

    def _hidden_from_r(self) -> int:
        shape = shape_of(self.node.input(2))
        if shape is None or not isinstance(shape[-1], int):
            self.fail("has no hidden_size attribute and R's shape does not give it")
        return shape[-1]

    def _activations(self, directions: int) -> list[list[_Act]]:
        per = len(DEFAULT_ACTIVATIONS[self.op])
        names = self.node.attrs.get("activations") or DEFAULT_ACTIVATIONS[self.op] * directions
        if len(names) != per * directions:
            self.fail(f"has {len(names)} activations; it needs {per} per direction ({per * directions})")
        alphas = list(self.node.attrs.get("activation_alpha", ()))
        betas = list(self.node.attrs.get("activation_beta", ()))
        acts = []
        for name in names:
            key = name.lower() if isinstance(name, str) else ""
            if key not in ACTIVATIONS:
                self.fail(f"activation '{name}' is not one of {', '.join(sorted(ACTIVATIONS))}")
            da, db = ACTIVATIONS[key]
            alpha = (alphas.pop(0) if alphas else da) if da is not None else None
            beta = (betas.pop(0) if betas else db) if db is not None else None
            if REQUIRED in (alpha, beta):
                self.fail(f"activation '{name}' has no {'alpha' if alpha == REQUIRED else 'beta'} in "
                          "activation_alpha/activation_beta; give it explicitly (onnxruntime takes 0, "
                          "the ONNX op of that name another default)")
            acts.append(_Act(key, alpha, beta))
        return [acts[d * per:(d + 1) * per] for d in range(directions)]

    def _masks(self) -> list[Operand | None] | None:
        """Per position t, a bool [batch, 1] saying which batch entries are still running; None: all are."""
        lens = self.node.input(4)
        if lens is None:
            return None
        const = lens.const_value
        if const is not None:
            if np.all(const == self.steps):
                return None
            return [None if np.all(const > t) else (const > t).reshape(-1, 1) for t in range(self.steps)]
        if self.opset < 9:
            self.fail(f"masking by sequence_lens needs Where (opset 9); the model is opset {self.opset}")
        col = self.b.unsqueeze(lens, 1)
        mask_type = TensorType(DType.BOOL, (self.batch, 1))
        ltype = lens.type.dtype.numpy if isinstance(lens.type, TensorType) else np.int32
        return [self.b.emit("onnx.Greater", [col, np.asarray(t, ltype)], {}, mask_type) for t in range(self.steps)]

    # -- per-direction operands ----------------------------------------------------------
    def _direction(self, index: int, d: int) -> Operand | None:
        """Operand `index` of direction `d`, without its direction axis (None when absent)."""
        v = self.node.input(index)
        if v is None:
            return None
        if v.const_value is not None:
            v = v.const_value
        # initial_h / initial_c are [batch, directions, hidden] in layout 1
        axis = 1 if self.layout == 1 and index in (5, 6) else 0
        return self.b.gather(v, d, axis)

    def _projection(self, d: int, bias: Operand | None) -> Operand:
        """x·Wᵀ + bias for all steps at once: [seq, batch, gates·hidden] (layout 0) or [batch, seq, ...]."""
        b = self.b
        wt = b.transpose(self._direction(1, d), (1, 0))
        xw = b.matmul(self.node.input(0), wt)
        return xw if bias is None else b.add(xw, bias)

    def _step_input(self, xw: Operand, t: int) -> Operand:
        return self.b.gather(xw, t, self.seq_axis)

    def _positions(self, d: int) -> list[int]:
        return list(range(self.steps - 1, -1, -1)) if self.reverse[d] else list(range(self.steps))

    def _f(self, act: _Act, x: Value, clip: bool = True) -> Value:
        """Activation `act` of `x`, clipped first when the node has a clip."""
        b = self.b
        x = b.value(x)
        if clip and self.clip_bound is not None:
            x = b.clip(x, self.clip_bound)
        one = lambda a: np.asarray(a, self.dtype.numpy)  # noqa: E731
        name = act.name
        if name in ("relu", "tanh", "sigmoid", "softsign", "softplus"):
            return b.unary("onnx." + {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid",
                                      "softsign": "Softsign", "softplus": "Softplus"}[name], x)
        if name == "leakyrelu":
            return b.unary("onnx.LeakyRelu", x, alpha=float(act.alpha))
        if name == "elu":
            return b.unary("onnx.Elu", x, alpha=float(act.alpha))
        if name == "hardsigmoid":
            return b.unary("onnx.HardSigmoid", x, alpha=float(act.alpha), beta=float(act.beta))
        if name == "thresholdedrelu":
            if self.opset >= 10:
                return b.unary("onnx.ThresholdedRelu", x, alpha=float(act.alpha))
            above = b.emit("onnx.Greater", [x, one(act.alpha)], {}, TensorType(DType.BOOL, shape_of(x)))
            return b.emit("onnx.Where", [above, x, one(0)], {}, x.type)
        if name == "affine":
            return b.add(b.mul(x, one(act.alpha)), one(act.beta))
        if name == "scaledtanh":
            return b.mul(b.unary("onnx.Tanh", b.mul(x, one(act.beta))), one(act.alpha))
        raise AssertionError(name)

    def _masked(self, mask: Operand | None, new: Value, old: Value | None) -> tuple[Value, Value]:
        """(state after a position, its Y row): the new state where `mask` says the entry runs, else the old
        one and 0; `mask` None: every entry runs."""
        if mask is None:
            return new, new
        zero = np.zeros((), self.dtype.numpy)
        y = self.b.emit("onnx.Where", [mask, new, zero], {}, new.type)
        if old is None:
            return y, y
        return self.b.emit("onnx.Where", [mask, new, old], {}, new.type), y

    # -- the three cells -----------------------------------------------------------------
    # Each `_<cell>_cell(d)` emits what direction `d` computes once (the input projections for all
    # steps, the transposed recurrent weights) and returns them with the step function:
    # `step(inputs, h, c) -> (new h, new c)`, where `inputs` are the projections' rows of one
    # position and h / c the state before it (None: a zero initial state). The step emits through
    # `self.b`, the builder of the graph being built: the node's own, or a Loop body's.
    def _cell(self, d: int):
        return {"onnx.LSTM": self._lstm_cell, "onnx.GRU": self._gru_cell, "onnx.RNN": self._rnn_cell}[self.op](d)

    def _biases(self, d: int, gates: int) -> tuple[Operand | None, Operand | None]:
        bias = self._direction(3, d)
        if bias is None:
            return None, None
        n = gates * self.hidden
        return tuple(self.b.split(bias, [n, n], 0))

    def _initial(self, index: int, d: int) -> Value | None:
        v = self._direction(index, d)
        return None if v is None else self.b.value(v)

    def _lstm_cell(self, d: int):
        b, hsz = self.b, self.hidden
        couple = bool(self.node.attrs.get("input_forget", 0))
        one = np.ones((), self.dtype.numpy)
        f, g, h_act = self.acts[d]
        wb, rb = self._biases(d, 4)
        xw = self._projection(d, None if wb is None else b.add(wb, rb))
        rt = b.transpose(self._direction(2, d), (1, 0))
        peep = self._direction(7, d)
        pi, po, pf = b.split(peep, [hsz] * 3, 0) if peep is not None else (None, None, None)

        def step(inputs, h, c):
            b = self.b
            gates = inputs[0]
            if h is not None:
                gates = b.gemm(h, rt, gates)
            if peep is None and not couple:  # i, o, f are contiguous: one activation for the three
                gates, gc = b.split(gates, [3 * hsz, hsz], 1)
                i, o, forget = b.split(self._f(f, gates), [hsz] * 3, 1)
            else:
                gi, go, gf, gc = b.split(gates, [hsz] * 4, 1)
                if peep is not None and c is not None:
                    gi, gf = b.add(gi, b.mul(c, pi)), b.add(gf, b.mul(c, pf))
                i = self._f(f, gi)
                forget = None if c is None else b.sub(one, i) if couple else self._f(f, gf)
            new_c = b.mul(i, self._f(g, gc))
            if c is not None:
                new_c = b.add(b.mul(forget, c), new_c)
            if peep is not None or couple:
                if peep is not None:
                    go = b.add(go, b.mul(new_c, po))
                o = self._f(f, go)
            return b.mul(o, self._f(h_act, new_c, clip=False)), new_c

        return [xw], step, self._initial(5, d), self._initial(6, d)

    def _gru_cell(self, d: int):
        b, hsz = self.b, self.hidden
        lbr = self.node.attrs.get("linear_before_reset", 0)
        f, g = self.acts[d]
        wb, rb = self._biases(d, 3)
        rb_h = None
        if wb is None:
            bias = None
        elif lbr:  # Rbh stays inside r·(h·Rhᵀ + Rbh)
            rb_zr, rb_h = b.split(rb, [2 * hsz, hsz], 0)
            bias = b.add(wb, b.concat([rb_zr, np.zeros(hsz, self.dtype.numpy)], 0))
        else:
            bias = b.add(wb, rb)
        xw_zr, xw_n = b.split(self._projection(d, bias), [2 * hsz, hsz], 2)
        rt_zr, rt_n = b.split(b.transpose(self._direction(2, d), (1, 0)), [2 * hsz, hsz], 1)

        def step(inputs, h, c):
            b = self.b
            zr, n = inputs
            if h is not None:
                zr = b.gemm(h, rt_zr, zr)
            z, r = b.split(self._f(f, zr), [hsz, hsz], 1)
            if lbr and h is not None:
                hr = b.gemm(h, rt_n, rb_h if rb_h is not None else np.zeros(hsz, self.dtype.numpy))
                n = b.add(n, b.mul(r, hr))
            elif lbr and rb_h is not None:
                n = b.add(n, b.mul(r, rb_h))
            elif h is not None:
                n = b.gemm(b.mul(r, h), rt_n, n)
            n = self._f(g, n)
            return (b.add(n, b.mul(z, b.sub(h, n))) if h is not None else b.sub(n, b.mul(z, n))), None

        return [xw_zr, xw_n], step, self._initial(5, d), None

    def _rnn_cell(self, d: int):
        b = self.b
        (f,) = self.acts[d]
        wb, rb = self._biases(d, 1)
        xw = self._projection(d, None if wb is None else b.add(wb, rb))
        rt = b.transpose(self._direction(2, d), (1, 0))

        def step(inputs, h, c):
            pre = inputs[0] if h is None else self.b.gemm(h, rt, inputs[0])
            return self._f(f, pre), None

        return [xw], step, self._initial(5, d), None

    # -- unrolled over a static sequence ---------------------------------------------------
    def _unrolled(self):
        """Per direction (Y row per position, last h, last c), every step its own nodes."""
        out = []
        for d in range(len(self.reverse)):
            xws, step, h, c = self._cell(d)
            ys = [None] * self.steps
            for t in self._positions(d):
                new_h, new_c = step([self._step_input(xw, t) for xw in xws], h, c)
                mask = None if self.mask is None else self.mask[t]
                if new_c is not None:
                    c, _ = self._masked(mask, new_c, c)
                h, ys[t] = self._masked(mask, new_h, h)
            out.append((ys, h, c))
        return out

    # -- a Loop over a sequence known at run time --------------------------------------------
    def _check_loop(self) -> None:
        needs = ["sequence_lens"] if self.node.input(4) is not None else []
        needs += ["a reverse direction"] if any(self.reverse) else []
        if needs and self.opset < 11:
            self.fail(f"the sequence length is known only at run time, and {' and '.join(needs)} over it "
                      f"needs Range (opset 11); the model is opset {self.opset}")

    def _looped(self):
        """Per direction (Y [seq, batch, hidden] in time order, last h, last c), the steps an onnx.Loop.

        The trip count and the zero initial states take their sizes from Shape(X) at
        run time. Everything a step reads per position is computed for all positions
        before the Loop, in the order the direction visits them (a reverse direction
        Gathers its projections, masks and, after the Loop, its Y rows by a reversed
        Range), so the body only gathers row i of each.
        """
        b, hsz, node = self.b, self.hidden, self.node
        i64, dtype = DType.I64, self.dtype
        shape = b.emit("onnx.Shape", [node.input(0)], {}, TensorType(i64, (3,)))
        seq = b.gather(shape, self.seq_axis, 0)
        batch = b.emit("onnx.Gather", [shape, b.i64([1 - self.seq_axis])], {"axis": 0}, TensorType(i64, (1,)))
        state_type = TensorType(dtype, (self.batch, hsz))
        positions = {}
        if any(self.reverse) or node.input(4) is not None:
            steps = TensorType(i64, (self.seq_dim,))
            positions[False] = b.emit("onnx.Range", [b.i64(0), seq, b.i64(1)], {}, steps)
            # last - [0, 1, ...] rather than a Range counting down, whose length TVM cannot prove is seq
            positions[True] = b.sub(b.sub(seq, b.i64(1)), positions[False])
        out = []
        for d in range(len(self.reverse)):
            reverse = self.reverse[d]
            xws, step, h, c = self._cell(d)
            if self.layout == 1:  # the body gathers positions along axis 0
                xws = [b.transpose(xw, (1, 0, 2)) for xw in xws]
            if reverse:
                xws = [b.emit("onnx.Gather", [xw, positions[True]], {"axis": 0}, xw.type) for xw in xws]
            masks = self._loop_masks(positions.get(reverse))
            zeros = None
            if h is None or (c is None and self.op == "onnx.LSTM"):
                size = b.concat([batch, b.i64([hsz])], 0)
                zeros = b.emit("onnx.Expand", [np.zeros((), dtype.numpy), size], {}, state_type)
            carried = [h if h is not None else zeros]
            if self.op == "onnx.LSTM":
                carried.append(c if c is not None else zeros)
            body, outer = Graph(f"{self.kind.lower()}_step"), self.b
            i = body.add_input(TensorType(i64, ()), "i")
            cond = body.add_input(TensorType(DType.BOOL, ()), "cond")
            states = [body.add_input(state_type, n) for n in ("h", "c")[:len(carried)]]
            self.b = Builder(body, None, self.opset, "decompose-rnn", f"{node.name}/step" if node.name else "")
            try:
                h_in, c_in = states[0], states[1] if len(states) > 1 else None
                new_h, new_c = step([self.b.gather(xw, i, 0) for xw in xws], h_in, c_in)
                mask = None if masks is None else self.b.gather(masks, i, 0)
                results = []
                if new_c is not None:
                    results.append(self._masked(mask, new_c, c_in)[0])
                h_out, y = self._masked(mask, new_h, h_in)
                body.outputs = [cond, h_out, *results, y]
            finally:
                self.b = outer
            loop = b.emit("onnx.Loop", [seq, None, *carried], {"body": body},
                          [state_type] * len(carried) + [TensorType(dtype, (self.seq_dim, self.batch, hsz))])
            ys = loop[-1]
            if reverse:  # the Loop stacked the rows last position first
                ys = b.emit("onnx.Gather", [ys, positions[True]], {"axis": 0}, ys.type)
            out.append((ys, loop[0], loop[1] if len(carried) > 1 else None))
        return out

    def _loop_masks(self, positions: Value | None) -> Value | None:
        """bool [seq, batch, 1]: row k says which batch entries still run at the k-th position visited."""
        lens = self.node.input(4)
        if lens is None:
            return None
        b = self.b
        ltype = lens.type.dtype if isinstance(lens.type, TensorType) else DType.I32
        col = b.unsqueeze(b.unsqueeze(lens, 0), 2)  # [1, batch, 1]
        at = b.emit("onnx.Cast", [positions], {"to": ltype.value}, TensorType(ltype, (None,)))
        at = b.unsqueeze(b.unsqueeze(at, 1), 2)  # [seq, 1, 1]
        return b.emit("onnx.Greater", [col, at], {}, TensorType(DType.BOOL, (self.seq_dim, self.batch, 1)))

    def _finish_loop(self, per_direction) -> None:
        b, node = self.b, self.node
        nd = len(per_direction)
        new: list[Value | None] = [None] * len(node.outputs)
        if is_read(node.outputs[0]):  # [seq, dirs, batch, hidden], or [batch, seq, dirs, hidden] in layout 1
            y = b.concat([b.unsqueeze(ys, 1) for ys, _, _ in per_direction], 1)
            new[0] = b.transpose(y, (2, 0, 1, 3)) if self.layout == 1 else y
        for k in (1, 2):
            if k < len(node.outputs) and is_read(node.outputs[k]):
                last = b.concat([b.unsqueeze(r[k], 0) for r in per_direction], 0)
                new[k] = b.transpose(last, (1, 0, 2)) if self.layout == 1 else last
        self._replace(new)

    # -- outputs ---------------------------------------------------------------------------
    def _finish(self, per_direction) -> None:
        b, node = self.b, self.node
        nd, steps, hsz = len(per_direction), self.steps, self.hidden
        batch = self.batch if isinstance(self.batch, int) else -1
        known = self.batch if isinstance(self.batch, int) else None
        concat_axis = 0 if self.layout == 0 else 1
        new: list[Value | None] = [None] * len(node.outputs)
        if is_read(node.outputs[0]):
            rows = [per_direction[d][0][t] for t in range(steps) for d in range(nd)]
            joined = b.concat(rows, concat_axis)
            if self.layout == 0:
                new[0] = b.reshape(joined, [steps, nd, batch, hsz], (steps, nd, known, hsz))
            else:
                new[0] = b.reshape(joined, [batch, steps, nd, hsz], (known, steps, nd, hsz))
        for k, slot in ((1, 1), (2, 2)):
            if k < len(node.outputs) and is_read(node.outputs[k]):
                joined = b.concat([b.value(r[slot]) for r in per_direction], concat_axis)
                if self.layout == 0:
                    new[k] = b.reshape(joined, [nd, batch, hsz], (nd, known, hsz))
                else:
                    new[k] = b.reshape(joined, [batch, nd, hsz], (known, nd, hsz))
        self._replace(new)

    def _replace(self, new: list[Value | None]) -> None:
        node = self.node
        for old, v in zip(node.outputs, new):
            if v is not None:
                v.type = merge(old.type, v.type)
        operands = node.inputs
        replace_results(node, new, provenance="decompose-rnn")
        erase_unused_constants(operands)
