"""Dynamic batching: step calls of many sessions on one model become one forward.

Like an inference server's dynamic batcher: the first request opens a batch;
requests that arrive within `window_s`, or until `max_batch_envs` envs are
waiting, join it; the batch runs as one `step_many` in a worker thread (torch
releases the GIL) and each caller gets its own slice back. Requests that
cannot share a forward (another temperature or observation mode) go in
separate groups of the same round.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from worldmodel.session import DreamBatch, StepResult, step_many

log = logging.getLogger(__name__)


@dataclass
class BatcherConfig:
    window_s: float = 0.002
    """How long a batch stays open for more requests after the first one."""
    max_batch_envs: int = 1024
    """A batch closes at once when this many envs wait."""
    enabled: bool = True
    """False: every request runs alone (for comparison)."""


@dataclass
class _Request:
    batch: DreamBatch
    actions: object
    reset_mask: object
    future: asyncio.Future = field(repr=False)


class DynamicBatcher:
    """One per served model; `await step(batch, actions)` from any number of concurrent calls."""

    def __init__(self, config: BatcherConfig, executor: ThreadPoolExecutor | None = None):
        self.config = config
        self._queue: asyncio.Queue[_Request] | None = None
        self._task: asyncio.Task | None = None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="batcher")
        self.forwards = 0
        self.envs_stepped = 0

    async def step(self, batch: DreamBatch, actions, reset_mask=None) -> StepResult:
        loop = asyncio.get_running_loop()
        if not self.config.enabled:
            return await loop.run_in_executor(self._executor, batch.step, actions, reset_mask)
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._run(), name="dynamic-batcher")
        request = _Request(batch, actions, reset_mask, loop.create_future())
        await self._queue.put(request)
        return await request.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            pending, envs = [first], first.batch.num_envs
            deadline = loop.time() + self.config.window_s
            while envs < self.config.max_batch_envs:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    request = await asyncio.wait_for(self._queue.get(), timeout)
                except TimeoutError:
                    break
                pending.append(request)
                envs += request.batch.num_envs
            live = [r for r in pending if not r.future.done()]  # callers that gave up (deadline, cancel)
            for group in _groups(live):
                await self._forward(loop, group)

    async def _forward(self, loop, group: list[_Request]) -> None:
        try:
            results = await loop.run_in_executor(
                self._executor, step_many, [r.batch for r in group], [r.actions for r in group],
                [r.reset_mask for r in group],
            )
        except Exception as err:  # noqa: BLE001 - one bad request must not fail its batch-mates
            if len(group) == 1:
                _settle(group[0].future, error=err)
            else:  # find the culprit: rerun each alone
                for request in group:
                    await self._forward(loop, [request])
            return
        self.forwards += 1
        self.envs_stepped += sum(r.batch.num_envs for r in group)
        for request, result in zip(group, results):
            _settle(request.future, result=result)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False)


def _groups(requests: list[_Request]) -> list[list[_Request]]:
    groups: dict[tuple, list[_Request]] = {}
    for request in requests:
        key = (id(request.batch.model), request.batch.temperature, request.batch.decodes)
        groups.setdefault(key, []).append(request)
    return list(groups.values())


def _settle(future: asyncio.Future, result=None, error: Exception | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
