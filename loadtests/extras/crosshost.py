"""Cross-host state: what a conversation pays when its turns reach different server hosts.

Two server processes stand for two hosts (each the HTTPS server, which also serves WebSocket mode on its
port), sharing one store: Redis (a real ``redis-server`` started on a free loopback port, persisting nothing)
or one SQLite file (which only processes of one host can share). The same agent rollouts (the instant
profile: API overhead only; 20 tool calls with 4 KB outputs, 32-token answers) run in four configurations
(:data:`CONFIGS`):

- ``https/store, one host`` and ``https/store, alternating``: every turn hydrates the history from the store
  (HTTPS keeps nothing between requests), on one host or on the other host each turn;
- ``ws/store, reconnect each turn``: each turn on a new WebSocket connection to the other host: nothing in a
  connection cache, so the history comes from the store (the spec's recovery after a reconnect);
- ``ws/connection, one host``: WebSocket mode's connection cache, the reference.

Per store and configuration, over the turns after the first (the first has no history to hydrate): the
server's ``resolve`` stage (the store read and decode: the hydration itself), the server's ``render`` stage
and the sum of all its stages (a hydrated history is rendered whole again, a cached one only in its new
items), the turn time (request sent → response completed; a reconnect is not inside it), the rollout time,
and how many turns did hydrate (their ``resolve`` stage read items from the store). Times in ms, medians
(p50) and, for ``resolve``, the 90th percentile.

The rollouts are interleaved: each round runs every store's every configuration once (same seeds, same
tool outputs), so a machine that slows down midway slows all of them alike. ``turnbench bench`` runs it as
an extra (:data:`EXTRA`, a section of the report); ``python scripts/cross_host.py`` runs it alone.

Where ``redis-server`` is not installed the SQLite store is still measured and the data says why Redis is
not (``stores_unavailable``); :class:`~loadtests.extras.Unavailable` is raised only when no store can run.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from clients.agent import Toolbox, run_rollout
from clients.base import ResponsesClient, RolloutResult, TurnRecorder, TurnResult, make_client
from loadtests.execution.procs import Endpoint, start_redis_server, start_server_process, stop_endpoints
from loadtests.extras.registry import OWN_SERVERS, Extra, ExtraResult, Unavailable
from loadtests.present.doc import Doc, round_frame
from loadtests.workload.scenarios import State

__all__ = [
    "CONFIGS",
    "EXTRA",
    "REFERENCE",
    "STORES",
    "Config",
    "Hosts",
    "measure",
    "render",
]

PROFILE = "instant"
"""The server profile: no model time, so what is measured is the API's own work (hydration included)."""
TOOL_OUTPUT_BYTES = 4096
"""Each tool output's size (a coding agent's file read), in bytes: what the history grows by per turn."""
ANSWER_TOKENS = 32
"""Tokens of each answer (and of each turn's reasoning before a tool call)."""
FULL_ROLLOUTS, QUICK_ROLLOUTS = 5, 2
"""Rollouts per store and configuration: a full run, a quick one (``turnbench bench --quick``)."""
STORES = ("redis", "sqlite")
"""The stores two hosts can share: a ``redis-server``, one SQLite file."""
REDIS_MISSING = "redis-server is not installed (apt-get install redis-server)"


@dataclass(frozen=True)
class Config:
    """One way an agent's turns reach the two hosts.

    ``transport``/``state``: the client and how it continues a conversation (``store``: by
    ``previous_response_id`` from the store; ``connection``: from WebSocket mode's connection cache);
    ``alternate``: turn k goes to host ``k % 2`` (else always the first); ``reconnect``: a new connection
    before every turn after the first (a client that lost its host).
    """

    name: str
    transport: str
    state: State
    alternate: bool
    reconnect: bool


CONFIGS = (
    Config("https/store, one host", "https", "store", alternate=False, reconnect=False),
    Config("https/store, alternating", "https", "store", alternate=True, reconnect=False),
    Config("ws/store, reconnect each turn", "ws", "store", alternate=True, reconnect=True),
    Config("ws/connection, one host", "ws", "connection", alternate=False, reconnect=False),
)
REFERENCE = "ws/connection, one host"
"""The configuration the hydration cost is measured against: the connection cache, no store read."""
COMPARED = ("ws/store, reconnect each turn", "https/store, alternating")
"""The cross-host configurations whose cost per turn against :data:`REFERENCE` the report states."""


