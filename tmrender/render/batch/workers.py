"""Rendering a batch's jobs: in this process, or in spawned worker processes that each
load the model once and take jobs from a shared queue; each row's fate as events."""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from tmrender.errors import UserInputError
from tmrender.render.batch.plan import Job
from tmrender.render.batch.sidecars import remove_stale_temporaries, sidecar_path, write_sidecar
from tmrender.render.manifest import ManifestRow

POLL_SECONDS = 1.0  # workers looking for the parent and for jobs; the parent for events
PROGRESS_SECONDS = 0.5  # at most one progress event per worker this often
STOP_SECONDS = 10.0  # a worker gets this long to clean up when the batch stops

Status = Literal["ok", "skipped", "failed"]


# --- Events -------------------------------------------------------------------------------


@dataclass
class RowResult:
    """What became of one row (one entry of the report)."""

    index: int
    line: int
    image: str
    audio: str
    output: str
    status: Status
    audio_seconds: float | None = None
    wall_seconds: float = 0.0
    error: str | None = None

    @classmethod
    def for_row(cls, row: ManifestRow, status: Status, **fields) -> RowResult:
        return cls(
            row.index, row.line, str(row.image), str(row.audio), str(row.output), status, **fields
        )


@dataclass(frozen=True)
class RowStarted:
    """A worker began rendering a row."""

    index: int


@dataclass(frozen=True)
class RowProgress:
    """Seconds of a row's audio rendered so far."""

    index: int
    audio_seconds: float


# --- Rendering ----------------------------------------------------------------------------


class ParentGone(BaseException):
    """The batch process that started this worker has died: stop and clean up."""


