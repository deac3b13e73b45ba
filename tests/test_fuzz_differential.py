"""The differential fuzzer in CI: random small valid graphs compiled by mdoc agree with onnxruntime.

`mdoc.tooling.fuzz.random_graph` builds elementwise ops, broadcasting binaries, MatMul,
Conv (dense and depthwise, strided, padded), reductions, Reshape/Transpose chains,
Softmax and Concat over random static shapes; each graph is compiled for the host at
-O2 (fusions, mdoc's kernels) and at -O0 and run on seeded inputs. A mismatch is a bug
of mdoc's. About a second per graph; the long campaign is
`python benchmarks/fuzz_campaign.py differential --cases 500`.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdoc.tooling.fuzz import describe, differential, random_graph

GRAPHS = settings(max_examples=12, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))


@GRAPHS
@given(st.integers(0, 2**32 - 1))
def test_random_graphs_match_onnxruntime_at_O2(tmp_path_factory, seed):
    model = random_graph(seed)
    problem = differential(model, tmp_path_factory.mktemp("diff"), level=2)
    assert problem is None, f"seed {seed}: {problem}\n{describe(model)}"


@settings(GRAPHS, max_examples=4)
@given(st.integers(0, 2**32 - 1))
def test_random_graphs_match_onnxruntime_at_O0(tmp_path_factory, seed):
    model = random_graph(seed)
    problem = differential(model, tmp_path_factory.mktemp("diff"), level=0)
    assert problem is None, f"seed {seed}: {problem}\n{describe(model)}"


def test_the_generator_covers_the_op_families():
    """The graphs mix every family the fuzzer claims (so a generator change cannot quietly narrow it)."""
    ops = {n.op_type for seed in range(200) for n in random_graph(seed).graph.node}
    for op in ("Conv", "MatMul", "Reshape", "Transpose", "ReduceSum", "ReduceMean", "Softmax", "Concat", "Add",
               "Div", "Relu", "Exp"):
        assert op in ops, op


@pytest.mark.parametrize("seed", [0, 7])
def test_random_graphs_are_valid_and_reproducible(seed):
    import onnx

    a, b = random_graph(seed), random_graph(seed)
    assert a.SerializeToString() == b.SerializeToString()
    onnx.checker.check_model(a, full_check=True)
