"""Measurements beyond the matrix: each one runs after it in ``turnbench bench`` and is a section of the report.

The matrix answers one question (an agent loop's rollout time per transport and state). Some questions need
a setup of their own: two server hosts sharing a Redis store (cross-host hydration), a user steering a running
answer, one orchestrator fanning out to sub-agents, a warmed-up first turn. Each is an :class:`Extra`:

- ``measure(quick)`` starts what it needs (server processes, ``redis-server``), measures, stops it all and
  returns JSON-able data (its parameters, its rows); bench writes it to ``<run dir>/<name>.json``;
- ``render(doc, data)`` writes the section's body from that data, so ``turnbench report DIR`` reruns nothing;
- ``plot(data, path)`` (optional) draws the section's figure from the same data as a PNG at ``path`` (under the
  report's ``plots/``), shown after the body;
- ``command`` measures it alone (a ``scripts/`` tool prints the same rows).

An extra that cannot run on this machine raises :class:`Unavailable` (no ``redis-server``): its file says why
and so does the report. One that fails is recorded with its error and the report says so; the others still run.
On a budget (``deadline``) an extra whose estimated time no longer fits is skipped, and its section says so.

Against an endpoint of someone else's (``turnbench bench --target``), each extra declares what it needs
(:attr:`Extra.needs`: capabilities as :mod:`loadtests.execution.probe` names them, and :data:`OWN_SERVERS` for
one that measures what only a server it starts can show: its process's CPU, a Redis store between two hosts).
:func:`cannot_run` compares that with the probe's findings; an extra the endpoint cannot take is not run, its
file says why (``not_offered``) and so does the report. The others run against the endpoint
(:func:`loadtests.extras.common.against`).
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from loadtests.execution.probe import ProbeResult
from loadtests.execution.procs import Endpoint
from loadtests.extras.common import against
from loadtests.present.doc import Doc
from loadtests.runs.rundir import write_json

__all__ = [
    "EXTRA_MODULES",
    "OWN_SERVERS",
    "Extra",
    "ExtraResult",
    "Unavailable",
    "add_sections",
    "all_extras",
    "cannot_run",
    "run_extras",
]

OWN_SERVERS = "own_servers"
"""A need no endpoint of someone else's meets: the extra starts its servers to measure what only they show."""

log = logging.getLogger("turnbench.extras")


class Unavailable(Exception):
    """This machine cannot run the measurement (a missing program); the message says what is missing."""


class ExtraResult(TypedDict, total=False):
    """What an extra's ``measure`` returns and ``<run dir>/<name>.json`` holds.

    An extra fills some of ``parameters`` (what it ran with), ``rounds`` (one row per round and way, raw
    values), ``medians`` and ``means`` (per way, or per value), ``rows``, ``hydration_cost`` and
    ``stores_unavailable`` (:mod:`~loadtests.extras.crosshost`), ``cells`` (:mod:`~loadtests.extras.compaction`).
    :func:`run_extras` adds ``wall_s`` (seconds it took), ``target`` (transport → URL, when it ran against an
    endpoint of someone else's) and, in place of the data, ``skipped``, ``unavailable``, ``not_offered`` (what
    the endpoint lacks, one reason each) or ``error`` (with its ``traceback``): why there is none.
    """

    parameters: dict[str, Any]
    rounds: list[dict[str, Any]]
    medians: dict[str, Any]
    means: dict[str, Any]
    rows: list[dict[str, Any]]
    hydration_cost: dict[str, dict[str, dict[str, float | None]]]
    stores_unavailable: dict[str, str]
    cells: list[dict[str, Any]]
    skipped: str
    unavailable: str
    not_offered: list[str]
    target: dict[str, str]
    error: str
    traceback: str
    wall_s: float


@dataclass(frozen=True)
class Extra:
    """One measurement beyond the matrix (see the module docstring).

    ``est_s``: its rough time in seconds on a quiet 2-core machine, (quick, full), for the budget.
    ``plot``: draws its figure into the path given, returns the caption (None: the data allow none). ``needs``:
    the capabilities an endpoint must offer for it to run there (:data:`OWN_SERVERS`: it runs only against the
    servers it starts), ``own_why`` what it measures that only those show.
    """

    name: str
    title: str
    measure: Callable[[bool], ExtraResult]
    render: Callable[[Doc, ExtraResult], None]
    command: str
    est_s: tuple[float, float]
    plot: Callable[[ExtraResult, Path], str | None] | None = None
    needs: tuple[str, ...] = ()
    own_why: str = ""


def cannot_run(extra: Extra, found: ProbeResult) -> list[str]:
    """Why ``extra`` cannot run against the probed endpoint, one reason per missing need (``no lanes``, …);
    empty when it can."""
    out = []
    for need in extra.needs:
        if need == OWN_SERVERS:
            out.append(f"it runs only against servers it starts: {extra.own_why or 'it measures their process'}")
        elif not found.offers(need):
            out.append(found.why_not(need))
    return out


