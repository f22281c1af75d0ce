"""What a Responses endpoint offers, found by trying it: ``turnbench probe``, and what ``bench --target`` and
``gate --target`` run against.

Each capability is tried with a few small requests, each attempt bounded in time (``timeout_s``), and judged
from what came back alone: the answers are first recorded as plain data (an :data:`Observation`: HTTP
statuses, abridged events in arrival order), then a pure function per capability turns them into a
:class:`Finding` (offered ``yes``, ``no`` or ``partial``, and the evidence in words). The unit tests feed the
classifiers recorded answers; :func:`probe` does the trying.

Claims are checked, not assumed: a continuation counts only if a made-up ``previous_response_id`` is refused
(a server that ignores the field answers both), lanes only if the events come back tagged with their
``stream_id``, concurrent lanes only if the two lanes' events interleave (not by the clock), ``generate:
false`` only if the response has no output, ``response.steer`` only if the server answers with a
``response.steer.*`` event.

The requests carry turnbench's scripted-model knobs in ``metadata`` (``answer_tokens``, ``tool_calls: 0``) and a
small ``max_output_tokens``, so against a real model they stay short; ``--inflight-bound`` caps the one burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from loadtests.execution import procs
from loadtests.execution.procs import Endpoint
from turnbench.tls import load_ca

__all__ = [
    "CAPABILITIES",
    "INFLIGHT_BOUND",
    "SHORT",
    "Finding",
    "Observation",
    "ProbeResult",
    "classify",
    "format_table",
    "own_servers",
    "parse_targets",
    "probe",
    "supported_states",
    "target_endpoints",
]

Offered = Literal["yes", "no", "partial", "untested"]
Observation = dict[str, Any]
"""What one capability's attempt saw, as JSON-able data (statuses, abridged events in arrival order)."""

CAPABILITIES: dict[str, str] = {
    "https_stream": "streamed responses (HTTPS + SSE)",
    "https_json": "non-streamed responses (HTTPS, JSON)",
    "store": "store + GET /v1/responses/{id}",
    "https_continuation": "previous_response_id over HTTPS (store)",
    "forks": "forks: two continuations of one parent",
    "compaction": "POST /v1/responses/compact",
    "ws": "WebSocket mode (response.create)",
    "ws_continuation": "previous_response_id on a WebSocket connection",
    "lanes": "lanes (stream_id)",
    "lanes_concurrent": "lanes run concurrently",
    "inflight": "requests outstanding on one connection",
    "generate_false": "generate: false (warm-up)",
    "steer": "response.steer",
    "stage_timings": "stage timings (turnbench extension)",
    "usage": "usage in the response",
    "health": "health route (/health, /healthz)",
}
"""Every capability the probe tries, in the table's order: name → what it is."""

SHORT: dict[str, str] = {
    "https_stream": "streamed responses",
    "https_json": "non-streamed responses",
    "store": "store",
    "https_continuation": "stored continuation",
    "forks": "forks",
    "compaction": "compaction",
    "ws": "WebSocket mode",
    "ws_continuation": "continuation on a connection",
    "lanes": "lanes",
    "lanes_concurrent": "concurrent lanes",
    "inflight": "requests in flight",
    "generate_false": "generate: false",
    "steer": "steer",
    "stage_timings": "stage timings",
    "usage": "usage",
    "health": "health route",
}
"""Each capability in two or three words, for ``no …`` reasons (``no lanes``, ``no steer``)."""

INFLIGHT_BOUND = 256
"""The most ``response.create`` the in-flight probe sends at once on one connection."""

MODEL = "m"
SMALL: dict[str, Any] = {"metadata": {"tool_calls": "0", "answer_tokens": "4"}, "max_output_tokens": 16}
LONG: dict[str, Any] = {"metadata": {"tool_calls": "0", "answer_tokens": "200"}, "max_output_tokens": 256}
"""Request knobs: a short answer, and one long enough (~0.2 s on the ``fast`` profile) to overlap another."""


