"""Batch rendering from a CSV manifest: survives bad rows, crashes and many machines.

    prepare_batch:  read the manifest -> take this shard's rows -> validate every row
                    -> hash inputs and model -> plan each row: render, skip or fail
    execute_batch:  render the planned rows (in-process, or N worker processes that each
                    load the model once) -> per-row results -> JSON report(s)

Modules:
- `plan`: settings, shards, and each row's plan (`prepare_batch`);
- `sidecars`: the sidecar that marks a finished output (resume);
- `workers`: rendering jobs in this process or in worker processes, row events;
- `report`: per-rank JSON reports, rank 0 waiting for and merging them;
- `execute`: `execute_batch`, which runs a plan with the three above.

None of them prints: progress goes to an `on_event` callback.
"""
