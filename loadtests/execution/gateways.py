"""Third-party gateways in front of a turnbench server: started, watched and stopped like turnbench's own.

A gateway is a production Responses server that keeps the conversation itself and forwards each turn to an
upstream inference engine as a stateless ``/v1/responses`` with the whole history. turnbench's HTTPS server
in the engine role (``turnbench serve https --role engine``) is that upstream, so a gateway's figures and
turnbench's own come from one model core. The gateways known here:

- ``agentic-api`` (PyPI, the optional extra ``[gateways]``): vLLM's Agentic API, a Rust gateway behind a
  Python launcher (``python -m agentic_api serve --vllm-base-url URL``). It waits for the upstream's
  ``GET /health``, then serves HTTPS ``/v1/responses`` and WebSocket mode on one port (plain TCP here), its
  own ``GET /health`` once ready. It forwards no request id, so the upstream's log is matched to the client's
  turns by order (one request in flight at a time).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from loadtests.execution.procs import Endpoint, ServerError, ServerProcess, target_endpoint

__all__ = ["GATEWAYS", "Gateway", "gateway_missing", "start_gateway"]


@dataclass(frozen=True)
class Gateway:
    """A gateway turnbench can start: its PyPI distribution, the module its launcher runs as, the flags."""

    name: str
    distribution: str
    module: str
    version: str

    def argv(self, upstream_url: str, port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            self.module,
            "serve",
            "--vllm-base-url",
            upstream_url,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--startup-timeout-s",
            "60",
            "--shutdown-timeout-s",
            "5",
        ]


GATEWAYS: dict[str, Gateway] = {
    "agentic-api": Gateway("agentic-api", "agentic-api", "agentic_api", "0.9.0"),
}


def gateway_missing(name: str = "agentic-api") -> str | None:
    """Why ``name`` cannot be started here (None: it can): its package is not installed."""
    gw = GATEWAYS[name]
    if importlib.util.find_spec(gw.module) is None:
        return f"the `{gw.distribution}` package is not installed (pip install -e '.[gateways]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as r:
            return int(r.status) == 200
    except (OSError, urllib.error.URLError):
        return False


def start_gateway(
    upstream: Endpoint,
    *,
    workdir: Path,
    name: str = "agentic-api",
    timeout_s: float = 60.0,
) -> tuple[Endpoint, Endpoint]:
    """Start gateway ``name`` in front of ``upstream`` (a plain-TCP HTTPS server) and wait for its health
    check. Returns its two endpoints: ``https`` (``http://…/v1``) and ``ws`` (``ws://…/v1``), sharing the one
    process (``endpoint.process``: its CPU, ``stop()``, which is idempotent).

    Raises :class:`ServerError` (with the end of its log) when it exits or is not healthy in ``timeout_s``.
    """
    missing = gateway_missing(name)
    if missing is not None:
        raise ServerError(missing)
    if upstream.tls:
        raise ServerError("the gateway's upstream must be plain TCP here (start it with tls=False)")
    gw = GATEWAYS[name]
    workdir.mkdir(parents=True, exist_ok=True)
    base = upstream.url.removesuffix("/v1")
    log_path = workdir / f"gateway-{name}.log"
    for _attempt in range(3):  # the free port may be taken between the probe and the bind
        port = _free_port()
        argv = gw.argv(base, port)
        env = {**os.environ, "OPENAI_API_KEY": upstream.api_key or "turnbench", "NO_COLOR": "1"}
        with log_path.open("wb") as log:
            popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        proc = ServerProcess(name, argv, popen, log_path)
        proc.launcher = True  # the launcher starts the gateway binary: its CPU counts
        proc.port = port
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and popen.poll() is None:
            if _healthy(f"http://127.0.0.1:{port}/health"):
                proc.cpu_at_ready_s = proc.cpu_s()
                https = target_endpoint("https", f"http://127.0.0.1:{port}/v1", ca_path=None, api_key=None)
                https.process = proc
                https.settings = {"gateway": name, "version": gw.version, "upstream": upstream.url}
                ws = target_endpoint("ws", f"ws://127.0.0.1:{port}/v1", ca_path=None, api_key=None)
                ws.process, ws.settings = proc, dict(https.settings)
                return https, ws
            time.sleep(0.1)
        code = proc.stop(5.0)
        if "Address already in use" not in proc.log_tail():
            raise ServerError(f"gateway {name} (exit {code}) was not healthy in {timeout_s:g} s:\n{proc.log_tail()}")
    raise ServerError(f"gateway {name}: no free port after 3 tries:\n{log_path.read_text(errors='replace')[-2000:]}")
