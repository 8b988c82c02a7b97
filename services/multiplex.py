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
from worldmodel.v1 import simulator_pb2 as pb
from worldmodel.v1 import simulator_pb2_grpc as pb_grpc


class StepMultiplexer:
    """Steps of any number of coroutines (one event loop) over one StepMany stream, one message per turn.

    `timeout` bounds each round trip; a stream that fails (server gone, bad token, timeout) fails the
    steps it carried with that error, and the next step opens a new stream.
    """

    def __init__(self, channel: grpc.aio.Channel, *, token: str | None = None, timeout: float | None = 60.0):
        self._stub = pb_grpc.SimulatorStub(channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self._queued: list[tuple[pb.StepRequest, asyncio.Future]] = []
        self._ready: asyncio.Event | None = None
        self._pump: asyncio.Task | None = None
        self.messages = 0
        """StepMany requests sent: steps / messages is how many steps shared a message."""

    async def step(self, session_id: str, actions, reset_mask=None) -> pb.StepResponse:
        future = asyncio.get_running_loop().create_future()
        self._queued.append((step_request(session_id, actions, reset_mask), future))
        if self._pump is None or self._pump.done():
            self._ready = asyncio.Event()
            self._pump = asyncio.create_task(self._run(), name="step-multiplexer")
        self._ready.set()
        return await future

    async def _run(self) -> None:
        streams: dict[str, _Stream] = {}
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                await asyncio.sleep(0)  # one turn: the agents woken by the last reply queue their next steps
                carried, self._queued = self._queued, []
                if not carried:
                    continue
                # On Ray Serve, sessions live on different replicas: one stream (and message) per owner.
                groups: dict[str, list] = {}
                for item in carried:
                    groups.setdefault(wire.owner_of(item[0].session_id), []).append(item)
                await asyncio.gather(*(self._exchange(streams, owner, group) for owner, group in groups.items()))
        finally:
            for stream in streams.values():
                stream.close()
            _fail(self._queued, StepError(grpc.StatusCode.CANCELLED, "the step multiplexer stopped"))
            self._queued = []

    async def _exchange(self, streams: dict[str, _Stream], owner: str, carried: list) -> None:
        """One StepMany message for `carried` over the stream of their owner, and its answers."""
        stream = streams.get(owner)
        if stream is None:
            # Requests go through an iterator, not call.write: a write that loses the race with the server's
            # verdict (a refused token) ends the call as INTERNAL, hiding that verdict.
            metadata = (*self._metadata, *wire.routing_metadata(carried[0][0].session_id))
            stream = streams[owner] = _Stream(self._stub, metadata)
        try:
            if stream.opened and owner:  # Ray Serve's proxy sends its headers with the first reply: no word to wait for
                stream.opened = False
            if stream.opened:
                # The server's first word (its initial metadata, or its verdict on the call) before ours:
                # a refused token then arrives as UNAUTHENTICATED, not as a write that lost the race.
                stream.opened = False
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
            streams.pop(owner).close()
            _fail(carried, err)
            return
        _answer(carried, reply)

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            try:
                await self._pump
            except asyncio.CancelledError:
                pass


class _Stream:
    """One StepMany call and the queue its requests go out through."""

    def __init__(self, stub, metadata):
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.call = stub.StepMany(_drain(self.outbox), metadata=metadata)
        self.opened = True

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
            future.set_exception(StepError(_status(error.code), error.message))
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


def _status(code: int) -> grpc.StatusCode:
    return next((status for status in grpc.StatusCode if status.value[0] == code), grpc.StatusCode.UNKNOWN)
