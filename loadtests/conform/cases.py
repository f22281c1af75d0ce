"""The conformance cases, one function each, in the order they run.

Two sources: ``spec``, the public specification's own cases (a basic response, streaming, a system prompt, tool
calling plain and streamed, image input, a multi-turn history, compaction, and WebSocket mode's continuation,
``previous_response_not_found`` and eviction), written here in the project's words; and ``contract``, the
cases of turnbench's contract suite that concern the public API rather than turnbench's extensions (typed
errors for bad input, ``previous_response_not_found`` over HTTPS, store and retrieve, lane order and the
in-flight limit of WebSocket mode).

A case raises :class:`Fail` when the endpoint does not do what the case asks, or :class:`NotOffered` when the
endpoint says it does not have the feature (only a case whose ``feature`` is optional may end so). Every response
and every streamed event a case sees is validated against the specification's schema for it; a violation is
recorded and the case goes on, so one run tells both what the endpoint sends wrong and what it does wrong.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from loadtests.conform.spec import Spec, Violation
from loadtests.conform.wire import TERMINAL, HttpReply, Target, WsSession, http_call

__all__ = ["CASES", "Case", "Context", "Fail", "NotOffered", "case_ids"]

MISSING_ID = "resp_conform_no_such_response_0000"
MAX_VIOLATIONS = 50  # kept per case
IMAGE = (  # an 8×8 PNG, one colour: the endpoint only has to accept it
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAEklEQVR4nGP4z8CAFWEXHbQSACj/P8Fu7N9hAAAAAElFTkSuQmCC"
)
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather for a location",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string", "description": "A city, e.g. Lisbon"}},
        "required": ["location"],
    },
}


class Fail(Exception):
    """The case failed: ``message`` says what was expected, ``violations`` the schema errors behind it."""

    def __init__(self, message: str, violations: list[Violation] | None = None) -> None:
        super().__init__(message)
        self.violations = list(violations or [])


class NotOffered(Exception):
    """The endpoint answered that it does not have this (optional) feature."""


@dataclass
class Context:
    """What a case works with: the specification, its target, an HTTP client (HTTPS cases), notes it leaves."""

    spec: Spec
    target: Target
    http: httpx.AsyncClient | None = None
    notes: list[str] = field(default_factory=list)
    checked: int = 0  # objects validated against a schema
    violations: list[Violation] = field(default_factory=list)

    # ------------------------------------------------------------------------------------------ checks
    # A schema violation does not stop a case: it goes on to check what the endpoint does, and the runner
    # fails it at the end with every violation it met (the first one shown).
    def conforms(self, schema: str, instance: Any, where: str) -> bool:
        self.checked += 1
        found = self.spec.check(schema, instance, where)
        self.violations.extend(found[: max(0, MAX_VIOLATIONS - len(self.violations))])
        return not found

    def event_conforms(self, event: Any, where: str) -> bool:
        self.checked += 1
        found, notes = self.spec.check_event(event, transport=self.target.transport, prefix=where)
        for note in notes:
            if note not in self.notes:
                self.notes.append(note)
        self.violations.extend(found[: max(0, MAX_VIOLATIONS - len(self.violations))])
        return not found

    def body(self, **fields: Any) -> dict[str, Any]:
        return {"model": self.target.model, **fields}

    # ------------------------------------------------------------------------------------------ HTTPS
    async def post(self, path: str, body: dict[str, Any], *, feature: bool = False) -> HttpReply:
        assert self.http is not None
        reply = await http_call(self.http, "POST", path, body)
        if feature:
            offered(reply)
        return reply

    async def create(self, body: dict[str, Any], *, feature: bool = False) -> dict[str, Any]:
        """A non-streamed response, which must be a 200 conforming ``ResponseResource``."""
        reply = await self.post("responses", body, feature=feature)
        if reply.status != 200 or not isinstance(reply.body, dict):
            raise Fail(f"expected 200 with a JSON response object, got {reply.describe()}")
        self.conforms("ResponseResource", reply.body, "response")
        return reply.body

    async def stream(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """A streamed response's events, each conforming to its type's schema, numbered in order, the first
        ``response.created`` and the last ending the response."""
        reply = await self.post("responses", {**body, "stream": True})
        if reply.status != 200 or reply.content_type != "text/event-stream":
            raise Fail(f"expected 200 text/event-stream, got {reply.describe()}")
        return self.stream_events(reply.events, "events")

    def stream_events(self, events: list[Any], where: str) -> list[dict[str, Any]]:
        if not events:
            raise Fail("no events were streamed")
        for k, event in enumerate(events):
            self.event_conforms(event, f"{where}[{k}]")
        numbers = [e["sequence_number"] for e in events if "sequence_number" in e]
        if numbers != sorted(set(numbers)):
            raise Fail(f"sequence_number does not increase: {numbers[:12]}")
        if events[0].get("type") != "response.created":
            raise Fail(f"the first event is {events[0].get('type')!r}, not response.created")
        if events[-1].get("type") not in TERMINAL:
            raise Fail(f"the stream ended on {events[-1].get('type')!r}, not on an event that ends a response")
        return events


def offered(reply: HttpReply) -> None:
    """Raise :class:`NotOffered` when ``reply`` says the endpoint lacks the feature: 404, 405 or 501, or a 400
    whose error calls it unsupported."""
    if reply.status in (404, 405, 501):
        raise NotOffered(f"HTTP {reply.status}")
    if reply.status == 400:
        err = reply.error
        said = f"{err.get('code') or ''} {err.get('message') or ''}".lower()
        if "not supported" in said or "unsupported" in said:
            raise NotOffered(f"HTTP 400: {err.get('message')}")


def completed(response: dict[str, Any]) -> None:
    if response.get("status") != "completed":
        raise Fail(f"expected status 'completed', got {response.get('status')!r}")


def has_output(response: dict[str, Any], kind: str | None = None) -> None:
    output = response.get("output") or []
    if not output:
        raise Fail("the response has no output items")
    if kind is not None and not any(isinstance(i, dict) and i.get("type") == kind for i in output):
        raise Fail(f"expected an output item of type {kind!r}, got {[i.get('type') for i in output]}")


def final_response(events: list[dict[str, Any]]) -> dict[str, Any]:
    last = events[-1]
    if last.get("type") != "response.completed":
        raise Fail(f"expected the stream to end with response.completed, got {last}")
    response: dict[str, Any] = last["response"]
    return response


def error_of(reply: HttpReply, status: int, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The reply must be ``status`` with the API's error object: ``{"error": {message, type, param, code}}``."""
    err = reply.error
    if reply.status != status or not err:
        raise Fail(f"expected HTTP {status} with an error object, got {reply.describe()}")
    for key in ("message", "type", "param", "code"):
        if key not in err:
            raise Fail(f"the error object lacks {key!r}: {err}")
    if not isinstance(err["message"], str) or not isinstance(err["type"], str):
        raise Fail(f"error.message and error.type must be strings: {err}")
    if param is not None and err["param"] != param:
        raise Fail(f"expected error.param {param!r}, got {err['param']!r}")
    if code is not None and err["code"] != code:
        raise Fail(f"expected error.code {code!r}, got {err['code']!r}")
    return err


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": text}


