"""Soak: mixed rollouts on every transport for a while, then connection churn, with the server's memory sampled.

Each transport's server runs in its own process (started as ``turnbench run`` starts its servers, TLS on, the
``instant`` profile so the load is all API work), one at a time. Against it:

1. **mixed rollouts** for ``--minutes`` per transport: ``--concurrency`` workers loop over rollouts of the
   ``agent-20`` shape (short outputs, 2–4 KB tool results), rotating the state strategies the transport
   supports (``full``, ``store``, ``connection``), each on a fresh connection, so the store, the connection
   caches and the per-connection state all grow and must be bounded by their limits;
2. **connection churn** (``--churn`` connections, WebSocket and gRPC only; HTTPS opens one per request and is
   churned by step 1): open, one one-turn response, close, ``--churn-concurrency`` at a time.

The server's RSS (psutil) is sampled every ``--sample-s`` seconds. A **plateau** means the last half of the
rollout phase grew less than ``--max-growth-mb-per-min`` MB/min (least-squares slope), and the churn
phase ended less than ``--max-churn-growth-mb`` above where it started. Every rollout and every churned
connection must succeed. Exit status 0 only when all of that holds.

Writes ``soak.json`` (every sample, every phase's figures), ``soak.csv`` and ``soak.png`` (RSS over time, one
line per transport) to ``--out``.

  python scripts/soak.py                         # 10 min per transport, 10,000 churned connections each
  python scripts/soak.py --minutes 1 --churn 1000 --out /tmp/soak
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
from tqdm import tqdm

from clients.base import TurnRecorder, make_client
from loadtests.execution.plan import Cell
from loadtests.execution.procs import Endpoint, start_server_process
from loadtests.runs.runner import one_rollout
from loadtests.workload.scenarios import State, is_state, load_scenario
from turnbench.transports import STATES
from turnbench.transports import TRANSPORTS as TABLE

ROOT = Path(__file__).resolve().parent.parent

TRANSPORTS = ("https", "ws", "grpc")
SCENARIO = load_scenario("agent-20").replace(
    tool_output_bytes=3072, tool_output_sigma=0.3, answer_tokens=24, seed=11, profile="instant"
)


def cell(transport: str, state: State) -> Cell:
    return Cell(
        cell=f"{transport}/{state}",
        scenario=SCENARIO,
        transport=transport,
        state=state,
        profile="instant",
        concurrency=1,
        arrival_rate_rps=None,
        variant="default",
        tls=True,
        number=TRANSPORTS.index(transport) * 10 + STATES.index(state),
    )


class Sampler:
    """RSS of one process every ``period_s``, tagged with the phase running at the time."""

    def __init__(self, pid: int, transport: str, period_s: float, t0: float) -> None:
        self.proc = psutil.Process(pid)
        self.transport = transport
        self.period_s = period_s
        self.t0 = t0
        self.phase = "idle"
        self.rows: list[dict[str, Any]] = []

    def sample(self) -> float:
        rss_mb = float(self.proc.memory_info().rss) / 2**20
        self.rows.append(
            {"transport": self.transport, "phase": self.phase, "t_s": time.monotonic() - self.t0, "rss_mb": rss_mb}
        )
        return rss_mb

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.period_s)


def slope_mb_per_min(rows: list[dict[str, Any]]) -> float:
    """Least-squares slope of RSS over time, MB/min (0 for fewer than 3 samples)."""
    if len(rows) < 3:
        return 0.0
    xs = [r["t_s"] / 60 for r in rows]
    ys = [r["rss_mb"] for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


async def workers(n: int, until: Callable[[], bool], job: Callable[[int], Awaitable[bool | None]]) -> None:
    """``n`` tasks calling ``job(k)`` (k counts up across them) until ``until()`` or a job returns False."""
    counter = iter(range(1 << 62))

    async def loop() -> None:
        while not until():
            if await job(next(counter)) is False:
                return

    await asyncio.gather(*(loop() for _ in range(n)))


async def soak_transport(transport: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    endpoint: Endpoint = start_server_process(
        transport,
        workdir=workdir / transport,
        profile="instant",
        tls=True,
        settings={"store_max_bytes": int(args.store_max_mb * 2**20), "prefix_cache_blocks": args.prefix_blocks},
    )
    assert endpoint.process is not None
    sampler = Sampler(endpoint.process.pid, transport, args.sample_s, time.monotonic())
    start_mb = sampler.sample()
    task = asyncio.create_task(sampler.run())
    states = tuple(s for s in TABLE[transport].states if is_state(s))
    report: dict[str, Any] = {"transport": transport, "states": list(states), "rss_start_mb": start_mb}
    errors: list[str] = []
    try:
        # 1. mixed rollouts
        sampler.phase = "rollouts"
        deadline = time.monotonic() + args.minutes * 60
        done = {"rollouts": 0, "turns": 0}
        bar = tqdm(total=round(args.minutes * 60), desc=f"{transport} rollouts", unit="s", leave=False)
        started = time.monotonic()

        async def rollout(k: int) -> None:
            result = await one_rollout(cell(transport, states[k % len(states)]), k, endpoint)
            done["rollouts"] += 1
            done["turns"] += len(result.turns)
            if not result.success:
                errors.append(f"rollout {k}: {result.error}")
            bar.n = min(bar.total, int(time.monotonic() - started))  # whole seconds, never past the end
            bar.refresh()

        await workers(args.concurrency, lambda: time.monotonic() >= deadline or len(errors) > 20, rollout)
        bar.close()
        phase_rows = [r for r in sampler.rows if r["phase"] == "rollouts"]
        second_half = phase_rows[len(phase_rows) // 2 :]
        report["rollouts"] = {
            **done,
            "rss_end_mb": sampler.sample(),
            "rss_peak_mb": max(r["rss_mb"] for r in phase_rows),
            "slope_second_half_mb_per_min": slope_mb_per_min(second_half),
            "slope_whole_mb_per_min": slope_mb_per_min(phase_rows),
        }
        # 2. connection churn
        if transport != "https" and args.churn:
            sampler.phase = "churn"
            before = sampler.sample()
            bar = tqdm(total=args.churn, desc=f"{transport} churn", unit="conn", leave=False)
            opened = iter(range(args.churn))
            churned = 0

            async def churn(_: int) -> bool:
                nonlocal churned
                if next(opened, None) is None:
                    return False
                client = make_client(transport, endpoint.client_config())
                try:
                    await client.connect()
                    rec = TurnRecorder(transport, "full")
                    body = {"model": "m", "input": "hi", "store": False, "metadata": {"tool_calls": "0"}}
                    await client.safe_create(body, recorder=rec)
                    if not rec.success or rec.t_terminal_ns is None:
                        errors.append(f"churn: {rec.error_code}: {rec.error}")
                    else:
                        churned += 1
                except Exception as exc:  # every failure is a finding, counted and shown
                    errors.append(f"churn: {type(exc).__name__}: {exc}")
                finally:
                    await client.close()
                    bar.update(1)
                return True

            enough = lambda: len(errors) > 20  # noqa: E731
            await workers(args.churn_concurrency, enough, churn)
            bar.close()
            await asyncio.sleep(2 * args.sample_s)  # let the closed connections' state go
            report["churn"] = {
                "connections": churned,
                "rss_before_mb": before,
                "rss_after_mb": sampler.sample(),
                "growth_mb": sampler.rows[-1]["rss_mb"] - before,
            }
    finally:
        task.cancel()
        report["exit_code"] = endpoint.process.stop(30.0)
    report["errors"] = errors[:20]
    report["error_count"] = len(errors)
    report["samples"] = sampler.rows
    return report


def verdicts(report: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """What failed in one transport's report (empty: it held)."""
    bad = []
    if report["error_count"]:
        bad.append(f"{report['error_count']} errors, first: {report['errors'][0]}")
    if report["exit_code"] != 0:
        bad.append(f"the server exited with {report['exit_code']}")
    slope = report["rollouts"]["slope_second_half_mb_per_min"]
    if slope > args.max_growth_mb_per_min:
        bad.append(f"RSS still grew {slope:.1f} MB/min over the second half of the rollouts")
    churn = report.get("churn")
    if churn and churn["growth_mb"] > args.max_churn_growth_mb:
        bad.append(f"{churn['connections']} churned connections left {churn['growth_mb']:.0f} MB behind")
    return bad


