"""Dynamic batching: step calls of many sessions on one model become one forward.

Like an inference server's dynamic batcher: the first request opens a batch;
requests that arrive within `window_s`, or until `max_batch_envs` envs are
waiting, join it; the batch runs as one `step_many` in a worker thread (torch
releases the GIL) and each caller gets its own slice back. Requests that
cannot share a forward (another temperature or observation mode) go in
separate groups of the same round.

A batch also closes, before its window ends, as soon as every session that
stepped recently (in the last `window_s * EXPECT_WINDOWS`) has a request in
it: agents stepping in lockstep (64 agents, or one session of 256 envs alone)
then never wait for a window that nobody else would fill. Measured on the
one-session load: the fixed 2 ms window cost about as much as the forward.
The window still bounds the wait for a session that stopped stepping.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from worldmodel.session import DreamBatch, StepResult, step_many

log = logging.getLogger(__name__)
EXPECT_WINDOWS = 50
"""Sessions that stepped within this many windows (at least EXPECT_MIN_S) are expected in the next batch."""
EXPECT_MIN_S = 0.1


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
        self._pending: list[_Request] = []
        self._pending_envs = 0
        self._missing: set[int] = set()
        """The recently stepped sessions (DreamBatch ids) that have no request in the open batch yet."""
        self._last_stepped: dict[int, float] = {}
        self._expect_s = max(config.window_s * EXPECT_WINDOWS, EXPECT_MIN_S)
        self._wake: asyncio.Future | None = None
        """What the batching task awaits: the first request of a batch, or the batch complete."""
        self._waiting_for_all = False
        self._task: asyncio.Task | None = None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="batcher")
        self.forwards = 0
        self.envs_stepped = 0

    async def step(self, batch: DreamBatch, actions, reset_mask=None) -> StepResult:
        loop = asyncio.get_running_loop()
        if not self.config.enabled:
            return await loop.run_in_executor(self._executor, batch.step, actions, reset_mask)
        if self._task is None or self._task.done():
            self._pending, self._pending_envs, self._missing, self._wake = [], 0, set(), None
            self._last_stepped = {}
            self._task = asyncio.create_task(self._run(), name="dynamic-batcher")
        request = _Request(batch, actions, reset_mask, loop.create_future())
        self._pending.append(request)
        self._pending_envs += batch.num_envs
        self._missing.discard(id(batch))
        if self._wake is not None and (not self._waiting_for_all or self._complete()):
            _settle(self._wake, result=None)
        return await request.future

    def _complete(self) -> bool:
        return not self._missing or self._pending_envs >= self.config.max_batch_envs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:  # idle: wait for a first request
                await self._sleep(loop, None, waiting_for_all=False)
            if not self._complete():  # others are expected: wait for them, at most the window
                await self._sleep(loop, self.config.window_s, waiting_for_all=True)
            pending, self._pending, self._pending_envs = self._pending, [], 0
            self._missing = self._expected(loop.time(), pending)
            live = [r for r in pending if not r.future.done()]  # callers that gave up (deadline, cancel)
            for group in _groups(live):
                await self._forward(loop, group)

    def _expected(self, now: float, stepping: list[_Request]) -> set[int]:
        """The sessions the next batch waits for: those stepping now and those seen within the horizon."""
        for request in stepping:
            self._last_stepped[id(request.batch)] = now
        horizon = now - self._expect_s
        self._last_stepped = {key: seen for key, seen in self._last_stepped.items() if seen >= horizon}
        return set(self._last_stepped)

    async def _sleep(self, loop, timeout: float | None, waiting_for_all: bool) -> None:
        """Until `step` wakes this task (a first request; with `waiting_for_all`, the batch complete) or `timeout`."""
        self._wake, self._waiting_for_all = loop.create_future(), waiting_for_all
        timer = loop.call_later(timeout, _settle, self._wake) if timeout is not None else None
        try:
            await self._wake
        finally:
            self._wake = None
            if timer is not None:
                timer.cancel()

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
