"""Micro-batching of concurrent async requests onto one batched call (what an engine's scheduler does).

Coroutines that call `submit` in the same event-loop turn (the rollouts of an agent-loop batch, the
consultations of an evaluation) are collected and run together through `run_batch(items) -> results`
in a worker thread, up to `max_batch` at a time; requests that arrive while a batch runs join the
next one. Items with different `key(item)` never share a batch (different sampling settings).

    batcher = MicroBatcher(lambda prompts: model_generate(prompts), max_batch=16)
    answer = await batcher.submit(prompt)

Why our own: the local stand-ins for vLLM (`m3.rl.local_server.LocalServer`,
`m3.model.generate.LocalChat`) must batch the way the engine does, or every multi-turn rollout runs
at batch 1 on CPU; a serving framework is not available in-process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    def __init__(
        self,
        run_batch: Callable[[list[T]], list[R]],
        max_batch: int,
        key: Callable[[T], Hashable] = lambda item: None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.run_batch, self.max_batch, self.key = run_batch, max_batch, key
        self._queue: list[tuple[T, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        self.batches: list[int] = []  # sizes of the batches run (for tests and logs)

    async def submit(self, item: T) -> R:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            for _ in range(3):  # let the coroutines scheduled with this one reach submit() first
                await asyncio.sleep(0)
            first = self.key(self._queue[0][0])
            batch = [q for q in self._queue if self.key(q[0]) == first][: self.max_batch]
            taken = {id(q) for q in batch}
            self._queue = [q for q in self._queue if id(q) not in taken]
            try:
                results: list[Any] = await asyncio.to_thread(self.run_batch, [item for item, _ in batch])
            except Exception as e:  # every caller of the batch gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.batches.append(len(batch))
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