def write_outputs(reports: list[dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(reports, indent=1))
    with (out / "soak.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["transport", "phase", "t_s", "rss_mb"])
        w.writeheader()
        for r in reports:
            w.writerows(r["samples"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for r in reports:
        rows = r["samples"]
        ax.plot([s["t_s"] / 60 for s in rows], [s["rss_mb"] for s in rows], label=r["transport"])
        churn_at = next((s["t_s"] / 60 for s in rows if s["phase"] == "churn"), None)
        if churn_at is not None:
            ax.axvline(churn_at, linestyle=":", linewidth=0.8, color=ax.lines[-1].get_color())
    ax.set_xlabel("minutes since the server started (dotted: connection churn begins)")
    ax.set_ylabel("server RSS (MB)")
    ax.set_title("Soak: server memory under mixed rollouts, then connection churn")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "soak.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transports", default=",".join(TRANSPORTS), help="comma-separated (default: all three)")
    p.add_argument("--minutes", type=float, default=10.0, help="mixed rollouts per transport (default 10)")
    p.add_argument("--concurrency", type=int, default=4, help="concurrent rollouts (default 4)")
    p.add_argument("--churn", type=int, default=10_000, help="connections opened and closed per transport")
    p.add_argument("--churn-concurrency", type=int, default=16)
    p.add_argument(
        "--store-max-mb",
        type=float,
        default=16.0,
        help="the servers' memory-store byte bound (default 16 MiB; the serve default, 128 MiB, takes this load "
        "~5 min to fill, so memory climbs that long before it levels off)",
    )
    p.add_argument(
        "--prefix-blocks",
        type=int,
        default=20_000,
        help="the sim engine's prefix-cache bound in 64-token blocks (default 20,000; serve's 200,000 takes "
        "this load ~5 min to fill)",
    )
    p.add_argument("--sample-s", type=float, default=2.0, help="RSS sampling period (default 2 s)")
    p.add_argument("--max-growth-mb-per-min", type=float, default=5.0)
    p.add_argument("--max-churn-growth-mb", type=float, default=40.0)
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "soak")
    args = p.parse_args(argv)
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    unknown = sorted(set(transports) - set(TRANSPORTS))
    if unknown:
        p.error(f"unknown transport(s) {unknown}; choose from {', '.join(TRANSPORTS)}")
    reports = []
    with tempfile.TemporaryDirectory(prefix="turnbench-soak-") as tmp:
        for t in transports:
            reports.append(asyncio.run(soak_transport(t, args, Path(tmp))))
    write_outputs(reports, args.out)
    failed = False
    for r in reports:
        ro, churn = r["rollouts"], r.get("churn")
        line = (
            f"{r['transport']:5s} {ro['rollouts']} rollouts ({ro['turns']} turns): RSS {r['rss_start_mb']:.0f} → "
            f"peak {ro['rss_peak_mb']:.0f} → {ro['rss_end_mb']:.0f} MB, second-half slope "
            f"{ro['slope_second_half_mb_per_min']:+.1f} MB/min (whole {ro['slope_whole_mb_per_min']:+.1f})"
        )
        if churn:
            line += (
                f"; churn {churn['connections']} connections {churn['rss_before_mb']:.0f} → "
                f"{churn['rss_after_mb']:.0f} MB"
            )
        bad = verdicts(r, args)
        failed |= bool(bad)
        print(line + ("" if not bad else "\n      FAILED: " + "; ".join(bad)))
    print(f"samples and plot: {args.out}/soak.json, soak.csv, soak.png")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
