"""plan-layout{target=x86}: the CPU layout choice (`layout_plan`'s cost model) written into the IR.

A target's pass, run by `TvmBackend.lower` after the target's fusions; `CpuKernels` follows it
and decides nothing about layout itself. Each conv, pool or block whose kernel runs on NCHWc
activations gets the annotation `mdoc.layout = "NCHWc"` (`mdoc print` shows it; the exporter
leaves annotations out); the others run NCHW. Which kernel family each node then gets is
decided in `cpu_kernels.conv.conv_family` and listed in the compile report.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdoc.ir import Graph
from mdoc.pass_manager import GraphPass, PassContext, register_pass

LAYOUT = "mdoc.layout"


@register_pass("plan-layout")
@dataclass(frozen=True)
class PlanLayout(GraphPass):
    """Annotate the convs, pools and blocks that run NCHWc on `target` (mdoc.layout = "NCHWc")."""

    target: str = "x86"  # a preset name or a JSON target dict (`presets.resolve_target`)

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        from ..cpu_kernels import KernelError
        from ..presets import resolve_target
        from .layout_plan import plan_layouts

        try:
            spec = resolve_target(self.target).cpu
        except KernelError:  # no hand kernels on this target: nothing runs NCHWc
            return False
        blocked = plan_layouts(graph, spec).blocked
        changed = False
        for node in graph.nodes():
            want = "NCHWc" if node in blocked else None
            if node.attrs.get(LAYOUT) != want:
                if want is None:
                    del node.attrs[LAYOUT]
                else:
                    node.attrs[LAYOUT] = want
                changed = True
        return changed