@dataclass(frozen=True)
class Finding:
    """One capability: ``offered`` (``untested``: a capability it depends on is missing, or its attempt was not
    made) and ``evidence``, what was seen, in words; ``detail``: figures for the JSON (counts, codes)."""

    capability: str
    offered: Offered
    evidence: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProbeResult:
    """A probe of one endpoint: its targets (transport → URL), each capability's finding, the observations."""

    targets: dict[str, str]
    findings: dict[str, Finding]
    observations: dict[str, Observation] = field(default_factory=dict)
    wall_s: float = 0.0

    def offers(self, capability: str) -> bool:
        """Whether ``capability`` was found offered (``partial`` counts: some of it works)."""
        f = self.findings.get(capability)
        return f is not None and f.offered in ("yes", "partial")

    def why_not(self, capability: str) -> str:
        """A short reason ``capability`` is not offered (``no lanes``, ``no steer`` …)."""
        f = self.findings.get(capability)
        return f"no {SHORT.get(capability, capability)}" + (f" ({f.evidence})" if f is not None and f.evidence else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "targets": self.targets,
            "wall_s": self.wall_s,
            "findings": {k: asdict(f) for k, f in self.findings.items()},
            "observations": self.observations,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProbeResult:
        return cls(
            targets=dict(data.get("targets") or {}),
            findings={k: Finding(**f) for k, f in (data.get("findings") or {}).items()},
            observations=dict(data.get("observations") or {}),
            wall_s=float(data.get("wall_s") or 0.0),
        )


def supported_states(result: ProbeResult) -> dict[str, tuple[str, ...]]:
    """Transport → the state strategies the endpoint can run (``full`` needs the transport; ``store`` over HTTPS a
    stored continuation; ``connection`` a continuation on the connection; ``ws``/``store`` both)."""
    out: dict[str, tuple[str, ...]] = {}
    if result.offers("https_stream"):
        out["https"] = ("full", "store") if result.offers("https_continuation") else ("full",)
    if result.offers("ws"):
        states = ["full"]
        if result.offers("ws_continuation"):
            states.append("connection")
            if result.offers("https_continuation"):
                states.append("store")
        out["ws"] = tuple(states)
    return out


# ------------------------------------------------------------------------------------------ abridging


def abridge(ev: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a server event the classifiers read: type, lane, error code, and of a response its id,
    status, output count, ``previous_response_id``, usage and whether it carries stage timings."""
    out: dict[str, Any] = {"type": ev.get("type")}
    if ev.get("stream_id") is not None:
        out["stream_id"] = ev["stream_id"]
    err = ev.get("error")
    if isinstance(err, Mapping):
        out["code"] = err.get("code") or err.get("type")
    resp = ev.get("response")
    if isinstance(resp, Mapping):
        out["response"] = abridge_response(resp)
    return out


def abridge_response(resp: Mapping[str, Any]) -> dict[str, Any]:
    usage = resp.get("usage")
    ext = resp.get("turnbench")
    return {
        "id": resp.get("id"),
        "status": resp.get("status"),
        "output": len(resp.get("output") or []),
        "output_types": [str(o.get("type")) for o in resp.get("output") or [] if isinstance(o, Mapping)],
        "previous_response_id": resp.get("previous_response_id"),
        "usage": dict(usage) if isinstance(usage, Mapping) else None,
        "stages": bool(isinstance(ext, Mapping) and ext.get("stages")),
    }


def _final(events: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The response of the last terminal event (``response.completed|failed|incomplete``), abridged."""
    for ev in reversed(events):
        if ev.get("type") in ("response.completed", "response.failed", "response.incomplete") and ev.get("response"):
            r: dict[str, Any] = ev["response"]
            return r
    return None


def _codes(events: Iterable[Mapping[str, Any]]) -> list[str]:
    return [str(e.get("code")) for e in events if e.get("type") == "error"]


# ---------------------------------------------------------------------------------------- classifiers


def _https_stream(o: Observation) -> Finding:
    if o.get("exception"):
        return Finding("https_stream", "no", f"the request failed: {o['exception']}")
    final = _final(o.get("events") or [])
    ct = str(o.get("content_type") or "")
    if o.get("status") == 200 and "text/event-stream" in ct and final and final["status"] == "completed":
        return Finding("https_stream", "yes", f"200 text/event-stream, {len(o['events'])} events, completed")
    return Finding("https_stream", "no", f"HTTP {o.get('status')} {ct or 'no content type'}, no completed response")


def _https_json(o: Observation) -> Finding:
    if o.get("exception"):
        return Finding("https_json", "no", f"the request failed: {o['exception']}")
    ct = str(o.get("content_type") or "")
    body = o.get("body") or {}
    if o.get("status") == 200 and "json" in ct and body.get("status") == "completed":
        return Finding("https_json", "yes", "stream: false answered 200 application/json, one response object")
    if "text/event-stream" in ct:
        return Finding("https_json", "no", "stream: false was answered with an SSE stream")
    return Finding("https_json", "no", f"stream: false answered HTTP {o.get('status')} {ct}".rstrip())


def _store(o: Observation) -> Finding:
    if o.get("exception"):
        return Finding("store", "no", f"the request failed: {o['exception']}")
    created, got = o.get("created_id"), o.get("retrieve_status")
    if not created:
        return Finding("store", "no", "no stored response to retrieve (the create did not complete)")
    if got == 200 and o.get("retrieve_id") == created:
        return Finding("store", "yes", "GET /v1/responses/{id} answered 200 with the stored response")
    hint = " (the route needs a key: pass --api-key)" if got in (401, 403) else ""
    return Finding("store", "no", f"GET /v1/responses/{{id}} of a stored response answered HTTP {got}{hint}")


def _continuation(name: str, o: Observation) -> Finding:
    """A real parent continues and a made-up one is refused: the server keeps state."""
    if o.get("exception"):
        return Finding(name, "no", f"the request failed: {o['exception']}")
    child, bogus = o.get("child") or {}, o.get("bogus") or {}
    child_ok = child.get("status") == "completed"
    bogus_refused = bool(bogus.get("code")) or bogus.get("status") not in (None, "completed")
    parent_in, child_in = o.get("parent_tokens"), o.get("child_input_tokens")
    detail = {"child": child.get("status"), "bogus": bogus.get("code") or bogus.get("status")}
    if child_ok and bogus_refused:
        grows = f"; its input_tokens {child_in} include the parent's {parent_in}" if child_in and parent_in else ""
        return Finding(
            name, "yes", f"a continuation completed and a made-up parent got {detail['bogus']}{grows}", detail
        )
    if child_ok:
        return Finding(name, "no", "previous_response_id is ignored: a made-up parent id was answered too", detail)
    return Finding(name, "no", f"the continuation got {child.get('code') or child.get('status')}", detail)


def _forks(o: Observation) -> Finding:
    if o.get("skipped"):
        return Finding("forks", "untested", str(o["skipped"]))
    if o.get("needs"):
        return Finding("forks", "no", f"needs {o['needs']}")
    if o.get("exception"):
        return Finding("forks", "no", f"the request failed: {o['exception']}")
    forks = o.get("forks") or []
    done = [f for f in forks if f.get("status") == "completed" and f.get("previous_response_id") == o.get("parent")]
    how = o.get("how", "")
    if forks and len(done) == len(forks):
        return Finding("forks", "yes", f"{len(done)} continuations of one parent completed ({how})")
    if done:
        return Finding("forks", "partial", f"{len(done)} of {len(forks)} continuations of one parent completed ({how})")
    codes = [f.get("code") or f.get("status") for f in forks]
    return Finding("forks", "no", f"continuations of one parent got {codes} ({how})")


def _compaction(o: Observation) -> Finding:
    if o.get("exception"):
        return Finding("compaction", "no", f"the request failed: {o['exception']}")
    types = o.get("output_types") or []
    if o.get("status") == 200 and "compaction" in types:
        return Finding("compaction", "yes", f"200 with a compaction item ({len(types)} output items)")
    return Finding("compaction", "no", f"POST /v1/responses/compact answered HTTP {o.get('status')}")


def _ws(o: Observation) -> Finding:
    if o.get("exception"):
        return Finding("ws", "no", f"the connection failed: {o['exception']}")
    final = _final(o.get("events") or [])
    if final and final["status"] == "completed":
        return Finding("ws", "yes", f"response.create over {o.get('url')}: {len(o['events'])} events, completed")
    codes = _codes(o.get("events") or [])
    return Finding("ws", "no", f"response.create got {codes or 'no completed response'}")


def _lanes(o: Observation) -> tuple[Finding, Finding]:
    """Lanes are offered when each lane's events carry its ``stream_id``; they run concurrently when the two
    lanes' events interleave (a, …, b, …, a), whatever the clock says."""
    if o.get("skipped"):
        return Finding("lanes", "untested", str(o["skipped"])), Finding("lanes_concurrent", "untested", "no lanes")
    if o.get("exception"):
        why = f"the attempt failed: {o['exception']}"
        return Finding("lanes", "no", why), Finding("lanes_concurrent", "untested", "no lanes")
    events = o.get("events") or []
    lanes = [str(x) for x in o.get("lanes") or []]
    tagged = {lane: [e for e in events if e.get("stream_id") == lane] for lane in lanes}
    completed = {lane: any(e.get("type") == "response.completed" for e in evs) for lane, evs in tagged.items()}
    codes = _codes(events)
    if not all(completed.values()):
        untagged = sum(1 for e in events if "stream_id" not in e)
        why = (
            f"events came back without stream_id ({untagged} of {len(events)})"
            if untagged
            else f"a lane got {codes or 'no completed response'}"
        )
        return Finding("lanes", "no", why), Finding("lanes_concurrent", "untested", "no lanes")
    lanes_f = Finding("lanes", "yes", f"each of {len(lanes)} lanes' events came back tagged with its stream_id")
    order = [e.get("stream_id") for e in events if e.get("stream_id") in lanes]
    switches = sum(1 for a, b in itertools.pairwise(order) if a != b)
    detail = {"switches": switches, "events": len(order)}
    if switches >= len(lanes):  # one lane after the other switches len(lanes) - 1 times
        conc = Finding("lanes_concurrent", "yes", f"the lanes' events interleaved ({switches} switches)", detail)
    else:
        conc = Finding(
            "lanes_concurrent", "no", "one lane's events all came before the other's: they ran one at a time", detail
        )
    return lanes_f, conc


def _inflight(o: Observation) -> Finding:
    if o.get("exception"):
        return Finding("inflight", "no", f"the burst failed: {o['exception']}")
    sent, events = int(o.get("sent") or 0), o.get("events") or []
    done = sum(1 for e in events if e.get("type") == "response.completed")
    codes = _codes(events)
    first = codes[0] if codes else None
    closed = o.get("closed")
    detail = {"sent": sent, "completed": done, "errors": len(codes), "first_error": first, "closed": closed}
    tail = f" (then the connection closed: {closed})" if closed else ""
    if codes:
        return Finding(
            "inflight",
            "yes",
            f"{done} of {sent} sent at once completed; {len(codes)} got {first}{tail}",
            detail,
        )
    if done == sent:
        return Finding("inflight", "yes", f"all {sent} sent at once completed: no limit up to {sent}", detail)
    return Finding(
        "inflight", "partial", f"{done} of {sent} sent at once completed, no error for the rest{tail}", detail
    )


def _generate_false(o: Observation) -> Finding:
    if o.get("skipped"):
        return Finding("generate_false", "untested", str(o["skipped"]))
    if o.get("exception"):
        return Finding("generate_false", "no", f"the attempt failed: {o['exception']}")
    events = o.get("events") or []
    final = _final(events)
    if final and final["status"] == "completed":
        if final["output"] == 0:
            return Finding("generate_false", "yes", "the response completed with no output")
        n = final["output"]
        return Finding(
            "generate_false", "no", f"the flag was ignored: the response has {n} output item{'s' * (n != 1)}"
        )
    return Finding("generate_false", "no", f"generate: false got {_codes(events) or 'no completed response'}")


def _steer(o: Observation) -> Finding:
    if o.get("skipped"):
        return Finding("steer", "untested", str(o["skipped"]))
    if o.get("exception"):
        return Finding("steer", "no", f"the attempt failed: {o['exception']}")
    after = o.get("after_steer") or []
    for e in after:
        t = str(e.get("type"))
        if t in ("response.steer.accepted", "response.steer.pending"):
            return Finding("steer", "yes", f"the server answered {t}")
        if t == "response.steer.failed":
            return Finding("steer", "partial", f"the server knows response.steer but answered {t}")
        if t == "error":
            return Finding("steer", "no", f"response.steer was refused: {e.get('code')}")
    steered = o.get("steered_id")
    others = {
        (e.get("response") or {}).get("id") for e in after if e.get("type") == "response.created" and e.get("response")
    } - {steered}
    if others:
        return Finding("steer", "no", "response.steer was answered as a new request (a new response, no steer event)")
    return Finding("steer", "no", f"no answer to response.steer within {o.get('waited_s', '?')} s")


def _from_final(o: Observation) -> tuple[Finding, Finding]:
    """Stage timings and usage, from the completed responses the other attempts got."""
    finals = [r for r in o.get("responses") or [] if r]
    if not finals:
        none = "no completed response to look at"
        return Finding("stage_timings", "untested", none), Finding("usage", "untested", none)
    n = len(finals)
    stages = sum(1 for r in finals if r.get("stages"))
    usage = sum(1 for r in finals if isinstance(r.get("usage"), Mapping) and r["usage"].get("input_tokens") is not None)

    def judge(name: str, k: int, what: str) -> Finding:
        offered: Offered = "yes" if k == n else "partial" if k else "no"
        return Finding(name, offered, f"{k} of {n} completed responses carry {what}")

    return judge("stage_timings", stages, "`turnbench.stages`"), judge("usage", usage, "`usage.input_tokens`")


def _health(o: Observation) -> Finding:
    routes = o.get("routes") or {}
    ok = [r for r, s in routes.items() if s == 200]
    if not routes:
        return Finding("health", "untested", "no HTTPS target")
    if len(ok) == len(routes):
        return Finding("health", "yes", ", ".join(f"GET {r}: 200" for r in ok))
    if ok:
        return Finding("health", "partial", ", ".join(f"GET {r}: {s}" for r, s in routes.items()))
    return Finding("health", "no", ", ".join(f"GET {r}: {s}" for r, s in routes.items()))


def classify(observations: Mapping[str, Observation]) -> dict[str, Finding]:
    """Every capability's finding from the recorded observations (an attempt not made: ``untested``)."""
    out: dict[str, Finding] = {}
    simple: dict[str, Callable[[Observation], Finding]] = {
        "https_stream": _https_stream,
        "https_json": _https_json,
        "store": _store,
        "forks": _forks,
        "compaction": _compaction,
        "ws": _ws,
        "inflight": _inflight,
        "generate_false": _generate_false,
        "steer": _steer,
        "health": _health,
    }
    for name, fn in simple.items():
        if name in observations:
            out[name] = fn(observations[name])
    for name in ("https_continuation", "ws_continuation"):
        if name in observations:
            out[name] = _continuation(name, observations[name])
    if "lanes" in observations:
        out["lanes"], out["lanes_concurrent"] = _lanes(observations["lanes"])
    out["stage_timings"], out["usage"] = _from_final({"responses": _completed(observations)})
    for name in CAPABILITIES:
        out.setdefault(name, Finding(name, "untested", "not tried"))
    return {name: out[name] for name in CAPABILITIES}


def _completed(observations: Mapping[str, Observation]) -> list[dict[str, Any]]:
    """The completed responses of the basic attempts (stream, JSON, WebSocket), abridged."""
    out: list[dict[str, Any]] = []
    for name in ("https_stream", "ws"):
        final = _final((observations.get(name) or {}).get("events") or [])
        if final and final.get("status") == "completed":
            out.append(final)
    body = (observations.get("https_json") or {}).get("body")
    if isinstance(body, Mapping) and body.get("status") == "completed":
        out.append(dict(body))
    return out


# ------------------------------------------------------------------------------------------- trying


def _ssl(ep: Endpoint) -> ssl.SSLContext | None:
    return load_ca(ep.ca_path) if ep.tls and ep.ca_path else None


def _headers(ep: Endpoint) -> dict[str, str]:
    return {"Authorization": f"Bearer {ep.api_key}"} if ep.api_key else {}


def ws_url(url: str) -> str:
    """A base URL as WebSocket mode's: ``http(s)://`` → ``ws(s)://``, plus ``/responses``."""
    base = url.rstrip("/")
    for http, ws in (("https://", "wss://"), ("http://", "ws://")):
        if base.startswith(http):
            base = ws + base[len(http) :]
    return base + "/responses"


def _body(text: str, knobs: Mapping[str, Any] = SMALL, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": text, **knobs, **extra}


def _sse_events(raw: str) -> list[dict[str, Any]]:
    out = []
    for block in raw.split("\n\n"):
        data = "".join(line[5:].strip() for line in block.splitlines() if line.startswith("data:"))
        if data and data != "[DONE]":
            try:
                ev = json.loads(data)
            except ValueError:
                continue
            if isinstance(ev, dict):
                out.append(abridge(ev))
    return out


async def _post_stream(http: httpx.AsyncClient, url: str, body: Mapping[str, Any]) -> Observation:
    r = await http.post(f"{url}/responses", json={**body, "stream": True})
    ct = r.headers.get("content-type", "")
    if "text/event-stream" in ct:
        return {"status": r.status_code, "content_type": ct, "events": _sse_events(r.text)}
    return {"status": r.status_code, "content_type": ct, "events": [], **_error_of(r)}


def _error_of(r: httpx.Response) -> dict[str, Any]:
    try:
        body = r.json()
    except ValueError:
        return {}
    err = body.get("error") if isinstance(body, dict) else None
    return {"code": err.get("code") or err.get("type")} if isinstance(err, dict) else {}


async def _post_json(http: httpx.AsyncClient, url: str, body: Mapping[str, Any]) -> Observation:
    """One non-streamed request: status, and the response object abridged (or the error code)."""
    r = await http.post(f"{url}/responses", json={**body, "stream": False})
    ct = r.headers.get("content-type", "")
    out: Observation = {"status": r.status_code, "content_type": ct}
    if "json" in ct:
        try:
            data = r.json()
        except ValueError:
            return out
        if isinstance(data, dict) and data.get("object") == "response":
            out["body"] = abridge_response(data)
        out.update(_error_of(r))
    return out


async def _turn_json(http: httpx.AsyncClient, url: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """One request as a response (abridged) or ``{"status": HTTP status, "code": …}``: streamed if the server
    does not answer JSON."""
    got = await _post_json(http, url, body)
    if "body" in got:
        r: dict[str, Any] = got["body"]
        return r
    if "text/event-stream" in str(got.get("content_type")):
        final = _final((await _post_stream(http, url, body)).get("events") or [])
        if final:
            return final
    return {"status": got.get("status"), "code": got.get("code")}


async def _try_https(ep: Endpoint, timeout_s: float) -> dict[str, Observation]:
    obs: dict[str, Observation] = {}
    async with httpx.AsyncClient(verify=_ssl(ep) or True, headers=_headers(ep), timeout=timeout_s) as http:

        async def attempt(name: str, fn: Callable[[], Awaitable[Observation]]) -> None:
            try:
                obs[name] = await asyncio.wait_for(fn(), timeout_s)
            except Exception as exc:  # recorded: a failed attempt is evidence too
                obs[name] = {"exception": f"{type(exc).__name__}: {exc}"[:300]}

        await attempt("https_stream", lambda: _post_stream(http, ep.url, _body("Say hi.")))
        await attempt("https_json", lambda: _post_json(http, ep.url, _body("Say hi.")))

        async def store() -> Observation:
            first = await _turn_json(http, ep.url, _body("Remember the word teal.", store=True))
            rid = first.get("id") if first.get("status") == "completed" else None
            o: Observation = {"created_id": rid, "parent": first}
            if rid:
                r = await http.get(f"{ep.url}/responses/{rid}")
                o["retrieve_status"] = r.status_code
                try:
                    o["retrieve_id"] = r.json().get("id")
                except (ValueError, AttributeError):
                    o["retrieve_id"] = None
            return o

        await attempt("store", store)

        async def continuation() -> Observation:
            parent = await _turn_json(http, ep.url, _body("Remember the word teal.", store=True))
            pid = parent.get("id")
            child = await _turn_json(http, ep.url, _body("Which word?", store=True, previous_response_id=pid))
            bogus = await _turn_json(
                http, ep.url, _body("Which word?", store=True, previous_response_id="resp_turnbenchprobe0000")
            )
            return {
                "parent": parent.get("id"),
                "child": child,
                "bogus": bogus,
                "parent_tokens": _tokens(parent),
                "child_input_tokens": (child.get("usage") or {}).get("input_tokens"),
            }

        await attempt("https_continuation", continuation)
        cont = _continuation("https_continuation", obs["https_continuation"])
        if cont.offered != "yes":
            obs["forks"] = {"needs": f"a stored continuation, and {cont.evidence}"}
        else:

            async def forks() -> Observation:
                parent = await _turn_json(http, ep.url, _body("Plan two sub-tasks.", store=True))
                pid = parent.get("id")
                kids = await asyncio.gather(
                    *(
                        _turn_json(http, ep.url, _body(f"Do sub-task {k}.", store=True, previous_response_id=pid))
                        for k in (1, 2)
                    )
                )
                return {"parent": pid, "forks": list(kids), "how": "two HTTPS requests naming one stored parent"}

            await attempt("forks", forks)

        async def compact() -> Observation:
            conv = [
                {"role": "user", "content": "Find why the test fails."},
                {"role": "assistant", "content": "The index is off by one."},
            ]
            r = await http.post(f"{ep.url}/responses/compact", json={"model": MODEL, "input": conv})
            types: list[str] = []
            if r.status_code == 200:
                try:
                    types = [str(o.get("type")) for o in r.json().get("output") or []]
                except (ValueError, AttributeError):
                    types = []
            return {"status": r.status_code, "output_types": types}

        await attempt("compaction", compact)

        async def health() -> Observation:
            root = ep.url.rstrip("/").removesuffix("/v1")
            routes: dict[str, int | str] = {}
            for route in ("/health", "/healthz"):
                try:
                    routes[route] = (await http.get(root + route)).status_code
                except httpx.HTTPError as exc:
                    routes[route] = type(exc).__name__
            return {"routes": routes}

        await attempt("health", health)
    return obs


def _tokens(resp: Mapping[str, Any]) -> int | None:
    u = resp.get("usage") or {}
    if u.get("input_tokens") is None:
        return None
    return int(u["input_tokens"]) + int(u.get("output_tokens") or 0)


class _Ws:
    """One WebSocket-mode connection that records every event it reads, abridged, in arrival order."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.events: list[dict[str, Any]] = []

    async def send(self, event: Mapping[str, Any]) -> None:
        await self.conn.send(json.dumps(event))

    async def next(self) -> dict[str, Any]:
        raw = await self.conn.recv()
        ev = json.loads(raw)
        a = abridge(ev if isinstance(ev, dict) else {"type": "not-an-object"})
        self.events.append(a)
        return a

    async def until(self, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        while True:
            ev = await self.next()
            if done(ev):
                return ev

    async def turn(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Send one ``response.create``; returns its terminal event (abridged)."""
        await self.send({"type": "response.create", **body})
        return await self.until(lambda e: e.get("type") in TERMINALS)


TERMINALS = ("response.completed", "response.failed", "response.incomplete", "error")


async def _open(ep: Endpoint, url: str, timeout_s: float) -> _Ws:
    conn = await connect(
        url,
        ssl=_ssl(ep),
        additional_headers=_headers(ep),
        compression=None,
        max_size=None,
        open_timeout=timeout_s,
    )
    return _Ws(conn)


async def _try_ws(ep: Endpoint, url: str, timeout_s: float, inflight_bound: int) -> dict[str, Observation]:
    obs: dict[str, Observation] = {}

    async def attempt(name: str, fn: Callable[[_Ws], Awaitable[Observation]]) -> None:
        ws: _Ws | None = None
        try:
            ws = await _open(ep, url, timeout_s)
            o = await asyncio.wait_for(fn(ws), timeout_s)
            obs[name] = {**o, "events": ws.events}
        except Exception as exc:  # recorded: a failed attempt is evidence too
            obs[name] = {"exception": f"{type(exc).__name__}: {exc}"[:300], "events": ws.events if ws else []}
        finally:
            if ws is not None:
                await ws.conn.close()

    async def basic(ws: _Ws) -> Observation:
        await ws.turn(_body("Say hi.", store=False))
        return {"url": url}

    await attempt("ws", basic)
    if _ws(obs["ws"]).offered != "yes":
        skip = {"skipped": "no WebSocket mode"}
        obs.update({k: dict(skip) for k in ("lanes", "generate_false", "steer")})
        return obs

    async def continuation(ws: _Ws) -> Observation:
        parent = await ws.turn(_body("Remember the word teal.", store=False))
        pid = (parent.get("response") or {}).get("id")
        child = await ws.turn(_body("Which word?", store=False, previous_response_id=pid))
        bogus = await ws.turn(_body("Which word?", store=False, previous_response_id="resp_turnbenchprobe0000"))

        def view(ev: Mapping[str, Any]) -> dict[str, Any]:
            return {"status": (ev.get("response") or {}).get("status"), "code": ev.get("code")}

        return {
            "parent": pid,
            "child": view(child),
            "bogus": view(bogus),
            "parent_tokens": _tokens(parent.get("response") or {}),
            "child_input_tokens": ((child.get("response") or {}).get("usage") or {}).get("input_tokens"),
        }

    await attempt("ws_continuation", continuation)

    lanes = ("probe-a", "probe-b")

    async def lanes_run(ws: _Ws) -> Observation:
        for i, lane in enumerate(lanes):
            await ws.send({"type": "response.create", **_body(f"Write a long story {i}.", LONG), "stream_id": lane})
        ends = 0
        while ends < len(lanes):
            ev = await ws.next()
            if ev.get("type") in TERMINALS:
                ends += 1
        return {"lanes": list(lanes)}

    await attempt("lanes", lanes_run)

    async def burst(ws: _Ws) -> Observation:
        body = {"type": "response.create", **_body("Say hi.", store=False)}
        for _ in range(inflight_bound):
            await ws.send(body)
        ends, closed = 0, None
        try:
            while ends < inflight_bound:
                ev = await ws.next()
                if ev.get("type") in TERMINALS:
                    ends += 1
        except ConnectionClosed as exc:
            closed = f"close {exc.rcvd.code} {exc.rcvd.reason}".strip() if exc.rcvd else "connection lost"
        return {"sent": inflight_bound, "closed": closed}

    await attempt("inflight", burst)
    if "events" in obs["inflight"]:  # counted, not listed: a burst is hundreds of events
        evs = obs["inflight"]["events"]
        obs["inflight"]["events"] = [e for e in evs if e.get("type") in TERMINALS]

    async def warm(ws: _Ws) -> Observation:
        await ws.turn(
            {"model": MODEL, "input": [], "instructions": "You are a probe.", "generate": False, "store": False}
        )
        return {}

    await attempt("generate_false", warm)

    async def steer(ws: _Ws) -> Observation:
        await ws.send({"type": "response.create", **_body("Write a long story.", LONG, store=False)})
        created = await ws.until(lambda e: e.get("type") in ("response.created", *TERMINALS))
        rid = (created.get("response") or {}).get("id")
        if created.get("type") != "response.created" or not rid:
            return {"steered_id": None, "after_steer": [created]}
        await ws.send({"type": "response.steer", "previous_response_id": rid, "input": "Make it shorter."})
        mark = len(ws.events)
        t0 = time.monotonic()
        wait = max(1.0, timeout_s / 2)
        terminals = 0
        try:
            while time.monotonic() - t0 < wait:
                ev = await asyncio.wait_for(ws.next(), wait - (time.monotonic() - t0))
                t = str(ev.get("type"))
                if t.startswith("response.steer.") or (t == "error" and ev.get("code")):
                    break
                if t in TERMINALS:
                    terminals += 1
                    if terminals >= 2:  # the steered answer and one more: an answer to the steer as a request
                        break
        except TimeoutError:
            pass
        return {"steered_id": rid, "after_steer": ws.events[mark:], "waited_s": round(wait, 1)}

    await attempt("steer", steer)
    return obs


async def probe_async(
    endpoints: Mapping[str, Endpoint],
    *,
    timeout_s: float = 20.0,
    inflight_bound: int = INFLIGHT_BOUND,
    basics: bool = False,
) -> ProbeResult:
    """Try ``endpoints`` (``https`` and/or ``ws``; with ``https`` alone WebSocket mode is tried at the same
    address, as servers that serve both on one port do). ``basics``: only what a run's states need (streamed
    responses, store, continuations; no forks, compaction, lanes, burst, steer: those stay ``untested``)."""
    t0 = time.perf_counter()
    obs: dict[str, Observation] = {}
    targets: dict[str, str] = {}
    https = endpoints.get("https")
    if https is not None:
        targets["https"] = https.url
        obs.update(await _try_https(https, timeout_s))
        if basics:
            for k in ("forks", "compaction", "health"):
                obs.pop(k, None)
    ws_ep = endpoints.get("ws") or https
    if ws_ep is not None:
        url = ws_url(ws_ep.url)
        targets["ws"] = ws_ep.url if "ws" in endpoints else url.removesuffix("/responses")
        if basics:
            obs.update(await _try_ws_basics(ws_ep, url, timeout_s))
        else:
            obs.update(await _try_ws(ws_ep, url, timeout_s, inflight_bound))
            if "forks" not in obs and "https" not in endpoints:
                obs["forks"] = {"skipped": "no HTTPS store to fork from"}
    if "forks" not in obs and not basics:
        obs["forks"] = {"skipped": "no stored continuation over HTTPS"}
    findings = classify(obs)
    return ProbeResult(targets=targets, findings=findings, observations=obs, wall_s=time.perf_counter() - t0)


async def _try_ws_basics(ep: Endpoint, url: str, timeout_s: float) -> dict[str, Observation]:
    """WebSocket mode and a continuation on the connection only."""
    obs: dict[str, Observation] = {}
    try:
        ws = await _open(ep, url, timeout_s)
    except Exception as exc:
        return {"ws": {"exception": f"{type(exc).__name__}: {exc}"[:300]}}
    try:
        first = await asyncio.wait_for(ws.turn(_body("Say hi.", store=False)), timeout_s)
        obs["ws"] = {"url": url, "events": list(ws.events)}
        pid = (first.get("response") or {}).get("id")
        child = await asyncio.wait_for(ws.turn(_body("Which word?", store=False, previous_response_id=pid)), timeout_s)
        bogus = await asyncio.wait_for(
            ws.turn(_body("Which word?", store=False, previous_response_id="resp_turnbenchprobe0000")), timeout_s
        )
        obs["ws_continuation"] = {
            "child": {"status": (child.get("response") or {}).get("status"), "code": child.get("code")},
            "bogus": {"status": (bogus.get("response") or {}).get("status"), "code": bogus.get("code")},
        }
    except Exception as exc:
        obs.setdefault("ws", {"exception": f"{type(exc).__name__}: {exc}"[:300]})
        obs.setdefault("ws_continuation", {"exception": f"{type(exc).__name__}: {exc}"[:300]})
    finally:
        await ws.conn.close()
    return obs


def probe(endpoints: Mapping[str, Endpoint], **kwargs: Any) -> ProbeResult:
    """:func:`probe_async` in a fresh event loop."""
    return asyncio.run(probe_async(endpoints, **kwargs))


# ------------------------------------------------------------------------------------------- output


def format_table(result: ProbeResult, *, markdown: bool = False) -> str:
    """The findings as a table: capability, offered, evidence (plain aligned text, or Markdown)."""
    rows = [
        (CAPABILITIES.get(f.capability, f.capability), f.offered, " ".join(f.evidence.split()))
        for f in result.findings.values()
    ]
    if markdown:
        lines = ["| capability | offered | evidence |", "|---|---|---|"]
        lines += [f"| {c} | {o} | {e.replace('|', '/')} |" for c, o, e in rows]
        return "\n".join(lines)
    width = max([len("capability"), *(len(c) for c, _, _ in rows)])
    lines = [f"{'capability':<{width}}  {'offered':<8}  evidence"]
    lines += [f"{c:<{width}}  {o:<8}  {e}" for c, o, e in rows]
    return "\n".join(lines)


def write_json(result: ProbeResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json(), indent=1, default=str) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------ endpoints


def parse_targets(items: Sequence[str]) -> dict[str, str]:
    """``--target TRANSPORT=URL`` items as transport → URL; only ``https`` and ``ws`` are probed.

    Raises: ``ValueError`` for an item without ``=`` or another transport."""
    return procs.parse_targets(items, allowed=("https", "ws"), refusal="the probe tries https and ws endpoints")


def target_endpoints(targets: Mapping[str, str], *, ca_path: str | None, api_key: str | None) -> dict[str, Endpoint]:
    """An :class:`Endpoint` per target, TLS from the URL's scheme (``https``, ``wss``): verified with ``ca_path``
    when given, else with the system's trust store."""
    out: dict[str, Endpoint] = {}
    for name, url in targets.items():
        tls = url.startswith(("https://", "wss://"))
        out[name] = Endpoint(server=name, url=url.rstrip("/"), tls=tls, ca_path=ca_path, api_key=api_key)
    return out


@contextlib.contextmanager
def own_servers(workdir: Path, profile: str = "fast", timeout_s: float = 30.0) -> Iterator[dict[str, Endpoint]]:
    """turnbench's own ``https`` and ``ws`` servers (TLS, loopback), as ``turnbench run`` starts them, stopped
    on the way out."""
    from loadtests.execution.procs import start_server_process, stop_endpoints

    eps: dict[str, Endpoint] = {}
    try:
        for server in ("https", "ws"):
            eps[server] = start_server_process(
                server, workdir=workdir / server, profile=profile, tls=True, timeout_s=timeout_s
            )
        yield eps
    finally:
        stop_endpoints(eps)
