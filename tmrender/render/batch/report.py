"""The JSON report of a batch, and its multi-rank form.

With more than one shard each rank writes `<report stem>.rank<R>.json` beside the final
report; rank 0 polls for the others (a per-rank report counts when it names the same
manifest and world size, is finished, and finished at most FRESH_SECONDS before rank 0
started), and merges them. It gives up after `merge_timeout` seconds without a sign of life
from any other rank (running ranks touch their report every HEARTBEAT_SECONDS); rows of
ranks that never reported are listed as failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

from tmrender.render.batch.plan import BatchPlan
from tmrender.render.batch.workers import RowResult

REPORT_FORMAT = "tmrender-batch-report/1"
HEARTBEAT_SECONDS = 10.0
FRESH_SECONDS = 300.0  # a finished per-rank report older than rank 0's start by more is stale
POLL_SECONDS = 1.0  # rank 0 looking for per-rank reports


@contextlib.contextmanager
def heartbeat(path: Path | None):
    """Touch `path` every HEARTBEAT_SECONDS while the block runs (a sign of life)."""
    if path is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(OSError):
                os.utime(path)

    thread = threading.Thread(target=beat, name="tmrender-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def rank_report_path(report: Path, rank: int) -> Path:
    """`batch-report.json` -> `batch-report.rank3.json` (beside the final report)."""
    return report.with_name(f"{report.stem}.rank{rank}{report.suffix}")


def build_report(
    plan: BatchPlan,
    results: Sequence[RowResult],
    started: float,
    finished: float | None,
    state: str,
) -> dict:
    """The JSON report of this process's rows."""
    return {
        "format": REPORT_FORMAT,
        "state": state,
        "fingerprint": plan.fingerprint,
        "manifest": str(plan.manifest),
        "model": str(plan.model_path),
        "model_sha256": plan.model_sha256,
        "device": plan.device,
        "workers": plan.settings.workers,
        "shard": plan.shard.label,
        "started_at": started,
        "finished_at": finished,
        "totals": summarize(results, (finished or time.time()) - started),
        "rows": [asdict(r) for r in results],
    }


def summarize(results: Iterable[RowResult | dict], wall_seconds: float) -> dict:
    """Counts by status, seconds of audio rendered and clip-seconds per wall second."""
    rows = [r if isinstance(r, dict) else asdict(r) for r in results]
    rendered = sum(r["audio_seconds"] or 0.0 for r in rows if r["status"] == "ok")
    return {
        "rows": len(rows),
        "ok": sum(r["status"] == "ok" for r in rows),
        "skipped": sum(r["status"] == "skipped" for r in rows),
        "failed": sum(r["status"] == "failed" for r in rows),
        "audio_seconds_rendered": rendered,
        "wall_seconds": wall_seconds,
        "clip_seconds_per_second": rendered / wall_seconds if wall_seconds > 0 else 0.0,
    }


def wait_for_rank_reports(plan: BatchPlan, started: float) -> dict[int, dict]:
    """Rank 0: poll for the other ranks' finished reports; give up after
    `merge_timeout` seconds without a sign of life from any of them."""
    timeout = plan.settings.merge_timeout
    last_sign = time.time()
    found: dict[int, dict] = {}
    while True:
        for rank in range(1, plan.shard.count):
            if rank in found:
                continue
            path = rank_report_path(plan.report_path, rank)
            report, mtime = _read_rank_report(path, plan.fingerprint)
            if report is None:
                continue
            if report["state"] == "finished" and report["finished_at"] >= started - FRESH_SECONDS:
                found[rank] = report
                last_sign = time.time()
            elif report["state"] == "running" and mtime >= started - FRESH_SECONDS:
                last_sign = max(last_sign, mtime)
        if len(found) == plan.shard.count - 1 or time.time() - last_sign > timeout:
            return found
        time.sleep(POLL_SECONDS)


def _read_rank_report(path: Path, fingerprint: str) -> tuple[dict | None, float]:
    try:
        mtime = path.stat().st_mtime
        report = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None, 0.0
    if not isinstance(report, dict) or report.get("fingerprint") != fingerprint:
        return None, 0.0
    return report, mtime


def merge_reports(plan: BatchPlan, reports: dict[int, dict], started: float) -> dict:
    """One report over all ranks; rows of ranks that never reported count as failed."""
    rows = {row["index"]: row for report in reports.values() for row in report["rows"]}
    for row in plan.rows:
        rank = row.index % plan.shard.count
        if rank not in reports:
            reason = f"rank {rank} wrote no report within the merge timeout"
            rows[row.index] = asdict(RowResult.for_row(row, "failed", error=reason))
    ordered = [rows[i] for i in sorted(rows)]
    finished = time.time()
    first_start = min([r["started_at"] for r in reports.values()] + [started])
    return {
        "format": REPORT_FORMAT,
        "state": "finished",
        "fingerprint": plan.fingerprint,
        "manifest": str(plan.manifest),
        "model": str(plan.model_path),
        "model_sha256": plan.model_sha256,
        "shard": f"merged {len(reports)}/{plan.shard.count} ranks",
        "missing_ranks": [r for r in range(plan.shard.count) if r not in reports],
        "started_at": first_start,
        "finished_at": finished,
        "totals": summarize(ordered, finished - first_start),
        "rows": ordered,
    }
