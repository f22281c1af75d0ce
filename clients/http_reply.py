"""The reply to ``POST /v1/responses``, read the same way by both HTTP clients (httpx and raw HTTP/1.1).

Three kinds of reply: an SSE stream (``stream: true``), decoded incrementally by :class:`SSEDecoder` and
handed event by event to the recorder (:func:`record_sse`); a JSON Response (``stream: false``), recorded
as one terminal event (:func:`record_json_reply`); an error status with the OpenAI error body
(:func:`record_error_reply`). What an event means is the recorder's business
(:meth:`clients.record.TurnRecorder.interpret`); this module only undoes HTTP's framing.

Bytes: an SSE event counts its whole text (``event:`` and ``data:`` lines and the blank line); a JSON reply
counts its body. Head and chunk framing are counted by each client, which knows them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from clients.record import MALFORMED_RESPONSE, TurnRecorder

__all__ = ["SSEDecoder", "SSEEvent", "head_bytes", "record_error_reply", "record_json_reply", "record_sse"]

SSEEvent = tuple[str, bytes | None, int]
"""One decoded SSE event: (its ``event:`` name or "", its data or None, bytes of the whole event)."""


class SSEDecoder:
    """Incremental Server-Sent Events parser: feed bytes, get complete events.

    Fast path for the frames our servers and OpenAI send (``event: T\\ndata: JSON\\n\\n``); anything else
    (several ``data:`` lines, comments, ``id:``/``retry:``, CRLF line ends) takes the general path of the
    SSE specification.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Parse ``data`` (any slice of the stream). Returns: the events it completed, in order."""
        if self._buf:
            data = self._buf + data
        tail = b""
        if b"\r" in data:  # CRLF, CR and LF all end a line (the SSE specification)
            if data.endswith(b"\r"):  # maybe the first half of a CRLF: decided by the next chunk
                data, tail = data[:-1], b"\r"
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        out: list[SSEEvent] = []
        start = 0
        find = data.find
        while True:
            end = find(b"\n\n", start)
            if end < 0:
                break
            if end > start:  # a blank line with nothing before it dispatches nothing
                out.append(_block(data[start:end], end + 2 - start))
            start = end + 2
        self._buf = data[start:] + tail
        return out


def _block(block: bytes, nbytes: int) -> SSEEvent:
    if block.startswith(b"event: "):
        i = block.find(b"\ndata: ")
        if i > 0 and block.find(b"\n", i + 7) < 0:
            return block[7:i].decode("utf-8", "replace"), block[i + 7 :], nbytes
    etype, data = "", []
    for line in block.split(b"\n"):
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"event":
            etype = value.decode("utf-8", "replace")
        elif name == b"data":
            data.append(value)
    return etype, (b"\n".join(data) if data else None), nbytes


def record_sse(events: list[SSEEvent], recorder: TurnRecorder, t_ns: int) -> dict[str, Any] | None:
    """Hand ``events`` (received at ``t_ns``) to ``recorder`` until one ends the turn.

    The event's JSON ``type`` names it (the SSE ``event:`` line repeats it). A block without data, and
    OpenAI's ``data: [DONE]``, are framing: their bytes count, no event does.

    Returns: what :meth:`~clients.record.TurnRecorder.interpret` returned for the event that ended the turn
    (the Response, or ``{}``), None if none of ``events`` did (later events are not looked at).
    """
    for _, data, nbytes in events:
        if data is None or data == b"[DONE]":
            recorder.add_bytes(down=nbytes)
            continue
        result = recorder.interpret_json(data, nbytes, t_ns=t_ns)
        if result is not None:
            return result
    return None


_TERMINAL_BY_STATUS = {
    "completed": "response.completed",
    "incomplete": "response.incomplete",
    "failed": "response.failed",
}


def record_json_reply(body: bytes, recorder: TurnRecorder) -> dict[str, Any]:
    """A ``stream: false`` reply (the Response JSON), recorded as one terminal event of ``len(body)`` bytes.

    Returns: the Response, or ``{}`` after ``client_malformed_response`` (not JSON, not an object).
    """
    try:
        response = orjson.loads(body)
    except orjson.JSONDecodeError:
        recorder.fail(f"undecodable response body: {body[:80]!r}", MALFORMED_RESPONSE)
        return {}
    if not isinstance(response, dict):
        recorder.fail("response body is not an object", MALFORMED_RESPONSE)
        return {}
    kind = _TERMINAL_BY_STATUS.get(str(response.get("status")), "response.completed")
    return recorder.interpret({"type": kind, "response": response}, len(body)) or {}


def record_error_reply(status: int, body: bytes, recorder: TurnRecorder) -> dict[str, Any]:
    """A non-200 reply: fail with ``error.message``/``error.code`` of the OpenAI error body, else the status
    (``http_<status>``). Returns: ``{}``."""
    message, code = f"HTTP {status}: {body[:200]!r}", f"http_{status}"
    try:
        err = orjson.loads(body).get("error")
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            code = str(err.get("code") or err.get("type") or code)
    except (orjson.JSONDecodeError, AttributeError):
        pass
    recorder.fail(message, code)
    return {}


def head_bytes(headers: Mapping[str, str]) -> int:
    """Bytes of an HTTP/1.1 header block: ``name: value\\r\\n`` per header plus the blank line."""
    return sum(len(k) + len(v) + 4 for k, v in headers.items()) + 2
