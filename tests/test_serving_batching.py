"""The batcher's promises, on a model that records its calls: rows stacked up to max_batch, each request
gets its own rows back, a full queue answers 503 at once, a timed-out request gets 504 and never runs."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from mdoc.serving.batching import Batcher
from mdoc.serving.codec import RequestError


class Recorder:
    """y = 2 x, recording the rows of every call; `gate` holds calls until the test opens it."""

    def __init__(self):
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, x):
        self.gate.wait(10)
        self.calls.append(x.shape[0])
        return {"y": 2 * x}


def run(coro):
    return asyncio.run(coro)


def test_requests_queued_behind_a_batch_run_together_and_get_their_own_rows():
    async def go():
        model = Recorder()
        model.gate.clear()
        b = Batcher(model, max_batch=8, max_delay_s=0.05, max_queue=64)
        xs = [np.full((1 + i % 2, 3), i, np.float32) for i in range(9)]
        tasks = [asyncio.create_task(b.submit({"x": x})) for x in xs]
        await asyncio.sleep(0.01)
        model.gate.set()
        outs = await asyncio.gather(*tasks)
        await b.close()
        return model.calls, xs, outs

    calls, xs, outs = run(go())
    for x, out in zip(xs, outs):
        np.testing.assert_array_equal(out["y"], 2 * x)
    assert sum(calls) == sum(x.shape[0] for x in xs) and max(calls) <= 8
    assert len(calls) <= 3  # 13 rows: the first alone (it started the wait), then batches of up to 8


def test_different_row_shapes_never_share_a_batch():
    async def go():
        model = Recorder()
        b = Batcher(model, max_batch=8, max_delay_s=0.02)
        outs = await asyncio.gather(b.submit({"x": np.ones((1, 3), np.float32)}),
                                    b.submit({"x": np.ones((1, 5), np.float32)}))
        await b.close()
        return outs

    a, c = run(go())
    assert a["y"].shape == (1, 3) and c["y"].shape == (1, 5)


def test_full_queue_answers_503_at_once():
    async def go():
        model = Recorder()
        model.gate.clear()
        b = Batcher(model, max_batch=1, max_queue=2)
        first = asyncio.create_task(b.submit({"x": np.ones((1, 3), np.float32)}))
        await asyncio.sleep(0.01)  # running: the queue is empty again
        queued = [asyncio.create_task(b.submit({"x": np.ones((1, 3), np.float32)})) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(RequestError, match="queue full") as refused:
            await b.submit({"x": np.ones((1, 3), np.float32)})
        model.gate.set()
        await asyncio.gather(first, *queued)
        await b.close()
        return refused.value.status

    assert run(go()) == 503


def test_timed_out_request_gets_504_and_never_runs():
    async def go():
        model = Recorder()
        model.gate.clear()
        b = Batcher(model, max_batch=1, timeout_s=0.05)
        first = asyncio.create_task(b.submit({"x": np.ones((1, 3), np.float32)}))
        await asyncio.sleep(0.01)
        with pytest.raises(RequestError, match="timeout") as late:
            await b.submit({"x": np.ones((2, 3), np.float32)})
        model.gate.set()
        with pytest.raises(RequestError):  # the running one timed out too; its result is dropped
            await first
        await asyncio.sleep(0.02)
        await b.close()
        return late.value.status, model.calls

    status, calls = run(go())
    assert status == 504 and calls == [1]
