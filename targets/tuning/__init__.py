"""Tuning: MetaSchedule search for a model's kernels, kept in a per-target database that builds apply.

    mdoc tune resnet18.onnx -t x86 --time-budget 10      # writes ~/.cache/mdoc/tuning/<target>/
    mdoc compile resnet18.onnx -t x86 -o r18.x86           # applies it: "applied 12 tuned kernels"

`tasks` finds the kernels worth tuning and their share of the latency, `search` runs
MetaSchedule over them within a budget (locally or on a board through an RPC tracker),
`store` is the database (MetaSchedule's JSON records plus mdoc's baselines), and
`apply` is the build pass that swaps in tuned kernels where they beat mdoc's defaults.
The `mdoc tune` command (`cli`) reaches the core through the `mdoc.commands` entry point.
"""

from .apply import Applied, ApplyTuned, applier
from .search import Budget, Remote, TuneReport, tune
from .store import TuningDatabase, default_location, target_key

__all__ = ["Applied", "ApplyTuned", "Budget", "Remote", "TuneReport", "TuningDatabase", "applier",
           "default_location", "target_key", "tune"]
