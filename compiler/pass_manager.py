"""Passes, their registry, textual pipelines and the pass manager that runs them.

A pass is a frozen dataclass registered under a kebab-case name; its fields are
its options, spelled in pipelines as `name{opt-name=value,...}`. `run` returns
whether it changed the graph, and the manager verifies the IR after every pass
unless told not to. Passes arrive through the `mdoc.passes` entry-point group
(mdoc's own passes too) or `--plugin file.py`, so the core never imports them by
name and a third-party pass is a peer of a built-in one.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable, ClassVar

from .errors import MdocError, VerifyError
from .ir import Graph, Model
from .verifier import verify

PASSES: dict[str, type["GraphPass"]] = {}
_loaded = False

# Named pipelines for -O0 .. -O3; passes not registered (say, a fusion whose plugin
# is absent) are an error, so these only name passes that ship with mdoc.
# -O1 and -O2 fold only what does not grow the model's constants (max-bytes=0), so the
# optimized file is never larger than its input; -O3 allows fold-constants' default budget
# (1 MiB of growth, spent once: its second fold is again max-bytes=0).
# -O2 runs the cleanup twice, with fresh types between: merged shape chains fold further.
# -O2 and -O3 also fold BatchNormalization, per-channel Mul/Add and zero Pads into Convs
# (fuse-conv-bn, fuse-conv-affine) before cse: cse would merge convs that differ only by
# the normalization after them, which then no longer fold. The fusions never grow the
# model's constants (their max-bytes is 0 at every level).
# -O2 and -O3 also fuse the transformer blocks exporters decompose (fuse-layer-norm, fuse-gelu,
# fuse-silu, fuse-attention) into mdoc.layer_norm / gelu / silu / attention, which the backends lower to
# their kernels and the exporter writes back as ONNX; they run before fuse-conv-affine, which would
# otherwise fold LayerNorm's gamma and beta into the next MatMul, and in both rounds: attention's
# reshapes often become checkable only after the first round's folding.
# -O2 and -O3 turn QDQ products into integer ones (fuse-quantized: mdoc.qconv / mdoc.qmatmul) before the
# first fold-constants, which would otherwise dequantize the int8 weights into float constants (-O3's
# budget), and once more before fuse-epilogue; a float graph gives it nothing to match.
# -O2 and -O3 end with fuse-epilogue: each Conv / MatMul takes its elementwise tail (scale, bias,
# residual, activation) as mdoc.conv / mdoc.matmul, the form the CPU kernels compute in their
# register tile. It runs last, once: the other fusions' patterns read the plain ops. -O0 and -O1
# fuse nothing, and the backend adds no fusion of its own: -O levels mean the same in opt and compile.
# -O1 to -O3 start with fold-weight-dequant: weight-only quantized MatMuls from other tools
# (MatMulNBits, blocked DequantizeLinear -> MatMul) become mdoc.matmul_nbits before fold-constants
# could expand their weights to float.
OPT_LEVELS = {
    0: "",
    1: "infer-shapes,fold-weight-dequant,fold-constants{max-bytes=0},simplify,cse,dce",
    2: "infer-shapes,fold-weight-dequant,fuse-quantized,fold-constants{max-bytes=0},simplify,fuse-layer-norm,fuse-rms-norm,fuse-gelu,fuse-silu,fuse-attention,"
       "fuse-conv-bn,fuse-conv-affine,cse,dce,"
       "infer-shapes,fold-constants{max-bytes=0},simplify,fuse-layer-norm,fuse-rms-norm,fuse-gelu,fuse-silu,fuse-attention,"
       "fuse-conv-bn,fuse-conv-affine,cse,fuse-quantized,fuse-epilogue,dce",
    3: "infer-shapes,fold-weight-dequant,fuse-quantized,fold-constants,simplify,fuse-layer-norm,fuse-rms-norm,fuse-gelu,fuse-silu,fuse-attention,"
       "fuse-conv-bn,fuse-conv-affine,cse,dce,"
       "infer-shapes,fold-constants{max-bytes=0},simplify,fuse-layer-norm,fuse-rms-norm,fuse-gelu,fuse-silu,fuse-attention,"
       "fuse-conv-bn,fuse-conv-affine,cse,fuse-quantized,fuse-epilogue,dce",
}


@dataclass(frozen=True)
class PassContext:
    """What a pass may consult besides the graph: the whole model (opsets) and shared services."""

    model: Model
    log: Callable[[str], None] = lambda msg: None


@dataclass(frozen=True)
class GraphPass:
    """Base of all passes. Subclasses are frozen dataclasses; fields are options."""

    name: ClassVar[str] = ""

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        raise NotImplementedError

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    @classmethod
    def options(cls) -> list[tuple[str, str, object]]:
        """(option name, type name, default) for each field."""
        return [(f.name.replace("_", "-"), _type_name(f.type), f.default) for f in dataclasses.fields(cls)]

    def spec(self) -> str:
        """This pass as pipeline text, showing options that differ from their defaults."""
        opts = [f"{f.name.replace('_', '-')}={_format(getattr(self, f.name))}" for f in dataclasses.fields(self)
                if getattr(self, f.name) != f.default]
        return self.name + ("{" + ",".join(opts) + "}" if opts else "")


def _type_name(t) -> str:
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def _format(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def register_pass(name: str):
    """Class decorator: make a pass available under `name` (kebab-case, unique)."""
    if not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", name):
        raise MdocError(f"pass name '{name}' is not kebab-case")

    def wrap(cls):
        if name in PASSES and PASSES[name] is not cls:
            other = PASSES[name]
            raise MdocError(f"pass '{name}' is registered twice: by {other.__module__}.{other.__qualname__} "
                            f"and {cls.__module__}.{cls.__qualname__}")
        cls.name = name
        PASSES[name] = cls
        return cls

    return wrap


def load_passes() -> dict[str, type[GraphPass]]:
    """Import every pass provider of the `mdoc.passes` entry-point group (once)."""
    global _loaded
    if not _loaded:
        _loaded = True
        importlib.import_module("mdoc.rewrite")  # registers apply-rules, the pass of ad-hoc rule lists
        for ep in metadata.entry_points(group="mdoc.passes"):
            ep.load()
    return PASSES


def load_plugin(path: str | os.PathLike) -> None:
    """Import a Python file whose passes or rules register themselves on import."""
    path = Path(path)
    if not path.is_file():
        raise MdocError(f"{path}: plugin file not found")
    load_passes()
    name = f"mdoc_plugin_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except MdocError:
        raise
    except Exception as e:
        raise MdocError(f"{path}: plugin failed to load: {type(e).__name__}: {' '.join(str(e).split())}") from None


# -- textual pipelines ---------------------------------------------------------
_ITEM = re.compile(r"\s*([A-Za-z0-9_-]+)\s*(\{[^{}]*\})?\s*(,|$)")


def parse_pipeline(text: str) -> list[GraphPass]:
    """`"fold-constants{max-bytes=4096},dce"` -> pass instances, with one-line errors for bad text."""
    load_passes()
    passes: list[GraphPass] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _ITEM.match(text, pos)
        if not m or m.end() == pos:
            raise MdocError(f"pipeline '{text}': cannot read it at column {pos + 1}")
        name, opts = m.group(1), m.group(2)
        passes.append(make_pass(name, _parse_options(name, opts[1:-1] if opts else "")))
        pos = m.end()
    return passes


def pipeline_for_level(level: int) -> list[GraphPass]:
    if level not in OPT_LEVELS:
        raise MdocError(f"optimization level -O{level} does not exist (use -O0 to -O3)")
    return parse_pipeline(OPT_LEVELS[level])


def _parse_options(pass_name: str, text: str) -> dict[str, str]:
    opts: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise MdocError(f"pass '{pass_name}': option '{part}' needs a value (name=value)")
        opts[key.strip()] = value.strip()
    return opts


def make_pass(name: str, options: dict[str, str] | None = None) -> GraphPass:
    load_passes()
    cls = PASSES.get(name)
    if cls is None:
        raise MdocError(f"unknown pass '{name}' (see `mdoc passes` for the list)")
    fields = {f.name.replace("_", "-"): f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, raw in (options or {}).items():
        f = fields.get(key)
        if f is None:
            raise MdocError(f"pass '{name}' has no option '{key}' (options: {', '.join(fields) or 'none'})")
        kwargs[f.name] = _convert_option(name, key, raw, f)
    return cls(**kwargs)


def _convert_option(pass_name: str, key: str, raw: str, f: dataclasses.Field):
    kind = _type_name(f.type)
    try:
        if kind == "bool":
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return raw.lower() in ("true", "1")
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        return raw
    except ValueError:
        raise MdocError(f"pass '{pass_name}': option '{key}' expects {kind}, got '{raw}'") from None


# -- running ---------------------------------------------------------------------
@dataclass
class PassRecord:
    """What one pass did: for --timing, --report and --json."""

    name: str
    changed: bool
    seconds: float
    nodes_before: int
    nodes_after: int
    bytes_before: int
    bytes_after: int
    drift: float | None = None


@dataclass
class Instrument:
    """Hooks around each pass: printing IR, checking outputs, collecting pictures for reports."""

    def before(self, p: GraphPass, model: Model) -> None: ...

    def after(self, p: GraphPass, model: Model, record: PassRecord) -> None: ...


@dataclass
class PassManager:
    passes: list[GraphPass]
    verify_each: bool = True
    instruments: list[Instrument] = field(default_factory=list)
    log: Callable[[str], None] = lambda msg: None

    def run(self, model: Model) -> list[PassRecord]:
        from .stats import model_stats

        records = []
        ctx = PassContext(model, self.log)
        if self.verify_each:
            verify(model)
        stats = model_stats(model)
        for p in self.passes:
            for inst in self.instruments:
                inst.before(p, model)
            start = time.perf_counter()
            changed = bool(p.run(model.graph, ctx))
            seconds = time.perf_counter() - start
            if self.verify_each:
                try:
                    verify(model)
                except VerifyError as e:
                    raise VerifyError(f"after pass '{p.spec()}': {e}", e.context, after_pass=p.spec()) from None
            after = model_stats(model)
            record = PassRecord(p.spec(), changed, seconds, stats.nodes, after.nodes,
                                stats.parameter_bytes, after.parameter_bytes)
            stats = after
            for inst in self.instruments:
                inst.after(p, model, record)
            records.append(record)
        return records
