"""The harness: scenarios, the run model and runner, the run directory, statistics, reports, gate, migration.

One module per idea, lower layers first (each imports only modules above it in this list)::

    scenarios   a workload as a TOML file, loaded and validated
    monitor     the load generator watching its own CPU and event-loop lag
    model       the run model: cells (with their server settings), run config, what execution gathers
    loops       closed and open loops, and the round-by-round order of cells
    stats       every number: estimators, per-cell summaries, headline, ablations, calibration
    rundir      the run directory, written and read by one class
    procs       the servers a run talks to: processes, targets, the in-process reference
    runner      the one rollout and the one start/execute/stop path; ``turnbench run``
    doc, plots  the report's document model and its figures
    report      the report of a run directory (renders migration JSON, never measures it)
    migration   migration cost, computed from the code and measured at runtime, as JSON
    bench       the benchmark matrix; orchestrates run, migration and report
    gate        the CI gate and ``turnbench compare``
    run_cli     ``turnbench run`` flags and printed output; cli: the ``turnbench`` command
    locustfile  Locust users, one per transport of the table, on the runner's rollout
"""
