"""``make load``: each transport under Locust, headless, for a fixed time, in Locust's distributed mode.

For each transport of ``--transports``: a server process (as ``turnbench run`` starts them, TLS on,
``--profile``), then ``locust --processes N`` (a master and N worker processes on this host; across hosts run
``locust --master`` here and ``locust --worker --master-host HOST`` there, with the same ``--tb-samples``
prefix on a shared disk) driving ``--users`` agents of ``--scenario`` for ``--run-time``; rollouts already
started finish (``--stop-timeout``). Locust writes its CSV and HTML (a live view: it rounds response times);
every worker writes its raw rollouts, and they are merged into one run's samples (:mod:`loadtests.users.merge`), from
which the table is computed: rollouts, rollouts/s over the run time, p50/p99 of turn time, TTFT and rollout
time. Output in ``--out``: ``<transport>_stats.csv``, ``<transport>.html``, ``<transport>/turns.parquet`` and
``rollouts.parquet``, ``load.md``, ``load.json``.

  python scripts/load.py                                        # https, ws, grpc: 30 s each, 2 processes
  python scripts/load.py --transports ws --processes 1 --run-time 10s
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtests.execution.procs import start_server_process, stop_endpoints
from loadtests.users.merge import summary, write_merged
from turnbench.transports import TRANSPORTS

ROOT = Path(__file__).resolve().parent.parent


def seconds(spec: str) -> float:
    """Locust's ``30s`` / ``2m`` / ``1h`` (or plain seconds) in seconds."""
    unit = {"s": 1, "m": 60, "h": 3600}.get(spec[-1:], None)
    return float(spec[:-1]) * unit if unit else float(spec)


def run_transport(transport: str, args: argparse.Namespace, out: Path, workdir: Path) -> dict[str, object]:
    row = TRANSPORTS[transport]
    assert row.server is not None
    ep = start_server_process(row.server.name, workdir=workdir / transport, profile=args.profile, tls=True,
                              settings=dict(row.server_settings))  # fmt: skip
    locust = shutil.which("locust", path=str(Path(sys.executable).parent)) or "locust"
    prefix = out / f"{transport}-samples"
    argv = [
        locust, "-f", str(ROOT / "loadtests" / "users" / "locustfile.py"), "--headless", "--processes",
        str(args.processes),
        "-u", str(args.users), "-r", str(args.spawn_rate), "--run-time", args.run_time, "--stop-timeout", "120",
        "--host", ep.url, "--tb-ca", str(ep.ca_path), "--tb-scenario", args.scenario, "--tb-samples", str(prefix),
        "--csv", str(out / transport), "--html", str(out / f"{transport}.html"), "--only-summary",
        f"{''.join(p.capitalize() for p in transport.split('-'))}User",
    ]  # fmt: skip
    log = out / f"{transport}-locust.log"
    try:
        with log.open("wb") as fh:  # a file, not a pipe: a worker that outlives the master must not hang us
            master = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
            returncode = master.wait()
            until_ns = time.perf_counter_ns()  # rollouts that ended after the master stopped are not the run's
            for _ in range(100):  # the workers quit with the master; give them 10 s, then end them
                if not _alive(master.pid):
                    break
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(master.pid, signal.SIGKILL)
    finally:
        code = stop_endpoints({transport: ep})[transport]
    turns, rollouts = write_merged(prefix, out / transport, until_ns=until_ns)
    table = summary(turns, rollouts, seconds(args.run_time))
    return {
        "transport": transport,
        "locust_exit": returncode,
        "server_exit": code,
        "rows": table.to_dict("records"),
        "stderr_tail": log.read_text(errors="replace")[-2000:] if returncode else "",
    }


def _alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still running (a gRPC worker may outlive its master)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transports", default="https,ws,grpc")
    p.add_argument("--scenario", default="agent-5")
    p.add_argument("--profile", default="fast")
    p.add_argument("--users", type=int, default=8, help="concurrent agents (default 8)")
    p.add_argument("--spawn-rate", type=float, default=4.0)
    p.add_argument("--run-time", default="30s", help="Locust's --run-time (default 30s)")
    p.add_argument("--processes", type=int, default=2, help="Locust worker processes (default 2; 1: no master)")
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "load")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="turnbench-load-") as tmp:
        for t in args.transports.split(","):
            for old in args.out.glob(f"{t}-samples.*"):
                old.unlink()  # a previous run's worker files would be merged into this one
            print(f"load: {t} for {args.run_time} with {args.users} users on {args.processes} process(es)…", flush=True)
            results.append(run_transport(t, args, args.out, Path(tmp)))
    lines = [
        f"# Load: {args.scenario}, profile {args.profile}, {args.users} users, {args.processes} Locust processes, "
        f"{args.run_time}",
        "",
        "| transport | state | rollouts | failed | rollouts/s | turn p50/p99 ms | TTFT p50/p99 ms | rollout p50 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ok = True
    for res in results:
        ok = ok and res["locust_exit"] == 0 and res["server_exit"] == 0
        for r in res["rows"]:  # type: ignore[attr-defined]
            ok = ok and r["failed"] == 0 and r["rollouts"] > 0
            lines.append(
                f"| {r['transport']} | {r['state']} | {r['rollouts']} | {r['failed']} | {r['rollouts_per_s']:.2f} | "
                f"{r['turn_p50_ms']:.1f} / {r['turn_p99_ms']:.1f} | {r['ttft_p50_ms']:.1f} / {r['ttft_p99_ms']:.1f} | "
                f"{r['rollout_p50_ms']:.1f} |"
            )
        if res["stderr_tail"]:
            print(f"locust for {res['transport']} exited {res['locust_exit']}:\n{res['stderr_tail']}", file=sys.stderr)
    text = "\n".join(lines) + "\n"
    (args.out / "load.md").write_text(text)
    (args.out / "load.json").write_text(json.dumps({"args": vars(args), "results": results}, default=str, indent=1))
    print(text)
    print(f"written: {args.out}/load.md, load.json, <transport>_stats.csv, <transport>.html")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
