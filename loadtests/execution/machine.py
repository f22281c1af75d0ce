"""The machine a run shares: who else used the CPUs while a cell ran, and whether the run could have them
to itself.

**Background load.** :class:`MachineProbe` reads the machine-wide CPU counters (``/proc/stat`` through
psutil: busy, idle, steal) and the kernel's CPU pressure (``/proc/pressure/cpu``, the share of time some
runnable task waited for a CPU) at the start and end of every chunk. Subtracting what the run's own processes
used (the load generator and every server it started) leaves *other processes' CPU*; :func:`background`
turns a pair of readings into those figures and :func:`combine` adds chunks up into a cell's. A cell is
``contended`` (:func:`contention`) when other processes used a sizeable share of a core *and* the machine
had no idle core left for them, or when the hypervisor stole time: then wall-clock figures include waiting
for a CPU, and the report and the gate say so instead of presenting them as the transport's cost.

**Isolation.** :func:`plan_isolation` gives the load generator one CPU of its own and each server process
one of its own when the CPUs this process may use are enough for that plus one CPU left to everything else
(the kernel, other processes); otherwise nothing is pinned and ``reason`` says why (a 2-core machine cannot
isolate a load generator and three servers, and pretending otherwise would only move the contention).
:func:`pinned_thread` pins the calling thread for a while (a child process started inside inherits it, all its
threads included); :func:`pin_threads` pins every thread of a running process.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

__all__ = [
    "CONTENDED_OTHER_CORES",
    "CONTENDED_STEAL",
    "Isolation",
    "MachineProbe",
    "MachineReading",
    "available_cpus",
    "background",
    "combine",
    "contention",
    "pin_threads",
    "pinned_thread",
    "plan_isolation",
    "restore_threads",
]

CONTENDED_OTHER_CORES = 0.25
"""Other processes using more than this many cores (on average over a cell's chunks), with no idle core
left, make a cell contended."""
CONTENDED_STEAL = 0.05
"""The hypervisor running something else for more than this share of the run's CPU time makes it contended."""
_PSI = Path("/proc/pressure/cpu")


@dataclass(frozen=True, slots=True)
class MachineReading:
    """Machine-wide counters at one instant: CPU time in s summed over all CPUs, pressure in µs."""

    t_s: float  # monotonic
    busy_s: float  # user + nice + system + irq + softirq (+ guest time, which user already holds)
    idle_s: float  # idle + iowait
    steal_s: float
    pressure_us: float | None  # /proc/pressure/cpu "some" total; None where the kernel has no PSI


def _pressure_us() -> float | None:
    try:
        for line in _PSI.read_text().splitlines():
            if line.startswith("some "):
                return float(line.rpartition("total=")[2])
    except (OSError, ValueError):
        return None
    return None


class MachineProbe:
    """Reads the machine's CPU counters; ``cores`` is how many CPUs the counters span."""

    def __init__(self) -> None:
        self.cores = psutil.cpu_count() or 1

    def read(self) -> MachineReading:
        t = psutil.cpu_times()
        idle = float(t.idle) + float(getattr(t, "iowait", 0.0))
        steal = float(getattr(t, "steal", 0.0))
        busy = sum(float(v) for v in t) - idle - steal
        busy -= float(getattr(t, "guest", 0.0)) + float(getattr(t, "guest_nice", 0.0))  # already counted in user
        return MachineReading(t_s=time.monotonic(), busy_s=busy, idle_s=idle, steal_s=steal, pressure_us=_pressure_us())


def background(a: MachineReading, b: MachineReading, *, own_cpu_s: float, cores: int) -> dict[str, Any]:
    """What the machine did between readings ``a`` and ``b`` besides the run's own processes.

    ``own_cpu_s``: CPU time the run's processes used in that window (load generator + servers), in s.
    Returns (all per window): ``wall_s``; ``cores``; ``busy_cores`` (CPUs busy on average), ``own_cores``,
    ``other_cores`` (busy minus own, never below 0), ``idle_cores``; ``steal`` (share of CPU time the
    hypervisor gave to someone else); ``pressure`` (share of the time some runnable task waited for a
    CPU; None without PSI). Counters tick at 10 ms, so a short window is coarse: add windows up with
    :func:`combine` before judging.
    """
    wall = max(b.t_s - a.t_s, 1e-9)
    busy = max(0.0, b.busy_s - a.busy_s)
    idle = max(0.0, b.idle_s - a.idle_s)
    steal = max(0.0, b.steal_s - a.steal_s)
    total = busy + idle + steal
    pressure = None
    if a.pressure_us is not None and b.pressure_us is not None:
        pressure = min(1.0, max(0.0, (b.pressure_us - a.pressure_us) / 1e6 / wall))
    return {
        "wall_s": wall,
        "cores": cores,
        "busy_cores": busy / wall,
        "own_cores": own_cpu_s / wall,
        "other_cores": max(0.0, busy - own_cpu_s) / wall,
        "idle_cores": idle / wall,
        "steal": steal / total if total > 0 else 0.0,
        "pressure": pressure,
    }


def combine(windows: Iterable[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """Windows of :func:`background` added up (time-weighted means); None when there are none."""
    ws = [w for w in windows if w]
    if not ws:
        return None
    wall = sum(float(w["wall_s"]) for w in ws)

    def mean(key: str) -> float:
        return sum(float(w[key]) * float(w["wall_s"]) for w in ws) / wall

    pressures = [w for w in ws if w.get("pressure") is not None]
    p_wall = sum(float(w["wall_s"]) for w in pressures)
    return {
        "wall_s": wall,
        "cores": max(int(w["cores"]) for w in ws),
        "busy_cores": mean("busy_cores"),
        "own_cores": mean("own_cores"),
        "other_cores": mean("other_cores"),
        "idle_cores": mean("idle_cores"),
        "steal": mean("steal"),
        "pressure": sum(float(w["pressure"]) * float(w["wall_s"]) for w in pressures) / p_wall if p_wall else None,
    }


def contention(window: Mapping[str, Any] | None) -> str | None:
    """Why the machine counts as contended over ``window`` (a :func:`combine` result), or None.

    Other processes' CPU alone is not contention while a core stayed idle for them; it is when the CPUs were
    full (less than a quarter of a core idle) and others held more than :data:`CONTENDED_OTHER_CORES`.
    """
    if not window:
        return None
    reasons = []
    other, idle = float(window["other_cores"]), float(window["idle_cores"])
    if other > CONTENDED_OTHER_CORES and idle < 0.25:
        reasons.append(f"other processes used {other:.1f} of {window['cores']} cores while {idle:.2f} stayed idle")
    if float(window["steal"]) > CONTENDED_STEAL:
        reasons.append(f"the hypervisor took {float(window['steal']):.0%} of the CPU time (steal)")
    return "; ".join(reasons) or None


# ------------------------------------------------------------------------------------------------ isolation


def available_cpus() -> list[int]:
    """The CPUs this process may run on, sorted."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


@dataclass(frozen=True)
class Isolation:
    """Where the load generator and the servers run. ``pinned`` False: every process may use every CPU.

    ``client``: the load generator's CPUs; ``servers``: endpoint key → CPUs; ``reason``: why (not) pinned.
    """

    pinned: bool
    cpus: tuple[int, ...]
    reason: str
    client: tuple[int, ...] = ()
    servers: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """``run.json["isolation"]``."""
        return {
            "pinned": self.pinned,
            "cpus": list(self.cpus),
            "reason": self.reason,
            "client": list(self.client),
            "servers": {k: list(v) for k, v in self.servers.items()},
        }


def plan_isolation(server_keys: Sequence[str], cpus: Sequence[int] | None = None, *, mode: str = "auto") -> Isolation:
    """One CPU for the load generator, one per server (``server_keys``: the endpoints to start), and at
    least one left over for everything else; or no pinning, with the reason.

    ``mode``: ``auto`` (pin when there are enough CPUs) or ``off``.
    """
    cpus = tuple(cpus if cpus is not None else available_cpus())
    need = 1 + len(server_keys) + 1
    if mode == "off":
        return Isolation(False, cpus, "off (--cpu-pinning off): every process may use every CPU")
    if len(cpus) < need:
        return Isolation(
            False,
            cpus,
            f"not possible: {len(cpus)} CPUs for the load generator, {len(server_keys)} server process(es) and "
            f"the rest of the machine need {need}; every process shares every CPU, so the figures include "
            "whatever else runs (see each cell's background load)",
        )
    servers = {key: (cpus[1 + i],) for i, key in enumerate(server_keys)}
    return Isolation(
        True,
        cpus,
        f"pinned: load generator on CPU {cpus[0]}, each server on one CPU of its own, "
        f"{len(cpus) - need + 1} CPU(s) left to the rest of the machine",
        client=(cpus[0],),
        servers=servers,
    )


@contextlib.contextmanager
def pinned_thread(cpus: Iterable[int] | None) -> Iterator[None]:
    """Pin the calling thread to ``cpus`` for the block (None: leave it alone); a process started inside
    inherits the pinning with every thread it makes."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def pin_threads(pid: int, cpus: Iterable[int]) -> dict[int, set[int]]:
    """Pin every thread of process ``pid`` to ``cpus``. Returns: each thread's previous CPUs (to restore
    with :func:`restore_threads`)."""
    before: dict[int, set[int]] = {}
    target = set(cpus)
    for tid in _threads(pid):
        with contextlib.suppress(OSError):  # a thread may end in between
            before[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, target)
    return before


def restore_threads(before: Mapping[int, set[int]]) -> None:
    """Undo :func:`pin_threads` (threads that have ended are skipped)."""
    for tid, cpus in before.items():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, cpus)


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return [pid]
