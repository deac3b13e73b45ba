"""mdoc's TVM backend: optimized IR -> Relax -> TVM build -> artifact folder, and loading it back.

Registered with the core's backend registry when the `mdoc.targets` entry point
is loaded, so `mdoc compile` and `mdoc.compile` reach it without importing it.
"""

from __future__ import annotations

import json
import platform
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from mdoc import __version__
from mdoc.backends import BUILD_LOG, register_backend
from mdoc.errors import InternalError, MdocError, first_line, with_log
from mdoc.ir import Model
from mdoc.limits import check_static_sizes
from mdoc.pass_manager import PassManager, parse_pipeline
from mdoc.specialize import dynamic_dims
from mdoc.types import TensorType

from . import artifact
from .native_log import NativeLog
from .presets import list_presets, resolve_target
from .runtime_threads import threads_for

if TYPE_CHECKING:  # pragma: no cover
    import tvm


def _sig(v) -> dict:
    t = v.type
    if not isinstance(t, TensorType) or t.shape is None:
        raise MdocError(f"graph input/output '{v.name}' has no known tensor type ({t}); "
                        "give its dims with --dim or fix the model's declared types")
    return artifact.TensorSig(v.name, str(t.dtype.numpy), list(t.shape)).as_json()


class TvmBackend:
    name = "tvm"
    # What TVM cannot take as it is, mdoc rewrites first: constant Ifs are inlined, recurrent
    # layers, Scans and bounded Loops unrolled, then cleaned up. Folding an If can make the
    # conditions of the Ifs after it constant (torch's squeeze idiom fixes a rank that a later
    # LSTM cell's rank test reads), so shapes are inferred and Ifs folded a second time.
    prepare = ("infer-shapes,fold-constants{max-bytes=0},fold-if,infer-shapes,fold-constants{max-bytes=0},fold-if,"
               "decompose-rnn,decompose-scan,decompose-loop,infer-shapes,fold-constants{max-bytes=0},simplify,cse,dce")

    def kernels_for(self, spec, tiles=None):
        """The lowering's kernel strategy for `spec`: mdoc's hand-scheduled CPU kernels (with the
        tuned register `tiles`, request key -> (tile, default kernel it beat)) on CPU targets, TVM's ops elsewhere."""
        from .relax.cpu_strategy import cpu_kernels_for

        return cpu_kernels_for(spec.cpu, tiles) if spec.device == "cpu" else None

    def lower(self, model: Model, spec, kernels=None) -> "tvm.IRModule":
        """The Relax module the build starts from (what `compile` builds and `mdoc tune` tunes);
        `kernels` defaults to `kernels_for(spec)`."""
        from .relax.fuse_inverted_residual import FuseInvertedResidual
        from .relax.lower import lower
        from .relax.plan_layout import PlanLayout

        PassManager(parse_pipeline(self.prepare)).run(model)
        check_static_sizes(model)  # shapes are final here: refuse what no target can hold before TVM tries
        if spec.device == "cpu":  # the target's own fusions and layout plan, on its CPU description
            target = json.dumps(spec.tvm)
            PassManager([FuseInvertedResidual(target=target), PlanLayout(target=target)]).run(model)
        return lower(model, target=spec.tvm, kernels=kernels if kernels is not None else self.kernels_for(spec))

    def compile(self, model: Model, target: str, output: str | Path, *, arch: str | None = None,
                pipeline: str = "", progress=None, tuning_db: str | Path | None = None) -> Path:
        """Build `model` into the artifact folder `output`.

        `tuning_db`: a tuning database folder whose kernels replace mdoc's where they measured
        faster, or "auto" for the target's default database when one exists (None: no tuning).
        TVM's own log lines go to the artifact's build.log, or, when the build fails, to a file
        that the error names (`MdocError.log`).
        """
        log = NativeLog()
        try:
            return self._compile(model, target, output, arch=arch, pipeline=pipeline, progress=progress,
                                 tuning_db=tuning_db, log=log)
        except MdocError as e:
            with_log(e, log.keep())
            raise
        finally:
            log.close()

    def _compile(self, model: Model, target: str, output: str | Path, *, arch, pipeline, progress, tuning_db,
                 log: NativeLog) -> Path:
        import tvm

        from .builder import build_for

        spec = resolve_target(target, arch)
        step = progress or (lambda name: None)
        tuned = tuning_for(tuning_db, spec)
        with artifact.StagedArtifact(Path(output)) as staged:
            step("lower to Relax")
            with log.capture():
                kernels = self.kernels_for(spec, tuned[1].tile_choices if tuned else None)
                mod = _lowered(self, model, spec, kernels)
            if tuned:
                tuned[1].tiled = dict(getattr(kernels, "tiled", {}))
            step("build with TVM")
            with log.capture():
                ex = build_for(mod, spec, before_schedule=[tuned[0]] if tuned else [])
            step("export library")
            with log.capture():
                _export(ex, staged.dir / artifact.LIBRARY, spec)
            log.write(staged.dir / BUILD_LOG)
            manifest = {
                "backend": self.name,
                "mdoc_version": __version__,
                "tvm_version": tvm.__version__,
                "built_on": platform.machine(),
                "target": spec.as_json(),
                "pipeline": ",".join(filter(None, [pipeline, self.prepare])),
                "inputs": [{**_sig(v), "param": p.name} for v, p in zip(model.graph.inputs, mod["main"].params)],
                "outputs": [_sig(v) for v in model.graph.outputs],
                # inputs whose dims the artifact takes at run time (axes, or the model's symbols)
                "dynamic_dims": dynamic_dims(model),
            }
            if spec.device == "cpu":
                manifest["runtime"] = threads_for(model, spec.cpu.cores)
            if getattr(kernels, "fallbacks", None):  # hand kernels that run-time dims kept out
                manifest["generic_kernels"] = list(kernels.fallbacks)
            if getattr(kernels, "chosen", None):  # node -> the hand kernels it runs on, and calls per family
                from .relax.cpu_strategy import kernel_family

                manifest["kernels"] = dict(kernels.chosen)
                families = Counter(kernel_family(k) for names in kernels.chosen.values() for k in names)
                manifest["kernel_families"] = dict(families.most_common())
            if tuned:
                manifest["tuning"] = tuned[1].as_json()
            return staged.commit(manifest)

    def load(self, path: Path):
        return artifact.load(path)

    def targets(self) -> dict:
        return list_presets()