class Hosts(ResponsesClient):
    """One agent's client over two hosts: turn k goes to host ``k % 2`` (``alternate``), on a fresh connection
    each turn when ``reconnect`` (a WebSocket client that lost its host)."""

    transport: ClassVar[str] = "hosts"

    def __init__(self, clients: list[ResponsesClient], *, alternate: bool, reconnect: bool) -> None:
        super().__init__(clients[0].config)
        self.clients, self.alternate, self.reconnect_each = clients, alternate, reconnect
        self.k = 0

    async def connect(self) -> float | None:
        return await self.clients[0].connect()

    async def create(self, body: dict[str, Any], *, recorder: TurnRecorder) -> dict[str, Any]:
        c = self.clients[self.k % len(self.clients)] if self.alternate else self.clients[0]
        if self.k and self.reconnect_each:
            await c.reconnect()
        self.k += 1
        return await c.create(body, recorder=recorder)

    async def close(self) -> None:
        for c in self.clients:
            await c.close()


async def _rollout(hosts: Sequence[Endpoint], config: Config, i: int, tool_calls: int) -> RolloutResult:
    """Rollout ``i`` of ``config`` over ``hosts``: seed ``i``, so every configuration runs the same one."""
    clients = [make_client(config.transport, ep.client_config()) for ep in hosts]
    client = Hosts(clients, alternate=config.alternate, reconnect=config.reconnect)
    try:
        await client.connect()
        toolbox = Toolbox(output_bytes=TOOL_OUTPUT_BYTES, seed=7 + i)
        meta = {"tool_calls": str(tool_calls), "seed": str(i), "answer_tokens": str(ANSWER_TOKENS)}
        task = f"[cross {config.name} {i}] Investigate the repository and summarize what you find."
        return await run_rollout(client, state=config.state, toolbox=toolbox, metadata=meta, task=task)
    finally:
        await client.close()


async def _measure(
    hosts: Mapping[str, Sequence[Endpoint]], rollouts: int, tool_calls: int
) -> dict[tuple[str, str], list[RolloutResult]]:
    """Every (store, configuration)'s rollouts, interleaved: each round runs each of them once."""
    results: dict[tuple[str, str], list[RolloutResult]] = {(s, c.name): [] for s in hosts for c in CONFIGS}
    for i in range(rollouts):
        for store, eps in hosts.items():
            for config in CONFIGS:
                results[store, config.name].append(await _rollout(eps, config, i, tool_calls))
    return results


def _stage_ms(turn: TurnResult, name: str) -> float | None:
    stage = turn.server_stages.get(name)
    return stage.wall_ns / 1e6 if stage is not None else None