EXTRA_MODULES: tuple[str, ...] = (
    "loadtests.extras.steering",
    "loadtests.extras.fanout",
    "loadtests.extras.warmup",
    "loadtests.extras.crosshost",
    "loadtests.extras.compaction",
    "loadtests.extras.gateway",
)
"""Modules whose ``EXTRA`` (an :class:`Extra`) bench runs, in this order; the report's sections follow the same
order. Imported by name when needed: each of them imports this module for :class:`Extra`."""


def all_extras() -> list[Extra]:
    """Every extra of :data:`EXTRA_MODULES`, in order."""
    return [importlib.import_module(name).EXTRA for name in EXTRA_MODULES]


def run_extras(
    run_dir: Path,
    *,
    quick: bool = False,
    deadline: float | None = None,
    quiet: bool = True,
    only: Sequence[str] | None = None,
    target: tuple[ProbeResult, Mapping[str, Endpoint]] | None = None,
) -> dict[str, str]:
    """Measure every extra (``only``: those named) into ``run_dir/<name>.json``. ``deadline``: the
    ``time.monotonic()`` by which they must be done; an extra whose estimate no longer fits is skipped.
    ``target``: an endpoint of someone else's (the probe's findings, its endpoints by server protocol): an
    extra runs against it if it offers what the extra needs, else its file says what is missing.
    Returns: name → outcome (``ok``, ``unavailable``, ``not_offered``, ``skipped``, ``error``)."""
    outcomes: dict[str, str] = {}
    for extra in all_extras():
        if only is not None and extra.name not in only:
            continue
        est = extra.est_s[0 if quick else 1]
        left = None if deadline is None else deadline - time.monotonic()
        t0 = time.perf_counter()
        data: ExtraResult
        missing = cannot_run(extra, target[0]) if target is not None else []
        if missing:
            data = {"not_offered": missing}
            outcome = "not_offered"
        elif left is not None and left < est:
            data = {"skipped": f"the time budget had {max(0.0, left):.0f} s left; it needs ~{est:.0f} s"}
            outcome = "skipped"
        else:
            if not quiet:
                print(f"bench: {extra.title} (~{est:.0f} s)", flush=True)
            try:
                with against(target[1] if target is not None else None):
                    data = {**extra.measure(quick)}
                if target is not None:
                    data["target"] = {k: ep.url for k, ep in target[1].items()}
                outcome = "ok"
            except Unavailable as exc:
                data, outcome = {"unavailable": str(exc)}, "unavailable"
            except Exception as exc:  # one extra failing must not lose the others, nor the report
                log.exception("extra %s failed", extra.name)
                data = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=8)}
                outcome = "error"
            data["wall_s"] = time.perf_counter() - t0
        write_json(run_dir / f"{extra.name}.json", data)
        outcomes[extra.name] = outcome
        if not quiet and outcome != "ok":
            print(f"bench: {extra.title}: {outcome} ({next(iter(data.values()))})", flush=True)
    return outcomes


def add_sections(d: Doc, run_dir: Path, out: Path | None = None) -> None:
    """One section per extra: rendered from ``run_dir/<name>.json``, or a line saying why it is not there; its
    figure, if it has one, goes to ``<out>/plots/<name>.png`` (``out``: where the report is written, default
    ``run_dir``). Each is built on its own (:meth:`Doc.section`): an extra whose file or renderer fails costs
    only its section."""
    for extra in all_extras():
        d.section(extra.title, functools.partial(_section, d, extra, run_dir, out or run_dir))


def _section(d: Doc, extra: Extra, run_dir: Path, out: Path) -> None:
    d.h2(extra.title)
    path = run_dir / f"{extra.name}.json"
    if not path.is_file():
        d.p(f"*Not measured in this run: `turnbench bench` measures it, `{extra.command}` alone.*")
        return
    data: ExtraResult = json.loads(path.read_text(encoding="utf-8"))
    if "not_offered" in data:
        d.p("*Not measured: the endpoint cannot take it:*")
        d.bullets(data["not_offered"])
    elif "unavailable" in data:
        d.p(f"*Not measured: this machine cannot run it ({data['unavailable']}).*")
    elif "skipped" in data:
        d.p(f"*Skipped to keep the time budget ({data['skipped']}); `{extra.command}` measures it alone.*")
    elif "error" in data:
        d.p(f"**The measurement failed:** `{data['error']}` (traceback in `{path.name}`).")
    else:
        extra.render(d, data)
        if extra.plot is not None:
            path = out / "plots" / f"{extra.name}.png"
            caption = extra.plot(data, path)
            if caption is not None:
                d.figure(path, caption)
