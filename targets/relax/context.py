"""What a converter sees while one node is lowered: its operands as Relax, constants, shapes.

Operands reach converters in one of three forms, and `LowerCtx` hides which:

* a Relax expression (the usual case: an activation, a graph input, a weight);
* a numpy array, when the operand is an `onnx.Constant` (`ctx.const(i)`), so that
  converters can read axes, pads, scales, shapes and fold weights at compile time;
* a `SymTensor`: a small integer tensor (rank 0 or 1) whose elements are known at
  compile time as integers or TIR expressions of the model's symbolic dims. `Shape`
  produces one, and the ops of ONNX shape subgraphs (Gather, Concat, Unsqueeze,
  Slice, Cast, arithmetic, Equal, Where, ...) compute on them, so that
  `Reshape(x, Concat(Gather(Shape(x), 0), [-1, 64]))` lowers to a reshape with the
  shape `(n, -1, 64)` and no runtime shape arithmetic. `ctx.input(i)` turns a
  SymTensor into a tensor only when a real tensor is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, tirx
from tvm.sym import Analyzer, ConstIntBound

from mdoc.errors import MdocError
from mdoc.ir import Model, Node, Value
from mdoc.types import DType, TensorType

from ..cpu_description import CpuSpec
from ..storage import storage_of, to_storage

# ---------------------------------------------------------------------------
# dtypes

_DTYPES = {
    DType.F32: "float32", DType.F16: "float16", DType.BF16: "bfloat16", DType.F64: "float64",
    DType.I8: "int8", DType.U8: "uint8", DType.I16: "int16", DType.U16: "uint16",
    DType.I32: "int32", DType.U32: "uint32", DType.I64: "int64", DType.U64: "uint64",
    DType.BOOL: "bool",
}
# float8, float4 and the 2/4-bit integers travel in a byte (see mdoc.targets.storage):
# converters that care (Cast, QuantizeLinear, ...) read the mdoc type, the others move bytes
_STORED = {DType.F8E4M3FN, DType.F8E4M3FNUZ, DType.F8E5M2, DType.F8E5M2FNUZ, DType.F8E8M0, DType.F4E2M1,
           DType.I4, DType.U4, DType.I2, DType.U2}


def tvm_dtype(dtype: DType, where: str = "") -> str:
    """The TVM dtype holding an mdoc dtype (a storage type for `is_stored` ones); MdocError for others."""
    if dtype in _STORED:
        return storage_of(dtype.numpy.name)
    try:
        return _DTYPES[dtype]
    except KeyError:
        at = f" ({where})" if where else ""
        raise MdocError(f"element type {dtype.text}{at} has no TVM equivalent for the Relax target") from None


def is_stored(dtype: DType) -> bool:
    """Whether `dtype` is carried in a storage type whose arithmetic would be wrong for it."""
    return dtype in _STORED


def onnx_to_tvm_dtype(onnx_elem_type: int, where: str = "") -> str:
    return tvm_dtype(DType.from_onnx(int(onnx_elem_type)), where)


def is_float(dtype: str) -> bool:
    return str(dtype).startswith(("float", "bfloat"))


# ---------------------------------------------------------------------------
# compile-time small integer tensors


def _concrete(v: Any) -> Any:
    """A python int/bool for IntImm and numpy scalars; other TIR expressions unchanged."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    if isinstance(v, tirx.IntImm):
        return bool(v.value) if pdtype(v) == "bool" else int(v.value)
    if isinstance(v, tirx.FloatImm):
        return float(v.value)
    return v


def contiguous(array) -> np.ndarray:
    """A C-contiguous ndarray of the same shape (np.ascontiguousarray turns 0-d arrays into 1-d ones)."""
    array = np.asarray(array)
    return array if array.flags.c_contiguous else np.array(array, order="C")


def pdtype(e: tirx.PrimExpr) -> str:
    """The dtype of a TIR expression (TVM 0.27 spells it `e.ty`, a PrimType; `e.dtype` is gone)."""
    return str(e.ty)


def is_static(v: Any) -> bool:
    return isinstance(_concrete(v), (bool, int, float))


