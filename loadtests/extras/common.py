"""What the WebSocket-mode measurements share (:mod:`loadtests.extras.steering`, :mod:`~.fanout`,
:mod:`~.warmup`): their server processes, a connection opened as the SDK opens one, and the medians of rounds.

Each measurement starts the server processes it needs (as ``turnbench run`` starts them: TLS on, loopback,
a simulated model profile, default ``fast``: ~1,000 tok/s), runs its rounds interleaved (every way once per
round, so a machine that slows down midway slows all of them alike), stops the servers and returns JSON-able
data: ``parameters``, ``rounds`` (one row per round and way, raw values) and ``medians`` (per way).

Times are in ms, measured by this process (the client) with ``time.perf_counter``; server CPU is the server
process's user + system time (psutil), in ms.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import statistics
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.connection import Connection

from loadtests.execution.procs import Endpoint, ServerError, start_server_process, stop_endpoints
from loadtests.present.doc import format_number
from turnbench.engine.sim import PROFILES
from turnbench.tls import load_ca

PROFILE = "fast"
"""The default server profile: ~1,000 tok/s decode, prefill 4x faster than ``h200-8b`` (model time is
simulated by the ``sim`` engine's cost model)."""

TASK = "Write the migration report for the parser module."
FIX = "Correction: only the tests changed, keep it to the test report."
DELTAS = ("response.output_text.delta", "response.function_call_arguments.delta")
CPU_TICK_MS = 10.0
"""The resolution of a process's CPU time as Linux reports it (``/proc``: 100 ticks per second)."""


async def open_ws(ep: Endpoint) -> ClientConnection:
    """A WebSocket-mode connection to ``ep``, as the SDK opens one (no compression, no frame size limit); an
    ``http(s)://`` endpoint (a target serving both on one port) is opened as ``ws(s)://``."""
    url = ep.url
    for http, ws in (("https://", "wss://"), ("http://", "ws://")):
        if url.startswith(http):
            url = ws + url[len(http) :]
    ctx = load_ca(ep.ca_path) if ep.tls and ep.ca_path else None
    headers = {"Authorization": f"Bearer {ep.api_key}"} if ep.api_key else {}
    return await connect(f"{url}/responses", ssl=ctx, additional_headers=headers, compression=None, max_size=None)


_TARGETS: contextvars.ContextVar[Mapping[str, Endpoint] | None] = contextvars.ContextVar("targets", default=None)


@contextlib.contextmanager
def against(endpoints: Mapping[str, Endpoint] | None) -> Iterator[None]:
    """Within it, :func:`running_servers` hands out these endpoints (server protocol → endpoint: an endpoint of
    someone else's, ``turnbench bench --target``) instead of starting servers; None: start them as usual."""
    token = _TARGETS.set(endpoints)
    try:
        yield
    finally:
        _TARGETS.reset(token)


async def next_event(ws: Connection) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await ws.recv())
    return event


@contextlib.contextmanager
def running_servers(servers: Sequence[str], profile: str) -> Iterator[dict[str, Endpoint]]:
    """Server processes for one measurement (:func:`start_servers`), in a temporary folder, stopped on the way out;
    one that then exits with a non-zero status (it crashed, or failed to drain) raises :class:`ServerError`.
    Within :func:`against`, the endpoints given there instead (nothing is started or stopped)."""
    targets = _TARGETS.get()
    if targets is not None:
        missing = [s for s in servers if s not in targets]
        if missing:
            raise ServerError(f"the target has no {', '.join(missing)} endpoint")
        yield {s: targets[s] for s in servers}
        return
    with tempfile.TemporaryDirectory(prefix="turnbench-wsmode-") as tmp:
        eps = start_servers(servers, Path(tmp), profile)
        try:
            yield eps
        finally:
            codes = stop_endpoints(eps)
        bad = [f"{key} exited with {code}" for key, code in codes.items() if code]
        if bad:
            tails = "\n".join(ep.process.log_tail() for ep in eps.values() if ep.process is not None)
            raise ServerError(f"{'; '.join(bad)}:\n{tails}")


