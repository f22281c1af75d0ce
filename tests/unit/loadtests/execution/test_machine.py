"""The machine a run shares: background load from CPU counters, when it counts as contended, and CPU
isolation planned only where there are CPUs enough (and said plainly where there are not)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from loadtests.execution import machine
from loadtests.execution.machine import MachineReading, background, combine, contention, plan_isolation

needs_affinity = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")


def _reading(t: float, busy: float, idle: float, steal: float = 0.0, pressure: float | None = 0.0) -> MachineReading:
    return MachineReading(t_s=t, busy_s=busy, idle_s=idle, steal_s=steal, pressure_us=pressure)


def test_background_is_busy_cpu_minus_the_runs_own() -> None:
    # 2 s on 2 cores: 3.6 CPU-seconds busy, 0.4 idle; the run's processes used 1.0 of them
    w = background(_reading(0, 10, 50, pressure=0), _reading(2, 13.6, 50.4, pressure=1.2e6), own_cpu_s=1.0, cores=2)
    assert w["busy_cores"] == pytest.approx(1.8) and w["own_cores"] == pytest.approx(0.5)
    assert w["other_cores"] == pytest.approx(1.3) and w["idle_cores"] == pytest.approx(0.2)
    assert w["pressure"] == pytest.approx(0.6) and w["steal"] == 0.0
    assert contention(combine([w])) is not None  # others held 1.3 cores and the CPUs were full


def test_other_processes_on_idle_cores_are_not_contention() -> None:
    w = background(_reading(0, 0, 0), _reading(1, 1.0, 1.0), own_cpu_s=0.5, cores=2)
    assert w["other_cores"] == pytest.approx(0.5) and w["idle_cores"] == pytest.approx(1.0)
    assert contention(combine([w])) is None  # a core stayed idle for them


def test_steal_is_contention_and_missing_pressure_is_none() -> None:
    w = background(_reading(0, 0, 0, pressure=None), _reading(1, 1.0, 0.5, steal=0.5), own_cpu_s=1.0, cores=2)
    assert w["pressure"] is None and w["steal"] == pytest.approx(0.25)
    reason = contention(combine([w]))
    assert reason is not None and "steal" in reason


def test_combine_weights_windows_by_their_length() -> None:
    a = background(_reading(0, 0, 0), _reading(1, 2.0, 0.0), own_cpu_s=2.0, cores=2)  # 1 s, nobody else
    b = background(_reading(0, 0, 0), _reading(3, 6.0, 0.0), own_cpu_s=0.0, cores=2)  # 3 s, others: 2 cores
    both = combine([a, None, b])
    assert both is not None and both["wall_s"] == pytest.approx(4.0)
    assert both["other_cores"] == pytest.approx(1.5)
    assert combine([]) is None and contention(None) is None


def test_isolation_needs_a_cpu_each_and_one_to_spare() -> None:
    two = plan_isolation(["https/instant/tls", "ws/instant/tls"], cpus=[0, 1])
    assert not two.pinned and "not possible: 2 CPUs" in two.reason and "need 4" in two.reason
    assert two.record()["servers"] == {}
    four = plan_isolation(["https/instant/tls", "ws/instant/tls"], cpus=[0, 1, 2, 3])
    assert four.pinned and four.client == (0,)
    assert four.servers == {"https/instant/tls": (1,), "ws/instant/tls": (2,)}  # CPU 3 left to the rest
    off = plan_isolation(["https/instant/tls"], cpus=list(range(16)), mode="off")
    assert not off.pinned and "off" in off.reason


@needs_affinity
def test_a_pinned_thread_and_the_process_it_starts_keep_to_their_cpu() -> None:
    cpu = machine.available_cpus()[-1]
    before = os.sched_getaffinity(0)
    with machine.pinned_thread([cpu]):
        assert os.sched_getaffinity(0) == {cpu}
        child = subprocess.run(
            [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
            capture_output=True,
            text=True,
            check=True,
        )
    assert os.sched_getaffinity(0) == before  # restored
    assert child.stdout.strip() == f"[{cpu}]"  # inherited


@needs_affinity
def test_pin_threads_pins_every_thread_of_a_process_and_restores_them() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start()"]
    )
    try:
        cpu = machine.available_cpus()[0]
        for _ in range(200):  # until its second thread exists
            if len(os.listdir(f"/proc/{proc.pid}/task")) >= 2:
                break
            time.sleep(0.01)
        tids = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task")]
        before = machine.pin_threads(proc.pid, [cpu])
        assert set(before) == set(tids) and all(os.sched_getaffinity(t) == {cpu} for t in tids)
        machine.restore_threads(before)
        assert all(os.sched_getaffinity(t) == before[t] for t in tids)
    finally:
        proc.kill()
        proc.wait()


def test_the_probe_reads_the_machine() -> None:
    probe = machine.MachineProbe()
    a = probe.read()
    sum(i * i for i in range(200_000))  # some CPU between the readings
    b = probe.read()
    w = background(a, b, own_cpu_s=0.0, cores=probe.cores)
    assert b.t_s > a.t_s and b.busy_s >= a.busy_s and probe.cores >= 1
    assert 0.0 <= w["idle_cores"] and 0.0 <= w["steal"] <= 1.0