# ---------------------------------------------------------------------------------------------- HTTPS, spec
async def basic_response(ctx: Context) -> None:
    response = await ctx.create(ctx.body(input=[user("Say hello in exactly 3 words.")]))
    has_output(response)
    completed(response)


async def streaming_response(ctx: Context) -> None:
    events = await ctx.stream(ctx.body(input=[user("Count from 1 to 5.")]))
    completed(final_response(events))


async def system_prompt(ctx: Context) -> None:
    system = {"type": "message", "role": "system", "content": "You are a pirate. Answer in pirate speak."}
    response = await ctx.create(ctx.body(input=[system, user("Say hello.")]))
    has_output(response)
    completed(response)


async def tool_calling(ctx: Context) -> None:
    response = await ctx.create(ctx.body(input=[user("What is the weather in Lisbon?")], tools=[WEATHER_TOOL]))
    has_output(response, "function_call")


async def tool_calling_streaming(ctx: Context) -> None:
    events = await ctx.stream(ctx.body(input=[user("What is the weather in Lisbon?")], tools=[WEATHER_TOOL]))
    kinds = [e.get("type") for e in events]
    item_kinds = {(e.get("type"), (e.get("item") or {}).get("type")) for e in events}
    for need in (("response.output_item.added", "function_call"), ("response.output_item.done", "function_call")):
        if need not in item_kinds:
            raise Fail(f"no {need[0]} event with a function_call item")
    for need_type in ("response.function_call_arguments.delta", "response.function_call_arguments.done"):
        if need_type not in kinds:
            raise Fail(f"no {need_type} event")
    has_output(final_response(events), "function_call")


