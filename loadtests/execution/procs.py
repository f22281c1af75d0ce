"""The servers a run talks to: processes of their own, so the load generator's CPU never mixes with theirs.

The runner starts each server its cells need (one per :attr:`loadtests.model.Cell.endpoint_key`) as
``python -m servers <protocol> --port 0 …`` with the cell's server settings as flags (the same entry point as
``turnbench serve``), reads the ``PORT=`` line the server prints once it listens, health-checks it, measures
its CPU time with psutil while cells run, and stops it with SIGTERM at the end (a non-zero exit status is an
error: a server that crashed or failed to drain must not pass silently). The overhead scripts start theirs
the same way (:func:`start_server_process`).

``--target NAME=URL`` bypasses all of this: an :class:`Endpoint` without a process, whose CPU is unknown.
The calibration's ``inproc`` reference is an endpoint too: a service in this process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from clients.base import ClientConfig
from loadtests.execution.machine import Isolation, pinned_thread
from loadtests.execution.plan import Cell
from servers.workers import settings_flags
from turnbench.service import ResponsesService
from turnbench.settings import Settings
from turnbench.tls import load_ca
from turnbench.transports import SERVER_PROTOCOLS

__all__ = [
    "Endpoint",
    "ServerError",
    "ServerProcess",
    "parse_targets",
    "process_keys",
    "settings_flags",
    "start_endpoints",
    "start_redis_server",
    "start_server_process",
    "stop_endpoints",
    "target_endpoint",
    "with_compaction",
]


class ServerError(RuntimeError):
    """A server process that did not start, did not answer its health check, or exited badly."""


@dataclass(eq=False)
class Endpoint:
    """Where the clients of one server go: base URL, TLS trust, and (when the runner owns it) the process.

    ``server``: its protocol (``https``, ``ws``, ``grpc``; ``inproc`` for a service in this process);
    ``settings``: the Settings fields it was started with (profile and TLS included).
    """

    server: str
    url: str
    tls: bool
    ca_path: str | None = None
    api_key: str | None = None
    process: ServerProcess | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # client options, e.g. inproc's service
    cpus: tuple[int, ...] = ()  # the CPUs its process is pinned to; () = not pinned
    netem: ServerProcess | None = None  # the emulated network in front of it (loadtests.execution.netem), if any
    compaction: Endpoint | None = None  # where its clients compact (Cell.compaction_cell), when not itself
    network: dict[str, Any] = field(default_factory=dict)  # {"rtt_ms", "bandwidth_mbps", "port"} of that
    _ssl: tuple[ssl.SSLContext, bytes] | None = field(default=None, repr=False)

    def client_config(self, **options: Any) -> ClientConfig:
        """A :class:`ClientConfig` for this server. The SSL context is built once and shared, as one
        application's clients share theirs (Python's client contexts resume no sessions on their own)."""
        ctx: ssl.SSLContext | None = None
        ca: bytes | None = None
        if self.tls:
            if self.ca_path is None:
                raise ServerError(f"{self.server}: TLS endpoint without a CA; pass --ca PATH")
            if self._ssl is None:
                self._ssl = (load_ca(self.ca_path), Path(self.ca_path).read_bytes())
            ctx, ca = self._ssl
        return ClientConfig(
            url=self.url, api_key=self.api_key, ssl_context=ctx, ca_pem=ca, options={**self.options, **options}
        )

    @property
    def kind(self) -> str:
        """``process`` (started by the runner), ``inproc`` (a service in this process) or ``target``."""
        if self.process is not None:
            return "process"
        return "inproc" if self.server == "inproc" else "target"

    @property
    def service(self) -> ResponsesService | None:
        """The in-process service of an ``inproc`` endpoint."""
        service = self.options.get("service")
        return service if isinstance(service, ResponsesService) else None

    def cpu_s(self) -> float | None:
        """The server process's CPU time so far (user + system), in s; None when it is not a process."""
        return self.process.cpu_s() if self.process is not None else None

    def record(self, exit_code: int | None, transports: Sequence[str] = ()) -> dict[str, Any]:
        """``run.json["servers"][key]``: how it was started, its PID, its CPU time while serving (s, from
        its health check passing to its stop), its exit status, the transports it served, its settings."""
        proc = self.process
        serving = proc.cpu_s() - proc.cpu_at_ready_s if proc is not None else None
        # what it ran with: defaults, then TURNBENCH_* variables (inherited), then the runner's flags
        settings = Settings.from_env(**self.settings).as_dict() if self.kind != "target" else {}
        return {
            "server": self.server,
            "kind": self.kind,
            "transports": list(transports),
            "url": self.url or None,
            "argv": proc.argv if proc is not None else None,
            "pid": proc.pid if proc is not None else None,
            "cpu_s": serving,
            "cpu_startup_s": proc.cpu_at_ready_s if proc is not None else None,
            "cpus": list(self.cpus) or None,
            "exit_code": exit_code,
            "settings": settings,
            "network": self.network or None,
        }


