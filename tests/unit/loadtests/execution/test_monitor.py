"""LoadMonitor: a blocked event loop or a busy CPU is flagged; an idle run is not."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from loadtests.execution.monitor import LoadMonitor, saturation


async def test_blocked_loop_is_saturated() -> None:
    async with LoadMonitor(interval_s=0.005, lag_p99_threshold_ms=5.0, cpu_threshold=10.0) as mon:
        for _ in range(6):
            await asyncio.sleep(0.01)
            time.sleep(0.03)  # noqa: ASYNC251 -- the point: a blocking call stalls every task on the loop
    r = mon.report()
    assert r.saturated
    assert r.reason is not None and "event-loop lag" in r.reason and "cpu" not in r.reason
    assert r.loop_lag_max_ms >= 20.0 and r.loop_lag_p99_ms > 5.0 and r.lag_samples >= 6


async def test_idle_loop_is_not_saturated() -> None:
    # an idle loop uses almost no CPU whatever else the machine runs; how late it wakes depends on that load,
    # so the lag verdict is tested on given numbers below, and here its threshold is out of reach
    async with LoadMonitor(interval_s=0.01, lag_p99_threshold_ms=60_000.0, cpu_threshold=0.95) as mon:
        await asyncio.sleep(0.25)
    r = mon.report()
    assert not r.saturated and r.reason is None
    assert r.lag_samples >= 1 and r.loop_lag_p50_ms >= 0.0
    assert 0.0 <= r.cpu_util < 0.95 and r.wall_s > 0.2
    assert r.cpu_user_s is not None and r.threads is not None and r.threads >= 1


def test_saturation_verdicts_on_given_numbers() -> None:
    limits = {"cpu_threshold": 0.9, "lag_p99_threshold_ms": 5.0}
    assert saturation(0.3, 1.0, **limits) is None
    cpu = saturation(0.95, 1.0, **limits)
    assert cpu is not None and cpu.startswith("cpu 0.95 of a core")
    lag = saturation(0.3, 7.5, **limits)
    assert lag == "event-loop lag p99 7.5 ms > 5 ms"
    assert saturation(float("nan"), float("nan"), **limits) is None  # nothing measured: no verdict


async def test_cpu_saturation_with_scripted_cpu_clock() -> None:
    # the CPU clock advances as fast as the wall clock: one full core busy for the whole run
    mon = LoadMonitor(interval_s=0.01, cpu_clock=time.perf_counter_ns, lag_p99_threshold_ms=1000.0)
    async with mon:
        await asyncio.sleep(0.05)
    r = mon.report()
    assert r.saturated and r.reason is not None and r.reason.startswith("cpu")
    assert r.cpu_util == pytest.approx(1.0, abs=0.05)
    assert r.cpu_user_s is None  # psutil's split would not match a scripted clock


async def test_report_while_running_and_stop_is_idempotent() -> None:
    mon = LoadMonitor(interval_s=0.01)
    mon.start()
    await asyncio.sleep(0.05)
    live = mon.report()
    assert live.wall_s > 0.0
    await mon.stop()
    await mon.stop()
    assert mon.report().wall_s >= live.wall_s


async def test_no_samples_gives_nan_lag() -> None:
    async with LoadMonitor(interval_s=10.0) as mon:
        pass
    r = mon.report()
    assert r.lag_samples == 0 and math.isnan(r.loop_lag_p99_ms)


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LoadMonitor(interval_s=0)
