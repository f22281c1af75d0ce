"""``inproc``: the service called directly, no socket — the harness's zero-transport reference.

It JSON-encodes the request and every event exactly as a JSON transport would (so ``parse`` and the
byte counts are real), but nothing crosses a socket. Comparing a transport with ``inproc`` in one run
separates what the transport costs from what the pipeline and the harness cost.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import orjson

from clients.base import ClientConfig, ResponsesClient, TurnRecorder
from clients.http_reply import record_json_reply
from turnbench.errors import TurnbenchError
from turnbench.schema import Event, encode
from turnbench.service import ResponsesService
from turnbench.state import Session


class InProcClient(ResponsesClient):
    """``config.options["service"]`` is the :class:`ResponsesService` to call (required)."""

    transport: ClassVar[str] = "inproc"
    serves_compact: ClassVar[bool] = True

    def __init__(self, config: ClientConfig) -> None:
        super().__init__(config)
        service = config.options.get("service")
        if not isinstance(service, ResponsesService):
            raise ValueError("inproc client needs options={'service': ResponsesService}")
        self.service = service
        self.session: Session | None = None

    async def connect(self) -> float | None:
        t0 = time.perf_counter_ns()
        self.session = self.service.new_session("inproc", connection=True)
        return (time.perf_counter_ns() - t0) / 1e6

    async def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    async def create(self, body: dict[str, Any], *, recorder: TurnRecorder) -> dict[str, Any]:
        return await self.create_raw(orjson.dumps(body), recorder=recorder)

    async def create_raw(self, payload: bytes, *, recorder: TurnRecorder) -> dict[str, Any]:
        if self.session is None:
            await self.connect()
        assert self.session is not None
        recorder.sent(len(payload))
        outcome: list[dict[str, Any]] = []

        async def emit(event: Event) -> None:
            data = encode(event)
            result = recorder.interpret_json(data, len(data))
            if result is not None:
                outcome.append(result)

        try:
            await self.service.respond(self.service.parse(payload), self.session, emit)
        except TurnbenchError as err:  # refused before response.created: the error event a transport sends
            recorder.interpret({"type": "error", "error": {"code": err.code, "message": err.message}})
            return {}
        if not outcome:
            recorder.fail("stream ended without a terminal event", "no_terminal_event")
            return {}
        return outcome[0]

    async def compact(self, body: dict[str, Any], *, recorder: TurnRecorder) -> dict[str, Any]:
        """The service's ``compact``, its answer JSON-encoded as the HTTPS route sends it."""
        payload = orjson.dumps(body)
        recorder.sent(len(payload))
        try:
            compacted = await self.service.compact(payload)
        except TurnbenchError as err:
            recorder.fail(err.message, err.code)
            return {}
        return record_json_reply(encode(compacted), recorder)