class ServerProcess:
    """One ``python -m servers`` child process. ``stop`` is idempotent and returns its exit status."""

    def __init__(self, server: str, argv: list[str], popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.server = server
        self.argv = argv
        self.popen = popen
        self.pid = popen.pid
        self.log_path = log_path
        self.port = 0
        self.returncode: int | None = None
        self._ps = psutil.Process(popen.pid)
        self._last_cpu_s = 0.0
        self.cpu_at_ready_s = 0.0
        self.workers = 1  # > 1: a --workers supervisor, whose worker processes' CPU counts too
        self.launcher = False  # a launcher whose child processes do the serving: their CPU counts too
        self._kids: dict[int, psutil.Process] = {}
        self._kid_cpu_s: dict[int, float] = {}

    def cpu_s(self) -> float:
        """User + system CPU time of the process so far, in s (the last value once it has exited); with
        workers (or as a launcher, its children), theirs too (each one's last reading is kept after it exits)."""
        with contextlib.suppress(psutil.Error):
            t = self._ps.cpu_times()
            self._last_cpu_s = float(t.user + t.system)
        if self.workers <= 1 and not self.launcher:
            return self._last_cpu_s
        if len(self._kids) < self.workers or self.launcher:
            with contextlib.suppress(psutil.Error):
                for kid in self._ps.children(recursive=True):
                    self._kids.setdefault(kid.pid, kid)
        for pid, kid in self._kids.items():
            with contextlib.suppress(psutil.Error):
                k = kid.cpu_times()
                self._kid_cpu_s[pid] = float(k.user + k.system)
        return self._last_cpu_s + sum(self._kid_cpu_s.values())

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_port(self, timeout_s: float) -> int:
        """Poll the server's output for ``PORT=N`` until ``timeout_s``; raise if it exits or never prints."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.log_tail(1 << 20).splitlines():
                if line.startswith("PORT="):
                    self.port = int(line.partition("=")[2])
                    return self.port
            if self.popen.poll() is not None:
                raise ServerError(
                    f"{self.server} server exited with {self.popen.returncode} before listening:\n{self.log_tail()}"
                )
            time.sleep(0.02)
        raise ServerError(f"{self.server} server printed no PORT= line in {timeout_s:g} s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM (the server drains in-flight responses), wait, SIGKILL past ``timeout_s``.

        Returns: the exit status (negative: killed by that signal).
        """
        if self.returncode is not None:
            return self.returncode
        self.cpu_s()  # last reading before the process is gone
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5.0)
        self.returncode = self.popen.returncode
        return self.returncode


def health_check(server: str, host: str, port: int, ca_path: str | None, timeout_s: float) -> None:
    """TCP connect (+ TLS handshake with the server's CA); ``GET /healthz`` → 200 for HTTP transports.

    Retries until ``timeout_s``. Raises :class:`ServerError` with the last failure.
    """
    deadline = time.monotonic() + timeout_s
    last = "not tried"
    while time.monotonic() < deadline:
        try:
            raw = socket.create_connection((host, port), timeout=2.0)
            sock: socket.socket = raw
            try:
                if ca_path is not None:
                    sock = load_ca(ca_path).wrap_socket(raw, server_hostname=host)  # owns raw from here
                if SERVER_PROTOCOLS[server].http_health:
                    sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                    status = sock.recv(64).split(b" ", 2)
                    if len(status) < 2 or status[1] != b"200":
                        raise ServerError(f"/healthz answered {b' '.join(status)!r}")
            finally:
                sock.close()
                raw.close()
            return
        except (OSError, ServerError) as exc:
            last = repr(exc)
            time.sleep(0.05)
    raise ServerError(f"{server} server on {host}:{port} failed its health check: {last}")


