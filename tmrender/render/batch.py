"""Batch rendering from a CSV manifest: survives bad rows, crashes and many machines.

    prepare_batch:  read the manifest -> take this shard's rows -> validate every row
                    -> hash inputs and model -> plan each row: render, skip or fail
    execute_batch:  render the planned rows (in-process, or N worker processes that each
                    load the model once) -> per-row results -> JSON report(s)

Resume. A finished output carries a sidecar `.<name>.tmrender.json` beside it (hidden, so a
folder of videos stays a folder of videos), written atomically and only after the video has
been renamed into place. An output counts as finished when it exists, its sidecar parses,
the sidecar's `key` equals the row's key now (sha256 of the image bytes, the audio bytes
and the checkpoint; seed, mode, crop, crf) and the output's size equals the recorded size.
Rows that are finished are skipped unless `overwrite`; everything else is rendered.

Shards. Row i (0-based, manifest order, blank lines not counted) belongs to shard
i % N == I: `Shard.parse("I/N")` by hand, or RANK / WORLD_SIZE under torchrun. With more
than one shard each rank writes `<report stem>.rank<R>.json` beside the final report; rank
0 polls for the others (a per-rank report counts when it names the same manifest and
world size, is finished, and finished at most FRESH_SECONDS before rank 0 started), and
merges them. It gives up after `merge_timeout` seconds without a sign of life from any
other rank (running ranks touch their report every HEARTBEAT_SECONDS); rows of ranks that
never reported are listed as failed.

This module prints nothing: progress goes to an `on_event` callback.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import queue
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import tmrender
from tmrender.errors import UserInputError
from tmrender.files import atomic_write, sha256_cached, sha256_file
from tmrender.render.manifest import CheckedRow, ManifestRow, check_rows, read_manifest
from tmrender.render.video import DEFAULT_CRF

SIDECAR_FORMAT = "tmrender-batch-sidecar/1"
REPORT_FORMAT = "tmrender-batch-report/1"
DEFAULT_REPORT_NAME = "batch-report.json"
HEARTBEAT_SECONDS = 10.0
FRESH_SECONDS = 300.0  # a finished per-rank report older than rank 0's start by more is stale
POLL_SECONDS = 1.0  # rank 0 looking for per-rank reports; workers looking for the parent
PROGRESS_SECONDS = 0.5  # at most one progress event per worker this often
STOP_SECONDS = 10.0  # a worker gets this long to clean up when the batch stops

Status = Literal["ok", "skipped", "failed"]
Action = Literal["render", "skip", "fail"]


# --- Settings and shards ------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """This process's part of the manifest: rows with index % count == index."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        """'I/N' with 0 <= I < N."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise UserInputError(f"--shard must be I/N, e.g. 0/4; got {text!r}")
        index, count = int(match.group(1)), int(match.group(2))
        if count < 1 or index >= count:
            raise UserInputError(f"--shard I/N needs 0 <= I < N; got {text!r}")
        return cls(index, count)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Shard | None:
        """The torchrun shard (RANK / WORLD_SIZE), or None outside torchrun."""
        env = os.environ if env is None else env
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return None
        try:
            return cls.parse(f"{env['RANK']}/{env['WORLD_SIZE']}")
        except UserInputError as err:
            raise UserInputError(f"bad RANK / WORLD_SIZE in the environment: {err}") from None

    def owns(self, index: int) -> bool:
        return index % self.count == self.index

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class BatchSettings:
    """How to run a batch (the CLI's options)."""

    # what to render
    model: str | None = None  # name or path; None: the default model
    out_dir: Path | None = None  # None: the manifest's folder
    crf: int = DEFAULT_CRF
    # resume
    overwrite: bool = False  # render finished rows again
    # compute
    workers: int = 1
    device: str = "auto"
    shard: Shard | None = None  # None: from RANK / WORLD_SIZE, else the whole manifest
    # report
    report: Path | None = None  # None: <out_dir>/batch-report.json
    merge_timeout: float = 600.0


# --- Rows, jobs and results ---------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One row to render, as sent to a worker (picklable)."""

    index: int
    line: int
    image: Path
    audio: Path
    output: Path
    options: object  # RenderOptions (typed loosely so that this module imports no torch)
    key: dict


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


