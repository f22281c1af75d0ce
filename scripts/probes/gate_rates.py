"""The gate's false-fail and false-pass rates under the loads real CI runners see, for both gate modes.

For each load of ``--loads`` and each mode of ``--modes``, runs ``turnbench gate`` ``--runs`` times unchanged
(a failure is a false fail) and ``--runs`` times with each regression of ``--burns`` injected into the
candidate's servers (a pass is a false pass), the kinds alternating. The loads, started before and stopped
after each (load, mode) block:

- ``quiet``: nothing beside the gate;
- ``hogs``: two processes burning a CPU each, the whole time;
- ``bursty``: two processes that burn a CPU for a few seconds and sleep for a few, out of phase (what a
  runner shared with other jobs looks like);
- ``tests``: the project's unit and contract tests running in a loop beside the gate (``make test``'s
  heaviest neighbours, without its multi-minute end-to-end tail).

Modes: ``paired`` (``turnbench gate --against HEAD``: HEAD's servers beside this checkout's, interleaved; run
it from a clean checkout so that "unchanged" means the same code in both arms) and ``stored`` (``turnbench
gate --stored``: against ``reports/baseline.json``). Prints one line per gate run and
a table of the rates; writes everything to ``--out`` (JSON).

  python scripts/probes/gate_rates.py                                  # 10 runs each: hours on 2 cores
  python scripts/probes/gate_rates.py --runs 3 --loads quiet,bursty    # a spot check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LOADS = ("quiet", "hogs", "bursty", "tests")
MODES = ("paired", "stored")


def hog() -> None:
    while True:
        pass


def bursty(seed: int) -> None:
    """Burn a CPU for 1-5 s, sleep for 1-5 s, again and again."""
    rng = random.Random(seed)
    time.sleep(rng.uniform(0, 3))  # out of phase with its sibling
    while True:
        end = time.monotonic() + rng.uniform(1, 5)
        while time.monotonic() < end:
            pass
        time.sleep(rng.uniform(1, 5))


def tests_loop() -> None:
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", "tests/unit", "tests/contract"]
    while True:
        subprocess.run(argv, cwd=ROOT, capture_output=True, check=False)


@contextlib.contextmanager
def load(name: str) -> Iterator[None]:
    loads: dict[str, list[tuple[Callable[..., None], tuple[int, ...]]]] = {
        "quiet": [],
        "hogs": [(hog, ()), (hog, ())],
        "bursty": [(bursty, (1,)), (bursty, (2,))],
        "tests": [(tests_loop, ())],
    }
    targets = loads[name]
    procs = [multiprocessing.Process(target=fn, args=args, daemon=True) for fn, args in targets]
    for p in procs:
        p.start()
    try:
        yield
    finally:
        for p in procs:
            p.kill()
        if name == "tests":  # the loop's pytest child outlives its parent: end the whole group
            subprocess.run(["pkill", "-f", "pytest -q -p no:cacheprovider -x tests/unit"], check=False)


def gate_once(mode: str, burn: str | None, out: Path) -> dict[str, Any]:
    argv = [sys.executable, "-m", "loadtests.cli", "gate", "--out", str(out)]
    # paired: against HEAD, so "unchanged" is the same code in both arms (the burn goes to the candidate only)
    argv += ["--stored"] if mode == "stored" else ["--against", "HEAD"]
    argv += ["--burn", burn] if burn else []
    t0 = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    failed = [line.split()[1:4] for line in proc.stdout.splitlines() if line.strip().startswith("REGRESSED")]
    return {
        "mode": mode,
        "burn": burn,
        "exit_code": proc.returncode,
        "passed": proc.returncode == 0,
        "wall_s": round(time.monotonic() - t0, 1),
        "regressed": [" ".join(f) for f in failed],
        "fallback": "judging against the stored baseline" in proc.stderr,
        "tail": proc.stdout[-600:] + proc.stderr[-600:] if proc.returncode not in (0, 1) else "",
    }


def rates(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for ld in dict.fromkeys(r["load"] for r in results):
        for mode in dict.fromkeys(r["mode"] for r in results):
            mine = [r for r in results if r["load"] == ld and r["mode"] == mode]
            plain = [r for r in mine if not r["burn"]]
            burned = [r for r in mine if r["burn"]]
            rows.append(
                {
                    "load": ld,
                    "mode": mode,
                    "false_fails": sum(not r["passed"] for r in plain),
                    "unchanged_runs": len(plain),
                    "false_passes": sum(r["passed"] for r in burned),
                    "burned_runs": len(burned),
                    "median_wall_s": sorted(r["wall_s"] for r in mine)[len(mine) // 2] if mine else None,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10, help="runs of each kind per load and mode (default 10)")
    p.add_argument("--loads", default=",".join(LOADS), help=f"comma-separated, of {', '.join(LOADS)}")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    p.add_argument(
        "--burns",
        default="render=2000;safety=2000",
        help="the regressions injected, ';'-separated STAGE=US[,...] (default: 2 ms in render; 2 ms in safety)",
    )
    p.add_argument("--out", type=Path, default=Path("gate-rates.json"))
    args = p.parse_args(argv)
    loads, modes = args.loads.split(","), args.modes.split(",")
    unknown = sorted((set(loads) - set(LOADS)) | (set(modes) - set(MODES)))
    if unknown:
        p.error(f"unknown load or mode: {', '.join(unknown)}")
    kinds: list[str | None] = [None, *args.burns.split(";")]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="turnbench-gate-rates-") as tmp:
        for ld in loads:
            for mode in modes:
                with load(ld):
                    for i in range(args.runs):
                        for burn in kinds:
                            name = f"{ld}-{mode}-{i}-{burn or 'plain'}".replace("=", "").replace(",", "-")
                            r = {"load": ld, **gate_once(mode, burn, Path(tmp) / name)}
                            results.append(r)
                            verdict = "PASS" if r["passed"] else f"FAIL ({r['exit_code']})"
                            print(
                                f"{ld:7s} {mode:7s} {i + 1:2d} {burn or 'unchanged':16s} {verdict:9s} "
                                f"{r['wall_s']:6.1f} s  {'; '.join(r['regressed'][:3])}",
                                flush=True,
                            )
                            if r["tail"]:
                                print(r["tail"], flush=True)
                args.out.write_text(json.dumps({"burns": kinds[1:], "results": results}, indent=1))
    table = rates(results)
    args.out.write_text(json.dumps({"burns": kinds[1:], "rates": table, "results": results}, indent=1))
    print(f"\n{'load':8s} {'mode':7s} {'false fails':>12s} {'false passes':>13s} {'median s':>9s}")
    for row in table:
        print(
            f"{row['load']:8s} {row['mode']:7s} {row['false_fails']:>6d} of {row['unchanged_runs']:<3d} "
            f"{row['false_passes']:>6d} of {row['burned_runs']:<4d} {row['median_wall_s']:>9}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
