"""`tmrender eval`: lip sync, silence, appearance, stability and drift on held-out clips."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tmrender.cli.app import app, console, stdout, warn
from tmrender.cli.options import DeviceOpt, JsonOpt, SeedOpt
from tmrender.eval.options import LONG_SECONDS, RunOptions

DEFAULTS = RunOptions  # the command's defaults are the library's (class attributes)


@app.command(
    "eval",
    epilog=(
        "Examples:\n\n"
        "  tmrender eval --model tm-mini --data data --out out/eval --baselines\n\n"
        "  tmrender eval --data data --out out/sync --baselines --syncnet syncnet_v2.model\n\n"
        "  tmrender eval --model gt --model still --data data --out out/floors --clips 5\n\n"
        "Real video: a corpus `tmrender prepare` tracked (its clips' mouth truth is the "
        "landmark mouth opening) is measured with landmarks instead of the mouth reader: "
        "lip-sync r of the rendered and the real opening, the A/V offset in ms (+ = the "
        "sound leads; ITU-R BT.1359's +45 / -125 ms drawn in offsets.png), pooled and per "
        "clip:\n\n"
        "  tmrender prepare --videos talks/ --out real --split test\n\n"
        "  tmrender eval --data real --out out/real --baselines\n\n"
        "  tmrender synth --out data/long --clips 2 --seconds 600 --split test\n\n"
        "  tmrender eval --model tm-mini --data data/long --out out/drift --long\n\n"
        "  tmrender eval --data data --out out/gap --teacher weights/stages/teacher_t2.safetensors"
    ),
)
def eval_command(
    data: Annotated[
        Path,
        typer.Option(
            "--data", "-d", help="Corpus folder written by `tmrender synth` or `tmrender prepare`."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Report folder: report.json, PNGs, index.html.")
    ],
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help=(
                "Model name or .safetensors path, or a baseline: gt, still, loudness. Repeat. "
                "(default: tm-mini)"
            ),
        ),
    ] = None,  # fmt: skip
    baselines: Annotated[
        bool, typer.Option("--baselines", help="Also measure gt, still and loudness.")
    ] = DEFAULTS.baselines,
    clips: Annotated[
        int, typer.Option("--clips", "-n", help="Clips to evaluate (first N).")
    ] = DEFAULTS.clips,
    split: Annotated[str, typer.Option(help="Corpus split to evaluate.")] = DEFAULTS.split,
    long: Annotated[
        bool,
        typer.Option(
            "--long",
            help=f"Use only clips of {LONG_SECONDS:g} s or more; add first/last-minute drift.",
        ),
    ] = DEFAULTS.long,
    plots: Annotated[int, typer.Option(help="Clips drawn in the report figures.")] = DEFAULTS.plots,
    reader: Annotated[
        Path | None,
        typer.Option(
            help="Mouth reader weights (default: the shipped weights/mouth_reader.safetensors)."
        ),
    ] = DEFAULTS.reader,
    syncnet: Annotated[
        Path | None,
        typer.Option(
            help="syncnet_python's syncnet_v2.model: also measure Sync-C / Sync-D (LSE-C / "
            "LSE-D) and SyncNet's A/V offset, as papers report them."
        ),
    ] = DEFAULTS.syncnet,
    device: DeviceOpt = DEFAULTS.device,
    seed: SeedOpt = DEFAULTS.seed,
    as_json: JsonOpt = False,
    teacher: Annotated[
        Path | None,
        typer.Option(
            help="A teacher stage file: also compare the first model with it on the same "
            "windows of the split (lip-sync r of both and the gap).",
        ),
    ] = None,
) -> None:
    """Render test clips from their first frame and audio, and measure them against the truth."""
    import json

    from tmrender.eval.run import run_eval

    opts = RunOptions(
        data=data, out=out, models=tuple(model) if model else DEFAULTS.models,
        baselines=baselines, clips=clips, split=split, long=long, reader=reader,
        syncnet=syncnet, device=device, seed=seed, plots=plots,
    )  # fmt: skip
    gap = None if teacher is None else teacher_gap_of(opts.models[0], teacher, data, split, out)

    def progress(done: int, total: int, name: str, clip_id: str, seconds: float) -> None:
        console.print(f"[{done}/{total}] {name} {clip_id}: {seconds:.1f} s", highlight=False)

    report = run_eval(opts, on_step=progress, on_warning=warn, teacher_gap=gap)
    if teacher is not None:
        console.print(f"student vs teacher, same windows: {report['teacher_gap']}", highlight=False)
    if as_json:
        stdout.print_json(json.dumps({k: v["summary"] for k, v in report["sources"].items()}))
    else:
        print_summary(report)
    console.print(f"report: {out / 'index.html'}", highlight=False)


def teacher_gap_of(model: str, teacher: Path, data: Path, split: str, out: Path):
    """-> reader -> figures: `tmrender.train.gap.teacher_gap` of the model against the teacher
    file (CPU, float32); the teacher's latent cache of the split is kept in OUT."""
    from tmrender.errors import UserInputError
    from tmrender.eval.sources import BASELINES

    if model in BASELINES:
        raise UserInputError("--teacher compares a model, not a baseline; give --model first")

    def measure(reader) -> dict:
        from tmrender.models.registry import load_model
        from tmrender.train.gap import teacher_gap

        student, _ = load_model(model, "cpu")
        taught, _ = load_model(str(teacher), "cpu")
        return teacher_gap(student, taught, data, split, out / f"latents-{split}.pt", reader)

    return measure


def print_summary(report: dict) -> None:
    """The summary table (and drift table for long runs) on stderr."""
    from rich.table import Table

    from tmrender.eval.report import drift_table, summary_table

    tables = [("tmrender eval", summary_table(report["sources"]))]
    drift = drift_table(report["sources"])
    if drift:
        tables.append(("drift: first vs last minute", drift))
    for title, (header, rows) in tables:
        # transposed: one row per metric, one column per source (fits a terminal)
        table = Table(title=title)
        table.add_column("metric")
        for row in rows:
            table.add_column(row[0], justify="right")
        for i, label in enumerate(header[1:], start=1):
            table.add_row(label, *(row[i] for row in rows))
        console.print(table)
