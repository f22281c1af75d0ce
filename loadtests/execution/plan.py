"""The run model: what a run measures (cells) and what measuring them gathers (samples, chunks).

A run crosses scenarios × profiles × loads × transports × state strategies into :class:`Cell` s
(:func:`plan_cells`). A cell carries everything it needs to run, its server settings included: the run-wide
settings (``turnbench run --set``, the gate's ``--burn``), then its bench group's or ablation variant's, then
its transport row's (``https-h2`` → ``http2=true``). Which server serves a cell, its *endpoint key*, follows
from (server protocol, profile, TLS, settings): cells that need differently configured servers get servers
of their own, and cells that agree share one. ``turnbench run`` and ``turnbench bench`` build cells alike and
hand them to the one start/execute path of :mod:`loadtests.runs.runner`.

Every other harness module takes its data types from here; this module imports none of them.
"""

from __future__ import annotations

import dataclasses
import itertools
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NotRequired, TypedDict

from clients.agent import ReplayToolbox, Toolbox
from clients.base import RolloutResult
from loadtests.execution.monitor import MonitorReport
from loadtests.workload.scenarios import Scenario, State, states_for
from turnbench.transports import TRANSPORTS, get_transport

__all__ = [
    "Cell",
    "CellFields",
    "CellRecord",
    "ChunkRecord",
    "ChunkStat",
    "Collected",
    "RunConfig",
    "Sample",
    "ToolboxFactory",
    "default_toolbox",
    "plan_cells",
    "settings_text",
]

ToolboxFactory = Callable[[Scenario, int], Toolbox]
"""The tools of rollout ``index`` of a scenario (tests swap it for one that misbehaves)."""


def default_toolbox(scenario: Scenario, index: int) -> Toolbox:
    """The scenario's tools for rollout ``index``: same index, same output sizes on every transport (a
    replay's: its conversation's recorded sizes and gaps)."""
    if scenario.replay:
        conv = scenario.replay[index % len(scenario.replay)]
        return ReplayToolbox(conv.tool_output_bytes, conv.gaps_ms, seed=scenario.seed * 100_003 + index)
    return Toolbox(
        output_bytes=scenario.tool_output_bytes,
        output_sigma=scenario.tool_output_sigma,
        latency_ms=scenario.tool_latency_ms,
        seed=scenario.seed * 100_003 + index,
    )


def _setting_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "+".join(f"{k}:{v:g}" if isinstance(v, int | float) else f"{k}:{v}" for k, v in sorted(value.items()))
    return str(value)


def settings_text(settings: Mapping[str, Any]) -> str:
    """``{"token_cache": False, "inject_ms": {"safety": 5}}`` → ``inject_ms=safety:5,token_cache=false``
    (sorted, stable: part of an endpoint key)."""
    return ",".join(f"{k}={_setting_text(v)}" for k, v in sorted(settings.items()))


class CellFields(TypedDict):
    """The fields of a cell's record that its summary repeats (``summary.json["cells"]``)."""

    transport: str
    server: str
    state: State
    scenario: str
    profile: str
    concurrency: int | None
    arrival_rate_rps: float | None
    mode: str
    variant: str
    tls: bool
    endpoint: str
    rtt_ms: float
    bandwidth_mbps: float | None


class CellRecord(CellFields):
    """A cell as ``run.json["cells"]`` lists it (:meth:`Cell.record`; ``source`` only where it is not this
    checkout); ``server_settings``: every Settings field of the server that served it, as it ran (added by
    :mod:`loadtests.runs.rundir`)."""

    cell: str
    number: int
    settings: dict[str, Any]
    source: NotRequired[str]
    server_settings: NotRequired[dict[str, Any]]


class ChunkRecord(TypedDict):
    """A :class:`ChunkStat` as ``run.json["chunks"]`` lists it: one cell's share of one round, times in s."""

    cell: str
    round: int
    warmup: bool
    rollouts: int
    turns: int
    wall_s: float
    client_cpu_s: float
    server_cpu_s: float | None
    lag_p99_ms: float | None
    background: dict[str, Any] | None
    reference_cpu_ms: NotRequired[float]


