"""The paired gate: a change judged against its base revision in the same run, as ``asv continuous`` does.

A stored baseline was measured on another day, on a machine in another mood; the speed factor of
:mod:`loadtests.commands.gate` cancels a machine that is uniformly slower, but a machine that is busy in
bursts moves one cell and not the next, and a 2 ms/turn regression hides in that. Here the base revision is
checked out in a git worktree (:func:`base_checkout`), its servers start beside the candidate's, and the
runner interleaves their rollouts round by round: whatever the machine does during a round it does to both.

Each metric is then candidate ÷ base, with a **paired** bootstrap: the unit resampled is a pair of samples
taken at the same point of the workload in the same round (a turn: round, rollout, turn index; a rollout:
round, rollout), so the ratio's interval carries the change and not the machine's drift. Metrics, per cell
(transport/state):

- ``stage`` — each pipeline stage's thread CPU per turn (ratio of means);
- ``turn`` — the server's whole stage CPU per turn (ratio of means);
- ``rollout`` — rollout time (ratio of medians): what a user waits for, wider under contention.

A metric fails when the lower end of its interval is above ``1 + tolerance`` *and* the candidate costs more
than the floor more per turn (CPU kinds: a 0.1 ms stage doubling is noise, not a regression worth a red build).
Both arms run the candidate's client and harness: a change to the client is not judged here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt
import pandas as pd

from loadtests.commands import gate
from loadtests.commands.bench import Group, matrix_cells, matrix_config, matrix_record
from loadtests.commands.gate import (
    CPU_FLOOR_MS,
    Baseline,
    gate_groups,
    machine_summary,
    machine_text,
    reference_cpu_ms,
)
from loadtests.runs import runner
from loadtests.runs.rundir import RunDir
from turnbench.settings import STAGES

__all__ = [
    "PAIRED_TOLERANCES",
    "BaseUnavailable",
    "PairedMetric",
    "base_checkout",
    "judge_paired",
    "paired_metrics",
    "resolve_base",
    "run_paired",
]

PAIRED_TOLERANCES: dict[str, float] = {"stage": 0.35, "turn": 0.35, "rollout": 0.35}
"""A metric fails when its ratio's CI lies wholly above 1 + this (and above the floor, for the CPU kinds).
Pairing cancels what the machine does over time, not what differs between two server processes: identical
code read up to +16% in one stage between the arms (the processes' own layout and hash seeds), and a run
against a revision 30 commits back read +26% [+18%, +34%] in ``render``, so +35% leaves that spread room; a
2 ms burn in a 3 ms stage reads about +65% [+57%, +75%]."""
CANDIDATE, BASE = "candidate", "base"
ROUNDS = 4
"""Rounds of the paired run (even, for ABBA counterbalancing)."""
N_BOOT = 2000
ROOT = Path(__file__).resolve().parents[2]


class PairedMetric(TypedDict):
    """One metric of a paired run (:func:`paired_metrics`): its ``kind`` (``stage``, ``turn``, ``rollout``) and
    cell, the statistic in each arm, candidate ÷ base with its paired 95% CI, and the pairs it rests on."""

    metric: str
    kind: str
    cell: str
    base: float
    candidate: float
    ratio: float
    lo: float
    hi: float
    pairs: int


class BaseUnavailable(RuntimeError):
    """The base revision cannot be checked out or served here; the message says why (the gate then falls back
    to the stored baseline)."""


def _git(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60)
    if done.returncode != 0:
        raise BaseUnavailable(f"git {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()


def resolve_base(against: str | None, baseline: Baseline | None) -> tuple[str, str]:
    """The base revision as a full commit id, and where it came from: ``against`` when given (any revision
    git names), else the commit the stored baseline was measured on, else the merge base with ``origin/main``,
    else ``HEAD`` (the working tree's uncommitted change against its last commit).

    Raises: :class:`BaseUnavailable` when none of them names a commit of this repository."""
    tries: list[tuple[str, str]] = []
    if against:
        tries.append((against, f"--against {against}"))
    else:
        if baseline and baseline.get("git_commit"):
            tries.append((str(baseline["git_commit"]), "the commit the stored baseline names"))
        tries.append(("MERGE-BASE", "the merge base with origin/main"))
        tries.append(("HEAD", "HEAD"))
    errors = []
    for rev, why in tries:
        try:
            commit = _git("merge-base", "HEAD", "origin/main") if rev == "MERGE-BASE" else rev
            return _git("rev-parse", "--verify", f"{commit}^{{commit}}"), why
        except BaseUnavailable as exc:
            errors.append(f"{why}: {exc}")
    raise BaseUnavailable("no base revision: " + "; ".join(errors))


@contextlib.contextmanager
def base_checkout(commit: str) -> Iterator[Path]:
    """The base revision checked out in a temporary git worktree (removed on the way out)."""
    tmp = Path(tempfile.mkdtemp(prefix="turnbench-gate-base-"))
    tree = tmp / "base"
    _git("worktree", "add", "--detach", "--force", str(tree), commit)
    try:
        yield tree
    finally:
        with contextlib.suppress(BaseUnavailable):
            _git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(BaseUnavailable):
            _git("worktree", "prune")


def run_paired(
    out: Path,
    base_tree: Path,
    *,
    burn_us: Mapping[str, float] | None = None,
    argv: Sequence[str] = (),
    quiet: bool = True,
) -> RunDir:
    """The gate's matrix twice in one run: variant ``candidate`` (servers from this checkout, ``burn_us`` in
    them: the deliberately slowed path) and variant ``base`` (servers from ``base_tree``), their cells
    interleaved round by round by the runner.

    Raises: :class:`BaseUnavailable` when the base's servers do not start (its error in the message)."""
    groups = [
        *_paired_sizing(gate_groups(burn_us, variant=CANDIDATE)),
        *_paired_sizing(gate_groups(None, variant=BASE, source=str(base_tree))),
    ]
    config = matrix_config(out, argv=argv, quiet=quiet)
    config.counterbalance = True
    cells = matrix_cells(groups, config)
    # each cell beside its twin of the other arm: pairs run close in time, and counterbalanced over the rounds
    cells.sort(key=lambda c: (c.transport, c.state, c.variant != CANDIDATE))
    t0 = time.perf_counter()
    ref = [reference_cpu_ms()]
    try:
        collected = runner.measure(config, cells)
    except Exception as exc:
        if "src=" in str(exc) or str(base_tree) in str(exc):
            raise BaseUnavailable(f"the base revision's servers did not start: {exc}") from exc
        raise
    ref.append(reference_cpu_ms())
    meta = {"bench": matrix_record(groups, time.perf_counter() - t0), "gate": {"cpu_reference_ms": ref}}
    return RunDir.write(out, config, cells, collected, meta)


def _paired_sizing(groups: Sequence[Group]) -> list[Group]:
    """The gate's groups over :data:`ROUNDS` rounds (an even number: ABBA counterbalancing needs one) with as
    many measured rollouts per round as the stored gate's cheapest and dearest cells have in all."""
    out = []
    for g in groups:
        per_round = 2 if int(g.sizing["rollouts"]) >= 6 else 1
        out.append(dataclasses.replace(g, sizing={**g.sizing, "rounds": ROUNDS, "rollouts": per_round * ROUNDS}))
    return out


# ------------------------------------------------------------------------------------------------ metrics


@dataclass(frozen=True)
class Paired:
    """One metric's paired samples: candidate and base values, one pair per row."""

    kind: str
    cell: str
    candidate: npt.NDArray[np.float64]
    base: npt.NDArray[np.float64]
    how: str  # "mean" or "median": the statistic whose ratio is judged


def _ranked(df: pd.DataFrame) -> pd.DataFrame:
    """Each measured, successful row of one arm with its pair key: round, the rollout's rank in its round and
    cell (rollout ids are unique per run, ranks line the arms up), and turn index when present."""
    ok = df[(~df["warmup"].astype(bool)) & df["success"].astype(bool)].copy()
    ok["rank"] = ok.groupby(["label", "round"])["rollout_id"].rank(method="dense").astype(int)
    return ok


def _pairs(cand: pd.DataFrame, base: pd.DataFrame, keys: list[str], col: str) -> pd.DataFrame:
    c = cand[[*keys, col]].rename(columns={col: "candidate"})
    b = base[[*keys, col]].rename(columns={col: "base"})
    return c.merge(b, on=keys, how="inner").dropna(subset=["candidate", "base"])


def paired_samples(run: RunDir) -> list[Paired]:
    """Every metric's pairs from a paired run (see the module docstring)."""
    turns, rollouts = _ranked(run.turns), _ranked(run.rollouts)
    stage_cols = [c for c in (f"stage_{s}_cpu_ms" for s in STAGES) if c in turns.columns]
    turns = turns.assign(**{c: turns[c].fillna(0.0) for c in stage_cols})
    turns["stages_cpu_ms"] = turns[stage_cols].sum(axis=1) if stage_cols else np.nan
    out: list[Paired] = []
    tkeys, rkeys = ["label", "round", "rank", "turn_index"], ["label", "round", "rank"]
    for label in sorted(set(turns["label"])):
        ct = turns[(turns["label"] == label) & (turns["variant"] == CANDIDATE)]
        bt = turns[(turns["label"] == label) & (turns["variant"] == BASE)]
        for col in [*stage_cols, "stages_cpu_ms"]:
            p = _pairs(ct, bt, tkeys, col)
            kind = "turn" if col == "stages_cpu_ms" else "stage"
            name = "all-stages" if kind == "turn" else col[6:-7]
            if len(p) and (p["candidate"].abs().sum() or p["base"].abs().sum()):
                out.append(
                    Paired(f"{kind}:{name}", str(label), p["candidate"].to_numpy(), p["base"].to_numpy(), "mean")
                )
        cr = rollouts[(rollouts["label"] == label) & (rollouts["variant"] == CANDIDATE)]
        br = rollouts[(rollouts["label"] == label) & (rollouts["variant"] == BASE)]
        p = _pairs(cr, br, rkeys, "rollout_ms")
        if len(p):
            out.append(Paired("rollout", str(label), p["candidate"].to_numpy(), p["base"].to_numpy(), "median"))
    return out


def paired_ratio(
    cand: npt.NDArray[np.float64], base: npt.NDArray[np.float64], how: str, *, n_boot: int = N_BOOT, seed: int = 0
) -> tuple[float, float, float]:
    """stat(candidate) ÷ stat(base) and its 95% interval by a paired bootstrap: the same resampled pair
    indices feed both arms, so what moved both (the machine) cancels in each resample."""
    stat = np.mean if how == "mean" else np.median
    b = float(stat(base))
    est = float(stat(cand)) / b if b else math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(cand), size=(n_boot, len(cand)))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = stat(cand[idx], axis=1) / stat(base[idx], axis=1)
    ratios = ratios[np.isfinite(ratios)]
    if not ratios.size:
        return est, math.nan, math.nan
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return est, float(lo), float(hi)


