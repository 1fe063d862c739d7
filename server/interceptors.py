"""What a caller is told when a request cannot be served, on both listeners.

``ErrorInterceptor`` wraps every method handler of a server so that no caller
ever sees a Python class name or a traceback:

- a request that does not parse is ``INVALID_ARGUMENT`` naming its message
  type; a unary call that half-closes without its request is
  ``INVALID_ARGUMENT`` too (gRPC itself would leave it open until the
  caller's deadline), which is why unary-request methods are served as
  stream-request methods that read their one request themselves;
- a database error (``OperationalError``, ``StoreError``) is ``UNAVAILABLE``
  with a fixed message, and is logged with the method name;
- any other exception is ``INTERNAL`` with a fixed message, and is logged
  once with the method name and the traceback, never the request.

Aborts (``context.abort``) and cancellations pass through untouched.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
from grpc.aio import EOF  # type: ignore[attr-defined]
from sqlalchemy.exc import OperationalError

from liaison.server.errors import one_line
from liaison.server.store.store import StoreError

log = logging.getLogger(__name__)

INTERNAL_ERROR = "internal error; the node's log has the details"
STORAGE_UNAVAILABLE = "storage is unavailable; retry later"
# gRPC's health servicer aborts NOT_FOUND without a message; this is its message.
_PRESET_DETAILS = {
    "/grpc.health.v1.Health/Check": (
        "unknown service name: this listener reports the health of '' and of its own service"
    ),
}

Context = grpc.aio.ServicerContext[Any, Any]
Deserializer = Callable[[bytes], Any]
# A handler's behavior: (request or request iterator, context) -> response(s).
Behavior = Callable[..., Any]


class _Undecodable(Exception):
    """The request's bytes are not a ``type_name``."""

    def __init__(self, type_name: str) -> None:
        super().__init__(type_name)
        self.type_name = type_name


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Maps failures to status codes with messages that name the problem (module docstring)."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:  # an unknown method: gRPC answers UNIMPLEMENTED
            return handler
        return _guarded(handler, handler_call_details.method)


def _guarded(
    handler: grpc.RpcMethodHandler[Any, Any], method: str
) -> grpc.RpcMethodHandler[Any, Any]:
    type_name = _request_type_name(handler.request_deserializer, method)
    decode = _decoder(handler.request_deserializer, type_name)
    serialize = handler.response_serializer
    if handler.unary_unary is not None:
        behavior = _guard(handler.unary_unary, method, one_request=type_name)
        return grpc.stream_unary_rpc_method_handler(behavior, decode, serialize)
    if handler.unary_stream is not None:
        behavior = _guard(handler.unary_stream, method, one_request=type_name)
        return grpc.stream_stream_rpc_method_handler(behavior, decode, serialize)
    if handler.stream_unary is not None:
        behavior = _guard(handler.stream_unary, method)
        return grpc.stream_unary_rpc_method_handler(behavior, decode, serialize)
    assert handler.stream_stream is not None
    behavior = _guard(handler.stream_stream, method)
    return grpc.stream_stream_rpc_method_handler(behavior, decode, serialize)


def _request_type_name(deserializer: Deserializer | None, method: str) -> str:
    """``liaison.v1.GetMessageRequest`` for a generated message's ``FromString``."""
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    name = getattr(descriptor, "full_name", None)
    return name if isinstance(name, str) else f"request of {method}"


def _decoder(deserializer: Deserializer | None, type_name: str) -> Deserializer:
    def decode(data: bytes) -> Any:
        if deserializer is None:
            return data
        try:
            return deserializer(data)
        except Exception:
            raise _Undecodable(type_name) from None

    return decode


def _guard(behavior: Behavior, method: str, *, one_request: str | None = None) -> Behavior:
    """``behavior`` with its failures mapped; with ``one_request``, it reads its request."""

    async def request_of(given: Any, context: Context) -> Any:
        preset = _PRESET_DETAILS.get(method)
        if preset is not None:
            context.set_details(preset)
        if one_request is None:
            return given
        request = await context.read()
        if request is EOF:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"no {one_request} sent")
        return request

    if inspect.isasyncgenfunction(behavior):

        async def stream(given: Any, context: Context) -> AsyncIterator[Any]:
            try:
                async for response in behavior(await request_of(given, context), context):
                    yield response
            except grpc.aio.BaseError:  # an abort, or gRPC's own signal: not ours to map
                raise
            except Exception as error:
                await _fail(error, method, context)

        return stream

    async def call(given: Any, context: Context) -> Any:
        try:
            result = behavior(await request_of(given, context), context)
            return await result if inspect.isawaitable(result) else result
        except grpc.aio.BaseError:
            raise
        except Exception as error:
            await _fail(error, method, context)

    return call


async def _fail(error: Exception, method: str, context: Context) -> NoReturn:
    if isinstance(error, _Undecodable):
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request is not a {error.type_name}: it does not parse",
        )
    if isinstance(error, OperationalError | StoreError):
        # SQL errors carry no parameters (the engine hides them), so no content.
        log.error("%s: storage is unavailable: %s", method, one_line(error))
        await context.abort(grpc.StatusCode.UNAVAILABLE, STORAGE_UNAVAILABLE)
    log.error("%s failed", method, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_ERROR)