@dataclass(frozen=True, kw_only=True)
class Cell:
    """One measured combination. ``cell`` is its string id, unique in a run.

    ``server_settings``: the :class:`~turnbench.settings.Settings` fields its server is started with beyond
    profile and TLS (run-wide, then group/variant, then the transport row's), resolved when it was planned.
    """

    cell: str
    scenario: Scenario
    transport: str  # the client transport: a row of the transport table
    state: State
    profile: str
    concurrency: int | None  # closed loop
    arrival_rate_rps: float | None  # open loop
    variant: str
    tls: bool
    server_settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    number: int = 0  # position in the plan: makes this cell's task text (and so its prompts) its own
    rtt_ms: float = 0.0  # the emulated network between client and server (loadtests.execution.netem); 0: loopback
    bandwidth_mbps: float | None = None  # its link rate each way; None: unlimited
    source: str | None = None  # the source tree its server runs from (the paired gate's base); None: this one

    @property
    def server(self) -> str:
        """The server protocol its client talks to (``https``, ``ws``, ``grpc``), ``inproc`` for none."""
        return get_transport(self.transport).server_name

    @property
    def mode(self) -> str:
        return "open" if self.arrival_rate_rps is not None else "closed"

    @property
    def endpoint_key(self) -> str:
        """Which server serves this cell: one per (server protocol, profile, TLS, server settings), e.g.
        ``https/fast/tls`` and, for ``https-h2``, ``https/fast/tls/http2=true``."""
        base = f"{self.server}/{self.profile}/{'tls' if self.tls else 'plain'}"
        base = f"{base}/{settings_text(self.server_settings)}" if self.server_settings else base
        base = f"{base}/src={Path(self.source).name}" if self.source else base
        return base + self.network_suffix("/rtt=", "/bw=")

    def network_suffix(self, rtt: str, bw: str) -> str:
        """``/rtt=20/bw=50`` (or ``:rtt20``…): the emulated network, empty on plain loopback."""
        out = f"{rtt}{self.rtt_ms:g}" if self.rtt_ms else ""
        return out + (f"{bw}{self.bandwidth_mbps:g}" if self.bandwidth_mbps else "")

    @property
    def compaction_cell(self) -> Cell | None:
        """Where this cell's compaction calls go (``POST /v1/responses/compact``, an HTTPS route): None when its
        scenario does not compact, itself when its server is HTTPS (or in-process), else the HTTPS cell of the
        same deployment: same profile, TLS, settings, network and source. The WebSocket-mode server (the
        ``websockets`` library) answers only ``GET`` upgrades and the gRPC server has no HTTP at all, so a
        WebSocket or gRPC client compacts over HTTPS, as a client of the real API does; a compaction item is
        signed with the deployment's key, so that server's items are read by this one."""
        if not self.scenario.compact_every:
            return None
        if self.server in ("https", "inproc"):
            return self
        return dataclasses.replace(self, cell=f"{self.cell}:compact", transport="https", state="full")

    @property
    def network(self) -> bool:
        """Whether an emulated network stands between this cell's client and its server."""
        return bool(self.rtt_ms or self.bandwidth_mbps)

    def labels(self) -> dict[str, Any]:
        """The columns every sample row of this cell carries (beside ``round`` and ``warmup``)."""
        return {
            "scenario": self.scenario.name,
            "profile": self.profile,
            "concurrency": self.concurrency,
            "arrival_rate_rps": self.arrival_rate_rps,
            "mode": self.mode,
            "cell": self.cell,
            "variant": self.variant,
            "tls": self.tls,
            "rtt_ms": self.rtt_ms,
        }

    def record(self) -> CellRecord:
        """The cell as ``run.json`` lists it (the report and the gate read cells from there)."""
        record: CellRecord = {
            "cell": self.cell,
            "transport": self.transport,
            "server": self.server,
            "state": self.state,
            "scenario": self.scenario.name,
            "profile": self.profile,
            "concurrency": self.concurrency,
            "arrival_rate_rps": self.arrival_rate_rps,
            "mode": self.mode,
            "variant": self.variant,
            "tls": self.tls,
            "number": self.number,
            "endpoint": self.endpoint_key,
            "settings": dict(self.server_settings),
            "rtt_ms": self.rtt_ms,
            "bandwidth_mbps": self.bandwidth_mbps,
        }
        if self.source:
            record["source"] = self.source
        return record


@dataclass(kw_only=True)
class RunConfig:
    """Everything ``turnbench run`` was asked to do (the CLI maps its flags onto these fields).

    ``variant`` and ``server_settings`` are what :func:`plan_cells` gives every cell it plans; bench plans
    each group with its own.
    """

    scenarios: list[Scenario]
    transports: list[str]
    states: tuple[State, ...] | None = None  # None: the scenario's per-transport defaults
    profiles: tuple[str, ...] | None = None  # None: the scenario's profile
    concurrency: tuple[int, ...] | None = None  # closed-loop override
    rates_rps: tuple[float, ...] | None = None  # open-loop override (wins over concurrency)
    variant: str = "default"
    server_settings: dict[str, Any] = field(default_factory=dict)  # Settings fields for every server
    source: str | None = None  # the source tree the servers run from (None: this checkout)
    counterbalance: bool = False  # reverse the cells' order every second round (loadtests.execution.loops)
    targets: dict[str, str] = field(default_factory=dict)  # transport or server protocol -> URL of a server
    ca_path: str | None = None
    api_key: str | None = None
    out_dir: Path | None = None
    quiet: bool = False
    loop: str = "uvloop"
    cpu_threshold: float = 0.9  # load generator saturation: CPU, fraction of one core
    lag_p99_threshold_ms: float = 5.0  # load generator saturation: event-loop lag p99, in ms
    server_timeout_s: float = 30.0
    gc: str = "between-chunks"  # or "auto": Python's collector may pause the client mid-request
    cpu_pinning: str = "auto"  # or "off": see loadtests.machine.plan_isolation
    deadline: float | None = None  # time.monotonic() by which measuring ends: later rounds are dropped whole
    rtt_ms: tuple[float, ...] = (
        0.0,
    )  # emulated round-trip times (loadtests.execution.netem); several multiply the cells
    bandwidth_mbps: float | None = None  # the emulated link's rate each way (None: unlimited)
    toolbox_factory: ToolboxFactory = default_toolbox
    # a fixed workload (returns its CPU ms) timed before every chunk: the machine's speed over the same minutes
    # as the cells (the gate's reference; the host's speed swings 2x within seconds on a shared VM)
    reference_cpu: Callable[[], float] | None = None
    argv: list[str] = field(default_factory=list)
    task_tag: str = field(default_factory=lambda: secrets.token_hex(4))  # see runner.cell_rollout


