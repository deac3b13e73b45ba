"""Building a lowered Relax module for a resolved target: CPU through mdoc's schedules, CUDA through dlight.

GPU PrimFuncs do not build at all without thread bindings, so the CUDA route
legalizes and fuses with TVM's zero pipeline and then applies dlight's default
GPU rules to every PrimFunc before `tvm.compile`. The wheel compiles CUDA with
NVRTC, so this works on a machine without a GPU.

A module that `lower` produced should always build; when a TVM pass fails on it
anyway, that is a bug (in mdoc's lowering, its schedules, or TVM), and
`build_for` reports it as an `InternalError` that names the pass.
"""

from __future__ import annotations

import tvm

from mdoc.errors import InternalError, MdocError, first_line

from .presets import TargetSpec


def build_for(mod, spec: TargetSpec, *, before_schedule=()):
    """Build `mod` for `spec`; `before_schedule` passes (CPU only) run just before mdoc's generic schedule."""
    trail = PassTrail()
    outer = tvm.transform.PassContext.current()
    context = tvm.transform.PassContext(opt_level=outer.opt_level, required_pass=list(outer.required_pass),
                                        disabled_pass=list(outer.disabled_pass),
                                        instruments=[*outer.instruments, trail], config=dict(outer.config))
    try:
        with context:
            if spec.device == "cuda":
                return build_cuda(mod, spec.tvm)
            from .relax.build import build

            return build(mod, spec.tvm, before_schedule=before_schedule, cpu=spec.cpu)
    except MdocError:
        raise
    except Exception as e:  # noqa: BLE001  (TVM's errors and whatever its passes let through)
        where = f"TVM pass {trail.where()}" if trail.running else "tvm.compile"
        raise InternalError(f"building for {spec.name}: {where} failed: {first_line(e)}{_offending(e)}") from e


def _offending(e: Exception) -> str:
    """The call TVM's VM codegen names on the line after "Offending call:" (a Relax op left unlowered)."""
    lines = str(e).splitlines()
    for k, line in enumerate(lines[:-1]):
        if line.strip() == "Offending call:":
            return f" (offending call: {lines[k + 1].strip()[:120]})"
    return ""


@tvm.instrument.pass_instrument
class PassTrail:
    """Records the TVM passes that are running, so a failure can name the innermost one."""

    def __init__(self):
        self.running: list[str] = []  # outermost first; a pass that raised is never popped

    def run_before_pass(self, mod, info) -> None:
        self.running.append(info.name)

    def run_after_pass(self, mod, info) -> None:
        self.running.pop()

    def where(self) -> str:
        return " > ".join(self.running)


def build_cuda(mod, target_dict: dict):
    import tvm
    from tvm import relax
    from tvm.s_tir import dlight as dl

    target = tvm.target.Target(target_dict)
    rules = [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]
    with target:
        mod = relax.get_pipeline("zero")(mod)
        mod = dl.ApplyDefaultSchedule(*[_tolerant(dl, r) for r in rules])(mod)
    return tvm.compile(mod, target)


def _tolerant(dl, rule):
    """A dlight rule that declines, instead of failing the build, where its own analysis asserts.

    (dlight's GEMV rule asserts on some reductions of BERT's LayerNorm; the next rule takes them.)

    Also declines a schedule that stages data in a local or shared buffer of run-time size (the
    Matmul rule on a conv1d over a symbolic length, as after an If whose branches differ in
    length): CUDA codegen cannot allocate one, and the next rule schedules the function instead.
    """

    class Tolerant(dl.ScheduleRule):
        def apply(self, func, target, tunable):
            try:
                sch = rule.apply(func, target, tunable)
            except (AssertionError, ValueError, IndexError):
                return None
            return None if sch is not None and not isinstance(sch, list) and _dynamic_scratch(sch) else sch

    return Tolerant()


def _dynamic_scratch(sch) -> bool:
    import tvm

    root = sch.get(sch.get_sblock("root"))
    return any(buf.scope() in ("local", "shared") and not all(isinstance(d, tvm.tirx.IntImm) for d in buf.shape)
               for buf in root.alloc_buffers)
