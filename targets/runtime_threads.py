"""How many threads an artifact runs on: one, for a model too small to pay for waking a second.

Every parallel kernel wakes TVM's thread pool and joins it again, about 10 us on the 2-core
machine mdoc is measured on; a kernel wins that back only when half its work takes longer. On
the bundled sample (13 MFLOP over 19 nodes) one thread runs a call in 158 us and two in 219 to
263 us, against onnxruntime's 136 to 180 (benchmarks/call_overhead.py, a shared machine). So a
model whose shapes are static and whose work is under SERIAL_FLOPS_PER_NODE per compute node
runs on one thread; any other on every core. Dynamic dims keep every core: the work grows with
them and is not known when compiling.

The artifact's manifest carries the choice ("runtime": {"threads": n, "why": ...}); the loader
applies it to TVM's process-wide pool unless TVM_NUM_THREADS says otherwise, and never lowers
what another loaded artifact asked for.
"""

from __future__ import annotations

from mdoc.ir import CONSTANT, Model
from mdoc.specialize import dynamic_dims
from mdoc.stats import model_stats

SERIAL_FLOPS_PER_NODE = 2_000_000


def threads_for(model: Model, cores: int) -> dict:
    """{"threads": n, "why": reason} for `model` on a CPU of `cores` cores."""
    if cores <= 1:
        return {"threads": 1, "why": "one core"}
    if dynamic_dims(model):
        return {"threads": cores, "why": "dynamic dims: the work is known only at run time"}
    stats = model_stats(model)
    nodes = sum(1 for n in model.graph if n.op != CONSTANT)
    if stats.flops_unknown or nodes == 0:
        return {"threads": cores, "why": "work not estimated"}
    per_node = stats.flops / nodes
    if per_node < SERIAL_FLOPS_PER_NODE:
        return {"threads": 1, "why": f"{stats.flops / 1e6:.1f} MFLOP over {nodes} nodes: too little work per "
                                     f"kernel to pay for a second thread"}
    return {"threads": cores, "why": f"{stats.flops / 1e6:.1f} MFLOP over {nodes} nodes"}
