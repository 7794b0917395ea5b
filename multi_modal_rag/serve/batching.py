"""Query embedding for a server: concurrent requests share one `encode` call and one cache.

A single task collects the waiting queries and embeds them in one call on a dedicated thread
(one model per process; torch spreads the call over the cores itself), so the event loop never
blocks. It does not wait for company when the load is light: a batch starts with whatever is
queued, and waits up to `max_wait` for more only when the previous batch had company. While a
batch is being encoded, the next one gathers in the queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class Embedded:
    vector: np.ndarray
    model: str  # the tag of the model that made it (Searcher.model_tag)
    cached: bool


class QueryBatcher:
    def __init__(
        self,
        encode: Callable[[list[str]], tuple[str, np.ndarray]],
        *,
        max_wait: float = 0.002,
        max_batch: int = 64,
        cache_size: int = 1024,
        on_batch: Callable[[int], None] | None = None,
        current_model: Callable[[], str | None] = lambda: None,
    ):
        """`encode(texts)` returns (model tag, vectors); `current_model()` the tag in use now, if known."""
        self.encode = encode
        self.max_wait = max_wait
        self.max_batch = max_batch
        self.cache_size = cache_size
        self.on_batch = on_batch
        self.current_model = current_model
        self._cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._queue: asyncio.Queue[tuple[str, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmrag-encode")
        self._last_batch = 1

    async def embed(self, text: str) -> Embedded:
        model = self.current_model()
        if model is not None and self.cache_size > 0:
            cached = self._cache.get((model, text))
            if cached is not None:
                self._cache.move_to_end((model, text))
                return Embedded(cached, model, True)
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((text, future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + (self.max_wait if self._last_batch > 1 else 0.0)
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            self._last_batch = len(batch)
            texts = list(dict.fromkeys(text for text, _ in batch))
            try:
                model, vectors = await loop.run_in_executor(self._thread, self.encode, texts)
            except Exception as exc:  # every waiting request gets the error; the loop carries on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            if self.on_batch:
                self.on_batch(len(texts))
            by_text = dict(zip(texts, vectors))
            for text, future in batch:
                if not future.done():  # a request that went away meanwhile
                    future.set_result(Embedded(by_text[text], model, False))
            if self.cache_size > 0:
                for text in texts:
                    self._cache[(model, text)] = by_text[text]
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._thread.shutdown(wait=False, cancel_futures=True)
