"""Throughput and capacity per transport at 1 and N server workers (``turnbench serve --workers N``).

For each worker count, two runs of ``--scenario`` (default ``agent-5``: five tool calls, the ``fast``
profile) over ``--transports`` (https in state ``full``, ws and grpc in ``connection``), every cell's server
started with ``workers = W``:

- **throughput**: a closed loop of ``--concurrency`` rollouts in flight (default 8): rollouts/s;
- **capacity**: an open loop (Poisson arrivals, the clock of a rollout starting at its scheduled arrival, so
  queueing counts) at each rate of ``--rates``, for ``--duration-s`` of arrivals each (a burst too short never
  builds a queue); the capacity is the highest rate whose p99 TTFT stays within ``--slo-ms`` with no failed
  rollout and whose arrivals were served as they came (achieved rate ≥ 90% of offered; ``≥ R`` when even the
  highest rate tested passes).

Prints both tables and writes ``capacity.json``, ``capacity.md`` and ``capacity.png`` (p99 TTFT against the
offered rate, one line per transport and worker count, the SLO drawn) to ``--out``. On a 2-core machine the
load generator shares the cores with the workers, so a second worker helps only where the server, not the
client, was the bottleneck: the run's own load-generator warnings say which.

  python scripts/capacity.py                                   # ~2 min on 2 cores
  python scripts/capacity.py --workers 1,4 --rates 4,8,16,32 --slo-ms 150
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from loadtests.cli.run import print_warnings
from loadtests.execution.plan import RunConfig, plan_cells
from loadtests.runs import runner
from loadtests.workload.scenarios import State, load_scenario

ROOT = Path(__file__).resolve().parent.parent

STATE: dict[str, State] = {"https": "full", "ws": "connection", "grpc": "connection"}
"""The state each transport is measured in: how its users run it (WebSocket mode and gRPC Connect keep the
conversation on the connection)."""


def _csv(kind: type, raw: str) -> list[Any]:
    return [kind(x) for x in raw.split(",") if x]


def measure(args: argparse.Namespace, workers: int, out: Path) -> list[dict[str, Any]]:
    """One worker count: the closed-loop run, then the open-loop sweep. Returns one row per transport and
    load (rate or concurrency)."""
    base = load_scenario(args.scenario)
    rows: list[dict[str, Any]] = []
    # the closed loop, then one run per offered rate: an open loop must last long enough for a queue to build
    # (``--duration-s`` of arrivals: 16 rollouts at 96/s would all arrive within 0.17 s and never queue)
    loads: list[tuple[str, float | None]] = [("closed", None), *(("open", r) for r in args.rates)]
    for mode, rate in loads:
        n = args.rollouts if rate is None else max(args.rollouts, int(rate * args.duration_s))
        sc = base.replace(rollouts=n, rounds=2 if rate is None else 1, warmup=1)
        config = RunConfig(
            scenarios=[sc],
            transports=args.transports,
            states=None,
            profiles=(args.profile,),
            concurrency=(args.concurrency,) if rate is None else None,
            rates_rps=(rate,) if rate is not None else None,
            server_settings={"workers": workers} if workers > 1 else {},
            variant=f"workers-{workers}",
            out_dir=out / f"workers-{workers}-{mode}{'' if rate is None else f'-{rate:g}'}",
            quiet=True,
        )
        cells = [c for c in plan_cells(config) if c.state == STATE.get(c.transport, "full")]
        run = runner.run(config, cells)
        print_warnings(run, sys.stdout)
        achieved = _achieved(run)
        for cid, c in run.summary["cells"].items():
            ttft = c["metrics"].get("ttft_ms")
            rows.append(
                {
                    "workers": workers,
                    "mode": mode,
                    "transport": c["transport"],
                    "state": c["state"],
                    "rate_rps": c["arrival_rate_rps"],
                    "concurrency": c["concurrency"],
                    "rollouts_per_s": c.get("rollouts_per_s"),
                    "achieved_rps": achieved.get(cid),
                    "ttft_p50_ms": ttft["p50"] if ttft else None,
                    "ttft_p99_ms": ttft["p99"] if ttft else None,
                    "failed": c["failed_rollouts"],
                    "server_cpu_ms_per_turn": c.get("server_cpu_ms_per_turn"),
                }
            )
    return rows


def _achieved(run: Any) -> dict[str, float]:
    """Per cell: measured rollouts ÷ the time from the first one's scheduled start to the last one's end."""
    t = run.turns[~run.turns["warmup"].astype(bool)]
    out = {}
    for cell, g in t.groupby("cell"):
        start = float(g["t_scheduled_ns"].min())
        end = float((g["t_send_ns"] + g["turn_ms"].fillna(0.0) * 1e6).max())
        n = g["rollout_id"].nunique()
        out[str(cell)] = n / ((end - start) / 1e9) if end > start else math.nan
    return out


def capacity(rows: list[dict[str, Any]], slo_ms: float) -> list[dict[str, Any]]:
    """Per workers × transport × state: closed-loop rollouts/s and the highest rate within the SLO."""
    out = []
    keys = sorted({(r["workers"], r["transport"], r["state"]) for r in rows})
    for w, t, s in keys:
        mine = [r for r in rows if (r["workers"], r["transport"], r["state"]) == (w, t, s)]
        sweep = sorted((r for r in mine if r["mode"] == "open"), key=lambda r: r["rate_rps"])
        # within the SLO, no failure, and the arrivals were served as they came (achieved ≥ 90% of offered)
        ok = [
            r["rate_rps"]
            for r in sweep
            if r["failed"] == 0
            and (r["ttft_p99_ms"] or math.inf) <= slo_ms
            and (r.get("achieved_rps") or 0.0) >= 0.9 * r["rate_rps"]
        ]
        # the highest rate below the first one that broke the SLO (a later lucky pass does not count)
        cap = None
        for r in sweep:
            if r["rate_rps"] not in ok:
                break
            cap = r["rate_rps"]
        closed = next((r for r in mine if r["mode"] == "closed"), {})
        out.append(
            {
                "workers": w,
                "transport": t,
                "state": s,
                "rollouts_per_s": closed.get("rollouts_per_s"),
                "capacity_rps": cap,
                "capacity_is_lower_bound": bool(sweep) and cap == sweep[-1]["rate_rps"],
            }
        )
    return out


def markdown(caps: list[dict[str, Any]], rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"# Throughput and capacity: {args.scenario}, profile {args.profile}",
        "",
        f"Throughput: closed loop, {args.concurrency} rollouts in flight. Capacity: the highest Poisson arrival "
        f"rate (of {', '.join(f'{r:g}' for r in args.rates)}/s, {args.duration_s:g} s of arrivals each) whose p99 "
        f"TTFT stays within {args.slo_ms:g} ms with no failure and whose arrivals were served as they came "
        "(achieved ≥ 90% of offered).",
        "",
        "| transport | state | workers | rollouts/s (closed loop) | capacity, rollouts/s at the SLO |",
        "|---|---|---|---|---|",
    ]
    for c in caps:
        cap = "none tested" if c["capacity_rps"] is None else f"{c['capacity_rps']:g}"
        if c["capacity_is_lower_bound"]:
            cap = f"≥ {cap}"
        thr = "-" if c["rollouts_per_s"] is None else f"{c['rollouts_per_s']:.2f}"
        lines.append(f"| {c['transport']} | {c['state']} | {c['workers']} | {thr} | {cap} |")
    lines += [
        "",
        "| transport | state | workers | offered/s | achieved/s | p50 TTFT ms | p99 TTFT ms | failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(
        (r for r in rows if r["mode"] == "open"), key=lambda r: (r["transport"], r["workers"], r["rate_rps"])
    ):
        lines.append(
            f"| {r['transport']} | {r['state']} | {r['workers']} | {r['rate_rps']:g} | "
            f"{(r.get('achieved_rps') or math.nan):.1f} | "
            f"{(r['ttft_p50_ms'] or math.nan):.1f} | {(r['ttft_p99_ms'] or math.nan):.1f} | {r['failed']} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], slo_ms: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    open_rows = [r for r in rows if r["mode"] == "open"]
    for key in sorted({(r["transport"], r["state"], r["workers"]) for r in open_rows}):
        pts = sorted(
            (r for r in open_rows if (r["transport"], r["state"], r["workers"]) == key), key=lambda r: r["rate_rps"]
        )
        t, s, w = key
        ax.plot(
            [r["rate_rps"] for r in pts],
            [r["ttft_p99_ms"] for r in pts],
            marker="o",
            linestyle="-" if w == 1 else "--",
            label=f"{t}/{s}, {w} worker{'s' if w > 1 else ''}",
        )
    ax.axhline(slo_ms, color="grey", linewidth=1)
    ax.text(ax.get_xlim()[0], slo_ms, f" SLO {slo_ms:g} ms", va="bottom", color="grey")
    ax.set_xlabel("offered load (rollouts/s, Poisson)")
    ax.set_ylabel("p99 TTFT (ms)")
    ax.set_yscale("log")
    ax.set_title("p99 TTFT against offered load, 1 and more server workers")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="agent-5")
    p.add_argument("--profile", default="fast")
    p.add_argument("--transports", type=lambda s: _csv(str, s), default=["https", "ws", "grpc"])
    p.add_argument("--workers", type=lambda s: _csv(int, s), default=[1, 2], help="worker counts (default 1,2)")
    p.add_argument("--rates", type=lambda s: _csv(float, s), default=[16.0, 32.0, 64.0, 96.0])
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rollouts", type=int, default=16, help="measured rollouts per closed-loop cell (default 16)")
    p.add_argument("--duration-s", type=float, default=4.0, help="seconds of arrivals per offered rate (default 4)")
    p.add_argument("--slo-ms", type=float, default=100.0, help="p99 TTFT objective (default 100 ms)")
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "capacity")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = [row for w in args.workers for row in measure(args, w, args.out / "runs")]
    caps = capacity(rows, args.slo_ms)
    text = markdown(caps, rows, args)
    (args.out / "capacity.md").write_text(text)
    (args.out / "capacity.json").write_text(
        json.dumps({"capacity": caps, "rows": rows, "args": vars(args)}, default=str, indent=1)
    )
    plot(rows, args.slo_ms, args.out / "capacity.png")
    print(text)
    print(f"written: {args.out}/capacity.md, capacity.json, capacity.png ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
