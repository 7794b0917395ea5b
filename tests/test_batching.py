"""QueryBatcher without a model: batches form under concurrency, a lone query never waits, errors reach every caller."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from multi_modal_rag.serve.batching import QueryBatcher


class SlowEncoder:
    """Stands in for a model: 20 ms a call, vectors that encode the text's length, calls recorded."""

    def __init__(self, fail: bool = False):
        self.calls: list[list[str]] = []
        self.fail = fail
        self.thread_ids: set[int] = set()

    def __call__(self, texts: list[str]) -> tuple[str, np.ndarray]:
        self.calls.append(list(texts))
        self.thread_ids.add(threading.get_ident())
        time.sleep(0.02)
        if self.fail:
            raise RuntimeError("model broke")
        return "m", np.array([[len(t), 1.0] for t in texts])


def test_concurrent_queries_share_calls_and_each_gets_its_own_vector():
    encoder = SlowEncoder()

    async def run():
        batcher = QueryBatcher(encoder, cache_size=0)
        texts = [f"q{'x' * i}" for i in range(20)]
        results = await asyncio.gather(*(batcher.embed(t) for t in texts))
        await batcher.close()
        return texts, results

    texts, results = asyncio.run(run())
    assert [r.vector[0] for r in results] == [len(t) for t in texts]
    assert len(encoder.calls) < len(texts) and max(map(len, encoder.calls)) > 1
    assert threading.get_ident() not in encoder.thread_ids  # never on the event loop's thread


def test_a_lone_query_is_not_held_back_and_repeats_come_from_the_cache():
    encoder = SlowEncoder()

    async def run():
        batcher = QueryBatcher(encoder, max_wait=0.5, current_model=lambda: "m")
        started = time.perf_counter()
        first = await batcher.embed("alone")
        took = time.perf_counter() - started
        again = await batcher.embed("alone")
        await batcher.close()
        return took, first, again

    took, first, again = asyncio.run(run())
    assert took < 0.4  # max_wait is 0.5 s: a batch waits for company only when the last one had some
    assert not first.cached and again.cached and len(encoder.calls) == 1


def test_a_failing_encode_reaches_every_waiting_caller_and_the_batcher_carries_on():
    encoder = SlowEncoder(fail=True)

    async def run():
        batcher = QueryBatcher(encoder)
        outcomes = await asyncio.gather(*(batcher.embed(f"q{i}") for i in range(5)), return_exceptions=True)
        encoder.fail = False
        later = await batcher.embed("after")
        await batcher.close()
        return outcomes, later

    outcomes, later = asyncio.run(run())
    assert all(isinstance(o, RuntimeError) and "model broke" in str(o) for o in outcomes)
    assert later.vector[0] == len("after")


def test_identical_queries_in_one_batch_are_encoded_once():
    encoder = SlowEncoder()

    async def run():
        batcher = QueryBatcher(encoder, cache_size=0)
        await batcher.embed("warm")  # the next batch gathers while nothing else runs
        results = await asyncio.gather(*(batcher.embed("same") for _ in range(6)))
        await batcher.close()
        return results

    results = asyncio.run(run())
    assert all(r.vector[0] == 4 for r in results)
    assert sum(call.count("same") for call in encoder.calls) < 6