@dataclass
class SymTensor:
    """A rank-0 or rank-1 tensor of `dtype` whose elements are ints, bools or TIR expressions."""

    dtype: str
    shape: tuple[int, ...]
    values: list[Any] = field(default_factory=list)

    def __post_init__(self):
        self.values = [_concrete(v) for v in self.values]
        assert len(self.shape) <= 1 and len(self.values) == (self.shape[0] if self.shape else 1)

    @classmethod
    def vector(cls, values, dtype: str = "int64") -> "SymTensor":
        values = list(values)
        return cls(dtype, (len(values),), values)

    @classmethod
    def scalar(cls, value, dtype: str = "int64") -> "SymTensor":
        return cls(dtype, (), [value])

    @classmethod
    def from_array(cls, array: np.ndarray) -> "SymTensor":
        return cls(str(array.dtype), tuple(array.shape), array.reshape(-1).tolist())

    @property
    def static(self) -> bool:
        return all(is_static(v) for v in self.values)

    def numpy(self) -> np.ndarray | None:
        """The array when every element is a concrete number, else None."""
        if not self.static:
            return None
        return np.array(self.values, dtype=self.dtype).reshape(self.shape)


# ---------------------------------------------------------------------------


def prim(v: Any, dtype: str = "int64") -> tirx.PrimExpr:
    """A TIR expression for a python number (of `dtype`) or an existing expression (unchanged)."""
    v = _concrete(v)
    if isinstance(v, bool):
        return tirx.IntImm("bool", int(v))
    if isinstance(v, int):
        return tirx.FloatImm(dtype, float(v)) if is_float(dtype) else tirx.IntImm(dtype, v)
    if isinstance(v, float):
        return tirx.FloatImm(dtype if is_float(dtype) else "float64", v)
    return v


_ANALYZER = Analyzer()


def dim_var(name: str) -> tirx.Var:
    """A symbolic dim: an int64 TIR var that the analyzer knows to be a size (>= 0).

    So ONNX's markers tested on a run-time size fold away: torch's Expand reads its shape
    through `Where(Equal(shape, -1), 1, shape)`, which without the bound stays
    `Select(n == -1, 1, n)` in every dim after it, and a cast of such a dim back to `n`
    sends TVM's CanonicalizeBindings (run by KillAfterLastUse) into endless recursion.
    """
    var = tirx.Var(name, "int64")
    _ANALYZER.update(var, ConstIntBound(0, ConstIntBound.POS_INF))
    return var


def simplify(d: Any) -> Any:
    """A dim simplified by TVM's arithmetic analyzer (`max(n, min(n, 64))` -> `n`); ints stay ints."""
    if is_static(d):
        return int(_concrete(d))
    return _concrete(_ANALYZER.simplify(d))


def broadcast_dims(*shapes: list[Any]) -> list[Any]:
    """The numpy broadcast of several shapes; two different symbolic dims give their max."""
    n = max(len(s) for s in shapes)
    out: list[Any] = []
    for k in range(n):
        dims = [s[k - (n - len(s))] for s in shapes if k - (n - len(s)) >= 0]
        acc: Any = 1
        for d in dims:
            if is_static(d) and int(d) == 1:
                continue
            if is_static(acc) and int(acc) == 1:
                acc = d
            elif is_static(acc) and is_static(d):
                acc = max(int(acc), int(d))
            elif is_static(d):
                acc = d
            elif not is_static(acc):
                acc = tirx.Max(prim(acc), prim(d))
        out.append(simplify(acc))
    return out


