"""Running a planned batch: fail and skip what the plan says, render the rest, write the
report(s)."""

from __future__ import annotations

import time
from collections.abc import Callable

from tmrender.render.batch.plan import BatchPlan
from tmrender.render.batch.report import (
    build_report,
    heartbeat,
    merge_reports,
    rank_report_path,
    wait_for_rank_reports,
)
from tmrender.render.batch.sidecars import read_sidecar, write_json_atomic
from tmrender.render.batch.workers import RowResult, run_jobs


def execute_batch(plan: BatchPlan, on_event: Callable[[object], None] | None = None) -> dict:
    """Render the plan and write the report(s); returns the report this process wrote last
    (the merged one on rank 0 of a sharded batch, else this rank's)."""
    on_event = on_event or (lambda event: None)
    started = time.time()
    results: dict[int, RowResult] = {}

    def record(event: object) -> None:
        if isinstance(event, RowResult):
            results[event.index] = event
        on_event(event)

    sharded = plan.shard.count > 1
    rank_path = rank_report_path(plan.report_path, plan.shard.index)
    plan.report_path.parent.mkdir(parents=True, exist_ok=True)
    if sharded:
        write_json_atomic(rank_path, build_report(plan, [], started, None, "running"))
    # 1. Rows that fail validation or are finished already.
    for planned in plan.planned:
        if planned.action == "fail":
            record(RowResult.for_row(planned.row, "failed", error=planned.reason))
        elif planned.action == "skip":
            seconds = (read_sidecar(planned.row.output) or {}).get("audio_seconds")
            record(RowResult.for_row(planned.row, "skipped", audio_seconds=seconds))
    # 2. Render the rest, this rank's report kept alive meanwhile.
    jobs = [p.job for p in plan.with_action("render")]
    with heartbeat(rank_path if sharded else None):
        run_jobs(jobs, plan.model_path, plan.device, plan.settings.workers, plan.threads, record)
    ordered = [results[i] for i in sorted(results)]
    report = build_report(plan, ordered, started, time.time(), "finished")
    # 3. The report: this rank's, and on rank 0 the merged one.
    if not sharded:
        write_json_atomic(plan.report_path, report)
        return report
    write_json_atomic(rank_path, report)
    if plan.shard.index != 0:
        return report
    others = wait_for_rank_reports(plan, started)
    merged = merge_reports(plan, {0: report, **others}, started)
    write_json_atomic(plan.report_path, merged)
    return merged