def _lowered(backend: TvmBackend, model: Model, spec, kernels) -> "tvm.IRModule":
    """`backend.lower(...)`; a failure that is not an MdocError is a bug, reported as the stage that failed."""
    try:
        return backend.lower(model, spec, kernels)
    except MdocError:
        raise
    except Exception as e:  # noqa: BLE001  (mdoc's own bugs outside a converter: kernel plans, prepare passes)
        raise InternalError(f"lowering to Relax for {spec.name}: {first_line(e)}") from e


def _export(ex, lib: Path, spec) -> None:
    """Write the built executable as a shared library (cross-compiled for other architectures)."""
    try:
        if spec.cross_compiler:
            from tvm.support import cc  # tvm.contrib.cc is gone in 0.27

            # the triple given, not cross_compiler's default: that asks the host's g++ (x86_64-linux-gnu), which
            # matters when the executable holds no LLVM module of its own (no kernels: every op a VM builtin) and
            # export_library packs the imports into a devc.o for that triple, which the cross linker refuses
            triple = spec.tvm.get("mtriple")
            fcompile = cc.cross_compiler(spec.cross_compiler, get_target_triple=(lambda: triple) if triple else None)
            ex.export_library(str(lib), fcompile=fcompile)
        else:
            ex.export_library(str(lib))
    except Exception as e:  # noqa: BLE001  (the C compiler's failures arrive as RuntimeError)
        compiler = spec.cross_compiler or "the host C compiler"
        raise MdocError(f"exporting the library for {spec.name} with {compiler} failed: {first_line(e)}") from e


def tuning_for(tuning_db, spec):
    """(ApplyTuned pass, its report) for the database `tuning_db` names, or None."""
    if tuning_db is None:
        return None
    from .tuning import TuningDatabase, applier, default_location

    if tuning_db == "auto":
        tuning_db = default_location(spec.tvm)
        if spec.device != "cpu" or not TuningDatabase.exists(tuning_db):
            return None
    elif spec.device != "cpu":
        raise MdocError(f"--tuning-db applies to CPU targets; '{spec.name}' is {spec.device}")
    return applier(tuning_db, spec.tvm)


BACKEND = register_backend(TvmBackend())