class LowerCtx:
    """The lowering state of one graph, seen by a converter through the node it is converting."""

    def __init__(self, bb: relax.BlockBuilder, model: Model, *, target: dict | None, kernels: Any,
                 param_values: set[Value] | frozenset = frozenset()):
        self.bb = bb
        self.model = model
        self.target = target
        # the CPU the generic schedule will vectorize for (None for a GPU target; no target: this host)
        self.cpu = CpuSpec.host() if target is None else (
            CpuSpec.from_target(target) if target.get("kind") == "llvm" else None)
        self.kernels = kernels
        self.node: Node | None = None  # the node being converted
        self.runtime_shapes = False  # some dims were bound at run time (`runtime_dims`; see `lower`)
        self.symbols: dict[str, tirx.Var] = {}  # symbolic dim name -> its TIR var
        self.env: dict[Value, Any] = {}  # value (by identity) -> relax.Expr | SymTensor
        # a SymTensor's Relax tensor, emitted once where an op needs a tensor; the value stays
        # bound to its SymTensor, so later shape arithmetic still sees the dims it holds
        self._tensors: dict[Value, relax.Expr] = {}
        self._param_values = param_values  # constants lowered as function params, not folded

    # -- environment ----------------------------------------------------------
    def symbol(self, name: str) -> tirx.Var:
        """The TIR var of a symbolic dim (`"batch"`), the same one wherever the name appears."""
        var = self.symbols.get(name)
        if var is None:
            clean = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name) or "dim"
            var = self.symbols[name] = dim_var(clean if not clean[0].isdigit() else f"d_{clean}")
        return var

    def bind(self, value: Value, expr: Any) -> None:
        self.env[value] = expr

    def lookup(self, value: Value) -> Any:
        return self.env.get(value)

    @property
    def opset(self) -> int:
        return self.model.opset_of(self.node.op) if self.node is not None else self.model.opset

    def _operand(self, i: int) -> Value | None:
        return self.node.input(i)

    @property
    def num_inputs(self) -> int:
        return len(self.node.inputs)

    def has_input(self, i: int) -> bool:
        return self._operand(i) is not None

    def attr(self, name: str, default: Any = None) -> Any:
        return self.node.attrs.get(name, default)

    # -- operands -------------------------------------------------------------
    def const(self, i: int) -> np.ndarray | None:
        """Operand `i` as a numpy array when its value is known at compile time, else None."""
        v = self._operand(i)
        if v is None:
            return None
        if v not in self._param_values:
            array = v.const_value
            if array is not None:
                return np.asarray(array)
        bound = self.lookup(v)
        if isinstance(bound, SymTensor):
            return bound.numpy()
        if isinstance(bound, tvm.ir.GenericConst):
            return bound.value.numpy()
        return None

    def sym(self, i: int, max_size: int = 64) -> SymTensor | None:
        """Operand `i` as a SymTensor when it is a small compile-time integer/bool tensor, else None."""
        v = self._operand(i)
        if v is None:
            return None
        bound = self.lookup(v)
        if isinstance(bound, SymTensor):
            return bound
        array = self.const(i)
        if array is not None and array.ndim <= 1 and array.size <= max_size and array.dtype.kind in "iubf":
            return SymTensor.from_array(array)
        return None

    def input(self, i: int) -> relax.Expr | None:
        """Operand `i` as a Relax expression (None when omitted); constants become `relax.const`."""
        v = self._operand(i)
        if v is None:
            return None
        bound = self.lookup(v)
        if bound is None:
            array = v.const_value
            if array is None:
                raise MdocError(f"{self.node.op} (node '{self.node.name}'): operand {i} (%{v.name}) "
                                f"is used before it is defined")
            bound = relax.const(contiguous(to_storage(array)), tvm_dtype(DType.from_numpy(array.dtype),
                                                                                    f"constant %{v.name}"))
            self.bind(v, bound)
        if isinstance(bound, SymTensor):
            if v not in self._tensors:
                self._tensors[v] = self.materialize(bound)
            return self._tensors[v]
        return bound

    def inputs(self) -> list[relax.Expr | None]:
        return [self.input(i) for i in range(self.num_inputs)]

    def input_type(self, i: int) -> TensorType | None:
        """The mdoc type of operand `i` (as the importer inferred it)."""
        v = self._operand(i)
        return v.type if v is not None and isinstance(v.type, TensorType) else None

    def dtype(self, i: int) -> str:
        """The TVM dtype of operand `i`."""
        v = self._operand(i)
        bound = self.lookup(v)
        if isinstance(bound, SymTensor):
            return bound.dtype
        if bound is None and v.const_value is not None:
            return tvm_dtype(DType.from_numpy(v.const_value.dtype))
        if bound is not None:
            return str(bound.ty.dtype)
        if isinstance(v.type, TensorType):
            return tvm_dtype(v.type.dtype)
        raise self.error(f"operand {i} has no known element type")

    def shape(self, i: int) -> list[Any]:
        """The dims of operand `i`: python ints where static, TIR expressions where symbolic."""
        v = self._operand(i)
        bound = self.lookup(v)
        if isinstance(bound, SymTensor):
            return list(bound.shape)
        if bound is None and v.const_value is not None:
            return list(v.const_value.shape)
        expr = self.input(i)
        return self.shape_of(expr, v)

    def shape_of(self, expr: relax.Expr, value: Value | None = None) -> list[Any]:
        """The dims of a Relax tensor expression, binding fresh symbolic dims when Relax lost them."""
        ty = expr.ty
        if not isinstance(ty, relax.TensorType) or ty.ndim < 0:
            raise self.error("an operand has unknown rank; mdoc's Relax lowering needs ranks")
        if isinstance(ty.shape, relax.ShapeExpr):
            return [_concrete(d) for d in ty.shape.values]
        dims = [dim_var(f"d{k}") for k in range(ty.ndim)]
        matched = self.bb.match_cast(expr, relax.TensorType(dims, ty.dtype))
        if value is not None:
            self.bind(value, matched)
        return list(dims)

    def rank(self, i: int) -> int:
        return len(self.shape(i))

    def shape_arg(self, i: int, what: str) -> list[Any]:
        """Operand `i`, a 1-D integer tensor holding a shape (or sizes, repeats), as a list of dims.

        Known operands (constants, shape subgraphs) give ints and TIR expressions;
        a runtime tensor of static length goes through `runtime_dims`.
        """
        sym = self.sym(i, max_size=1 << 16)
        if sym is not None:
            return list(sym.values)
        expr = self.input(i)
        shape = self.shape_of(expr)
        if len(shape) != 1 or not is_static(shape[0]):
            raise self.need_const(i, what)
        return self.runtime_dims(expr)

    def runtime_dims(self, expr: relax.Expr, name: str = "s") -> list[tirx.Var]:
        """The values of a runtime 1-D integer tensor of static length as fresh TIR vars (checked at run time).

        For data-dependent sizes (a window's length, the rows NMS keeps, Range's length,
        Tile's repeats, Pad's widths). `tensor_to_shape` + a `match_cast` define one
        fresh var per element. Those vars reach later ops only through shapes, never
        through a Relax var, and TVM 0.27's FuseOps orders fused groups by Relax var
        uses alone, so a group that starts before the `match_cast` would use them
        before they are computed ("PrimExpr ... has not been computed"): setting
        `runtime_shapes` makes `lower` keep the body in order, unfused.
        """
        (n,) = self.shape_of(expr)
        if str(expr.ty.dtype) != "int64":
            expr = self.bb.emit(relax.op.astype(expr, "int64"))
        as_shape = self.bb.emit(relax.op.tensor_to_shape(expr))
        dims = [dim_var(f"{name}{k}") for k in range(int(n))]
        self.bb.match_cast(as_shape, relax.ShapeType(dims))
        self.runtime_shapes = True
        return dims

    def scalar(self, i: int, dtype: str | None = None) -> relax.Expr:
        """Operand `i`, a one-element tensor, as a rank-0 Relax tensor (converted to `dtype`)."""
        x = self.input(i)
        if len(self.shape_of(x)) != 0:
            x = self.bb.emit(relax.op.reshape(x, []))
        if dtype is not None and str(x.ty.dtype) != dtype:
            x = self.bb.emit(relax.op.astype(x, dtype))
        return x

    def dims_tensor(self, dims: list[Any]) -> relax.Expr:
        """A 1-D int64 tensor holding `dims` (ints or TIR expressions), computed at run time."""
        return self.bb.emit(relax.op.shape_to_tensor(relax.ShapeExpr([prim(d) for d in dims])))

    def require_const(self, i: int, what: str) -> np.ndarray:
        """Operand `i` as a numpy array; MdocError naming the node and operand when it is not constant."""
        array = self.const(i)
        if array is None:
            raise self.need_const(i, what)
        return array

    def materialize(self, sym: SymTensor) -> relax.Expr:
        """A Relax tensor holding the elements of `sym`."""
        array = sym.numpy()
        if array is not None:
            return relax.const(array, sym.dtype)
        if is_float(sym.dtype):
            # only Cast(int dims) -> float is representable: materialize the ints, then convert
            ints = []
            for v in sym.values:
                if is_static(v):
                    ints.append(int(v) if float(v).is_integer() else None)
                elif isinstance(v, tirx.Cast) and "int" in pdtype(v.value):
                    ints.append(v.value)
                else:
                    ints.append(None)
            if any(i is None for i in ints):
                raise self.error("a float tensor computed from symbolic dims cannot be materialized; "
                                 "give the model static shapes")
            t = self.materialize(SymTensor("int64", sym.shape, ints))
            return self.bb.emit(relax.op.astype(t, sym.dtype))
        if sym.dtype == "bool":
            vals = [tirx.Select(prim(v), prim(1), prim(0)) if not is_static(v) else int(v) for v in sym.values]
        else:
            vals = [tirx.Cast("int64", v) if not is_static(v) and pdtype(v) != "int64" else v for v in sym.values]
        t = self.bb.emit(relax.op.shape_to_tensor(relax.ShapeExpr([prim(v) for v in vals])))
        if sym.dtype != "int64":
            t = self.bb.emit(relax.op.astype(t, sym.dtype))
        if sym.shape == ():
            t = self.bb.emit(relax.op.reshape(t, []))
        return t

    def add_kernel(self, func: tirx.PrimFunc, name: str, *, scheduled: bool = True) -> relax.GlobalVar:
        """Add a PrimFunc (a hand-written kernel) to the module; call it with `relax.call_tir(gv, ...)`.

        `te.create_prim_func` names every function `main` (its `global_symbol`), which would
        clash with Relax's `main`: the symbol is dropped here and the module names it. With
        `scheduled`, the function is marked so the generic CPU schedule leaves it alone.
        """
        if func.attrs is not None and "global_symbol" in func.attrs:
            func = func.without_attr("global_symbol")
        if scheduled:
            func = func.with_attr("mdoc.scheduled", True)
        return self.bb.add_func(func, name)

    def emit(self, expr: relax.Expr, name_hint: str = "") -> relax.Var:
        return self.bb.emit(expr, name_hint)

    def aligned(self, *operands: relax.Expr, concat_axis: int | None = None) -> list[relax.Expr]:
        """`operands` of a broadcasting op, match-cast (checked at run time) so that Relax can infer
        the op's shape: on an axis where two operands' run-time sizes are not provably equal (a
        stride-2 conv's `(h - 1) // 2 + 1` against an upsampled `w // 4 * 2`), or a run-time size
        meets a static size above 1, the operands that do not broadcast there take one size: the
        static one, else the first operand's.

        ONNX requires such dims to be equal or 1; Relax, unable to tell, infers no shape and the op
        then fails to legalize. The cast assumes "equal": a run-time 1 broadcast against a larger
        size is refused at run time, not computed (broadcasting against a static 1 is unaffected).
        With `concat_axis` (Concat's operands, of one rank) no axis broadcasts and that axis is left
        alone.
        """
        shapes = [self.shape_of(x) if isinstance(x.ty, relax.TensorType) and x.ty.ndim >= 0 else None
                  for x in operands]
        if any(s is None for s in shapes) or not all(isinstance(x.ty.shape, relax.ShapeExpr) for x in operands):
            return list(operands)
        n = max(len(s) for s in shapes)

        def joined(shape: list[Any], k: int) -> bool:  # does dim k take part in its axis's size
            axis = n - len(shape) + k
            return axis != concat_axis and not (concat_axis is None and is_static(shape[k]) and int(shape[k]) == 1)

        sizes: list[list[Any]] = [[] for _ in range(n)]
        for shape in shapes:
            for k, d in enumerate(shape):
                if joined(shape, k):
                    sizes[n - len(shape) + k].append(d)
        target: dict[int, Any] = {}  # axis -> the size its operands are cast to: a static one, else the first's
        for axis, ds in enumerate(sizes):
            if any(not (is_static(ds[0]) and is_static(d)) and not _ANALYZER.can_prove_equal(prim(ds[0]), prim(d))
                   for d in ds[1:]):
                target[axis] = next((int(d) for d in ds if is_static(d)), ds[0])
        if not target:
            return list(operands)
        out = []
        for x, shape in zip(operands, shapes):
            dims = [target.get(n - len(shape) + k, d) if joined(shape, k) else d for k, d in enumerate(shape)]
            if any(not (is_static(d) and is_static(e) and int(d) == int(e)) and d is not e for d, e in zip(dims, shape)):
                x = self.bb.match_cast(x, relax.TensorType(dims, x.ty.dtype))
            elif any(isinstance(d, tirx.Var) and target.get(n - len(shape) + k) is d for k, d in enumerate(shape)):
                # TVM's CanonicalizeBindings (ConvertToDataflow runs it) takes the first cast that
                # names a var it has not seen matched as that var's definition, rewrites the var to
                # the cast value's dim and then drops the cast as trivial; a cast of the operand
                # that already has the var, to its own shape, comes first and keeps the others.
                x = self.bb.match_cast(x, relax.TensorType(shape, x.ty.dtype))
            out.append(x)
        return out

    def contracted(self, a: relax.Expr, b: relax.Expr, *, transpose_b: bool = False) -> tuple[relax.Expr, relax.Expr]:
        """A MatMul's operands with B's contraction size match-cast (checked at run time) to A's
        where Relax cannot prove them equal: GPT-2's P V reads the keys' length once through a
        Concat of the cache (`p + s`) and once through a Reshape to a run-time shape, two dims
        that are equal at run time but not in the analyzer, and a kernel over one K needs one."""
        a_shape, b_shape = self.shape_of(a), self.shape_of(b)
        if len(a_shape) < 2 or len(b_shape) < 2:
            return a, b
        k, axis = a_shape[-1], (len(b_shape) - 1 if transpose_b else len(b_shape) - 2)
        kb = b_shape[axis]
        if (is_static(k) and is_static(kb)) or _ANALYZER.can_prove_equal(prim(k), prim(kb)):
            return a, b
        if isinstance(k, tirx.Var):  # see `aligned`: the operand that has the var is cast first
            a = self.bb.match_cast(a, relax.TensorType(list(a_shape), a.ty.dtype))
        dims = list(b_shape)
        dims[axis] = k
        return a, self.bb.match_cast(b, relax.TensorType(dims, b.ty.dtype))

    def ensure_shape(self, expr: relax.Expr, dims: list[Any]) -> relax.Expr:
        """`expr` emitted; when Relax could not infer its shape, match-cast to `dims` (checked at run time)."""
        var = expr if isinstance(expr, (relax.Var, tvm.ir.GenericConst)) else self.bb.emit(expr)
        ty = var.ty
        if not isinstance(ty, relax.TensorType) or isinstance(ty.shape, relax.ShapeExpr):
            return var
        return self.bb.match_cast(var, relax.TensorType([simplify(d) for d in dims], ty.dtype))

    # -- errors ---------------------------------------------------------------
    def error(self, message: str) -> MdocError:
        """An MdocError naming the current node: `<op> (node '<name>'): <message>`."""
        if self.node is None:
            return MdocError(f"graph outputs: {message}")
        return MdocError(f"{self.node.op} (node '{self.node.name}'): {message}")

    def static_dim(self, i: int, k: int, why: str) -> int:
        """Dim `k` of operand `i` as an int; when it is only known at run time, the MdocError that says
        which input, which dim, what needs it static (`why`) and the flag that fixes it."""
        d = self.shape(i)[k]
        if is_static(d):
            return int(d)
        raise self.error(f"dim {k} of %{self._operand(i).name} is {d}, known only at run time, but {why} needs "
                         f"it at compile time; {self.size_hint(i)}")

    def size_hint(self, i: int) -> str:
        """How to give the sizes of the graph inputs that operand `i` is computed from (for errors)."""
        sources = upstream_inputs(self.model, self._operand(i))
        named = ", ".join(f"'{n}'" for n in sources) or "the model's inputs"
        example = sources[0] if sources else "NAME"
        return (f"give the sizes of {named} with mdoc compile --shape {example}=DIMS (or --dim NAME=SIZE "
                f"for a named dim)")

    def need_const(self, i: int, what: str) -> MdocError:
        """The error for an operand that must be known at compile time but is not.

        When the operand is computed from graph inputs only (in node tests, axes and
        pads are graph inputs), the error is a `NeedsInputValue` naming them and how
        to bind their values (`mdoc compile --bind NAME=VALUES`).
        """
        v = self._operand(i)
        name = f" %{v.name}" if v is not None and v.name else ""
        message = f"operand {i}{name} ({what}) must be a constant for the Relax target"
        inputs = feeding_inputs(self.model, v) if v is not None else ()
        if not inputs:
            return self.error(message)
        which = (f"it is graph input '{inputs[0]}'" if inputs == (v.name,) else
                 f"it is computed from graph input{'s' * (len(inputs) > 1)} {', '.join(map(repr, inputs))}")
        binds = " ".join(f"--bind {n}=VALUES" for n in inputs)
        return NeedsInputValue(str(self.error(f"{message}; {which}: bind its value at compile time "
                                              f"(mdoc compile {binds})")), inputs)


