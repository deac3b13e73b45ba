"""The Python API: the same jobs as the `mdoc` command, for programs.

    import mdoc
    model = mdoc.load_model("resnet18.onnx")
    mdoc.optimize(model, level=2)
    mdoc.compile("resnet18.onnx", target="x86", output="r18.x86")
    outputs = mdoc.load("r18.x86")(image=batch)      # {output name: numpy array}
    model = mdoc.from_torch(net, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from .backends import get_backend, load_artifact
from .ir import Model
from .model_io import load_model
from .onnx_import import import_model
from .pass_manager import PassManager, PassRecord, parse_pipeline, pipeline_for_level
from .progress import Steps
from .specialize import bind_dims, bind_inputs, specialize_shapes


def optimize(model: Model, level: int = 2, pipeline: str | None = None, verify_each: bool = True) -> list[PassRecord]:
    """Run `pipeline` (text) or the -O `level` pipeline on `model` in place."""
    passes = parse_pipeline(pipeline) if pipeline else pipeline_for_level(level)
    return PassManager(passes, verify_each=verify_each).run(model)


def compile(model: Model | str | os.PathLike, target: str = "x86", output: str | os.PathLike = "model.mdoc", *,
            opt_level: int = 2, pipeline: str | None = None, dims: dict[str, int] | None = None,
            shapes: dict[str, tuple] | None = None, inputs: dict[str, np.ndarray] | None = None, arch: str | None = None, backend: str = "tvm",
            show_progress: bool | None = None, tuning_db: str | os.PathLike | bool | None = None) -> Path:
    """Compile a model (path or IR) for `target` into the artifact folder `output`; returns its path.

    Symbolic input dims stay symbolic: the artifact takes every size the model declares
    (the manifest's "dynamic_dims" lists them). `dims` fixes symbols to sizes ({"N": 1}),
    `shapes` an input's dims ({"image": (1, 3, None, None)}, None keeps a dim); `inputs`
    binds graph inputs to constant values (operands such as axes that the target needs at
    compile time), which leave the artifact's signature. `tuning_db`: a folder written by `mdoc tune`; None uses the
    target's default database (~/.cache/mdoc/tuning/<target>/) when one exists; False
    builds without tuning. The manifest's "tuning" entry says how many tuned kernels
    the build applied.
    """
    if not isinstance(model, Model):
        model = load_model(model)
    with Steps(["optimize", "lower to Relax", "build with TVM", "export library"], show_progress) as step:
        step("optimize")
        bind_dims(model, dims)
        specialize_shapes(model, shapes or {})
        bind_inputs(model, inputs or {})
        passes = parse_pipeline(pipeline) if pipeline else pipeline_for_level(opt_level)
        PassManager(passes).run(model)
        text = ",".join(p.spec() for p in passes)
        db = "auto" if tuning_db is None or tuning_db is True else (None if tuning_db is False else os.fspath(tuning_db))
        return get_backend(backend).compile(model, target, output, arch=arch, pipeline=text, progress=step,
                                            tuning_db=db)


def from_torch(module, example_inputs, dynamic_shapes=None, *, opset: int | None = None,
               output: str | os.PathLike | None = None) -> Model | Path:
    """A PyTorch module (or ExportedProgram) through the dynamo ONNX exporter: the mdoc Model, or the ONNX file.

    `example_inputs` is a tensor or a tuple of them; `dynamic_shapes` is what
    `torch.export.export` takes, and each `torch.export.Dim`'s name becomes the ONNX
    dim's name. With `output`, the ONNX file is written (whole or not at all) and its
    path returned. Needs torch (`pip install torch==2.13.0`) and `mdoc[torch]`.
    """
    from .convert import write_onnx
    from .convert.torch_formats import from_torch_module

    proto = from_torch_module(module, example_inputs, dynamic_shapes, opset)
    if output is not None:
        return write_onnx(proto, output)
    return import_model(proto, name=f"mdoc.from_torch({type(module).__name__})")


def load(path: str | os.PathLike) -> Callable[..., dict[str, np.ndarray]]:
    """A compiled artifact as a callable: `load(path)(**inputs) -> {output name: array}`."""
    return load_artifact(path)


def generate(path: str | os.PathLike, prompt: list[int], max_new_tokens: int = 32, *, temperature: float = 0.0,
             top_k: int = 0, seed: int = 0, eos: int | None = None) -> dict:
    """New tokens from a compiled decoder with past key/values (`generation.Decoder`): greedy at
    temperature 0, else sampled with `seed`. Returns {"tokens": [...], **timings}."""
    from .generation import Decoder

    result = Decoder(load_artifact(path), str(path)).generate(list(prompt), max_new_tokens, temperature=temperature,
                                                               top_k=top_k, seed=seed, eos=eos)
    return {"tokens": result.tokens, **result.stats()}
