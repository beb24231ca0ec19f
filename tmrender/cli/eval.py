"""`tmrender eval`: lip sync, silence, appearance, stability and drift on held-out clips."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tmrender.cli.app import app, console, stdout, warn
from tmrender.cli.options import DeviceOpt, JsonOpt, SeedOpt

LONG_SECONDS = 600.0  # --long measures clips at least this long (first vs last minute)


@app.command(
    "eval",
    epilog=(
        "Examples:\n\n"
        "  tmrender eval --model tm-mini --data data --out out/eval --baselines\n\n"
        "  tmrender eval --model gt --model still --data data --out out/floors --clips 5\n\n"
        "  tmrender synth --out data/long --clips 2 --seconds 600 --split test\n\n"
        "  tmrender eval --model tm-mini --data data/long --out out/drift --long\n\n"
        "  tmrender eval --data data --out out/gap --teacher weights/stages/teacher_t2.safetensors"
    ),
)
def eval_command(
    data: Annotated[
        Path, typer.Option("--data", "-d", help="Corpus folder written by `tmrender synth`.")
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
    ] = False,
    clips: Annotated[int, typer.Option("--clips", "-n", help="Clips to evaluate (first N).")] = 10,
    split: Annotated[str, typer.Option(help="Corpus split to evaluate.")] = "test",
    long: Annotated[
        bool,
        typer.Option(
            "--long",
            help=f"Use only clips of {LONG_SECONDS:g} s or more; add first/last-minute drift.",
        ),
    ] = False,
    plots: Annotated[int, typer.Option(help="Clips drawn in the report figures.")] = 3,
    reader: Annotated[
        Path | None,
        typer.Option(
            help="Mouth reader weights (default: the shipped weights/mouth_reader.safetensors)."
        ),
    ] = None,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
    teacher: Annotated[
        Path | None,
        typer.Option(
            help="A teacher stage file: also compare the first model with it on the same "
            "windows of the split (lip-sync r of both and the gap)."
        ),
    ] = None,
) -> None:
    """Render test clips from their first frame and audio, and measure them against the truth."""
    import json

    from tmrender.data.corpus import list_clips
    from tmrender.errors import UserInputError
    from tmrender.eval import report as report_mod
    from tmrender.eval import suite
    from tmrender.eval.mouth import DEFAULT_WEIGHTS, load_mouth_reader
    from tmrender.files import sha256_file

    # 1. Check the inputs: sources, clips, output folder, reader.
    from tmrender.models.registry import DEFAULT_MODEL

    models = model or [DEFAULT_MODEL]
    names = list(dict.fromkeys([*models, *(suite_baselines() if baselines else [])]))
    if clips < 1:
        raise UserInputError(f"--clips must be at least 1, got {clips}")
    paths = select_clips(list_clips(data, split), clips, LONG_SECONDS if long else None)
    if not paths:
        hint = f"; make some with `tmrender synth --seconds {LONG_SECONDS:g}`" if long else ""
        raise UserInputError(f"no suitable clips in the {split} split of {data}{hint}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserInputError(f"cannot create the report folder {out}: {err.strerror}") from err
    reader_path = reader or DEFAULT_WEIGHTS
    mouth_reader = load_mouth_reader(reader_path)
    # 2. Sources: baselines by name, anything else is a model to load.
    labels = source_labels(names)
    sources = {labels[name]: make_source(name, device, seed) for name in names}
    # 3. Render and measure, with progress on stderr.
    total = len(paths) * len(sources)
    done = [0]

    def progress(name: str, clip_id: str, seconds: float) -> None:
        done[0] += 1
        console.print(f"[{done[0]}/{total}] {name} {clip_id}: {seconds:.1f} s", highlight=False)

    results, traces = suite.evaluate(
        paths, sources, mouth_reader, suite.EvalOptions(), long=long, trace_clips=plots,
        on_step=progress,
    )  # fmt: skip
    # 4. Write the report.
    meta = {
        "data": str(data), "split": split, "clips": len(paths), "long": long,
        "reader": {"path": str(reader_path), "sha256": sha256_file(reader_path)},
        "options": {**suite.EvalOptions().__dict__, "device": device, "seed": seed},
    }  # fmt: skip
    if teacher is not None:
        meta["teacher_gap"] = distillation_gap(models[0], teacher, data, split, out, mouth_reader)
        console.print(f"student vs teacher, same windows: {meta['teacher_gap']}", highlight=False)
    report = report_mod.write_report(out, results, traces, meta)
    if as_json:
        stdout.print_json(json.dumps({k: v["summary"] for k, v in report["sources"].items()}))
    else:
        print_summary(report)
    console.print(f"report: {out / 'index.html'}", highlight=False)


def distillation_gap(model: str, teacher: Path, data: Path, split: str, out: Path, reader):
    """`tmrender.eval.teacher_gap` of the model against the teacher file (CPU, float32);
    the teacher's latent cache of the split is kept in OUT."""
    from tmrender.errors import UserInputError
    from tmrender.eval.sources import BASELINES
    from tmrender.eval.teacher_gap import teacher_gap
    from tmrender.models.registry import load_model

    if model in BASELINES:
        raise UserInputError("--teacher compares a model, not a baseline; give --model first")
    student, _ = load_model(model, "cpu")
    taught, _ = load_model(str(teacher), "cpu")
    return teacher_gap(student, taught, data, split, out / f"latents-{split}.pt", reader)


def suite_baselines() -> tuple[str, ...]:
    from tmrender.eval.sources import BASELINES

    return BASELINES


def source_labels(names: list[str]) -> dict[str, str]:
    """Short report labels: a model file's stem instead of its path, unless two collide."""
    short = {name: Path(name).stem if name.endswith(".safetensors") else name for name in names}
    if len(set(short.values())) < len(short):
        return {name: name for name in names}
    return short


def select_clips(paths: list[Path], limit: int, min_seconds: float | None) -> list[Path]:
    """The first `limit` clips, only those of at least `min_seconds` when given."""
    import json

    if min_seconds is not None:
        paths = [
            p
            for p in paths
            if json.loads((p / "meta.json").read_text())["seconds"] >= min_seconds - 1e-6
        ]
    return paths[:limit]


def make_source(name: str, device: str, seed: int):
    """A frame source: a baseline by name, else a model (name or path) rendered on `device`."""
    from tmrender.eval.sources import BASELINES, baseline_source, model_source

    if name in BASELINES:
        return baseline_source(name)
    from tmrender.models.registry import load_model
    from tmrender.render.pipeline import RenderOptions

    net, meta = load_model(name, device)
    if not meta.get("trained", True):
        warn(f"{meta['path']} is an untrained model: expect its figures at the floor")
    return model_source(net, RenderOptions(seed=seed))


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
