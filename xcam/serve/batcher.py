"""Dynamic batching: requests that arrive within a few milliseconds share one model call.

The first image to arrive opens a batch; the batch closes when it holds ``max_batch``
images or ``max_wait_ms`` after it opened, and runs on the model's own thread while the
next one fills (exported files have a dynamic batch dimension). Each image gets its own
answer: batching changes how often the model runs, never what it says of an image.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from xcam.pipeline.batch import BatchExplainer, Explained
from xcam.pipeline.job import explain_ready


class Batcher:
    """Batches the images of concurrent requests for one :class:`BatchExplainer`."""

    engine = "local"  # what /v1/model says; xcam.serve.ray_engine.RayBatcher is the twin on Ray

    def __init__(
        self,
        explainer: BatchExplainer,
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be 1 or more, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be 0 or more, got {max_wait_ms}")
        self.explainer = explainer
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self.on_batch = on_batch or (lambda _size, _seconds: None)
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        # one thread: the model is one session, which runs a batch on all the cores
        self._model = ThreadPoolExecutor(1, thread_name_prefix="xcam-model")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._model.shutdown(wait=True, cancel_futures=True)

    async def explain(self, x: np.ndarray, label: int | None, name: str) -> Explained | str:
        """One image's explanation (``x``: its input ``[C, H, W]``; ``label``: the class to
        explain, None for the top-1), or a string saying why its label can't be explained."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        answer: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((({"image": name}, None, x, label), answer))
        return await answer

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            closes = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                left = closes - loop.time()
                try:  # past the wait, what is queued already still joins
                    if left <= 0:
                        batch.append(self._queue.get_nowait())
                    else:
                        batch.append(await asyncio.wait_for(self._queue.get(), left))
                except (TimeoutError, asyncio.QueueEmpty):
                    break
            batch = [(ready, answer) for ready, answer in batch if not answer.cancelled()]
            try:
                await self._answer(batch)
            except Exception as e:  # never the loop's end: the next requests still get answers
                for _, answer in batch:
                    if not answer.done():
                        answer.set_exception(e)

    async def _answer(self, batch: list[Any]) -> None:
        if not batch:
            return
        found = await self._explain_batch([ready for ready, _ in batch])
        for (_, answer), result in zip(batch, found, strict=True):
            if answer.done():
                continue
            if isinstance(result, Exception):
                answer.set_exception(result)
            else:
                answer.set_result(result)

    async def _explain_batch(self, ready: list[Any]) -> list[Explained | str | Exception]:
        """One model call on the model's thread, timed for ``on_batch``: each image's answer,
        its label's refusal (a string) or what it raised (see :func:`explain_apart`)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        found = await loop.run_in_executor(self._model, explain_apart, self.explainer, ready)
        self.on_batch(len(ready), loop.time() - started)
        return found


def explain_apart(explainer: BatchExplainer, ready: list[Any]) -> list[Explained | str | Exception]:
    """:func:`explain_ready` on a batch of requests' images; should the call fail, each image
    on its own, so that one image's failure is its request's alone (returned, not raised)."""
    try:
        return explain_ready(explainer, ready)
    except Exception as e:
        if len(ready) == 1:
            return [e]
        return [explain_apart(explainer, [one])[0] for one in ready]