_RESHAPE = tvm.ir.Op.get("relax.reshape")


def same_dims(a, b) -> bool:
    """Whether two Relax shapes are equal: ints equal, symbolic dims structurally equal."""
    if len(a) != len(b):
        return False
    return all(int(x) == int(y) if is_static(x) and is_static(y)
               else not is_static(x) and not is_static(y) and tvm_ffi.structural_equal(x, y) for x, y in zip(a, b))


def reshaped(ctx: LowerCtx, expr: relax.Expr, shape: tuple[int, ...]) -> relax.Expr:
    """`expr` as `shape`; a reshape of a reshape reshapes the original instead (kernels in a row
    would otherwise unflatten and flatten their rows between them, and FuseOps makes such a
    pair a copy, where a single reshape is a free view)."""
    shape = tuple(int(d) if is_static(d) else d for d in shape)
    if same_dims(tuple(ctx.shape_of(expr)), shape):
        return expr
    bound = ctx.bb.lookup_binding(expr) if isinstance(expr, relax.Var) else None
    if isinstance(bound, relax.Call) and bound.op.same_as(_RESHAPE):
        return reshaped(ctx, bound.args[0], shape)
    return ctx.emit(relax.op.reshape(expr, list(shape)))


class NeedsInputValue(MdocError):
    """An operand lowering needs at compile time is computed from graph inputs alone.

    `inputs` names them: compiling again with their values bound as constants
    (`mdoc.specialize.bind_inputs`) removes the problem, which is what
    `mdoc compile --bind` and the onnx Backend's guarded specialization do.
    """

    def __init__(self, message: str, inputs: tuple[str, ...]):
        super().__init__(message)
        self.inputs = inputs


