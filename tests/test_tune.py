"""`mdoc tune` and tuning databases: budget split, database location, tune -> compile, RPC measurement.

The end-to-end tests tune a single Conv1d (64 -> 128 channels, length 64) + ReLU with a handful of trials
(seconds), then check what a later compile does with the database. Whether a few random
trials beat mdoc's default schedule depends on the machine, so the apply decision is
tested by rewriting the recorded baseline both ways; the numbers of the tuned kernel are
checked against onnxruntime.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from mdoc.targets.presets import resolve_target
from mdoc.targets.tuning import TuningDatabase, default_location, target_key
from mdoc.targets.tuning.store import BASELINES, TILES
from mdoc.targets.tuning.tasks import allocate
from mdoc.targets.tvm_backend import tuning_for

X = np.random.default_rng(1).standard_normal((1, 64, 64)).astype(np.float32)


def conv1d_model(path, repeat: int = 1) -> str:
    """Conv1d (64 -> 128 channels, kernel 3, length 64), ReLU; `repeat` times (128 -> 128 after the first).

    1-d convs are left to mdoc's generic schedule (the hand kernels take 2-d ones), so they are
    what `mdoc tune` searches."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for k in range(repeat):
        c_in = 64 if k == 0 else 128
        inits.append(numpy_helper.from_array(rng.standard_normal((128, c_in, 3)).astype(np.float32) / 16, f"w{k}"))
        nodes += [helper.make_node("Conv", [prev, f"w{k}"], [f"m{k}"], pads=[1, 1]),
                  helper.make_node("Relu", [f"m{k}"], [f"r{k}"])]
        prev = f"r{k}"
    graph = helper.make_graph(nodes, "conv1d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 64])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 128, 64])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return str(path)


def manifest(artifact) -> dict:
    return json.loads((artifact / "manifest.json").read_text())


def set_baseline(db_dir, seconds: float) -> None:
    path = db_dir / BASELINES
    baselines = json.loads(path.read_text())
    for entry in baselines.values():
        entry["mdoc_default_s"] = seconds
    path.write_text(json.dumps(baselines))


# -- budget and database location ---------------------------------------------------------


def test_allocate_gives_the_budget_to_the_heavy_tasks():
    assert allocate([6.0, 3.0, 1.0], 100, 10) == [60.0, 30.0, 10.0]
    # 60 trials with at least 16 each: the cheapest task (6 trials) is left out, the rest split 2:1
    assert allocate([6.0, 3.0, 1.0], 60, 16) == pytest.approx([40.0, 20.0, 0.0])
    # too small for two: everything to the heaviest
    assert allocate([6.0, 3.0, 1.0], 8, 16) == [8.0, 0.0, 0.0]
    assert allocate([], 8, 1) == []


@pytest.mark.parametrize("args, message", [
    ([], "give the tuning budget as --trials N or --time-budget MINUTES (exactly one)"),
    (["--trials", "4", "--time-budget", "1"], "(exactly one)"),
    (["--trials", "0"], "--trials 0: must be at least 1"),
    (["--time-budget", "-2"], "--time-budget -2.0: must be a positive number of minutes"),
    (["--time-budget", "nan"], "must be a positive number of minutes"),
    (["--trials", "4", "--rpc-tracker", "localhost"], "--rpc-tracker 'localhost': expected HOST:PORT"),
    (["--trials", "4", "--rpc-tracker", "127.0.0.1:9190"], "--rpc-tracker needs --rpc-key KEY"),
    (["--trials", "4", "--rpc-key", "board"], "--rpc-key needs --rpc-tracker HOST:PORT"),
    (["--trials", "4", "-t", "cuda"], "mdoc tune supports CPU targets; 'cuda' is cuda"),
    (["--trials", "4", "-t", "rpi4"], "its kernels must be measured on the board; give --rpc-tracker"),
])
def test_tune_rejects_bad_options(mdoc_cli, tmp_path, args, message):
    result = mdoc_cli("tune", conv1d_model(tmp_path / "conv1d.onnx"), "--tuning-db", tmp_path / "db", *args)
    assert result.code == 2, result.err
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_default_database_is_per_target_under_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    x86, avx2 = resolve_target("x86").tvm, resolve_target("x86-avx2").tvm
    assert default_location(x86) == tmp_path / "mdoc" / "tuning" / target_key(x86)
    assert target_key(x86) != target_key(avx2) and target_key(avx2).startswith("llvm-haswell-")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert str(default_location(x86)).startswith(os.path.expanduser("~/.cache/mdoc/tuning/"))


def test_compile_refuses_a_folder_that_is_not_a_database(mdoc_cli, tmp_path):
    (tmp_path / "empty").mkdir()
    result = mdoc_cli("compile", conv1d_model(tmp_path / "conv1d.onnx"), "-o", tmp_path / "out",
                      "--tuning-db", tmp_path / "empty")
    assert result.code == 2
    assert "not a tuning database (no database_workload.json or database_tuning_record.json)" in result.err


def test_tasks_are_deduplicated_and_counted(tmp_path):
    from mdoc.model_io import load_model
    from mdoc.targets.tuning.tasks import extract_tasks
    from mdoc.targets.tvm_backend import BACKEND

    spec = resolve_target("x86")
    mod = BACKEND.lower(load_model(conv1d_model(tmp_path / "conv1d3.onnx", repeat=3)), spec)
    tasks = extract_tasks(mod, spec.tvm)
    # the first layer (64 -> 128 channels) differs; the two 128 -> 128 layers are one task called twice
    assert sorted(t.calls for t in tasks) == [1, 2]
    heavy = max(tasks, key=lambda t: t.calls)
    assert heavy.flops >= 2 * 64 * 128 * 128
    assert tasks[0].cost >= tasks[1].cost


# -- tune, then compile -------------------------------------------------------------------


def test_tune_writes_the_default_database_that_compile_applies(mdoc_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = conv1d_model(tmp_path / "conv1d.onnx")
    result = mdoc_cli("tune", model, "-t", "x86", "--trials", "4", "--chunk", "4", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    db_dir = default_location(resolve_target("x86").tvm)
    assert report["database"] == str(db_dir)
    [task] = report["tasks"]
    assert task["trials"] == 4 and task["calls"] == 1 and task["mdoc_default_us"] > 0
    db = TuningDatabase(db_dir, resolve_target("x86").tvm)
    assert len(db) == 4 and len(db.baselines) == 1
    pruned = db.prune_into(tmp_path / "pruned")
    assert len(pruned) == 1 and pruned.baselines == db.baselines

    # found by structure; whichever measured faster is used
    out = tmp_path / "auto"
    result = mdoc_cli("compile", model, "-t", "x86", "-o", out)
    assert result.code == 0, result.err
    tuning = manifest(out)["tuning"]
    assert tuning["database"] == str(db_dir) and tuning["looked_up"] == 1
    assert tuning["applied"] + tuning["kept_mdoc_default"] == 1
    assert f"tuned tiles from {db_dir}" in result.out

    # mdoc's default recorded as slower: the tuned kernel is built in, and computes the same
    set_baseline(db_dir, 1e3)
    result = mdoc_cli("compile", model, "-t", "x86", "-o", out)
    assert result.code == 0, result.err
    assert manifest(out)["tuning"]["applied"] == 1
    assert "applied 1 tuned kernels" in result.out
    import mdoc

    expected = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]
    np.testing.assert_allclose(mdoc.load(out)(x=X)["r0"], expected, rtol=1e-4, atol=1e-5)

    # mdoc's default recorded as faster: it stays
    set_baseline(db_dir, 1e-12)
    assert mdoc_cli("compile", model, "-t", "x86", "-o", out).code == 0
    assert (manifest(out)["tuning"]["applied"], manifest(out)["tuning"]["kept_mdoc_default"]) == (0, 1)

    # opting out; another target has its own (here absent) default database
    assert mdoc_cli("compile", model, "-t", "x86", "-o", out, "--no-tuning").code == 0
    assert "tuning" not in manifest(out)
    assert tuning_for("auto", resolve_target("x86-avx2")) is None
    assert tuning_for("auto", resolve_target("x86")) is not None


def conv2d_model(path) -> str:
    """A 1x1 Conv2d (16 -> 32 channels, 14x14) + ReLU: one hand-scheduled kernel, whose tile mdoc tune sweeps."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((32, 16, 1, 1)).astype(np.float32) / 4, "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])],
                              "conv2d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 14, 14])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 14, 14])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return str(path)


def test_tune_sweeps_the_tiles_of_hand_kernels_and_compile_applies_the_winner(mdoc_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = conv2d_model(tmp_path / "conv2d.onnx")
    result = mdoc_cli("tune", model, "-t", "x86", "--trials", "3", "--json")
    assert result.code == 0, result.err
    [tiles] = json.loads(result.out)["tiles"]
    assert tiles["name"].startswith("conv2d_1x1s1p0_16x14x14_32") and tiles["trials"] == 3
    assert tiles["mdoc_default_us"] > 0 and tiles["from_database"] is False
    db_dir = default_location(resolve_target("x86").tvm)
    records = json.loads((db_dir / TILES).read_text())
    [(key, record)] = records.items()
    assert record["kernel"] == tiles["name"] and record["mdoc_default_s"] > 0

    # a tile recorded as the faster one is built in, and computes the same
    record.update(tile=[7, 2], tuned_s=record["mdoc_default_s"] / 2)
    (db_dir / TILES).write_text(json.dumps(records))
    out = tmp_path / "tuned"
    result = mdoc_cli("compile", model, "-t", "x86", "-o", out)
    assert result.code == 0, result.err
    assert [t["tile"] for t in manifest(out)["tuning"]["tiles"]] == [[7, 2]]
    import mdoc

    x = np.random.default_rng(2).standard_normal((1, 16, 14, 14)).astype(np.float32)
    expected = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(mdoc.load(out)(x=x)["y"], expected, rtol=1e-4, atol=1e-5)

    # a tile that did not beat the builder's own by the margin is not used; a second tune reuses the sweep
    record.update(tuned_s=record["mdoc_default_s"])
    (db_dir / TILES).write_text(json.dumps(records))
    assert mdoc_cli("compile", model, "-t", "x86", "-o", out).code == 0
    assert manifest(out)["tuning"]["tiles"] == []
    result = mdoc_cli("tune", model, "-t", "x86", "--trials", "3", "--json")
    assert json.loads(result.out)["tiles"][0]["from_database"] is True


# -- RPC ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_key(port: int, key: str, procs, timeout: float = 60.0) -> None:
    from tvm import rpc

    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in procs:
            assert p.poll() is None, f"{p.args} exited with {p.returncode}"
        try:
            if key in str(rpc.connect_tracker("127.0.0.1", port).summary()):
                return
        except (ConnectionError, OSError, RuntimeError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"no RPC server registered as {key!r} with the tracker within {timeout} s")


@pytest.fixture
def rpc_board(tmp_path):
    """A TVM RPC tracker and one server registered under a key, on loopback; yields (port, key, server log)."""
    tracker_port, server_port, key = _free_port(), _free_port(), "mdoc-test-board"
    log = tmp_path / "server.log"
    env = {**os.environ, "TVM_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                               "--port", str(tracker_port), "--port-end", str(tracker_port + 1)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    try:
        with open(log, "w") as f:
            procs.append(subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1",
                                           "--port", str(server_port), "--port-end", str(server_port + 1),
                                           "--tracker", f"127.0.0.1:{tracker_port}", "--key", key],
                                          stdout=f, stderr=subprocess.STDOUT, env=env))
        _wait_for_key(tracker_port, key, procs)
        yield tracker_port, key, log
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_tune_measures_on_a_board_through_the_rpc_tracker(mdoc_cli, tmp_path, rpc_board):
    port, key, log = rpc_board
    db_dir = tmp_path / "db"
    result = mdoc_cli("tune", conv1d_model(tmp_path / "conv1d.onnx"), "-t", "x86", "--trials", "3", "--chunk", "3",
                      "--tuning-db", db_dir, "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", key, "--json")
    assert result.code == 0, result.err
    [task] = json.loads(result.out)["tasks"]
    assert task["trials"] == 3 and task["mdoc_default_us"] > 0
    records = [json.loads(line) for line in (db_dir / "database_tuning_record.json").read_text().splitlines()]
    assert len(records) == 3
    # the board loaded every module it timed: mdoc's default, then the three candidates
    loads = [line for line in log.read_text().splitlines() if "load_module" in line]
    assert len(loads) >= 1 + sum(1 for r in records if r[1][1][0] < 1e9)
    assert task["tuned_us"] is not None