@dataclass
class PlannedRow:
    """A checked row and what the batch will do with it."""

    checked: CheckedRow
    action: Action
    job: Job | None = None
    reason: str = ""  # why: the error, "finished earlier", "new", "inputs changed", ...

    @property
    def row(self) -> ManifestRow:
        return self.checked.row


@dataclass
class BatchPlan:
    """Everything decided before rendering starts."""

    manifest: Path
    rows: list[ManifestRow]  # the whole manifest
    planned: list[PlannedRow]  # this shard's rows
    shard: Shard
    model_path: Path
    model_sha256: str
    model_trained: bool
    device: str
    out_dir: Path
    report_path: Path
    settings: BatchSettings
    fingerprint: str  # the same for every rank of one batch
    threads: int = 1  # torch intra-op threads per worker

    def with_action(self, action: Action) -> list[PlannedRow]:
        return [p for p in self.planned if p.action == action]

    @property
    def audio_seconds_to_render(self) -> float:
        return sum(p.checked.audio_seconds or 0.0 for p in self.with_action("render"))


# --- Planning -----------------------------------------------------------------------------


def prepare_batch(
    manifest: Path | str, settings: BatchSettings, create_folders: bool = True
) -> BatchPlan:
    """Read, shard and validate the manifest, hash inputs, and decide each row's action.

    Raises UserInputError when the manifest, the model or the device cannot be used.
    `create_folders` makes missing output folders (off for a dry run)."""
    from tmrender.models.checkpoint import read_metadata
    from tmrender.models.registry import resolve_model_path

    # 1. The manifest and this shard's rows.
    manifest = Path(os.path.abspath(manifest))
    out_dir = Path(os.path.abspath(settings.out_dir or manifest.parent))
    rows = read_manifest(manifest, out_dir)
    shard = settings.shard or Shard.from_env() or Shard()
    mine = [row for row in rows if shard.owns(row.index)]
    # 2. The model and the device, before any file of a row is opened.
    model_path = resolve_model_path(settings.model)
    meta = read_metadata(model_path)
    device = batch_device(settings.device)
    # 3. Every row of this shard (collisions over the whole manifest).
    checked = check_rows(rows, probe=mine, create_folders=create_folders)
    # 4. Hashes, then what to do with each row.
    model_sha = sha256_cached(model_path)  # hashed once per process
    hashes = HashCache()
    planned = [plan_row(c, model_sha, settings, hashes) for c in checked]
    report = Path(os.path.abspath(settings.report or out_dir / DEFAULT_REPORT_NAME))
    return BatchPlan(
        manifest=manifest,
        rows=rows,
        planned=planned,
        shard=shard,
        model_path=model_path,
        model_sha256=model_sha,
        model_trained=bool(meta["trained"]),
        device=device,
        out_dir=out_dir,
        report_path=report,
        settings=settings,
        fingerprint=f"{sha256_file(manifest)[:16]}/{shard.count}",
        threads=threads_per_worker(settings.workers),
    )


def plan_row(
    checked: CheckedRow, model_sha: str, settings: BatchSettings, hashes: HashCache
) -> PlannedRow:
    """Fail a bad row; skip a finished one (unless overwriting); render the rest."""
    from tmrender.render.pipeline import RenderOptions

    if not checked.ok:
        return PlannedRow(checked, "fail", reason=checked.error or "")
    row = checked.row
    try:
        image_sha, audio_sha = hashes.get(row.image), hashes.get(row.audio)
    except OSError as err:
        return PlannedRow(checked, "fail", reason=f"cannot read an input: {err}")
    options = RenderOptions(
        seed=checked.seed, mode=checked.mode, crop=checked.crop, crf=settings.crf
    )
    key = render_key(image_sha, audio_sha, model_sha, options)
    job = Job(row.index, row.line, row.image, row.audio, row.output, options, key)
    previous = read_sidecar(row.output)
    if is_finished(row.output, key, previous) and not settings.overwrite:
        return PlannedRow(checked, "skip", job, "finished earlier")
    return PlannedRow(checked, "render", job, _render_reason(row.output, key, previous, settings))


