"""The harness: everything that drives the servers, measures them and reports what it measured.

Packages from the top down; a module imports only from its own package or from the packages below it
(``make lint`` checks this with import-linter: ``pyproject.toml``, "Harness layers")::

    cli/          the ``turnbench`` command: main (the parser, SUBCOMMANDS), one module per command owning its
                  flags (run, bench, report, gate, migration, record, advise, conform, probe), common (lazy
                  command imports)
    commands/     what a command does beyond one run: bench (the matrix, then its report), gate (the CI latency
                  gate against a stored baseline, and ``compare``), gate_paired (the gate against its base
                  revision in the same run), gate_target (the gate for an endpoint of your own, ``gate
                  --target``), advise (the cost model and its predictions), migration (what moving a client off
                  HTTPS costs), conform (the conformance cases against an endpoint or turnbench's own)
    report/       the report of a run directory: render (report.md, report.html, summary.json), option_a (the
                  option A section)
    extras/       measurements beyond the matrix, one per module with measure() + render(): steering, fanout,
                  warmup, crosshost, compaction (a rollout that compacts its history, every transport and state),
                  gateway (the answer on a production gateway); registry (the Extra record, running them, their
                  sections), common (what the WebSocket-mode ones share)
    conform/      conformance to the public specification: spec (its schemas, derived from the
                  openresponses-types package or read from an OpenAPI document, and JSON-Schema validation),
                  wire (HTTP, SSE and WebSocket mode, raw), cases (the spec's and the contract's cases), run
                  (outcomes, the table, JSON, the exit status)
    users/        Locust: locustfile (a user per transport on the runner's rollout), merge (the workers' raw
                  samples into one run)
    runs/         a run end to end: runner (one rollout; the start/execute/stop path), rundir (the run directory)
    analysis/     numbers from raw samples: estimators, cells, decomposition, headline, calibration, summary,
                  verdict; records (what summary.json holds, as typed records)
    execution/    the means of a run: plan (cells and their run.json records, run config, what execution
                  gathers), loops, procs (server processes and targets), gateways (third-party gateways in front
                  of a turnbench upstream), netem (WAN emulation), monitor and machine (the load generator and
                  the machine watched), loadgen (the load generator's verdict over a run), probe (what an
                  endpoint offers, found by trying it: ``turnbench probe``)
    workload/     what is run: scenarios (TOML files in scenarios/; State, a state strategy as a type), trace
                  (traces, importers in traces/), record_proxy (``turnbench record``)
    present/      how numbers are shown: doc (the document model, number formatting), plots
    examples/     agent loops as their users write them: sdk_http_loop and sdk_ws_loop (the official SDK over
                  HTTPS and WebSocket mode), agents_sdk (the Agents SDK); the tests run them

A new transport touches ``turnbench/transports.py`` (the table), a server and a client, not this package; a
new scenario is a TOML file in ``workload/scenarios/``; a new report section is a module in ``extras/``
registered in ``extras/registry.py`` (see CONTRIBUTING.md).
"""
