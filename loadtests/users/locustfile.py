"""Locust users for turnbench: one agent rollout per task, one user class per transport of the table.

Run headless against servers started separately (``turnbench serve …``)::

    turnbench serve https --port 8443 --ca-out /tmp/ca.pem &
    locust -f loadtests/locustfile.py --headless -u 4 -r 2 --run-time 20s \\
        --host https://127.0.0.1:8443/v1 --tb-ca /tmp/ca.pem HttpsUser

Every transport with a server gets a user class named after it (``https`` → ``HttpsUser``, ``https-h2`` →
``HttpsH2User``, ``grpc-json`` → ``GrpcJsonUser`` …), and each rollout is the runner's own
(:func:`loadtests.runner.one_rollout`: same scenario, tools, seeds and task text as ``turnbench run``).
``--tb-https URL`` / ``--tb-ws URL`` / ``--tb-grpc HOST:PORT`` give the users of each server protocol their
server, and ``--tb-https-h2 URL`` the users of a transport that needs a server of its own settings (``--host``
is the fallback); ``--tb-state``, ``--tb-scenario``, ``--tb-api-key`` and ``--tb-samples PATH`` (raw
rollouts with their turns as JSONL, one file per process: ``PATH.<pid>``) complete the flags. Every turn fires
``events.request`` with ``request_type`` = the transport, ``name`` = ``turn`` (response_time = ``turn_ms``,
TTFT in ``context``), and every rollout one more with ``name`` = ``rollout`` (``rollout_ms``).

Locust's statistics are a live view only: it rounds response times (to 10 ms above 100 ms, …) into
buckets. The raw samples (``turnbench run``, or ``--tb-samples`` here) are the source of truth. In Locust's
distributed mode (``--processes N`` on one host, ``--master`` / ``--worker --master-host`` across hosts)
every worker process writes its own file; :func:`loadtests.load.merge` puts them into one run's samples
(``scripts/load.py``, ``make load``, does it for each transport).

Why a thread per user: the transport clients are asyncio code (httpx/anyio, websockets, grpc.aio) and Locust
runs users as gevent greenlets on a monkey-patched stdlib. An asyncio loop inside a greenlet would block
the gevent hub (and asyncio on gevent's patched selectors is fragile). So each user owns one native thread
from ``gevent.threadpool.ThreadPool(1)`` holding a persistent uvloop loop (libuv does its own I/O, untouched
by the monkey-patching); the greenlet hands it a rollout and waits cooperatively, so other users keep
running. The persistent loop keeps each client's connection in one loop, as grpc.aio requires.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
import types
from collections.abc import Callable
from typing import Any, ClassVar, cast

import gevent.monkey
import gevent.threadpool
import msgspec
from locust import User, constant, events, task

from clients.base import RolloutResult
from loadtests.execution.plan import Cell
from loadtests.execution.procs import Endpoint, target_endpoint
from loadtests.runs.runner import one_rollout
from loadtests.workload.scenarios import State, load_scenario
from turnbench.settings import STATE_STRATEGIES
from turnbench.transports import SERVER_PROTOCOLS, TRANSPORTS, Transport

# Per-request INFO lines from the client libraries would be logged from the users' native threads, through
# handler locks that gevent's monkey-patching made greenlet locks: that can deadlock at shutdown. Quiet them.
for _name in ("httpx", "httpcore", "websockets", "grpc", "openai"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def _own_server(row: Transport) -> bool:
    """Whether a transport needs a server of its own settings (``https-h2``), so a flag of its own."""
    return bool(row.server_settings)


def _flags(parser: Any) -> None:
    for name, protocol in SERVER_PROTOCOLS.items():
        where = "HOST:PORT" if not protocol.schemes[0] else f"base URL ({protocol.schemes[1]}://…/v1)"
        parser.add_argument(f"--tb-{name}", default="", help=f"turnbench: {where} of the {name} server")
    for row in TRANSPORTS.values():
        if row.server is not None and _own_server(row):
            parser.add_argument(
                f"--tb-{row.name}",
                default="",
                help=f"turnbench: base URL of the {row.server.name} server for {row.name} "
                f"({', '.join(f'{k}={v}' for k, v in row.server_settings.items())})",
            )
    parser.add_argument("--tb-ca", default="", help="turnbench: CA certificate (PEM) of TLS servers")
    parser.add_argument("--tb-api-key", default="", help="turnbench: bearer key")
    parser.add_argument(
        "--tb-state",
        default="",
        help="turnbench: full | store | connection (default: connection where the transport has it, else full)",
    )
    parser.add_argument("--tb-scenario", default="agent-5", help="turnbench: scenario name (default agent-5)")
    parser.add_argument(
        "--tb-samples", default="", help="turnbench: write raw rollouts (with their turns) as JSONL to PATH.<pid>"
    )


_add_listener: Callable[[Callable[[Any], None]], object] = events.init_command_line_parser.add_listener
_add_listener(_flags)


class _NativeThread:
    """Just what grpc.aio's completion-queue poller needs of ``threading.Thread``, on a real OS thread.

    grpc.aio starts its poller with ``threading.Thread``; under gevent's patching that would be a greenlet of
    the starting thread's hub, and a user's thread runs uvloop, never that hub: every call would hang.
    """

    def __init__(self, target: Any = None, daemon: bool = True, **_: Any) -> None:
        self._target = target
        self._done = _native_lock()
        self._done.acquire()

    def start(self) -> None:
        _native_start(self._run, ())

    def _run(self) -> None:
        try:
            self._target()
        finally:
            self._done.release()

    def join(self, timeout: float | None = None) -> None:
        if self._done.acquire(timeout=-1 if timeout is None else timeout):
            self._done.release()


def _grpc_native_poller() -> None:
    """Give grpc.aio (imported after gevent patched ``threading``) a native thread for its poller."""
    try:
        from grpc._cython import cygrpc
    except ImportError:
        return
    shim = types.SimpleNamespace(**vars(threading))
    shim.Thread = _NativeThread
    cygrpc.threading = shim  # the Cython module looks its globals up in its __dict__ at call time


_native_start = gevent.monkey.get_original("_thread", "start_new_thread")
_native_lock = gevent.monkey.get_original("_thread", "allocate_lock")
_grpc_native_poller()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


class AgentUser(User):
    """One simulated agent: a rollout per task, on a fresh client (and connection) each time."""

    abstract = True
    transport: ClassVar[str] = ""
    wait_time = constant(0)

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        row = TRANSPORTS[self.transport]
        assert row.server is not None  # only transports with a server get a user class
        flag = row.name if _own_server(row) else row.server.name
        url = getattr(opts, f"tb_{flag.replace('-', '_')}", "") or self.host or ""
        if not url:
            raise ValueError(f"{type(self).__name__}: pass --tb-{flag} URL or --host URL")
        state = cast("State", opts.tb_state or ("connection" if row.supports_connection_state else "full"))
        if state not in STATE_STRATEGIES:
            raise ValueError(f"--tb-state {state!r}: expected one of {', '.join(STATE_STRATEGIES)}")
        self.endpoint: Endpoint = target_endpoint(
            row.server.name, url, ca_path=opts.tb_ca or None, api_key=opts.tb_api_key or None
        )
        sc = load_scenario(opts.tb_scenario)
        self.cell = Cell(
            cell=f"{sc.name}:{row.name}:{state}:locust",
            scenario=sc,
            transport=row.name,
            state=state,
            profile=sc.profile,
            concurrency=1,
            arrival_rate_rps=None,
            variant="locust",
            tls=self.endpoint.tls,
        )
        self.samples_path: str = f"{opts.tb_samples}.{os.getpid()}" if opts.tb_samples else ""
        self.pool = gevent.threadpool.ThreadPool(1)
        self.loop: asyncio.AbstractEventLoop = self.pool.apply(_new_loop)
        self.count = 0
        self.tag = secrets.token_hex(4)  # this user's prompts are its own (no prefix-cache hits across users)

    def on_stop(self) -> None:
        self.pool.apply(self.loop.close)
        self.pool.kill()

    def _fire(self, **kwargs: Any) -> None:
        fire: Callable[..., None] = self.environment.events.request.fire
        fire(**kwargs)

    @task
    def rollout(self) -> None:
        self.count += 1
        result: RolloutResult = self.pool.apply(
            self.loop.run_until_complete, (one_rollout(self.cell, self.count, self.endpoint, task_tag=self.tag),)
        )
        state = self.cell.state
        for t in result.turns:
            self._fire(
                request_type=self.transport,
                name="turn",
                response_time=t.turn_ms or 0.0,
                response_length=t.bytes_down,
                exception=None if t.success else RuntimeError(t.error),
                context={"ttft_ms": t.ttft_ms, "turn_index": t.turn_index, "state": state},
            )
        self._fire(
            request_type=self.transport,
            name="rollout",
            response_time=result.rollout_ms,
            response_length=sum(t.bytes_down for t in result.turns),
            exception=None if result.success else RuntimeError(result.error),
            context={"state": state, "connect_ms": result.connect_ms},
        )
        if self.samples_path:  # one line per rollout, its turns inside (loadtests.users.merge reads and merges them)
            with open(self.samples_path, "ab") as fh:
                fh.write(msgspec.json.encode(result) + b"\n")


def _user_class_name(transport: str) -> str:
    """``https-h2`` → ``HttpsH2User``."""
    return "".join(part.capitalize() for part in transport.split("-")) + "User"


USERS: dict[str, type[AgentUser]] = {
    row.name: type(
        _user_class_name(row.name),
        (AgentUser,),
        {"transport": row.name, "__module__": __name__, "__doc__": f"A {row.name} agent: {row.summary}."},
    )
    for row in TRANSPORTS.values()
    if row.server is not None
}
"""One user class per transport with a server, by transport name."""
globals().update({cls.__name__: cls for cls in USERS.values()})  # where Locust looks for user classes