def _p(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (linear interpolation) of ``values``; None when there are none."""
    return float(np.percentile(values, q)) if values else None


def _row(store: str, config: Config, results: Sequence[RolloutResult]) -> dict[str, Any]:
    ok = [r for r in results if r.success]
    turns = [t for r in ok for t in r.turns[1:]]  # the first turn has no history to hydrate
    resolve = [ms for t in turns if (ms := _stage_ms(t, "resolve")) is not None]
    render = [ms for t in turns if (ms := _stage_ms(t, "render")) is not None]
    server = [sum(s.wall_ns for s in t.server_stages.values()) / 1e6 for t in turns if t.server_stages]
    hydrated = sum(1 for t in turns if "resolve" in t.server_stages and t.server_stages["resolve"].items > 0)
    return {
        "store": store,
        "config": config.name,
        "ok": len(ok),
        "failed": len(results) - len(ok),
        "errors": sorted({r.error or "failed" for r in results if not r.success}),
        "turns": len(turns),
        "hydrated_turns": hydrated,
        "resolve_p50_ms": _p(resolve, 50),
        "resolve_p90_ms": _p(resolve, 90),
        "render_p50_ms": _p(render, 50),
        "server_p50_ms": _p(server, 50),
        "turn_p50_ms": _p([t.turn_ms for t in turns if t.turn_ms is not None], 50),
        "rollout_p50_ms": statistics.median(r.rollout_ms for r in ok) if ok else None,
    }


def _diff(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def _costs(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per store: each of :data:`COMPARED` against :data:`REFERENCE`, in ms per turn (p50 minus p50):
    ``resolve_ms`` (the store read itself), ``server_ms`` (every server stage: re-rendering the history
    included) and ``turn_ms`` (what the client waits; for HTTPS also its transport's own cost)."""
    by = {(r["store"], r["config"]): r for r in rows}
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for store in dict.fromkeys(r["store"] for r in rows):
        ref = by[store, REFERENCE]
        out[store] = {
            name: {
                f"{key}_ms": _diff(by[store, name][f"{key}_p50_ms"], ref[f"{key}_p50_ms"])
                for key in ("resolve", "server", "turn")
            }
            for name in COMPARED
        }
    return out


def _start_hosts(store: str, url: str, work: Path) -> list[Endpoint]:
    """Two HTTPS server processes (two hosts) on the store at ``url``, started in parallel; both or none."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [
            pool.submit(
                start_server_process,
                "https",
                workdir=work / f"{store}-host{k}",
                profile=PROFILE,
                tls=True,
                settings={"store": url},
            )
            for k in range(2)
        ]
        started: list[Endpoint] = []
        errors: list[BaseException] = []
        for fut in futures:
            try:
                started.append(fut.result())
            except BaseException as exc:  # keep going: the other one must be stopped
                errors.append(exc)
    if errors:
        stop_endpoints({str(k): ep for k, ep in enumerate(started)})
        raise errors[0]
    return started


def measure(
    stores: Sequence[str] = STORES,
    rollouts: int | None = None,
    tool_calls: int = 20,
    quick: bool = False,
) -> ExtraResult:
    """Measure :data:`CONFIGS` on each of ``stores`` (``redis``, ``sqlite``); see the module docstring.

    ``rollouts``: per store and configuration (default :data:`FULL_ROLLOUTS`, or :data:`QUICK_ROLLOUTS` when
    ``quick``). Starts a ``redis-server`` and two server processes per store, all on free ports, and stops them
    before returning. Prints nothing.

    Returns JSON-able data: ``parameters``; ``rows`` (one per store and configuration: rollouts ``ok`` and
    ``failed``, their ``errors``, ``turns`` and ``hydrated_turns`` counted, ``*_p50_ms``/``*_p90_ms`` as in the
    module docstring, None where nothing was measured); ``hydration_cost`` (per store, :func:`_costs`);
    ``stores_unavailable`` (store → why it was not measured). Raises :class:`~loadtests.extras.Unavailable`
    when none of ``stores`` can run here.
    """
    unknown = [s for s in stores if s not in STORES]
    if unknown:
        raise ValueError(f"unknown store(s) {unknown}: expected some of {list(STORES)}")
    n = rollouts if rollouts is not None else (QUICK_ROLLOUTS if quick else FULL_ROLLOUTS)
    redis_exe = shutil.which("redis-server")
    unavailable = {"redis": REDIS_MISSING} if "redis" in stores and redis_exe is None else {}
    runnable = [s for s in dict.fromkeys(stores) if s not in unavailable]
    if not runnable:
        raise Unavailable("; ".join(unavailable.values()) or "no store to measure")
    redis_proc: subprocess.Popen[bytes] | None = None
    hosts: dict[str, list[Endpoint]] = {}
    with tempfile.TemporaryDirectory(prefix="turnbench-cross-") as tmp:
        work = Path(tmp)
        try:
            for store in runnable:
                if store == "redis":
                    assert redis_exe is not None
                    redis_proc, url = start_redis_server(redis_exe, work / "redis")
                else:
                    url = f"sqlite:{work / 'shared.db'}"
                hosts[store] = _start_hosts(store, url, work)
            results = asyncio.run(_measure(hosts, n, tool_calls))
        finally:
            stop_endpoints({f"{store}-{k}": ep for store, eps in hosts.items() for k, ep in enumerate(eps)})
            if redis_proc is not None:
                redis_proc.terminate()
                try:
                    redis_proc.wait(10)
                except subprocess.TimeoutExpired:
                    redis_proc.kill()
                    redis_proc.wait()
    rows = [_row(store, c, results[store, c.name]) for store in runnable for c in CONFIGS]
    return {
        "parameters": {
            "profile": PROFILE,
            "hosts": 2,
            "tool_calls": tool_calls,
            "tool_output_bytes": TOOL_OUTPUT_BYTES,
            "answer_tokens": ANSWER_TOKENS,
            "rollouts": n,
            "stores": runnable,
        },
        "rows": rows,
        "hydration_cost": _costs(rows),
        "stores_unavailable": unavailable,
    }


def _signed(v: Any) -> str:
    return "n/a" if v is None else f"{v:+.2f}"


def render(doc: Doc, data: ExtraResult) -> None:
    """The report's section: what is compared, the table of rows, one sentence per store with the cost of
    cross-host hydration against the connection cache."""
    p = data["parameters"]
    doc.p(
        f"Two server processes stand for two hosts behind a load balancer, sharing one store: Redis, or one "
        f"SQLite file. The same agent rollouts ({p['tool_calls']} tool calls with "
        f"{p['tool_output_bytes'] // 1024} KB outputs, the `{p['profile']}` profile: no model time, the API's own "
        f"work only; {p['rollouts']} per configuration, interleaved) run as: `https/store, one host` and "
        "`https/store, alternating` (every turn hydrates its history from the store, on the same host or on the "
        "other host each turn); `ws/store, reconnect each turn` (each turn on a new WebSocket connection to the "
        "other host, so nothing is in a connection cache and the history comes from the store: the recovery "
        "after a reconnect); `ws/connection, one host` (WebSocket mode's connection cache, the reference). "
        "Both hosts run on this machine, so **the network round trip between hosts, and to a remote Redis, is "
        "not included**: add it per turn that hydrates."
    )
    doc.p(
        "Per turn after the first (the history grows each turn; these are medians over all of them): `resolve` is "
        "the server's stage that reads and decodes the history (the hydration itself); `render` and `server` "
        "(all its stages) show that a hydrated history is also tokenized whole again, where the connection cache "
        "keeps its tokens and renders only the new items; `turn` is request sent → response completed (a "
        "reconnect is not inside it); `hydrated` counts the turns that read their history from the store."
    )
    rows = data["rows"]
    df = pd.DataFrame(
        {
            "store": [r["store"] for r in rows],
            "configuration": [r["config"] for r in rows],
            "ok": [f"{r['ok']}/{r['ok'] + r['failed']}" for r in rows],
            "hydrated": [f"{r['hydrated_turns']}/{r['turns']}" for r in rows],
            "resolve p50 ms": [r["resolve_p50_ms"] for r in rows],
            "resolve p90 ms": [r["resolve_p90_ms"] for r in rows],
            "render p50 ms": [r["render_p50_ms"] for r in rows],
            "server p50 ms": [r["server_p50_ms"] for r in rows],
            "turn p50 ms": [r["turn_p50_ms"] for r in rows],
            "rollout p50 ms": [r["rollout_p50_ms"] for r in rows],
        }
    )
    num = [c for c in df.columns if c.endswith(" ms")]
    df[num] = df[num].astype(float)
    doc.table(round_frame(df))
    failed = [r for r in rows if r["failed"]]
    if failed:
        doc.p(
            "**Failed rollouts:** "
            + "; ".join(f"{r['store']} `{r['config']}`: {r['failed']} ({', '.join(r['errors'])})" for r in failed)
            + "."
        )
    by = {(r["store"], r["config"]): r for r in rows}
    sentences = []
    for store, costs in data["hydration_cost"].items():
        ws, https = costs[COMPARED[0]], costs[COMPARED[1]]
        switch = _diff(by[store, COMPARED[1]]["turn_p50_ms"], by[store, "https/store, one host"]["turn_p50_ms"])
        sentences.append(
            f"**{store}**: against the connection cache, a WebSocket turn that reconnects to the other host and "
            f"hydrates pays {_signed(ws['resolve_ms'])} ms in `resolve` (the store read), "
            f"{_signed(ws['server_ms'])} ms of server work (re-tokenizing the whole history included) and "
            f"{_signed(ws['turn_ms'])} ms of turn time; an HTTPS turn on alternating hosts pays "
            f"{_signed(https['resolve_ms'])} ms in `resolve` and {_signed(https['turn_ms'])} ms of turn time "
            f"(HTTPS's own cost per request included), {_signed(switch)} ms against HTTPS on one host."
        )
    doc.bullets(sentences)
    for store, why in data.get("stores_unavailable", {}).items():
        doc.p(f"*{store} not measured: {why}.*")


EXTRA = Extra(
    name="crosshost",
    title="Cross-host state: hydration from Redis and SQLite",
    measure=lambda quick: measure(quick=quick),
    render=render,
    command="python scripts/cross_host.py",
    est_s=(14.0, 30.0),  # measured with both stores on a 2-core machine: quick 13 s, full 26–30 s
    needs=(OWN_SERVERS,),
    own_why="two server hosts sharing a Redis or SQLite store, which it starts",
)