def start_server_process(
    server: str,
    *,
    workdir: Path,
    profile: str,
    tls: bool,
    settings: Mapping[str, Any] | None = None,
    api_key: str | None = None,
    host: str = "127.0.0.1",
    timeout_s: float = 30.0,
    cpus: tuple[int, ...] = (),
    source: str | Path | None = None,
) -> Endpoint:
    """Start a ``server`` (protocol: ``https``, ``ws``, ``grpc``) in a child process on a free port and
    return its healthy endpoint.

    ``cpus``: pin the process (every thread it will make) to these CPUs; () leaves it free.

    ``source``: the source tree the server's code is imported from (the paired gate's base revision, checked
    out in a worktree); None: this checkout. Both use this interpreter and its installed dependencies.

    ``settings``: extra :class:`~turnbench.settings.Settings` fields, passed as ``turnbench serve`` flags
    (``{"http2": True}`` → ``--http2``). Its files go to ``workdir``: ``server-<server>-<profile>.log``, the CA
    and the usage database (give each server its own ``workdir`` when several share a protocol and profile).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    tag = f"{server}-{Path(profile[5:]).stem if profile.startswith('file:') else profile}"  # file:PATH: its name
    ca_path = workdir / f"ca-{tag}.pem"
    argv = [
        sys.executable,
        "-m",
        "servers",
        server,
        "--host",
        host,
        "--port",
        "0",
        "--tls" if tls else "--no-tls",
        "--profile",
        profile,
        "--usage-db",
        str(workdir / f"usage-{tag}.db"),
    ]
    if tls:
        argv += ["--ca-out", str(ca_path)]
    if api_key:
        argv += ["--api-key", api_key]
    argv += settings_flags(settings or {})
    log_path = workdir / f"server-{tag}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    root = Path(source).resolve() if source is not None else Path(__file__).resolve().parents[2]
    if source is not None:  # its packages before this checkout's (installed in development mode)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    with log_path.open("wb") as log, pinned_thread(cpus):  # the child inherits this thread's CPUs
        popen = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=root,
        )
    proc = ServerProcess(server, argv, popen, log_path)
    proc.workers = int((settings or {}).get("workers", 1))
    try:
        port = proc.wait_port(timeout_s)
        health_check(server, host, port, str(ca_path) if tls else None, timeout_s)
    except BaseException:
        proc.stop(5.0)
        raise
    proc.cpu_at_ready_s = proc.cpu_s()
    return Endpoint(
        server=server,
        url=SERVER_PROTOCOLS[server].url(host, port, tls),
        tls=tls,
        ca_path=str(ca_path) if tls else None,
        api_key=api_key,
        process=proc,
        settings={"profile": profile, "tls": tls, **(settings or {})},
        cpus=tuple(cpus),
    )


def start_redis_server(exe: str, workdir: Path, timeout_s: float = 5.0) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``exe`` (a ``redis-server``) on a free loopback port, persisting nothing (no RDB snapshot, no
    append-only file; ``workdir`` is its working folder), and wait until it answers PING.

    The store that server hosts share in the cross-host measurements and the Redis store's tests. The caller
    stops it (``terminate()`` then ``wait()``). Returns: (the process, ``redis://127.0.0.1:PORT/0``).
    Raises :class:`ServerError` when it exits or does not answer within ``timeout_s`` (it is killed then).
    """
    import redis  # only the Redis paths need the client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    try:
        proc = subprocess.Popen(
            [*argv, "--dir", str(workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    except OSError as exc:  # not there, not executable
        raise ServerError(f"redis-server {exe!r} did not start: {exc}") from exc
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1.0, socket_timeout=1.0)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                client.ping()
                return proc, f"redis://127.0.0.1:{port}/0"
            except redis.RedisError as exc:
                if proc.poll() is not None:
                    raise ServerError(f"redis-server {exe!r} exited with {proc.returncode} before answering") from exc
                if time.monotonic() >= deadline:
                    raise ServerError(f"redis-server {exe!r} did not answer PING in {timeout_s:g} s: {exc}") from exc
            time.sleep(0.01)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        client.close()


def parse_targets(
    items: Iterable[str] | None, *, allowed: Collection[str] | None = None, refusal: str = ""
) -> dict[str, str]:
    """``--target NAME=URL`` items, repeated or comma-listed, as name → URL (the last one of a name wins).

    ``allowed``: the names a command takes (None: any); ``refusal``: what its error says of another name.
    Raises: ``ValueError`` for an item without ``=`` or URL, or a name outside ``allowed``."""
    out: dict[str, str] = {}
    for item in items or ():
        for part in item.split(","):
            name, sep, url = (x.strip() for x in part.strip().partition("="))
            if not sep or not url:
                raise ValueError(f"--target {part!r}: expected TRANSPORT=URL (NAME=URL: https=…, ws=…)")
            if allowed is not None and name not in allowed:
                raise ValueError(f"--target {part!r}: {refusal or 'expected one of ' + ', '.join(allowed)}")
            out[name] = url
    return out


def target_endpoint(server: str, url: str, *, ca_path: str | None, api_key: str | None) -> Endpoint:
    """An already-running ``server`` (``--target NAME=URL``). TLS is inferred from the URL's scheme
    (``https``/``wss``) or, for gRPC's ``host:port``, from whether ``--ca`` was given."""
    if not SERVER_PROTOCOLS[server].schemes[0]:  # gRPC: a bare host:port
        tls = ca_path is not None
    else:
        scheme = urlsplit(url).scheme
        if scheme not in ("http", "https", "ws", "wss"):
            raise ValueError(f"--target {server}={url}: expected an http(s):// or ws(s):// URL")
        tls = scheme in ("https", "wss")
    if tls and ca_path is None:
        raise ValueError(f"--target {server}={url} uses TLS: pass --ca PATH (the server's CA certificate)")
    return Endpoint(server=server, url=url.rstrip("/"), tls=tls, ca_path=ca_path, api_key=api_key)


def _inproc_endpoint(cell: Cell, workdir: Path) -> Endpoint:
    """The calibration's zero-transport reference: a service in this process, with the cell's settings."""
    workdir.mkdir(parents=True, exist_ok=True)
    settings = {"profile": cell.profile, "tls": False, **cell.server_settings}
    service = ResponsesService(Settings.from_env(**settings, usage_db=str(workdir / "usage-inproc.db")))
    return Endpoint(server="inproc", url="", tls=False, options={"service": service}, settings=settings)


def _split_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, the rest) of an endpoint URL, gRPC's bare ``host:port`` included."""
    parts = urlsplit(url if "://" in url else f"grpc://{url}")
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"{url!r}: the emulated network needs an explicit host and port")
    rest = url.split("://", 1)[-1][len(parts.netloc) :]
    return parts.scheme, parts.hostname, parts.port, rest