def render_job(
    model,
    job: Job,
    threads: int,
    on_progress: Callable[[float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RowResult:
    """Render one row and write its sidecar; a failure becomes a failed RowResult.

    KeyboardInterrupt and ParentGone pass through (the video writer removes its temporaries)."""
    from tmrender.render.pipeline import render_video
    from tmrender.render.source import load_picture

    # 1. Forget any earlier result: a stale sidecar and leftovers of an interrupted render.
    sidecar_path(job.output).unlink(missing_ok=True)
    remove_stale_temporaries(job.output)
    start = time.perf_counter()
    fps = model.cfg.fps
    result = dict(index=job.index, line=job.line, image=str(job.image), audio=str(job.audio))
    result["output"] = str(job.output)

    def on_frames(stats) -> None:
        if should_stop is not None and should_stop():
            raise ParentGone()
        if on_progress is not None:
            on_progress(stats.frames / fps)

    # 2. Render; the output appears at its final name only when complete.
    try:
        options = replace(job.options, intra_op_threads=threads)
        picture = load_picture(job.image, job.face, options.crop)  # decoded once
        source = picture.for_model(model.cfg.height)
        stats = render_video(
            model, source.reference, job.audio, job.output, options, on_frames=on_frames,
            paste=source.paste,
        )  # fmt: skip
        # 3. Only now: the sidecar that marks the output as finished.
        write_sidecar(job.output, job.key, stats.audio_seconds, stats.frames)
    except UserInputError as err:
        return RowResult(**result, status="failed", wall_seconds=_since(start), error=str(err))
    except OSError as err:
        reason = f"cannot write the output or its sidecar: {err}"
        return RowResult(**result, status="failed", wall_seconds=_since(start), error=reason)
    except Exception as err:  # noqa: BLE001 - one row's crash must not stop the batch
        reason = f"internal error: {type(err).__name__}: {err}"
        return RowResult(**result, status="failed", wall_seconds=_since(start), error=reason)
    return RowResult(
        **result, status="ok", audio_seconds=stats.audio_seconds, wall_seconds=_since(start)
    )


def _since(start: float) -> float:
    return time.perf_counter() - start


def run_jobs(
    jobs: Sequence[Job],
    model_path: Path,
    device: str,
    workers: int,
    threads: int,
    on_event: Callable[[object], None],
) -> None:
    """Render jobs, in this process (workers <= 1) or in `workers` spawned processes.

    `on_event` receives RowStarted, RowProgress and RowResult (one per job)."""
    if not jobs:
        return
    if workers <= 1 or len(jobs) == 1:
        _run_in_process(jobs, model_path, device, threads, on_event)
    else:
        _run_in_workers(jobs, model_path, device, min(workers, len(jobs)), threads, on_event)


def _run_in_process(jobs, model_path, device, threads, on_event) -> None:
    from tmrender.models.registry import load_model

    model, _ = load_model(model_path, device)
    for job in jobs:
        on_event(RowStarted(job.index))
        progress = _throttled(lambda s, i=job.index: on_event(RowProgress(i, s)))
        on_event(render_job(model, job, threads, on_progress=progress))


def _throttled(call: Callable[[float], None]) -> Callable[[float], None]:
    last = [0.0]

    def maybe(value: float) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_SECONDS:
            last[0] = now
            call(value)

    return maybe


def _run_in_workers(jobs, model_path, device, workers, threads, on_event) -> None:
    """Spawned workers each load the model once and take jobs from a shared queue."""
    context = multiprocessing.get_context("spawn")
    tasks, events = context.Queue(), context.Queue()
    for job in jobs:
        tasks.put(job)
    for _ in range(workers):
        tasks.put(None)  # one stop sign per worker
    args = (str(model_path), device, threads, tasks, events)
    processes = [
        context.Process(target=worker_main, args=args, name=f"tmrender-batch-{i}", daemon=True)
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        _collect_events(jobs, processes, events, on_event)
    finally:
        _stop_workers(processes)
        tasks.cancel_join_thread()
        events.cancel_join_thread()


def _collect_events(jobs, processes, events, on_event) -> None:
    """Pass worker events on until every job has a result; a dead worker fails its row."""
    pending = {job.index: job for job in jobs}
    in_flight: dict[int, int] = {}  # worker pid -> row index
    while pending:
        try:
            kind, pid, payload = events.get(timeout=POLL_SECONDS)
        except queue.Empty:
            _fail_rows_of_dead_workers(processes, pending, in_flight, on_event)
            continue
        if kind == "fatal":
            raise UserInputError(f"a batch worker could not start: {payload}")
        if kind == "start":
            in_flight[pid] = payload
            on_event(RowStarted(payload))
        elif kind == "progress":
            on_event(RowProgress(*payload))
        elif kind == "done" and payload.index in pending:
            in_flight.pop(pid, None)
            del pending[payload.index]
            on_event(payload)


def _fail_rows_of_dead_workers(processes, pending, in_flight, on_event) -> None:
    for process in processes:
        if process.is_alive() or process.pid not in in_flight:
            continue
        index = in_flight.pop(process.pid)
        if index in pending:
            job = pending.pop(index)
            reason = f"the worker process died while rendering (exit code {process.exitcode})"
            on_event(_failed(job, reason))
    if pending and not any(p.is_alive() for p in processes):
        for job in list(pending.values()):
            on_event(_failed(job, "no batch worker process was left to render it"))
        pending.clear()


def _failed(job: Job, reason: str) -> RowResult:
    return RowResult(
        job.index, job.line, str(job.image), str(job.audio), str(job.output), "failed", error=reason
    )


def _stop_workers(processes) -> None:
    """Ask running workers to stop (SIGTERM: they clean up), then make sure they have."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(STOP_SECONDS)
        if process.is_alive():
            process.kill()
            process.join()


def worker_main(model_path: str, device: str, threads: int, tasks, events) -> None:
    """A worker process: load the model once, render jobs from `tasks` until a None.

    Stops (cleaning up its temporaries) on SIGTERM, and when its parent process dies."""
    import torch

    from tmrender.models.registry import load_model

    signal.signal(signal.SIGTERM, _raise_interrupt)
    pid, parent = os.getpid(), os.getppid()

    def parent_gone() -> bool:
        return os.getppid() != parent

    try:
        torch.set_num_threads(threads)
        try:
            model, _ = load_model(model_path, device)
        except Exception as err:  # noqa: BLE001 - reported to the parent, which stops the batch
            events.put(("fatal", pid, str(err)))
            return
        while not parent_gone():
            try:
                job = tasks.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            if job is None:
                return
            events.put(("start", pid, job.index))
            progress = _throttled(lambda s, i=job.index: events.put(("progress", pid, (i, s))))
            result = render_job(model, job, threads, progress, should_stop=parent_gone)
            events.put(("done", pid, result))
    except (KeyboardInterrupt, ParentGone):
        return


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt()
