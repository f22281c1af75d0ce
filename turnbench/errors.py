"""One exception tree for every transport.

Each error carries its wire meaning, so an adapter maps it with one table lookup and never decides::

    TurnbenchError                      code                                 HTTP  WS close  gRPC status
    ├── InvalidRequestError             invalid_request_error / *            400   -         INVALID_ARGUMENT
    │   ├── PreviousResponseNotFoundError  previous_response_not_found       400   -         (in-stream)
    │   ├── InvalidStreamIdError        invalid_stream_id                    400   -
    │   ├── StreamLimitError            websocket_stream_limit_reached       400   -
    │   ├── StateLimitError             connection_state_limit_exceeded      400   -
    │   └── ContentFlaggedError         content_flagged                      400   -
    ├── AuthenticationError             invalid_api_key                      401   (reject)  UNAUTHENTICATED
    ├── NotFoundError                   not_found                            404   -         NOT_FOUND
    ├── PayloadTooLargeError            payload_too_large                    413   1009      RESOURCE_EXHAUSTED
    ├── ConnectionLimitError            websocket_connection_limit_reached   400   1000      (in-stream), then end
    ├── RequestTimeoutError             request_timeout                      408   -         (in-stream)
    ├── QueueFullError                  too_many_queued_requests             429   -         (in-stream)
    ├── ServiceUnavailableError         server_shutting_down                 503   1001      UNAVAILABLE
    └── ServerError                     server_error                         500   -         INTERNAL
        └── EngineError                 engine_error                         500   -         INTERNAL

A request-scoped error (``request_scoped``: everything under ``InvalidRequestError`` and ``ServerError``, and
``RequestTimeoutError``) leaves a WebSocket or a gRPC ``Connect`` stream usable: it is sent as an ``error``
event on the request's lane and the connection keeps serving. ``ws_close`` is set only where the connection
itself must end. The gRPC status is a name (string) so the core does not import grpc; the gRPC adapter
resolves it. ``stream_id`` is the lane a refused connection event named, when it could be read: its error is
answered in that lane's order.
"""

from __future__ import annotations

import secrets
from typing import Any, ClassVar


class TurnbenchError(Exception):
    """Base class. ``message`` is what the client reads; ``param`` names the offending field, if any."""

    code: ClassVar[str] = "server_error"
    type: ClassVar[str] = "server_error"
    http_status: ClassVar[int] = 500
    ws_close: ClassVar[int | None] = None
    grpc_status: ClassVar[str] = "INTERNAL"
    request_scoped: ClassVar[bool] = False

    def __init__(self, message: str, param: str | None = None, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.stream_id: str | None = None
        self.error_id: str | None = None
        self.in_lane = True  # False: the refusal of a control event (response.append), answered at once
        # a refused continuation's parent (eviction: docs/protocol/websocket-mode.md, The connection cache)
        self.previous_response_id: str | None = None
        if code is not None:
            self.code = code  # type: ignore[misc]  # per-instance refinement of the class code

    def to_body(self) -> dict[str, Any]:
        """The Responses error object: ``{"error": {"message", "type", "param", "code"}}`` (HTTP body)."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, param={self.param!r}, code={self.code!r})"


class InvalidRequestError(TurnbenchError):
    code = "invalid_request_error"
    type = "invalid_request_error"
    http_status = 400
    grpc_status = "INVALID_ARGUMENT"
    request_scoped = True


class PreviousResponseNotFoundError(InvalidRequestError):
    code = "previous_response_not_found"

    def __init__(self, response_id: str) -> None:
        super().__init__(f"Previous response with id '{response_id}' not found.", "previous_response_id")
        self.response_id = response_id


class InvalidStreamIdError(InvalidRequestError):
    code = "invalid_stream_id"


class StreamLimitError(InvalidRequestError):
    code = "websocket_stream_limit_reached"


class StateLimitError(InvalidRequestError):
    code = "connection_state_limit_exceeded"


class ContentFlaggedError(InvalidRequestError):
    code = "content_flagged"


class AuthenticationError(TurnbenchError):
    code = "invalid_api_key"
    type = "invalid_request_error"
    http_status = 401
    grpc_status = "UNAUTHENTICATED"


class NotFoundError(TurnbenchError):
    code = "not_found"
    type = "invalid_request_error"
    http_status = 404
    grpc_status = "NOT_FOUND"


class PayloadTooLargeError(TurnbenchError):
    code = "payload_too_large"
    type = "invalid_request_error"
    http_status = 413
    ws_close = 1009
    grpc_status = "RESOURCE_EXHAUSTED"


class ConnectionLimitError(TurnbenchError):
    code = "websocket_connection_limit_reached"
    type = "invalid_request_error"
    http_status = 400
    ws_close = 1000
    grpc_status = "UNAVAILABLE"

    def __init__(self, minutes: float) -> None:
        shown = f"{minutes:g} minutes"
        super().__init__(
            f"Responses websocket connection limit reached ({shown}). Create a new websocket connection to continue."
        )


class RequestTimeoutError(TurnbenchError):
    code = "request_timeout"
    type = "invalid_request_error"
    http_status = 408
    grpc_status = "DEADLINE_EXCEEDED"
    request_scoped = True


class QueueFullError(TurnbenchError):
    """A connection has as many requests waiting as it may hold (``max_queued_per_connection``, or their
    bytes): this one is refused, the others go on. Send fewer at once, or open another connection."""

    code = "too_many_queued_requests"
    type = "rate_limit_error"
    http_status = 429
    grpc_status = "RESOURCE_EXHAUSTED"
    request_scoped = True


class ServiceUnavailableError(TurnbenchError):
    code = "server_shutting_down"
    type = "server_error"
    http_status = 503
    ws_close = 1001
    grpc_status = "UNAVAILABLE"


class ServerError(TurnbenchError):
    request_scoped = True


class EngineError(ServerError):
    code = "engine_error"


def unknown_event_type(kind: str | None) -> InvalidRequestError:
    """The error for a connection event that is not ``response.create`` (or names no ``type`` at all)."""
    if kind is None:
        return InvalidRequestError("Missing required parameter: 'type' ('response.create').", "type")
    return InvalidRequestError(
        f"Unsupported event type {kind!r}: this server accepts 'response.create'.", "type", code="unknown_event_type"
    )


def as_turnbench_error(exc: BaseException) -> TurnbenchError:
    """Any exception as a ``TurnbenchError``. An unexpected one becomes a ``ServerError`` whose message names
    nothing internal (no class, no text of the exception): only an id, which the server logs beside the
    traceback (``error_id``) so an operator can find it."""
    if isinstance(exc, TurnbenchError):
        return exc
    error_id = f"err_{secrets.token_hex(6)}"
    err = ServerError(f"The server had an error while processing your request (error id {error_id}).")
    err.error_id = error_id
    err.__cause__ = exc
    return err