def put_network(
    ep: Endpoint, rtt_ms: float, bandwidth_mbps: float | None, workdir: Path, timeout_s: float = 30.0
) -> None:
    """Start the network emulator (``python -m loadtests.execution.netem``, a process of its own) in front of ``ep`` and
    point ``ep.url`` at it: its clients then pay ``rtt_ms`` per round trip (TLS stays end to end)."""
    scheme, host, port, rest = _split_url(ep.url)
    argv = [
        sys.executable,
        "-m",
        "loadtests.execution.netem",
        "--upstream",
        f"{host}:{port}",
        "--rtt-ms",
        f"{rtt_ms:g}",
    ]
    if bandwidth_mbps:
        argv += ["--bandwidth-mbps", f"{bandwidth_mbps:g}"]
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "netem.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip
    proc = ServerProcess("netem", argv, popen, log_path)
    try:
        proxy = proc.wait_port(timeout_s)
    except BaseException:
        proc.stop(5.0)
        raise
    netloc = f"[{host}]:{proxy}" if ":" in host else f"{host}:{proxy}"
    ep.url = f"{scheme}://{netloc}{rest}" if scheme != "grpc" else netloc
    ep.netem = proc
    ep.network = {"rtt_ms": rtt_ms, "bandwidth_mbps": bandwidth_mbps, "port": proxy, "upstream_port": port}


def with_compaction(cells: Sequence[Cell]) -> list[Cell]:
    """``cells``, then the HTTPS cells their compaction calls go to (:attr:`Cell.compaction_cell`) where that is
    not the cell itself: the servers a run starts serve both."""
    extra = [cc for c in cells if (cc := c.compaction_cell) is not None and cc is not c]
    return [*cells, *extra]


def _target(cell: Cell, targets: Mapping[str, str]) -> str | None:
    return targets.get(cell.transport) or targets.get(cell.server)


