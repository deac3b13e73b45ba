"""The tuning database: where it lives, how a PrimFunc is looked up, and mdoc's baselines beside it.

A database is a folder per target: `~/.cache/mdoc/tuning/<target key>/` by default
(`$XDG_CACHE_HOME/mdoc/tuning/...` when that is set), or any folder given with
`--tuning-db`. It holds MetaSchedule's JSON database (`database_workload.json`: one
workload per tuned PrimFunc, found again by structural hash; `database_tuning_record.json`:
the measured schedules as replayable traces) and mdoc's `mdoc_baselines.json`: the time of
mdoc's own default schedule for each workload, measured by the same runner during tuning.
A tuned schedule replaces mdoc's only where it measured faster than that baseline, so a
database can never make a build slower than the untuned one (within measurement noise).

`mdoc_tiles.json` holds the register tiles `tile_sweep` chose for the hand-scheduled
kernels, keyed by `KernelRequest.key`, with both times; a request whose own tile was
best is recorded with no tile, so that the next `mdoc tune` does not sweep it again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import tvm
import tvm_ffi
from tvm import tirx

from mdoc.atomic import write_text
from mdoc.errors import MdocError

DB_FILES = ("database_workload.json", "database_tuning_record.json")
BASELINES = "mdoc_baselines.json"
TILES = "mdoc_tiles.json"
# a tuned schedule must beat mdoc's default by this factor to replace it (measurement noise)
MARGIN = 0.97


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mdoc" / "tuning"


def target_key(tvm_target: dict) -> str:
    """A folder name for a TVM target dict: its kind and CPU, readable, then a hash of the whole dict."""
    digest = hashlib.sha256(json.dumps(tvm_target, sort_keys=True).encode()).hexdigest()[:10]
    cpu = tvm_target.get("mcpu") or tvm_target.get("arch") or tvm_target.get("mtriple") or "generic"
    text = f"{tvm_target.get('kind', 'target')}-{cpu}-{digest}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def default_location(tvm_target: dict) -> Path:
    return cache_root() / target_key(tvm_target)


def task_module(func: tirx.PrimFunc) -> tvm.IRModule:
    """The IRModule MetaSchedule tunes for one PrimFunc of a built module (its workload)."""
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    return _normalize_mod(func)


def workload_key(task_mod: tvm.IRModule) -> str:
    """A stable key for a workload (structural hash: the same PrimFunc in another process has the same key)."""
    return format(tvm_ffi.structural_hash(task_mod) & (2**64 - 1), "016x")


def chosen_tile(record: dict) -> tuple[int, ...] | None:
    """The tile a `mdoc_tiles.json` record makes a build use: its tile, if it beat the builder's own by MARGIN."""
    tile = record.get("tile")
    return tuple(tile) if tile and record["tuned_s"] < record["mdoc_default_s"] * MARGIN else None


@dataclass(frozen=True)
class Best:
    """The best tuned schedule of one workload, and what mdoc's default took."""

    func: tirx.PrimFunc
    tuned_s: float
    default_s: float | None

    @property
    def wins(self) -> bool:
        return self.default_s is None or self.tuned_s < self.default_s * MARGIN


class TuningDatabase:
    """MetaSchedule's JSON database in `path` for `target`, plus mdoc's baselines."""

    def __init__(self, path: str | os.PathLike, target: dict, *, create: bool = False):
        from tvm.s_tir import meta_schedule as ms

        self.path = Path(path)
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
        elif not self.exists(self.path):
            raise MdocError(f"{self.path}: not a tuning database (no {' or '.join(DB_FILES)}); "
                            "write one with `mdoc tune MODEL -t TARGET --tuning-db DIR`")
        self.target_dict = dict(target)
        self.target = tvm.target.Target(self.target_dict)
        self.ms = ms.database.JSONDatabase(work_dir=str(self.path))
        self.baselines: dict[str, dict] = _read_json(self.path / BASELINES)
        self.tile_records: dict[str, dict] = _read_json(self.path / TILES)

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        return all((Path(path) / f).is_file() for f in DB_FILES)

    def __len__(self) -> int:
        return len(self.ms)

    def prune_into(self, path: str | os.PathLike) -> "TuningDatabase":
        """A copy in `path` with only the best record of each workload and the baselines (small enough to commit)."""
        pruned = TuningDatabase(path, self.target_dict, create=True)
        if len(pruned):
            raise MdocError(f"{path}: already holds a tuning database; prune into an empty folder")
        self.ms.dump_pruned(pruned.ms)
        pruned.baselines = dict(self.baselines)
        pruned.tile_records = dict(self.tile_records)
        _write_json(pruned.path / BASELINES, pruned.baselines)
        _write_json(pruned.path / TILES, pruned.tile_records)
        return TuningDatabase(path, self.target_dict)

    def record_baseline(self, task_mod: tvm.IRModule, name: str, seconds: float) -> None:
        self.baselines[workload_key(task_mod)] = {"task": name, "mdoc_default_s": seconds}
        _write_json(self.path / BASELINES, self.baselines)

    def record_tile(self, key: str, kernel: str, tile: tuple | None, tuned_s: float, default_s: float) -> None:
        self.tile_records[key] = {"kernel": kernel, "tile": None if tile is None else list(tile),
                                  "tuned_s": tuned_s, "mdoc_default_s": default_s}
        _write_json(self.path / TILES, self.tile_records)


    def baseline(self, task_mod: tvm.IRModule) -> float | None:
        entry = self.baselines.get(workload_key(task_mod))
        return None if entry is None else float(entry["mdoc_default_s"])

    def best(self, func: tirx.PrimFunc, name: str = "main") -> Best | None:
        """The best measured schedule of `func` in this database (None when it was never tuned)."""
        from tvm import s_tir

        task_mod = task_module(func)
        if not self.ms.has_workload(task_mod):
            return None
        record = self.ms.query_tuning_record(task_mod, self.target, name)
        if record is None or not record.run_secs:
            return None
        sch = s_tir.Schedule(task_mod)
        try:
            record.trace.apply_to_schedule(sch, remove_postproc=False)
        except Exception:  # noqa: BLE001  (a record that no longer replays is ignored, never fatal)
            return None
        tuned_s = sum(float(s) for s in record.run_secs) / len(record.run_secs)
        return Best(sch.mod["main"], tuned_s, self.baseline(task_mod))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        raise MdocError(f"{path}: not valid JSON (delete it to measure again)") from None


def _write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