async def image_input(ctx: Context) -> None:
    content = [
        {"type": "input_text", "text": "What do you see in this image? One sentence."},
        {"type": "input_image", "image_url": IMAGE, "detail": "auto"},
    ]
    response = await ctx.create(ctx.body(input=[{"type": "message", "role": "user", "content": content}]), feature=True)
    has_output(response)
    completed(response)


async def multi_turn(ctx: Context) -> None:
    history = [
        user("My name is Alice."),
        {"type": "message", "role": "assistant", "content": "Hello Alice! How can I help you today?"},
        user("What is my name?"),
    ]
    response = await ctx.create(ctx.body(input=history))
    has_output(response)
    completed(response)


async def compaction(ctx: Context) -> None:
    history = [
        user("Plan a small refactor of a parser."),
        {"type": "message", "role": "assistant", "content": "First split the tokenizer from the parser."},
        user("Good. Then what?"),
    ]
    reply = await ctx.post("responses/compact", ctx.body(input=history), feature=True)
    if reply.status != 200 or not isinstance(reply.body, dict):
        raise Fail(f"expected 200 with a compacted response, got {reply.describe()}")
    ctx.conforms("CompactResource", reply.body, "compacted")
    output = reply.body["output"]
    if not any(isinstance(i, dict) and i.get("type") == "compaction" for i in output):
        raise Fail("the compacted output has no compaction item")
    response = await ctx.create(ctx.body(input=[*output, user("Continue from there.")]))
    completed(response)


# ---------------------------------------------------------------------------------------------- HTTPS, contract
async def bad_input_error(ctx: Context) -> None:
    reply = await ctx.post("responses", ctx.body(input="hi", temperature="hot"))
    error_of(reply, 400, param="temperature")
    reply = await ctx.post("responses", ctx.body(input=5))  # a string or a list of items
    error_of(reply, 400, param="input")
    await ctx.create(ctx.body(input="still there?"))  # and the endpoint goes on serving


async def previous_response_not_found(ctx: Context) -> None:
    reply = await ctx.post("responses", ctx.body(input="go on", previous_response_id=MISSING_ID))
    error_of(reply, 400, param="previous_response_id", code="previous_response_not_found")


async def store_and_retrieve(ctx: Context) -> None:
    created = await ctx.create(ctx.body(input="Remember this.", store=True))
    assert ctx.http is not None
    reply = await http_call(ctx.http, "GET", f"responses/{created['id']}")
    offered(reply)
    if reply.status != 200 or not isinstance(reply.body, dict):
        raise Fail(f"GET responses/{{id}}: expected 200 with the response, got {reply.describe()}")
    ctx.conforms("ResponseResource", reply.body, "retrieved")
    if reply.body["id"] != created["id"] or reply.body.get("output") != created.get("output"):
        raise Fail("the retrieved response differs from the one created (id or output)")
    missing = await http_call(ctx.http, "GET", f"responses/{MISSING_ID}")
    error_of(missing, 404)


# ---------------------------------------------------------------------------------------------- WebSocket mode
def create_event(ctx: Context, **fields: Any) -> dict[str, Any]:
    return {"type": "response.create", "model": ctx.target.model, **fields}


async def ws_turn(ctx: Context, ws: WsSession, where: str, **fields: Any) -> list[dict[str, Any]]:
    """One request on the default lane: its events, every one conforming."""
    await ws.send(create_event(ctx, **fields))
    events = await ws.until_done()
    for k, event in enumerate(events):
        ctx.event_conforms(event, f"{where}[{k}]")
    return events


def ws_refusal(events: list[dict[str, Any]], status: int, code: str | None = None, param: str | None = None) -> None:
    last = events[-1]
    if last.get("type") != "error":
        raise Fail(f"expected an error event, got {last.get('type')!r}")
    err = last.get("error") or {}
    if last.get("status") != status or (code is not None and err.get("code") != code):
        raise Fail(
            f"expected status {status} code {code!r}, got status {last.get('status')!r} code {err.get('code')!r}"
        )
    if param is not None and err.get("param") != param:
        raise Fail(f"expected error.param {param!r}, got {err.get('param')!r}")