def feeding_inputs(model: Model, value: Value) -> tuple[str, ...]:
    """The names of the graph inputs `value` is computed from, when it depends on nothing else
    but constants; () when some other source (a nested body, an op with no operands) feeds it."""
    graph_inputs = {id(v) for v in model.graph.inputs}
    found: dict[str, None] = {}
    seen: set[int] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        if id(v) in graph_inputs:
            found[v.name] = None
            continue
        producer = v.producer()
        if producer is None or producer.graph is not model.graph:
            return ()
        if v.const_value is not None:
            continue
        if not producer.inputs:
            return ()  # RandomNormal and the like: binding inputs would not make it constant
        stack.extend(x for x in producer.inputs if x is not None)
    return tuple(sorted(found))


def upstream_inputs(model: Model, value: Value | None) -> list[str]:
    """The names of the graph inputs that `value` is computed from (through any ops), in graph order."""
    graph_inputs = {id(v): v.name for v in model.graph.inputs}
    found: set[int] = set()
    seen: set[int] = set()
    stack = [value] if value is not None else []
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        if id(v) in graph_inputs:
            found.add(id(v))
            continue
        producer = v.producer()
        if producer is not None:
            stack.extend(x for x in producer.inputs if x is not None)
    return [v.name for v in model.graph.inputs if id(v) in found]