def paired_metrics(run: RunDir, *, n_boot: int = N_BOOT, seed: int = 0) -> list[PairedMetric]:
    """One row per metric of a paired run: kind, cell, the statistic in each arm, the ratio and its CI, and
    the pairs it rests on."""
    rows: list[PairedMetric] = []
    for p in paired_samples(run):
        stat = np.mean if p.how == "mean" else np.median
        ratio, lo, hi = paired_ratio(p.candidate, p.base, p.how, n_boot=n_boot, seed=seed)
        rows.append(
            {
                "metric": f"{p.kind} {p.cell}",
                "kind": p.kind.split(":")[0],
                "cell": p.cell,
                "base": float(stat(p.base)),
                "candidate": float(stat(p.candidate)),
                "ratio": ratio,
                "lo": lo,
                "hi": hi,
                "pairs": len(p.candidate),
            }
        )
    return rows


def judge_paired(
    rows: Sequence[PairedMetric], tolerances: Mapping[str, float] = PAIRED_TOLERANCES
) -> tuple[pd.DataFrame, bool]:
    """Each metric's status: ``REGRESSED`` (its whole interval above 1 + tolerance and, for CPU, the candidate
    above the base by more than the floor per turn), ``improved`` (symmetrically below), else ``ok``.
    Returns: (table, passed). An empty run fails: nothing was judged."""
    out = []
    for r in rows:
        tol = float(tolerances.get(str(r["kind"]), 0.25))
        floor = CPU_FLOOR_MS if r["kind"] in ("stage", "turn") else 0.0
        rise = float(r["candidate"]) - float(r["base"])
        status = "ok"
        if float(r["lo"]) > 1 + tol and rise > floor:
            status = "REGRESSED"
        elif float(r["hi"]) < 1 / (1 + tol) and -rise > floor:
            status = "improved"
        out.append({**r, "tolerance": tol, "change_pct": (float(r["ratio"]) - 1) * 100, "status": status})
    table = pd.DataFrame(out)
    passed = bool(len(table)) and not (table["status"] == "REGRESSED").any()
    return table, passed