def _cell_id(scenario: str, transport: str, state: State, profile: str, load: str, variant: str, net: str = "") -> str:
    base = f"{scenario}:{transport}:{state}:{profile}:{load}{net}"
    return base if variant == "default" else f"{base}:{variant}"


def plan_cells(config: RunConfig, *, first_number: int = 0) -> list[Cell]:
    """Cross scenarios × profiles × loads × transports × states into cells, in a stable order.

    The ``calibration`` scenario always runs ``inproc`` too: it separates the harness from the transport.
    ``first_number``: the number of the first cell (bench numbers the cells of all its groups in one series).
    Raises ``ValueError`` for an unknown transport or when no cell is left.
    """
    cells: list[Cell] = []
    for sc in config.scenarios:
        transports = list(dict.fromkeys(config.transports))
        if sc.name == "calibration" and "inproc" not in transports:
            transports.append("inproc")
        loads: list[tuple[int | None, float | None]]
        if config.rates_rps:
            loads = [(None, r) for r in config.rates_rps]
        elif config.concurrency:
            loads = [(c, None) for c in config.concurrency]
        else:
            loads = [(None if sc.arrival_rate_rps else sc.concurrency, sc.arrival_rate_rps)]
        for profile, rtt, (conc, rate) in itertools.product(config.profiles or (sc.profile,), config.rtt_ms, loads):
            load = f"r{rate:g}" if rate is not None else f"c{conc}"
            net = f":rtt{rtt:g}" if rtt else ""
            net += f":bw{config.bandwidth_mbps:g}" if config.bandwidth_mbps else ""
            for t in transports:
                if t not in TRANSPORTS:
                    raise ValueError(f"unknown transport {t!r}; known: {', '.join(TRANSPORTS)}")
                row = TRANSPORTS[t]
                if sc.compact_every and t == "ws-long":
                    raise ValueError(
                        f"scenario {sc.name} compacts its history (compact_every = {sc.compact_every}): ws-long "
                        "(option A) cannot, its whole rollout is one response"
                    )
                if row.server is None and net:
                    continue  # inproc has no network to emulate: it runs once, in the loopback cells
                settings = MappingProxyType({**config.server_settings, **row.server_settings})
                states = states_for(sc, t)
                if config.states is not None:
                    states = tuple(s for s in config.states if s in states)
                for state in states:
                    cells.append(
                        Cell(
                            cell=_cell_id(sc.name, t, state, profile, load, config.variant, net),
                            scenario=sc,
                            transport=t,
                            state=state,
                            profile=profile,
                            concurrency=conc,
                            arrival_rate_rps=rate,
                            variant=config.variant,
                            tls=sc.tls and row.server is not None,
                            server_settings=settings,
                            number=first_number + len(cells),
                            rtt_ms=rtt,
                            bandwidth_mbps=config.bandwidth_mbps,
                            source=config.source,
                        )
                    )
    if not cells:
        raise ValueError("no cells to run: check --transports and --states")
    return cells


# ---------------------------------------------------------------------------------------------- results


@dataclass(slots=True)
class Sample:
    """One rollout and where it ran."""

    rollout: RolloutResult
    cell: Cell
    round: int
    warmup: bool


@dataclass(slots=True)
class ChunkStat:
    """One cell's share of one round: what it cost the client, the server, and the client's loop."""

    cell: str
    round: int
    warmup: bool
    rollouts: int
    turns: int
    wall_s: float
    client_cpu_s: float
    server_cpu_s: float | None  # None: the server is not a process the runner can see
    lag_ms: list[float]
    background: dict[str, Any] | None = None  # the machine meanwhile: loadtests.machine.background
    reference_cpu_ms: float | None = None  # RunConfig.reference_cpu, timed just before the chunk


@dataclass(slots=True)
class Collected:
    """Everything one execution gathered. ``servers``: ``run.json["servers"]``, once they have stopped."""

    samples: list[Sample]
    chunks: list[ChunkStat]
    monitor: MonitorReport
    loop: str
    system: dict[str, Any] = field(default_factory=dict)  # machine-wide CPU while the run ran
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)
    isolation: dict[str, Any] = field(default_factory=dict)  # loadtests.machine.Isolation.record()
    trimmed: dict[str, Any] | None = None  # rounds dropped to meet config.deadline (runner.execute)
