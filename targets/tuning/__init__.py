"""Tuning: MetaSchedule search for a model's kernels, kept in a per-target database that builds apply.

    mdoc tune resnet18.onnx -t x86 --time-budget 10      # writes ~/.cache/mdoc/tuning/<target>/
    mdoc compile resnet18.onnx -t x86 -o r18.x86           # applies it: "applied 12 tuned kernels"

Two searches share the budget.  First `tile_sweep` measures every register tile in
`tile_space` of each hand-scheduled kernel (convs, matmuls, pools: nearly all of a model's
time; their schedules are written, not searched, but their tiles are parameters).  Then
`tasks` finds the generically scheduled kernels and their share of the latency, and
`search` runs MetaSchedule over them with what is left (locally or on a board through an
RPC tracker).  `store` is the database (MetaSchedule's JSON records, mdoc's baselines, the
swept tiles), and `apply` swaps in tuned kernels and tiles where they beat mdoc's defaults.
The `mdoc tune` command (`cli`) reaches the core through the `mdoc.commands` entry point.
"""

from .apply import Applied, ApplyTuned, applier
from .search import Budget, Remote, TuneReport, tune
from .store import TuningDatabase, default_location, target_key

__all__ = ["Applied", "ApplyTuned", "Budget", "Remote", "TuneReport", "TuningDatabase", "applier",
           "default_location", "target_key", "tune"]
