"""Applying a tuning database at build time: tuned schedules where they beat mdoc's default.

`ApplyTuned` runs in the CPU build just before mdoc's generic schedule. Each PrimFunc
not yet scheduled is looked up in the database by structure; when its best record
measured faster than mdoc's default schedule (the baseline tuning recorded), the
PrimFunc is replaced by the tuned one and marked `mdoc.scheduled`, so the generic
schedule leaves it alone. Everything else keeps mdoc's schedule. The `Applied` report
says how many kernels came from the database; the backend writes it to the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import tvm
from tvm import tirx

from .store import TuningDatabase, chosen_tile
from .tasks import is_scheduled


@dataclass
class Applied:
    """What one build took from a tuning database."""

    database: str
    looked_up: int = 0  # PrimFuncs that mdoc would have scheduled generically
    kernels: list = field(default_factory=list)  # (name, tuned s, mdoc default s or None)
    kept_default: int = 0  # tuned, but mdoc's default schedule measured faster
    tile_records: dict = field(default_factory=dict)  # the database's tile sweep results, by request key
    tiled: dict = field(default_factory=dict)  # request key -> tile, what the lowering applied

    @property
    def tile_choices(self) -> dict:
        """Request key -> (tile, the default kernel it beat), for the hand-scheduled kernels whose swept tile won."""
        return {key: (tile, r["kernel"]) for key, r in self.tile_records.items()
                if (tile := chosen_tile(r)) is not None}

    def as_json(self) -> dict:
        return {"database": self.database, "applied": len(self.kernels), "looked_up": self.looked_up,
                "kept_mdoc_default": self.kept_default,
                "kernels": [{"name": n, "tuned_us": _us(t), "mdoc_default_us": _us(d)} for n, t, d in self.kernels],
                "tiles": [{"name": self.tile_records[k]["kernel"], "tile": list(tile),
                           "tuned_us": _us(self.tile_records[k]["tuned_s"]),
                           "mdoc_default_us": _us(self.tile_records[k]["mdoc_default_s"])}
                          for k, tile in self.tiled.items()]}


def _us(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e6, 2)


@tvm.transform.module_pass(opt_level=0, name="mdoc.ApplyTuned")
class ApplyTuned:
    """Replace unscheduled PrimFuncs by their tuned schedules where those measured faster than mdoc's."""

    def __init__(self, database: TuningDatabase, report: Applied):
        self.database = database
        self.report = report

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or is_scheduled(func):
                continue
            self.report.looked_up += 1
            best = self.database.best(func, gv.name_hint)
            if best is None:
                continue
            if not best.wins:
                self.report.kept_default += 1
                continue
            tuned = best.func.without_attr("global_symbol")  # Relax names it after its GlobalVar
            updates[gv] = tuned.with_attr("mdoc.scheduled", True)
            self.report.kernels.append((gv.name_hint, best.tuned_s, best.default_s))
        for gv, func in updates.items():
            mod[gv] = func
        return mod


def applier(database_dir, target: dict) -> tuple[ApplyTuned, Applied]:
    """The build pass for the database in `database_dir` and the report it fills in."""
    database = TuningDatabase(database_dir, target)
    report = Applied(str(database_dir), tile_records=dict(database.tile_records))
    return ApplyTuned(database, report), report
