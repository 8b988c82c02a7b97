"""What every call passes before a servicer sees it: the bearer token first, then the parse.

gRPC parses a request with the handler's deserializer before any servicer (or a denying handler)
runs, so garbage bytes without a token used to reach protobuf and come back as UNKNOWN
DecodeError, with a traceback in the log per request. Here every handler takes the raw bytes:

1. a call that needs a token and lacks it gets UNAUTHENTICATED, its bytes never parsed;
2. bytes that do not parse get INVALID_ARGUMENT and one log line;
3. a servicer's unexpected exception gets INTERNAL with a bounded message (its traceback logged:
   that one is a bug of ours).

Health and reflection stay reachable without a token (load balancers and generic clients probe them).
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging

import grpc

from services.status import bounded

log = logging.getLogger("worldmodel.serve")
OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")
"""Methods reachable without a token."""
INLINE_PARSE_BYTES = 256 << 10
"""Larger requests are parsed in a worker thread: a 30 MB message of 30 million shape entries took
0.36 s to parse, which on the event loop would stall every other call (Health included)."""
TOKEN_REQUIRED = "a valid bearer token is required (metadata 'authorization: Bearer <token>')"
_MAKE_HANDLER = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


class UndecodableRequest(Exception):
    """Bytes that are not a serialized request of the method's type."""


class RequestGuard(grpc.aio.ServerInterceptor):
    """Token check (when `token` is set) before parsing; parse failures and bugs as bounded statuses."""

    def __init__(self, token: str | None):
        self._expected = f"Bearer {token}".encode() if token else None
        self._wrapped: dict[tuple[str, bool], tuple[object, object]] = {}
        """(method, denied) -> (gRPC's handler, ours): built once per method, not once per call (rebuilding
        it showed up in a profile of 64 agents making unary Step calls, about 6% of the event loop's time)."""

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None:  # no such method: gRPC answers UNIMPLEMENTED
            return None
        denied = self._expected is not None and not details.method.startswith(OPEN_METHODS) \
            and not self._authorized(details.invocation_metadata or ())
        key = (details.method, denied)
        cached = self._wrapped.get(key)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _denying(handler) if denied else _guarded(handler, details.method)
        self._wrapped[key] = (handler, wrapped)
        return wrapped

    def _authorized(self, metadata) -> bool:
        return bearer_matches(metadata, self._expected)


def bearer_matches(metadata, expected: bytes) -> bool:
    """Whether the call's metadata holds exactly one `authorization` entry and it is `expected`."""
    values = [value for key, value in metadata if key == "authorization"]
    if len(values) != 1 or not isinstance(values[0], str):
        return False
    return hmac.compare_digest(values[0].encode(), expected)  # no timing hint at the token


def _behavior(handler):
    return handler.stream_stream or handler.stream_unary or handler.unary_stream or handler.unary_unary


def _rebuilt(handler, behavior):
    """A handler of the same kind that runs `behavior` on the raw request bytes."""
    make = _MAKE_HANDLER[(handler.request_streaming, handler.response_streaming)]
    return make(behavior, request_deserializer=None, response_serializer=handler.response_serializer)


def _denying(handler):
    async def deny_unary(request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, TOKEN_REQUIRED)

    async def deny_stream(request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, TOKEN_REQUIRED)
        yield  # pragma: no cover - makes this an async generator

    return _rebuilt(handler, deny_stream if handler.response_streaming else deny_unary)


def _guarded(handler, method: str):
    behavior = _behavior(handler)
    if not (inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)):
        return handler  # a synchronous servicer (none here): left as gRPC runs it
    parse = _parser(handler.request_deserializer, method)

    async def requests(raw, context):
        if handler.request_streaming:
            return _parsed_stream(raw, parse, context)
        return await parse(raw, context)

    if inspect.isasyncgenfunction(behavior):
        async def guarded_stream(raw, context):
            try:
                async for reply in behavior(await requests(raw, context), context):
                    yield reply
            except Exception as err:  # noqa: BLE001 - turned into a status below
                await _fail(context, method, err)
        return _rebuilt(handler, guarded_stream)

    async def guarded(raw, context):
        try:
            return await behavior(await requests(raw, context), context)
        except Exception as err:  # noqa: BLE001 - turned into a status below
            await _fail(context, method, err)
    return _rebuilt(handler, guarded)


def _parser(deserializer, method: str):
    async def parse(raw: bytes, context):
        if deserializer is None:
            return raw
        try:
            if len(raw) > INLINE_PARSE_BYTES:
                return await asyncio.to_thread(deserializer, raw)
            return deserializer(raw)
        except Exception as err:  # noqa: BLE001 - DecodeError, or a parser's other complaint about the bytes
            log.warning("%s: undecodable request of %d bytes from %s (%s)", method, len(raw), context.peer(),
                        type(err).__name__)
            raise UndecodableRequest(f"the request is not a valid {method.rsplit('/', 1)[-1]} request message "
                                     f"({len(raw)} bytes that do not parse)") from None
    return parse


async def _parsed_stream(raw_iterator, parse, context):
    async for raw in raw_iterator:
        yield await parse(raw, context)


async def _fail(context, method: str, err: Exception) -> None:
    if isinstance(err, grpc.aio.AbortError):
        raise err  # the servicer's own status, already set
    if isinstance(err, UndecodableRequest):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, bounded(str(err)))
    log.error("%s failed", method, exc_info=err)
    await context.abort(grpc.StatusCode.INTERNAL, bounded(f"internal error: {type(err).__name__}: {err}"))
