"""`tmrender batch`: render every row of a CSV manifest; bad rows are reported, not fatal."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from tmrender.cli.app import app, console, warn
from tmrender.cli.options import CrfOpt, DeviceOpt, ModelOpt
from tmrender.render.batch.plan import BatchSettings

DEFAULTS = BatchSettings()  # the command's defaults are the library's

EXIT_SOME_FAILED = 3
SHOWN_FAILURES = 20  # failed rows listed in the summary (all are in the JSON report)
SHOWN_UNLIKE = 3  # rows named in the warning about portraits unlike the avatars


@app.command(
    epilog=(
        "The manifest is CSV with a header: image,audio required; output,seed,mode,crop,face "
        "optional (face: auto or N, as generate --face). Relative paths are taken from "
        "the manifest's folder (outputs from "
        "--out); the default output is <audio stem>.mp4. A finished output has a "
        "sidecar .<name>.tmrender.json beside it; a rerun renders only what is missing or "
        "changed. Exit code 0: all rows ok; 3: some rows failed; 2: unusable manifest.\n\n"
        "Examples:\n\n"
        "  tmrender batch clips.csv --out renders/ --workers 2\n\n"
        "  tmrender batch clips.csv --dry-run\n\n"
        "  tmrender batch clips.csv --shard 1/4 --report renders/report.json\n\n"
        "  torchrun --nproc-per-node 8 -m tmrender batch clips.csv --device cuda"
    )
)
def batch(
    manifest: Annotated[Path, typer.Argument(help="CSV manifest: image,audio[,output,...].")],
    model: ModelOpt = DEFAULTS.model,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-d", help="Folder for outputs (default: the manifest's)."),
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out-dir", hidden=True, help="Old name of --out.")
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite/--skip-existing",
            help="Render finished rows again, or skip them (resume).",
        ),
    ] = DEFAULTS.overwrite,
    workers: Annotated[
        int, typer.Option("--workers", "-w", help="Worker processes, each loads the model once.")
    ] = DEFAULTS.workers,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            help="Render rows i with i % N == I, as I/N (default: RANK/WORLD_SIZE or all).",
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="JSON report (default: <out>/batch-report.json)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and show the plan; render nothing.")
    ] = False,
    device: DeviceOpt = DEFAULTS.device,
    crf: CrfOpt = DEFAULTS.crf,
    merge_timeout: Annotated[
        float,
        typer.Option(
            "--merge-timeout", help="Rank 0 waits this long without news from other ranks."
        ),
    ] = DEFAULTS.merge_timeout,
) -> None:
    """Render a CSV manifest of portrait + audio pairs; resumable, shardable, fault tolerant."""
    from tmrender.errors import UserInputError
    from tmrender.media.video import check_crf
    from tmrender.render.batch.execute import execute_batch
    from tmrender.render.batch.plan import Shard, prepare_batch

    if out is not None and out_dir is not None:
        raise UserInputError("--out-dir is the old name of --out; give one of them")
    if workers < 1:
        raise UserInputError(f"--workers must be at least 1, got {workers}")
    check_crf(crf)
    settings = BatchSettings(
        model=model,
        out_dir=out if out is not None else out_dir,
        crf=crf,
        overwrite=overwrite,
        workers=workers,
        device=device,
        shard=Shard.parse(shard) if shard else None,
        report=report,
        merge_timeout=merge_timeout,
    )
    # 1. Every row is checked before anything renders.
    with console.status("checking the manifest's rows"):
        plan = prepare_batch(manifest, settings, create_folders=not dry_run)
    if not plan.model_trained:
        warn(f"{plan.model_path} is an untrained model: the videos will be noise")
    warn_unlike_avatars(plan)
    failed_early = len(plan.with_action("fail"))
    if dry_run:
        print_plan(plan)
        if failed_early:
            raise typer.Exit(EXIT_SOME_FAILED)
        return
    # 2. Render with a progress display, then summarise.
    with BatchProgress(plan) as progress:
        final = execute_batch(plan, on_event=progress.on_event)
    print_summary(final, plan)
    if final["totals"]["failed"]:
        raise typer.Exit(EXIT_SOME_FAILED)


def warn_unlike_avatars(plan) -> None:
    """One warning line naming the rows to render whose portrait is not avatar-like."""
    from tmrender.render.batch.plan import unlike_avatars

    flagged = unlike_avatars(plan)
    if flagged:
        named = ", ".join(
            f"line {row.line} ({_short(row.image, plan.manifest.parent)})"
            for row in flagged[:SHOWN_UNLIKE]
        )
        more = f" and {len(flagged) - SHOWN_UNLIKE} more" if len(flagged) > SHOWN_UNLIKE else ""
        warn(
            f"{len(flagged)} of {len(plan.with_action('render'))} portraits do not look like "
            f"the drawn avatars the model learned from (photographs?): {named}{more}; they "
            "still render, but expect a poor likeness and lip sync"
        )


def print_plan(plan) -> None:
    """The validation table of a dry run and what would be rendered."""
    from rich.table import Table

    table = Table(title=f"{plan.manifest} (shard {plan.shard.label})", show_lines=False)
    for name in ("line", "image", "audio", "output", "action", "reason"):
        table.add_column(name, overflow="fold")
    styles = {"render": "green", "skip": "cyan", "fail": "red"}
    for planned in plan.planned:
        row = planned.row
        table.add_row(
            str(row.line),
            _short(row.image, plan.manifest.parent),
            _short(row.audio, plan.manifest.parent),
            _short(row.output, plan.out_dir),
            f"[{styles[planned.action]}]{planned.action}[/]",
            planned.reason,
        )
    console.print(table)
    console.print(
        f"would render {len(plan.with_action('render'))} rows "
        f"(~{plan.audio_seconds_to_render:.1f} s of audio), skip "
        f"{len(plan.with_action('skip'))} finished, fail {len(plan.with_action('fail'))}; "
        f"report: {plan.report_path}",
        highlight=False,
    )


def _short(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


class BatchProgress:
    """Rich progress: rows done / failed / remaining, clip-seconds per second and ETA."""

    def __init__(self, plan) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.rows = len(plan.planned)
        self.estimates = {
            p.row.index: p.checked.audio_seconds or 0.0 for p in plan.with_action("render")
        }
        self.total_seconds = sum(self.estimates.values())
        self.done_seconds = 0.0  # audio rendered in finished rows
        self.partial: dict[int, float] = {}  # audio rendered so far in rows being rendered
        self.counts = {"ok": 0, "skipped": 0, "failed": 0}
        self.start = time.perf_counter()
        self.display = Progress(
            TextColumn("batch"),
            BarColumn(),
            TextColumn("{task.fields[summary]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.task = self.display.add_task("batch", total=self.rows, summary="")

    def __enter__(self) -> BatchProgress:
        self.display.__enter__()
        self._refresh()
        return self

    def __exit__(self, *exc) -> None:
        self.display.__exit__(*exc)

    def on_event(self, event) -> None:
        from tmrender.render.batch.workers import RowProgress, RowResult

        if isinstance(event, RowProgress):
            self.partial[event.index] = event.audio_seconds
        elif isinstance(event, RowResult):
            self.partial.pop(event.index, None)
            self.counts[event.status] += 1
            if event.status == "ok":
                self.done_seconds += event.audio_seconds or 0.0
            else:  # its estimate will never be rendered
                self.total_seconds -= self.estimates.get(event.index, 0.0)
        self._refresh()

    def _refresh(self) -> None:
        done = sum(self.counts.values())
        rendered = self.done_seconds + sum(self.partial.values())
        elapsed = time.perf_counter() - self.start
        rate = rendered / elapsed if elapsed > 0 else 0.0
        left = max(self.total_seconds - rendered, 0.0)
        eta = f"{left / rate:.0f} s" if rate > 0 else "?"
        summary = (
            f"{done}/{self.rows} rows  ok {self.counts['ok']}  skipped "
            f"{self.counts['skipped']}  failed {self.counts['failed']}  left "
            f"{self.rows - done}  {rate:.2f} clip-s/s  ETA {eta}"
        )
        self.display.update(self.task, completed=done, summary=summary)


def print_summary(report: dict, plan) -> None:
    """Counts, speed, the failed rows and where the report is."""
    from rich.table import Table

    totals = report["totals"]
    table = Table(title="batch summary", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("rows", str(totals["rows"]))
    table.add_row("[green]ok[/]", str(totals["ok"]))
    table.add_row("[cyan]skipped (finished earlier)[/]", str(totals["skipped"]))
    table.add_row("[red]failed[/]", str(totals["failed"]))
    table.add_row("audio rendered", f"{totals['audio_seconds_rendered']:.1f} s")
    table.add_row("wall time", f"{totals['wall_seconds']:.1f} s")
    table.add_row("clip-seconds per second", f"{totals['clip_seconds_per_second']:.2f}")
    console.print(table)
    failed = [row for row in report["rows"] if row["status"] == "failed"]
    if failed:
        errors = Table(title="failed rows", show_lines=False)
        errors.add_column("line", justify="right")
        errors.add_column("output", overflow="fold")
        errors.add_column("error", overflow="fold")
        for row in failed[:SHOWN_FAILURES]:
            errors.add_row(
                str(row["line"]), _short(Path(row["output"]), plan.out_dir), row["error"]
            )
        console.print(errors)
        if len(failed) > SHOWN_FAILURES:
            console.print(f"... and {len(failed) - SHOWN_FAILURES} more", highlight=False)
    missing = report.get("missing_ranks")
    if missing:
        warn(f"no report from rank(s) {', '.join(map(str, missing))}: their rows count as failed")
    where = plan.report_path
    if plan.shard.count > 1 and plan.shard.index != 0:
        from tmrender.render.batch.report import rank_report_path

        where = rank_report_path(plan.report_path, plan.shard.index)
    console.print(f"report: {where}", highlight=False)
