"""The gate's false-fail and false-pass rates on a busy machine.

Runs ``turnbench gate`` against the committed baseline ``--runs`` times unchanged (a failure is a false fail)
and ``--runs`` times with a CPU burn in one stage (``--burn``, default ``render=2000``: 2 ms per request; a
pass is a false pass), alternating the two, with ``--hogs`` CPU-burning processes running beside it the
whole time. Prints each run's verdict, wall time and the metrics that failed, then the two rates; writes
them to ``--out`` (JSON).

  python scripts/gate_rates.py                       # 10 + 10 runs, 2 hogs (~25 min on 2 cores)
  python scripts/gate_rates.py --runs 3 --hogs 0     # a quiet-machine spot check
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def hog() -> None:
    while True:
        pass


def gate_once(burn: str | None, out: Path) -> dict[str, Any]:
    argv = [sys.executable, "-m", "loadtests.cli", "gate", "--out", str(out)]
    if burn:
        argv += ["--burn", burn]
    t0 = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    failed = [line.split()[1:] for line in proc.stdout.splitlines() if line.strip().startswith("REGRESSED")]
    return {
        "burn": burn,
        "exit_code": proc.returncode,
        "passed": proc.returncode == 0,
        "wall_s": round(wall, 1),
        "regressed": [" ".join(f[:4]) for f in failed],
        "tail": proc.stdout[-600:] + proc.stderr[-600:] if proc.returncode not in (0, 1) else "",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10, help="runs of each kind (default 10)")
    p.add_argument("--hogs", type=int, default=2, help="CPU-burning processes beside the gate (default 2)")
    p.add_argument("--burn", default="render=2000", help="the regression injected (default render=2000)")
    p.add_argument("--out", type=Path, default=Path("gate-rates.json"))
    args = p.parse_args(argv)
    hogs = [multiprocessing.Process(target=hog, daemon=True) for _ in range(args.hogs)]
    for h in hogs:
        h.start()
    results: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="turnbench-gate-rates-") as tmp:
            for i in range(args.runs):
                for burn in (None, args.burn):
                    r = gate_once(burn, Path(tmp) / f"run-{i}-{'burn' if burn else 'plain'}")
                    results.append(r)
                    kind = f"burn {burn}" if burn else "unchanged"
                    verdict = "PASS" if r["passed"] else f"FAIL ({r['exit_code']})"
                    print(f"{i + 1:2d} {kind:18s} {verdict:9s} {r['wall_s']:6.1f} s  {'; '.join(r['regressed'])}")
                    if r["tail"]:
                        print(r["tail"])
    finally:
        for h in hogs:
            h.kill()
    plain = [r for r in results if not r["burn"]]
    burned = [r for r in results if r["burn"]]
    summary = {
        "hogs": args.hogs,
        "burn": args.burn,
        "false_fail": sum(not r["passed"] for r in plain),
        "false_pass": sum(r["passed"] for r in burned),
        "runs_each": args.runs,
        "median_wall_s": sorted(r["wall_s"] for r in results)[len(results) // 2],
        "results": results,
    }
    args.out.write_text(json.dumps(summary, indent=1))
    print(
        f"with {args.hogs} CPU hogs: false fails {summary['false_fail']}/{len(plain)} (unchanged runs that failed), "
        f"false passes {summary['false_pass']}/{len(burned)} ({args.burn} runs that passed); "
        f"median gate wall time {summary['median_wall_s']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
