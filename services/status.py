"""Status messages that stay small whatever the client sent.

A status message travels in the `grpc-message` trailer, which gRPC caps (16 KiB by default, and
percent-encoding can triple a byte): a message that echoed a 200 KB session id or a thousand bad
actions reached the client as RESOURCE_EXHAUSTED instead of its own code. So every piece of client
input a message quotes goes through `echo`, and every message through `bounded`.
"""

from __future__ import annotations

import grpc

ECHO_CHARS = 200
"""How much of one piece of client input a message quotes."""
MESSAGE_CHARS = 1000
"""The most a whole status message says (at most about 3 KB once percent-encoded)."""


def echo(value: object, limit: int = ECHO_CHARS) -> str:
    """`repr(value)` for a message, cut to `limit` characters plus "..." when longer."""
    text = repr(value) if not isinstance(value, (bytes, bytearray)) else repr(bytes(value[: limit + 1]))
    return text if len(text) <= limit else text[:limit] + "..."


def bounded(message: str, limit: int = MESSAGE_CHARS) -> str:
    """A whole status message, cut to `limit` characters plus "..." when longer."""
    return message if len(message) <= limit else message[:limit] + "..."


def status_code(value: int) -> grpc.StatusCode:
    """The gRPC status code of its number on the wire (UNKNOWN for a number gRPC does not define)."""
    return next((code for code in grpc.StatusCode if code.value[0] == value), grpc.StatusCode.UNKNOWN)


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> None:
    """End the call with `code` and a bounded message (raises, as `context.abort` does)."""
    await context.abort(code, bounded(message))
