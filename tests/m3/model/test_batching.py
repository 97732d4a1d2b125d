"""MicroBatcher: concurrent requests share batches, keys never mix, errors reach every caller."""

import asyncio

import pytest

from m3.model.batching import MicroBatcher


def test_concurrent_requests_are_batched_by_key():
    seen = []

    def run(items):
        seen.append(list(items))
        return [x * 10 for x in items]

    batcher = MicroBatcher(run, max_batch=3, key=lambda x: x % 2)

    async def go():
        return await asyncio.gather(*(batcher.submit(i) for i in range(7)))

    assert asyncio.run(go()) == [i * 10 for i in range(7)]
    assert sorted(map(len, seen)) == [1, 3, 3] and all(len({x % 2 for x in b}) == 1 for b in seen)


def test_errors_reach_every_caller_of_the_batch():
    def run(items):
        raise RuntimeError("engine died")

    batcher = MicroBatcher(run, max_batch=4)

    async def go():
        return await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(go()))
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(run, max_batch=0)