def format_paired(table: pd.DataFrame, *, show: int = 12) -> str:
    """Every failure, then the largest other moves: metric, base and candidate, ratio [95% CI], change."""
    if table.empty:
        return "no paired metrics: the run has no cell measured in both arms"
    t = table.assign(order=table["status"].map({"REGRESSED": 0, "improved": 1}).fillna(2))
    t = t.assign(move=(t["ratio"] - 1).abs()).sort_values(["order", "move"], ascending=[True, False])
    bad = t[t["order"] == 0]
    t = pd.concat([bad, t[t["order"] > 0].head(max(0, show - len(bad)))])
    lines = [f"{'status':<10} {'metric':<44} {'base':>9} {'candidate':>9} {'ratio [95% CI]':>22} {'change':>8}"]
    for r in t.itertuples():
        ci = f"{r.ratio:.3f} [{r.lo:.3f}, {r.hi:.3f}]"
        lines.append(
            f"{r.status:<10} {r.metric:<44} {r.base:>9.4g} {r.candidate:>9.4g} {ci:>22} {r.change_pct:>+7.1f}%"
        )
    n_bad = int((table["status"] == "REGRESSED").sum())
    tols = ", ".join(f"{k} +{v:.0%}" for k, v in sorted(set(zip(table["kind"], table["tolerance"], strict=True))))
    lines.append(
        f"{len(table)} metrics, candidate ÷ base with paired 95% CIs; {n_bad} failed; tolerances: {tols}; "
        f"CPU metrics also need a rise above {CPU_FLOOR_MS} ms/turn"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ command


def _stored(path: Path) -> Baseline | None:
    try:
        data: Baseline = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data


def cmd_gate(args: Any) -> int:
    """``turnbench gate``: the paired gate (see the module docstring) unless ``--stored``, ``--run`` or
    ``--write-baseline`` ask for the stored baseline; when the base revision cannot be checked out or served,
    the stored baseline judges instead and the output says why. 0 pass, 1 regression, 2 usage error."""
    if args.stored or args.run is not None or args.write_baseline:
        return gate.cmd_gate(args)
    burn: dict[str, float] = {}
    for part in args.burn:
        burn.update(part)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or Path("reports") / "runs" / f"{stamp}-gate-paired"
    try:
        commit, why = resolve_base(args.against, _stored(args.baseline))
        with base_checkout(commit) as tree:
            print(
                f"gate: candidate (this checkout{f', burn_us {burn}' if burn else ''}) against base {commit[:12]} "
                f"({why}), interleaved round by round → {out}",
                file=sys.stderr,
            )
            run = run_paired(out, tree, burn_us=burn, argv=sys.argv)
    except BaseUnavailable as exc:
        print(f"gate: the paired mode cannot run ({exc}); judging against the stored baseline", file=sys.stderr)
        return gate.cmd_gate(args)
    table, passed = judge_paired(paired_metrics(run))
    print(format_paired(table))
    print(machine_text(machine_summary(run), paired=True))
    print(f"gate: {'PASS' if passed else 'FAIL'} (paired: run {run.path}, base {commit[:12]})")
    return 0 if passed else 1
