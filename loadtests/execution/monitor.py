"""The load generator watching itself, so a saturated client is visible instead of blamed on a transport.

:class:`LoadMonitor` runs beside a benchmark in the same event loop and measures:

- process CPU time (``time.process_time_ns``: all threads of this process; psutil adds the user/system
  split and the thread count), as a fraction of one core over the wall time, overall and per window;
- event-loop lag: a task sleeps ``interval_s`` and records how late it woke, in ms. A loop busy with
  callbacks (parsing, encoding, a blocking call) wakes it late, and every request timed on that loop is
  late by as much.

The run is flagged ``saturated`` when CPU use exceeds ``cpu_threshold`` of one core or the lag p99 exceeds
``lag_p99_threshold_ms``; ``reason`` says which. Clocks are injectable so a test can script either signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from types import TracebackType

import msgspec
import numpy as np
import psutil

__all__ = ["LoadMonitor", "MonitorReport", "saturation"]

Clock = Callable[[], int]


class MonitorReport(msgspec.Struct, kw_only=True):
    """What the load generator itself cost and how late its loop ran. Lags in ms; CPU as core fractions."""

    cpu_util: float
    loop_lag_p50_ms: float
    loop_lag_p99_ms: float
    loop_lag_max_ms: float
    saturated: bool
    reason: str | None = None
    cpu_util_peak: float = math.nan
    wall_s: float = 0.0
    cpu_s: float = 0.0
    cpu_user_s: float | None = None
    cpu_system_s: float | None = None
    threads: int | None = None
    lag_samples: int = 0
    interval_s: float = 0.05
    cpu_threshold: float = 0.9
    lag_p99_threshold_ms: float = 5.0


def saturation(cpu_util: float, lag_p99_ms: float, *, cpu_threshold: float, lag_p99_threshold_ms: float) -> str | None:
    """Why a load generator counts as saturated (CPU as a fraction of one core, lag p99 in ms), or None."""
    reasons: list[str] = []
    if cpu_util > cpu_threshold:
        reasons.append(f"cpu {cpu_util:.2f} of a core > {cpu_threshold:.2f}")
    if lag_p99_ms > lag_p99_threshold_ms:
        reasons.append(f"event-loop lag p99 {lag_p99_ms:.1f} ms > {lag_p99_threshold_ms:g} ms")
    return "; ".join(reasons) or None


class LoadMonitor:
    """Async context manager sampling this process's CPU time and its event loop's lag.

    Args:
        interval_s: how long the probe sleeps between wake-ups, in s.
        cpu_threshold: CPU use, as a fraction of one core over the run, above which the run is saturated.
        lag_p99_threshold_ms: loop-lag p99, in ms, above which the run is saturated.
        cpu_window_s: length of the windows whose CPU use gives ``cpu_util_peak``, in s.
        clock: wall clock in ns (monotonic); default ``time.perf_counter_ns``.
        cpu_clock: process CPU clock in ns; default ``time.process_time_ns``. When injected, psutil's
            user/system split is not reported (it would not match the scripted clock).
    """

    def __init__(
        self,
        interval_s: float = 0.05,
        *,
        cpu_threshold: float = 0.9,
        lag_p99_threshold_ms: float = 5.0,
        cpu_window_s: float = 1.0,
        clock: Clock = time.perf_counter_ns,
        cpu_clock: Clock | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.interval_s = interval_s
        self.cpu_threshold = cpu_threshold
        self.lag_p99_threshold_ms = lag_p99_threshold_ms
        self.cpu_window_s = cpu_window_s
        self.clock = clock
        self.cpu_clock = cpu_clock if cpu_clock is not None else time.process_time_ns
        self._use_psutil = cpu_clock is None
        self._process = psutil.Process() if self._use_psutil else None
        self.lag_ms: list[float] = []
        self.window_cpu_util: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._t0_ns = self._t1_ns = 0
        self._cpu0_ns = self._cpu1_ns = 0
        self._times0: tuple[float, float] | None = None
        self._times1: tuple[float, float] | None = None
        self._threads: int | None = None
        self._running = False

    def _psutil_times(self) -> tuple[float, float] | None:
        if self._process is None:
            return None
        try:
            t = self._process.cpu_times()
            self._threads = self._process.num_threads()
        except psutil.Error:
            return None
        return float(t.user), float(t.system)

    def start(self) -> None:
        """Start sampling; must be called from inside the running event loop to be probed."""
        if self._running:
            return
        self._running = True
        self.lag_ms.clear()
        self.window_cpu_util.clear()
        self._t0_ns = self.clock()
        self._cpu0_ns = self.cpu_clock()
        self._times0 = self._psutil_times()
        self._task = asyncio.get_running_loop().create_task(self._probe(), name="turnbench-load-monitor")

    async def stop(self) -> None:
        """Stop sampling and freeze the figures ``report`` returns; idempotent."""
        if not self._running:
            return
        self._running = False
        self._t1_ns = self.clock()
        self._cpu1_ns = self.cpu_clock()
        self._times1 = self._psutil_times()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _probe(self) -> None:
        interval_ns = int(self.interval_s * 1e9)
        window_ns = int(self.cpu_window_s * 1e9)
        win_t, win_cpu = self.clock(), self.cpu_clock()
        while True:
            due = self.clock() + interval_ns
            await asyncio.sleep(self.interval_s)
            now = self.clock()
            self.lag_ms.append(max(0, now - due) / 1e6)
            if now - win_t >= window_ns:
                cpu = self.cpu_clock()
                self.window_cpu_util.append((cpu - win_cpu) / (now - win_t))
                win_t, win_cpu = now, cpu

    async def __aenter__(self) -> LoadMonitor:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def report(self) -> MonitorReport:
        """Figures for the run so far (up to now if still running, else up to ``stop``)."""
        if self._running:
            t1, cpu1, times1 = self.clock(), self.cpu_clock(), self._psutil_times()
        else:
            t1, cpu1, times1 = self._t1_ns, self._cpu1_ns, self._times1
        wall_ns = max(0, t1 - self._t0_ns)
        cpu_ns = max(0, cpu1 - self._cpu0_ns)
        cpu_util = cpu_ns / wall_ns if wall_ns else math.nan
        lags = np.asarray(self.lag_ms, dtype=np.float64)
        if lags.size:
            p50, p99 = (float(v) for v in np.percentile(lags, [50, 99], method="linear"))
            lag_max = float(lags.max())
        else:
            p50 = p99 = lag_max = math.nan
        reason = saturation(
            cpu_util, p99, cpu_threshold=self.cpu_threshold, lag_p99_threshold_ms=self.lag_p99_threshold_ms
        )
        user = system = None
        if self._times0 is not None and times1 is not None:
            user, system = times1[0] - self._times0[0], times1[1] - self._times0[1]
        peaks = [*self.window_cpu_util, cpu_util]
        finite_peaks = [p for p in peaks if not math.isnan(p)]
        return MonitorReport(
            cpu_util=cpu_util,
            loop_lag_p50_ms=p50,
            loop_lag_p99_ms=p99,
            loop_lag_max_ms=lag_max,
            saturated=reason is not None,
            reason=reason,
            cpu_util_peak=max(finite_peaks) if finite_peaks else math.nan,
            wall_s=wall_ns / 1e9,
            cpu_s=cpu_ns / 1e9,
            cpu_user_s=user,
            cpu_system_s=system,
            threads=self._threads,
            lag_samples=int(lags.size),
            interval_s=self.interval_s,
            cpu_threshold=self.cpu_threshold,
            lag_p99_threshold_ms=self.lag_p99_threshold_ms,
        )
