"""``turnbench serve T --workers N``: N server processes on one port, so one transport uses every core.

The supervisor (this module, in the ``serve`` process) reserves the port (``--port 0``: a socket bound with
``SO_REUSEPORT`` and never listening, so the port stays ours), writes the CA the workers share (TLS), and
starts N ``python -m servers T … --reuse-port`` children on that port. The kernel spreads new connections over
the listening workers; a connection, its cache and its requests stay in the worker that accepted it (a
WebSocket or gRPC ``Connect`` stream never moves). ``store=true`` is the one state that crosses connections:
with the default in-memory store a ``previous_response_id`` made on one worker would be unknown to the
others, so the supervisor gives the workers one SQLite store (``sqlite:<temp dir>/store.db``) unless
``--store`` names one.

It prints what a single server prints (``… listening on URL``, the CA, ``PORT=N``) once every worker listens,
passes each worker's output through prefixed ``[worker k]``, and on SIGTERM or Ctrl-C stops every worker
(each drains its own connections) and exits; if a worker dies, the others are stopped and the exit status is
non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

from servers.base import resolve_server
from turnbench.settings import Settings
from turnbench.tls import tls_at

__all__ = ["reserve_port", "settings_flags", "supervise"]

START_TIMEOUT_S = 60.0


def settings_flags(settings: Mapping[str, Any]) -> list[str]:
    """``{"tokens_per_chunk": 4, "overlap_post": False, "inject_ms": {"safety": 5}}`` →
    ``["--tokens-per-chunk", "4", "--no-overlap-post", "--inject-ms", "safety=5"]`` (``turnbench serve``)."""
    out: list[str] = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, Mapping):
            if value:
                out += [flag, ",".join(f"{k}={v:g}" for k, v in value.items())]
        elif value is not None:
            out += [flag, str(value)]
    return out


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with ``SO_REUSEPORT`` and not listening: it holds the port (0 picks
    one) while workers bind it too, and takes no connection itself."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _changed(settings: Settings) -> dict[str, Any]:
    """The fields that differ from the defaults (what a worker's command line must say)."""
    defaults = Settings()
    return {
        f.name: getattr(settings, f.name)
        for f in dataclasses.fields(Settings)
        if getattr(settings, f.name) != getattr(defaults, f.name)
    }


async def _pump(k: int, stream: asyncio.StreamReader, ready: asyncio.Future[None]) -> None:
    """Pass worker ``k``'s output through; resolve ``ready`` at its ``PORT=`` line."""
    while line := await stream.readline():
        text = line.decode(errors="replace").rstrip()
        if text.startswith("PORT=") and not ready.done():
            ready.set_result(None)
            continue
        print(f"[worker {k}] {text}", flush=True)


async def supervise(transport: str, settings: Settings) -> int:
    """Run ``settings.workers`` workers of ``transport`` on one port until SIGTERM/SIGINT or a worker dies."""
    n = settings.workers
    protocol, _ = resolve_server(transport)
    holder = reserve_port(settings.host, settings.port)
    port = int(holder.getsockname()[1])
    tmp = tempfile.mkdtemp(prefix="turnbench-workers-")
    changes: dict[str, Any] = {"port": port, "workers": 1, "reuse_port": True}
    if settings.tls:
        ca_out = settings.ca_out or os.path.join(tmp, "ca.pem")
        tls_at(ca_out)  # written once here; every worker reads the same CA
        changes["ca_out"] = ca_out
    if settings.store == "memory":
        changes["store"] = f"sqlite:{os.path.join(tmp, 'store.db')}"
        print(f"store=true responses: one SQLite store for the {n} workers ({changes['store']})", flush=True)
    child = settings.replace(**changes)
    argv = [sys.executable, "-m", "servers", transport, *settings_flags(_changed(child))]
    procs: list[asyncio.subprocess.Process] = []
    pumps: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        readies = []
        for k in range(n):
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
            procs.append(proc)
            ready: asyncio.Future[None] = loop.create_future()
            readies.append(ready)
            assert proc.stdout is not None
            pumps.append(asyncio.create_task(_pump(k, proc.stdout, ready)))
        exits: list[asyncio.Future[Any]] = [asyncio.create_task(p.wait()) for p in procs]
        up: asyncio.Future[Any] = asyncio.gather(*readies)
        done, _ = await asyncio.wait([up, *exits], timeout=START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        if up not in done:
            up.cancel()
            print(f"a worker exited or did not listen within {START_TIMEOUT_S:g} s: stopping", file=sys.stderr)
            return 1
        url = protocol.url(settings.host, port, settings.tls)
        pids = ", ".join(str(p.pid) for p in procs)
        print(f"turnbench {transport} server listening on {url} ({n} workers: pids {pids})", flush=True)
        if settings.tls:
            print(f"CA certificate: {changes['ca_out']}", flush=True)
        print(f"PORT={port}", flush=True)
        stopped: asyncio.Future[Any] = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopped, *exits], return_when=asyncio.FIRST_COMPLETED)
        if stopped not in done:
            dead = next(i for i, e in enumerate(exits) if e in done)
            print(f"worker {dead} exited with status {procs[dead].returncode}: stopping the others", file=sys.stderr)
            code = 1
        stopped.cancel()
        print("draining…", flush=True)
    finally:
        for p in procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                await asyncio.wait_for(p.wait(), timeout=settings.grace_s + 10.0)
            except TimeoutError:
                p.kill()
                await p.wait()
        for t in pumps:
            t.cancel()
        holder.close()
    codes = [p.returncode for p in procs]
    print(f"stopped ({n} workers, exit statuses {codes})", flush=True)
    return code or max((abs(c or 0) for c in codes), default=0)