def start_servers(servers: Sequence[str], workdir: Path, profile: str) -> dict[str, Endpoint]:
    """One server process per protocol of ``servers`` (TLS on), started side by side, each in its own folder
    under ``workdir``; if one fails, those started are stopped and its error is raised."""
    with ThreadPoolExecutor(max_workers=len(servers)) as pool:
        futures = {
            s: pool.submit(start_server_process, s, workdir=workdir / s, profile=profile, tls=True) for s in servers
        }
        started: dict[str, Endpoint] = {}
        errors: list[BaseException] = []
        for s, fut in futures.items():
            try:
                started[s] = fut.result()
            except BaseException as exc:  # every server that did start must still be stopped
                errors.append(exc)
    if errors:
        stop_endpoints(started)
        raise errors[0]
    return started


def median_of(values: Iterable[Any]) -> float | None:
    """The median of the finite numbers of ``values`` (None and NaN left out); None when there are none."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return statistics.median(xs) if xs else None


def mean_of(values: Iterable[Any]) -> float | None:
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return statistics.fmean(xs) if xs else None


def per_way(rounds: Sequence[Mapping[str, Any]], ways: Sequence[str], keys: Sequence[str], how: Any) -> Any:
    """``{way: {key: how(values of the rounds of that way)}}``."""
    return {w: {k: how(r[k] for r in rounds if r["way"] == w) for k in keys} for w in ways}


def as_float(v: Any) -> float:
    return math.nan if v is None else float(v)


def ci_range(v: Any) -> list[float]:
    """``[estimate, lo, hi]`` as three floats, whatever the stored value (NaN where one is missing)."""
    xs = list(v) if isinstance(v, list | tuple) else [v]
    return [as_float(x) for x in [*xs, None, None, None][:3]]


def ci_text(v: Any) -> str:
    """``1,234 [1,100, 1,400]``: an estimate and its interval (:func:`ci_range`), ``—`` without an estimate, the
    estimate alone without an interval."""
    est, lo, hi = ci_range(v)
    if not math.isfinite(est):
        return "—"
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo == hi:
        return format_number(est)
    return f"{format_number(est)} [{format_number(lo)}, {format_number(hi)}]"


def ms_text(v: Any) -> str:
    return f"{format_number(as_float(v))} ms"


def profile_text(profile: str) -> str:
    """``the simulated `fast` profile (~1,000 tok/s)``: a profile's name and speed, for a sentence."""
    p = PROFILES.get(profile)
    return f"the `{profile}` profile" if p is None else f"the simulated `{profile}` profile ({p.rate_text})"


def server_text(data: Mapping[str, Any], what: str = "one WebSocket-mode server process") -> str:
    """``one WebSocket-mode server process at the simulated `fast` profile (…)``, or, for a measurement made
    against an endpoint of someone else's (its ``target``), ``the endpoint `URL```."""
    target = data.get("target")
    if target:
        return "the endpoint " + ", ".join(f"`{url}`" for url in dict.fromkeys(dict(target).values()))
    return f"{what} at {profile_text(str(data['parameters']['profile']))}"


def setting_text(data: Mapping[str, Any]) -> str:
    """The caveat on where it ran: :data:`LOOPBACK` for turnbench's own servers; for an endpoint of someone
    else's (its ``target``), that its network, its model and its own work are all in the numbers."""
    if data.get("target"):
        return (
            "Measured from this machine against the endpoint named above: its network, its model (real or "
            "simulated) and its own work per request are all in these numbers."
        )
    return LOOPBACK


LOOPBACK = (
    "Client and server share this machine and talk over loopback (TLS included): no network delay is in these "
    "numbers. The model is simulated (the `sim` engine's cost model spends prefill and decode time as waits), "
    "so model time is the profile's, not a GPU's."
)
