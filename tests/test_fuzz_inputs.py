"""Fuzzed inputs through the `mdoc` command: every failure on bad input is one line and exit 2.

Seeded mutations (`mdoc.tooling.fuzz`) of ONNX files (field level and byte level),
`.mdir` text run through the whole pipeline (not only the parser:
tests/test_text_roundtrip.py fuzzes that), `.npz` inputs, and artifact folders
(manifest JSON and library bytes). Hypothesis draws the seeds, derandomized with a
fixed count, so CI runs the same cases every time; `benchmarks/fuzz_campaign.py`
runs the long campaign with the same mutators.
"""

from __future__ import annotations

import random
import shutil

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from mdoc.tooling.fuzz import mutate_artifact, mutate_bytes, mutate_npz, mutate_onnx, run_cli

from conftest import tiny_model

CASES = settings(max_examples=200, derandomize=True, deadline=None, database=None,
                 suppress_health_check=list(HealthCheck))
SEEDS = st.integers(0, 2**32 - 1)


def rich_model() -> onnx.ModelProto:
    """Conv, Reshape with a constant shape, Transpose, an If with two bodies, a Constant node,
    Softmax: the importer's, verifier's and passes' paths in one small model."""
    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W")
    shape = onnx.numpy_helper.from_array(np.array([1, 4, 16], np.int64), "shape")
    then = helper.make_graph([helper.make_node("Relu", ["t"], ["a"])], "then", [],
                             [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 16, 4])])
    other = helper.make_graph([helper.make_node("Neg", ["t"], ["b"])], "else", [],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 16, 4])])
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["c"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Reshape", ["p", "shape"], ["r"], name="reshape"),
             helper.make_node("Transpose", ["r"], ["t"], name="transpose", perm=[0, 2, 1]),
             helper.make_node("Constant", [], ["k"], name="k", value_float=0.5),
             helper.make_node("ReduceMean", ["x"], ["m"], name="mean", keepdims=0),
             helper.make_node("Greater", ["m", "k"], ["cond"], name="gt"),
             helper.make_node("If", ["cond"], ["i"], name="if", then_branch=then, else_branch=other),
             helper.make_node("Softmax", ["i"], ["y"], name="softmax", axis=-1)]
    graph = helper.make_graph(nodes, "rich", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 4])], initializer=[w, shape])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


BASES = [tiny_model(), rich_model()]


def assert_clean(result, case: str) -> None:
    problem = result.problem()
    assert problem is None, f"{case}: {problem}"


@CASES
@given(SEEDS, st.sampled_from(range(len(BASES))))
def test_mutated_onnx_fields(tmp_path_factory, seed, base):
    rng = random.Random(seed)
    folder = tmp_path_factory.mktemp("onnx")
    path = folder / "m.onnx"
    path.write_bytes(mutate_onnx(BASES[base], rng).SerializeToString())
    assert_clean(run_cli("inspect", path), f"inspect, seed {seed}")
    assert_clean(run_cli("opt", path, "-o", folder / "o.onnx"), f"opt -O2, seed {seed}")


@CASES
@given(SEEDS, st.sampled_from(range(len(BASES))))
def test_mutated_onnx_bytes(tmp_path_factory, seed, base):
    rng = random.Random(seed)
    folder = tmp_path_factory.mktemp("bytes")
    path = folder / "m.onnx"
    data = BASES[base].SerializeToString()
    for _ in range(rng.randint(1, 3)):
        data = mutate_bytes(data, rng)
    path.write_bytes(data)
    assert_clean(run_cli("opt", path, "-o", folder / "o.mdir", "-O1"), f"opt -O1, seed {seed}")


@CASES
@given(SEEDS, st.sampled_from(range(len(BASES))))
def test_mutated_mdir_through_the_pipeline(tmp_path_factory, seed, base):
    rng = random.Random(seed)
    folder = tmp_path_factory.mktemp("mdir")
    (folder / "b.onnx").write_bytes(BASES[base].SerializeToString())
    assert run_cli("print", folder / "b.onnx", "-o", folder / "m.mdir").code == 0
    text = (folder / "m.mdir").read_bytes()
    (folder / "m.mdir").write_bytes(mutate_bytes(text, rng))
    assert_clean(run_cli("opt", folder / "m.mdir", "-o", folder / "o.onnx"), f"opt .mdir -> .onnx, seed {seed}")


@CASES
@given(SEEDS)
def test_mutated_npz_inputs(tmp_path_factory, seed):
    rng = random.Random(seed)
    folder = tmp_path_factory.mktemp("npz")
    model = folder / "tiny.onnx"
    onnx.save(tiny_model(), model)
    inputs = folder / "in.npz"
    arrays = mutate_npz({"x": np.ones((2, 4), np.float32)}, rng)
    np.savez(inputs, **arrays)
    if rng.random() < 0.5:
        inputs.write_bytes(mutate_bytes(inputs.read_bytes(), rng))
    assert_clean(run_cli("compare", model, model, "--inputs", inputs), f"compare --inputs, seed {seed}")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    import mdoc

    folder = tmp_path_factory.mktemp("fuzz-artifact")
    onnx.save(tiny_model(), folder / "tiny.onnx")
    return mdoc.compile(folder / "tiny.onnx", "x86", folder / "tiny.x86", show_progress=False, tuning_db=False)


@settings(CASES, max_examples=100)
@given(SEEDS)
def test_mutated_artifact_folders(artifact, tmp_path_factory, seed):
    rng = random.Random(seed)
    folder = tmp_path_factory.mktemp("art") / "a.x86"
    shutil.copytree(artifact, folder)
    what = mutate_artifact(folder, rng)
    assert_clean(run_cli("run", folder, "--repeat", "1"), f"run with a mutated {what}, seed {seed}")
