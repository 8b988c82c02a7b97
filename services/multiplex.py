"""Many agents of one process over one StepMany stream (grpc.aio): `await mux.step(session_id, actions)`.
On Ray Serve (`worldmodel serve --ray`), one stream per replica that holds some of the sessions.

Sixty-four one-env agents that each make their own Step calls pay gRPC's per-call cost 64 times a round
on both ends, which measured far above the forward itself. Here the steps that the agents of one event
loop ask for in the same turn travel as one StepManyRequest; the server steps each item as its own Step
call would (its dynamic batcher fuses them) and answers them in one StepManyResponse. Each agent gets its
own StepResponse back, to decode as a Step reply; an item's error is raised to its agent alone
(services.client.StepError, with the status its Step call would have had).

    async with grpc.aio.insecure_channel(address) as channel:
        mux = StepMultiplexer(channel)
        reply = await mux.step(session_id, actions)      # a pb.StepResponse
"""

from __future__ import annotations

import asyncio

import grpc

from services import wire
from services.client import StepError, step_request
from services.status import status_code
from worldmodel.v1 import simulator_pb2 as pb
from worldmodel.v1 import simulator_pb2_grpc as pb_grpc


class StepMultiplexer:
    """Steps of any number of coroutines (one event loop) over one StepMany stream, one message per turn.

    On Ray Serve each replica that holds some of the sessions gets its own lane: a stream and a pump, so
    the agents of a fast replica never wait for a slow one's reply. `timeout` bounds each round trip; a
    stream that fails (server gone, bad token, timeout) fails the steps it carried with that error, and
    the next step opens a new stream.
    """

    def __init__(self, channel: grpc.aio.Channel, *, token: str | None = None, timeout: float | None = 60.0):
        self._stub = pb_grpc.SimulatorStub(channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self._lanes: dict[str, _Lane] = {}
        """Owner key ("" on a single server) -> its lane."""
        self.messages = 0
        """StepMany requests sent: steps / messages is how many steps shared a message."""

    async def step(self, session_id: str, actions, reset_mask=None) -> pb.StepResponse:
        future = asyncio.get_running_loop().create_future()
        owner = wire.owner_of(session_id)
        lane = self._lanes.get(owner)
        if lane is None or lane.pump.done():
            lane = self._lanes[owner] = _Lane()
            lane.pump = asyncio.create_task(self._run(lane), name=f"step-multiplexer-{owner or 'server'}")
        lane.queued.append((step_request(session_id, actions, reset_mask), future))
        lane.ready.set()
        return await future

    async def _run(self, lane: _Lane) -> None:
        stream: _Stream | None = None
        try:
            while True:
                await lane.ready.wait()
                lane.ready.clear()
                await asyncio.sleep(0)  # one turn: the agents woken by the last reply queue their next steps
                carried, lane.queued = lane.queued, []
                if not carried:
                    continue
                if stream is None:
                    # Requests go through an iterator, not call.write: a write that loses the race with the
                    # server's verdict (a refused token) ends the call as INTERNAL, hiding that verdict.
                    routing = wire.routing_metadata(carried[0][0].session_id)
                    stream = _Stream(self._stub, (*self._metadata, *routing), waits_for_headers=not routing)
                if not await self._exchange(stream, carried):
                    stream.close()
                    stream = None
        finally:
            if stream is not None:
                stream.close()
            _fail(lane.queued, StepError(grpc.StatusCode.CANCELLED, "the step multiplexer stopped"))
            lane.queued = []

    async def _exchange(self, stream: _Stream, carried: list) -> bool:
        """One StepMany message for `carried` and its answers; False when the stream failed (they fail with it)."""
        try:
            if stream.waits_for_headers:
                # The server's first word (its initial metadata, or its verdict on the call) before ours: a refused
                # token then arrives as UNAUTHENTICATED, not as a write that lost the race. (Ray Serve's proxy
                # sends its headers with the first reply: no word to wait for there.)
                stream.waits_for_headers = False
                await asyncio.wait_for(stream.call.initial_metadata(), self.timeout)
                if stream.call.done():
                    raise StepError(await stream.call.code(), await stream.call.details())
            stream.outbox.put_nowait(pb.StepManyRequest(steps=[request for request, _ in carried]))
            self.messages += 1
            reply = await asyncio.wait_for(stream.call.read(), self.timeout)
            if reply is grpc.aio.EOF:
                raise StepError(grpc.StatusCode.UNAVAILABLE, "the server ended the StepMany stream")
        except (grpc.RpcError, TimeoutError) as err:
            if isinstance(err, TimeoutError):
                err = StepError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no StepMany reply within {self.timeout:g} s")
            _fail(carried, err)
            return False
        _answer(carried, reply)
        return True

    async def close(self) -> None:
        for lane in self._lanes.values():
            lane.pump.cancel()
            try:
                await lane.pump
            except asyncio.CancelledError:
                pass


class _Lane:
    """The steps waiting for one owner's stream, and the task that sends them."""

    def __init__(self):
        self.queued: list[tuple[pb.StepRequest, asyncio.Future]] = []
        self.ready = asyncio.Event()
        self.pump: asyncio.Task | None = None


class _Stream:
    """One StepMany call and the queue its requests go out through."""

    def __init__(self, stub, metadata, waits_for_headers: bool):
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.call = stub.StepMany(_drain(self.outbox), metadata=metadata)
        self.waits_for_headers = waits_for_headers

    def close(self) -> None:
        self.outbox.put_nowait(None)
        self.call.cancel()


def _answer(carried: list[tuple[pb.StepRequest, asyncio.Future]], reply: pb.StepManyResponse) -> None:
    if len(reply.steps) != len(carried) or len(reply.errors) != len(carried):
        _fail(carried, StepError(grpc.StatusCode.INTERNAL,
                                 f"a StepMany reply of {len(reply.steps)} steps for {len(carried)} requests"))
        return
    for (_, future), step, error in zip(carried, reply.steps, reply.errors):
        if future.done():  # its agent was cancelled
            continue
        if error.code:
            future.set_exception(StepError(status_code(error.code), error.message))
        else:
            future.set_result(step)


def _fail(carried: list[tuple[pb.StepRequest, asyncio.Future]], error: BaseException) -> None:
    for _, future in carried:
        if not future.done():
            future.set_exception(error)


async def _drain(outbox: asyncio.Queue):
    """The stream's requests, until a None."""
    while (request := await outbox.get()) is not None:
        yield request