def ws_completed(events: list[dict[str, Any]]) -> dict[str, Any]:
    if events[0].get("type") != "response.created":
        raise Fail(f"the first event is {events[0].get('type')!r}, not response.created: {events[0]}")
    response = final_response(events)
    completed(response)
    return response


async def ws_basic(ctx: Context) -> None:
    async with WsSession(ctx.target) as ws:
        ws_completed(await ws_turn(ctx, ws, "events", input=[user("Say hello in exactly 3 words.")]))


async def ws_continuation(ctx: Context) -> None:
    async with WsSession(ctx.target) as ws:
        first = ws_completed(await ws_turn(ctx, ws, "turn1", input=[user("My name is Alice.")], store=False))
        second = ws_completed(
            await ws_turn(
                ctx, ws, "turn2", input=[user("What is my name?")], store=False, previous_response_id=first["id"]
            )
        )
    if second.get("previous_response_id") != first["id"]:
        raise Fail(f"the continuation's previous_response_id is {second.get('previous_response_id')!r}")


async def ws_previous_response_not_found(ctx: Context) -> None:
    async with WsSession(ctx.target) as ws:
        events = await ws_turn(ctx, ws, "events", input=[user("go on")], store=False, previous_response_id=MISSING_ID)
        ws_refusal(events, 400, "previous_response_not_found", "previous_response_id")
        ws_completed(await ws_turn(ctx, ws, "after", input=[user("Start over: hello.")], store=False))


async def ws_eviction(ctx: Context) -> None:
    async with WsSession(ctx.target) as ws:
        parent = ws_completed(await ws_turn(ctx, ws, "parent", input=[user("Hello.")], store=False))
        failed = await ws_turn(
            ctx, ws, "failed", input=[user("go on")], store=False, previous_response_id=parent["id"], temperature="hot"
        )
        ws_refusal(failed, 400, param="temperature")
        again = await ws_turn(ctx, ws, "again", input=[user("go on")], store=False, previous_response_id=parent["id"])
        ws_refusal(again, 400, "previous_response_not_found")


async def ws_bad_input_error(ctx: Context) -> None:
    async with WsSession(ctx.target) as ws:
        ws_refusal(await ws_turn(ctx, ws, "refused", input="hi", temperature="hot"), 400, param="temperature")
        ws_refusal(await ws_turn(ctx, ws, "refused2", input=5), 400, param="input")
        ws_completed(await ws_turn(ctx, ws, "after", input=[user("still there?")]))


async def _lanes(ctx: Context, ws: WsSession, lanes: list[str]) -> list[dict[str, Any]]:
    """Send one request per entry of ``lanes`` (its ``stream_id``), then read until every one has ended; each
    event conforms and carries its lane's ``stream_id``. NotOffered when the answers carry no ``stream_id``
    (the endpoint ignores lanes) or the first answer refuses ``stream_id``."""
    for k, lane in enumerate(lanes):
        await ws.send(create_event(ctx, input=[user(f"Request {k}: say hello.")], store=False, stream_id=lane))
    events = await ws.until_done(len(lanes))
    for k, event in enumerate(events):
        ctx.event_conforms(event, f"events[{k}]")
        if event.get("stream_id") not in lanes:
            err = event.get("error") or {}
            if k == 0 and (
                (event.get("type") == "error" and err.get("param") == "stream_id") or "stream_id" not in event
            ):
                raise NotOffered(f"no stream_id lanes: first answer {event.get('type')!r} {err.get('message', '')}")
            raise Fail(f"events[{k}] ({event.get('type')}) carries stream_id {event.get('stream_id')!r}")
        if event.get("type") == "error":
            raise Fail(f"events[{k}]: a lane request was refused: {event.get('error')}")
    return events


