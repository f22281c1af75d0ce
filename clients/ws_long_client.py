"""``ws-long``: option A over WebSocket mode: the whole rollout is one response (the design OpenAI's WebSocket-mode
write-up
says OpenAI considered and did not ship).

The agent loop is every transport's (:func:`clients.agent.run_rollout`, state ``connection``): it calls
``create`` with the whole context first, then with ``previous_response_id`` and only the tool outputs. This
client maps that onto option A's wire:

- the first ``create`` is ``response.create`` with ``long_response: true``;
- the response pauses at its tool call with ``response.done`` (status ``requires_action``, this segment's
  output): the turn ends there, as it ends at ``response.completed`` in option B;
- a ``create`` that continues the paused response is ``response.append`` with the new input only, and the
  same response resumes sampling; the final answer ends it with ``response.completed``, whose output is the
  whole rollout's: the loop is handed the part after what the pauses already showed it.

A ``create`` that continues anything else (the loop recovering after the connection dropped, which lost the
paused response with it) starts a new long response. Turn metrics are recorded exactly as for ``ws``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

from clients.base import ClientConfig
from clients.record import TurnRecorder
from clients.ws_client import WsClient

__all__ = ["WsLongClient"]


class WsLongClient(WsClient):
    """Option A: one long response per rollout over one WebSocket connection."""

    transport: ClassVar[str] = "ws-long"

    def __init__(self, config: ClientConfig) -> None:
        super().__init__(config)
        self.paused: str | None = None  # the long response waiting for this client's response.append
        self.seen = 0  # output items of the long response already handed to the loop (at its pauses)

    async def create(self, body: dict[str, Any], *, recorder: TurnRecorder) -> dict[str, Any]:
        """``response.append`` to the paused response ``body`` continues, else a new long ``response.create``."""
        resumes = self.paused is not None and body.get("previous_response_id") == self.paused
        if resumes:
            event = {"type": "response.append", "response_id": self.paused, "input": body.get("input", [])}
        else:
            event = {"type": "response.create", **body, "long_response": True}
        if not resumes:
            self.seen = 0
        self.paused = None
        result = await self._roundtrip(orjson.dumps(event), recorder, binary=False)
        output = result.get("output")
        if result.get("status") == "requires_action":
            self.paused = result.get("id")
            self.seen += len(output) if isinstance(output, list) else 0
        elif isinstance(output, list) and self.seen:
            # the end of a long response holds the whole rollout's output: the loop reads this turn's part
            result = {**result, "output": output[self.seen :]}
        return result

    async def close(self) -> None:
        self.paused = None  # the connection's long response ends with it
        await super().close()