def _render_reason(output: Path, key: dict, previous: dict | None, settings) -> str:
    if is_finished(output, key, previous):
        return "overwrite"
    if not output.exists():
        return "new"
    if previous is None:
        return "output exists without a sidecar"
    changed = sorted(k for k in key if previous.get("key", {}).get(k) != key[k])
    return f"changed: {', '.join(changed)}" if changed else "output differs from its sidecar"


def batch_device(name: str) -> str:
    """The device of this rank: under torchrun, cuda:LOCAL_RANK when CUDA is asked or auto."""
    import torch

    from tmrender.devices import resolve_device

    device = resolve_device(name)
    local_rank = os.environ.get("LOCAL_RANK")
    if device.type == "cuda" and device.index is None and local_rank is not None:
        return f"cuda:{int(local_rank) % torch.cuda.device_count()}"
    return str(device)


def threads_per_worker(workers: int) -> int:
    """Torch intra-op threads per worker: the cores shared out over the workers (and the
    processes of this machine under torchrun), at least 1."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // (2 * max(1, workers) * max(1, local_world)))


class HashCache:
    """sha256 of files, each file read once per batch (many rows share one portrait)."""

    def __init__(self) -> None:
        self._known: dict[Path, str] = {}

    def get(self, path: Path) -> str:
        if path not in self._known:
            self._known[path] = sha256_file(path)
        return self._known[path]


# --- Sidecars -----------------------------------------------------------------------------


def sidecar_path(output: Path) -> Path:
    """The sidecar of an output: `.<name>.tmrender.json` in the same folder."""
    return output.with_name(f".{output.name}.tmrender.json")


def render_key(image_sha: str, audio_sha: str, model_sha: str, options) -> dict:
    """What an output depends on: input and model hashes and the render options."""
    crop = options.crop
    return {
        "image_sha256": image_sha,
        "audio_sha256": audio_sha,
        "model_sha256": model_sha,
        "seed": options.seed,
        "mode": options.mode,
        "crop": None if crop is None else [crop.x, crop.y, crop.w, crop.h],
        "crf": options.crf,
    }


def read_sidecar(output: Path) -> dict | None:
    """The sidecar of `output`, or None when missing or unreadable."""
    try:
        record = json.loads(sidecar_path(output).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != SIDECAR_FORMAT:
        return None
    return record


def is_finished(output: Path, key: dict, record: dict | None) -> bool:
    """The output exists, and its sidecar has this key and the output's current size."""
    if record is None or record.get("key") != key:
        return False
    try:
        return output.stat().st_size == record.get("output_bytes")
    except OSError:
        return False


def write_sidecar(output: Path, key: dict, audio_seconds: float, frames: int) -> Path:
    """Record a finished output (call only once it is at its final name)."""
    record = {
        "format": SIDECAR_FORMAT,
        "output": output.name,
        "output_bytes": output.stat().st_size,
        "key": key,
        "audio_seconds": audio_seconds,
        "frames": frames,
        "written_at": _now_iso(),
        "tmrender_version": tmrender.__version__,
    }
    return write_json_atomic(sidecar_path(output), record)


def write_json_atomic(path: Path, data: dict) -> Path:
    """Write JSON under a temporary name in the same folder, then rename it into place."""
    with atomic_write(path) as partial, partial.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    return path


def remove_stale_temporaries(output: Path) -> list[Path]:
    """Delete the work-in-progress files an interrupted render of `output` left behind
    (VideoWriter's `.<stem>.<8 hex>.video|partial<suffix>`, sidecar `.partial`s)."""
    video = re.compile(
        rf"\.{re.escape(output.stem)}\.[0-9a-f]{{8}}\.(video|partial){re.escape(output.suffix)}"
    )
    sidecar = re.compile(rf"\.{re.escape(sidecar_path(output).name)}\.[0-9a-f]{{8}}\.partial")
    removed = []
    with contextlib.suppress(OSError):
        for path in output.parent.iterdir():
            if video.fullmatch(path.name) or sidecar.fullmatch(path.name):
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed.append(path)
    return removed


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
        stats = render_video(model, job.image, job.audio, job.output, options, on_frames=on_frames)
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


# --- Running a batch ----------------------------------------------------------------------


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
    with _heartbeat(rank_path if sharded else None):
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


@contextlib.contextmanager
def _heartbeat(path: Path | None):
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


# --- Reports ------------------------------------------------------------------------------


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


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