async def ws_lane_order(ctx: Context) -> None:
    async with WsSession(ctx.target) as ws:
        events = await _lanes(ctx, ws, ["a", "a", "a", "b"])
    lane_a = [e for e in events if e["stream_id"] == "a"]
    open_id: str | None = None
    created: list[str] = []
    for e in lane_a:
        rid = (e.get("response") or {}).get("id")
        if e["type"] == "response.created":
            if open_id is not None:
                raise Fail(f"lane 'a' started {rid} before {open_id} ended: responses of a lane overlap")
            open_id = rid
            created.append(str(rid))
        elif e["type"] in TERMINAL:
            if rid != open_id:
                raise Fail(f"lane 'a' ended {rid} while {open_id} was the one running")
            open_id = None
    if len(created) != 3:
        raise Fail(f"lane 'a' answered {len(created)} of its 3 requests")


async def ws_in_flight_limit(ctx: Context) -> None:
    lanes = [f"lane{k}" for k in range(17)]  # one more than the 16 a connection may have in flight
    async with WsSession(ctx.target) as ws:
        events = await _lanes(ctx, ws, lanes)
    running: set[str] = set()
    peak = 0
    for e in events:
        if e["type"] == "response.created":
            running.add(e["stream_id"])
            peak = max(peak, len(running))
        elif e["type"] in TERMINAL:
            running.discard(e["stream_id"])
    ends = [e for e in events if e["type"] in TERMINAL]
    if len(ends) != 17 or any(e["type"] != "response.completed" for e in ends):
        raise Fail(f"expected all 17 requests to complete, got {[e['type'] for e in ends]}")
    if peak > 16:
        raise Fail(f"{peak} responses were in flight at once on one connection (the limit is 16)")
    ctx.notes.append(f"at most {peak} of 17 in flight at once")


# ---------------------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Case:
    """One case: its id, the transport it runs over, where it comes from, the optional feature it tests
    (None: required of every endpoint of that transport) and what it checks."""

    id: str
    transport: str
    source: str
    feature: str | None
    title: str
    run: Callable[[Context], Awaitable[None]]

    @property
    def required(self) -> bool:
        return self.feature is None


_WS = "WebSocket mode"
_LANES = "WebSocket lanes (stream_id)"
CASES: tuple[Case, ...] = (
    Case("basic-response", "https", "spec", None, "a user message; the response object", basic_response),
    Case("streaming-response", "https", "spec", None, "every SSE event and the final response", streaming_response),
    Case("system-prompt", "https", "spec", None, "a system message before the user's", system_prompt),
    Case("tool-calling", "https", "spec", None, "a function tool; a function_call item", tool_calling),
    Case("tool-calling-streaming", "https", "spec", None, "function-call events, streamed", tool_calling_streaming),
    Case("image-input", "https", "spec", "image input", "an input_image part", image_input),
    Case("multi-turn", "https", "spec", None, "an assistant + user history", multi_turn),
    Case("compaction", "https", "spec", "compaction", "POST /responses/compact, then its output as input", compaction),
    Case("bad-input-error", "https", "contract", None, "typed 400s naming the bad param", bad_input_error),
    Case(
        "previous-response-not-found",
        "https",
        "contract",
        None,
        "an unknown previous_response_id: 400 previous_response_not_found",
        previous_response_not_found,
    ),
    Case("store-retrieve", "https", "contract", "retrieve", "store=true, then GET /responses/{id}", store_and_retrieve),
    Case("ws-basic", "ws", "spec", _WS, "response.create; every event", ws_basic),
    Case("ws-continuation", "ws", "spec", _WS, "previous_response_id from the connection", ws_continuation),
    Case(
        "ws-previous-response-not-found",
        "ws",
        "spec",
        _WS,
        "an unknown id: a WebSocketErrorEvent, then the connection goes on",
        ws_previous_response_not_found,
    ),
    Case("ws-eviction", "ws", "spec", _WS, "a failed continuation evicts its parent", ws_eviction),
    Case(
        "ws-bad-input-error", "ws", "contract", _WS, "a typed error event; the connection goes on", ws_bad_input_error
    ),
    Case("ws-lane-order", "ws", "contract", _LANES, "a lane answers in order, never overlapping", ws_lane_order),
    Case(
        "ws-in-flight-limit",
        "ws",
        "contract",
        _LANES,
        "17 requests: queued, none refused, ≤ 16 in flight",
        ws_in_flight_limit,
    ),
)


def case_ids() -> list[str]:
    return [c.id for c in CASES]


assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