def process_keys(cells: Sequence[Cell], targets: Mapping[str, str] | None = None) -> list[str]:
    """The endpoint keys of ``cells`` (and of their compaction cells) that :func:`start_endpoints` starts a
    process for (neither ``inproc`` nor a ``--target``), in order."""
    targets = targets or {}
    keys = {c.endpoint_key: c for c in with_compaction(cells) if c.server != "inproc" and _target(c, targets) is None}
    return list(keys)


def start_endpoints(
    cells: Sequence[Cell],
    workdir: Path,
    *,
    targets: Mapping[str, str] | None = None,
    ca_path: str | None = None,
    api_key: str | None = None,
    timeout_s: float = 30.0,
    isolation: Isolation | None = None,
) -> dict[str, Endpoint]:
    """One endpoint per ``Cell.endpoint_key``: a server process started with the cell's profile, TLS and
    server settings, a ``--target`` (``targets``: transport or server protocol → URL), or, for ``inproc``,
    a service in this process. Processes start in parallel, each with its own folder under ``workdir`` and,
    when ``isolation`` pinned them, on its own CPUs; if one fails, the others are stopped and the first error
    is raised.

    A cell whose scenario compacts and whose server has no HTTP routes (WebSocket mode, gRPC) also gets the
    HTTPS server of its deployment (:attr:`Cell.compaction_cell`), as ``Endpoint.compaction``: a process started
    here, or ``--target https=URL`` when the cell's own server is a target (another deployment's server would
    refuse the compaction items: they are signed with its key).

    Raises: ``ValueError`` when a targeted cell compacts and no HTTPS target is given.
    """
    targets = targets or {}
    server_cpus = isolation.servers if isolation is not None and isolation.pinned else {}
    for c in cells:
        cc = c.compaction_cell
        if cc is not None and cc is not c and _target(c, targets) is not None and _target(cc, targets) is None:
            raise ValueError(
                f"scenario {c.scenario.name} compacts its history, and POST /v1/responses/compact is an HTTPS route: "
                f"with --target {c.transport}=URL pass --target https=URL too (the HTTPS URL of the same deployment)"
            )
    needed = {c.endpoint_key: c for c in with_compaction(cells)}
    endpoints: dict[str, Endpoint] = {}
    to_start: dict[str, Cell] = {}
    for key, c in needed.items():
        url = _target(c, targets)
        if c.server == "inproc":
            endpoints[key] = _inproc_endpoint(c, workdir / f"{len(endpoints) + len(to_start):02d}-inproc")
        elif url is not None:
            endpoints[key] = target_endpoint(c.server, url, ca_path=ca_path, api_key=api_key)
        else:
            to_start[key] = c
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(to_start)))) as pool:
        futures = {
            key: pool.submit(
                start_server_process,
                c.server,
                workdir=workdir / f"{i:02d}-{c.server}-{c.profile}",
                profile=c.profile,
                tls=c.tls,
                settings=c.server_settings,
                api_key=api_key,
                timeout_s=timeout_s,
                cpus=tuple(server_cpus.get(key, ())),
                source=c.source,
            )
            for i, (key, c) in enumerate(to_start.items())
        }
        errors: list[BaseException] = []
        for key, fut in futures.items():
            try:
                endpoints[key] = fut.result()
            except BaseException as exc:  # keep going: every started server must be stopped below
                errors.append(exc)
    for key, c in needed.items():
        if not errors and c.network and key in endpoints and endpoints[key].server != "inproc":
            try:
                put_network(endpoints[key], c.rtt_ms, c.bandwidth_mbps, workdir / f"netem-{len(endpoints)}-{c.server}")
            except BaseException as exc:
                errors.append(exc)
    if errors:
        stop_endpoints(endpoints)
        raise errors[0]
    for c in cells:
        cc = c.compaction_cell
        if cc is not None and cc is not c:
            endpoints[c.endpoint_key].compaction = endpoints[cc.endpoint_key]
    return endpoints


def stop_endpoints(endpoints: Mapping[str, Endpoint]) -> dict[str, int | None]:
    """SIGTERM every server process; close in-process services. Returns: exit status per key (None: not a
    process)."""
    codes: dict[str, int | None] = {}
    for key, ep in endpoints.items():
        if ep.netem is not None:
            ep.netem.stop()
        codes[key] = ep.process.stop() if ep.process is not None else None
        if ep.service is not None:
            ep.service.close()
    return codes
