"""`tmrender train STAGE`: training recipes, one subcommand per stage (tmrender.train)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tmrender.cli.app import app, console, stdout

train_app = typer.Typer(
    name="train",
    help="Train a model stage; every stage resumes from its run folder with --resume.",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train")

DataOption = Annotated[
    Path, typer.Option("--data", "-d", help="Corpus folder written by `tmrender synth`.")
]
ResumeOption = Annotated[
    bool, typer.Option("--resume", help="Continue from OUT/checkpoint.pt instead of starting over.")
]


@train_app.command(
    "mouth-reader",
    epilog=(
        "Examples:\n\n"
        "  tmrender train mouth-reader --data data --out runs/mouth_reader --steps 4000\n\n"
        "  tmrender train mouth-reader --data data --out runs/mouth_reader --resume "
        "--export weights/mouth_reader.safetensors\n\n"
        "  tmrender train mouth-reader --data data --out runs/mouth_reader --test-only"
    ),
)
def mouth_reader(
    data: DataOption,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Run folder (checkpoint, log, loss curve).")
    ] = Path("runs/mouth_reader"),
    steps: Annotated[int, typer.Option(help="Total optimizer steps.")] = 4000,
    batch: Annotated[int, typer.Option(help="Frames per step.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, cosine decay).")] = 2e-3,
    max_minutes: Annotated[
        float, typer.Option(help="Stop after this many minutes (0: no limit).")
    ] = 0.0,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 250,
    threads: Annotated[int, typer.Option(help="CPU threads for torch.")] = 1,
    resume: ResumeOption = False,
    export: Annotated[
        Path | None,
        typer.Option(help="Afterwards write fp16 weights here and record their SHA-256."),
    ] = None,
    test_only: Annotated[
        bool,
        typer.Option(
            "--test-only", help="Train nothing: print the checkpoint's figures on DATA/test."
        ),
    ] = False,
) -> None:
    """Train the mouth reader (the lip-sync instrument of `tmrender eval`) on DATA/train."""
    import json

    from tmrender.errors import UserInputError
    from tmrender.train import mouth_reader as recipe

    if steps < 1 or batch < 1 or threads < 1:
        raise UserInputError("--steps, --batch and --threads must be at least 1")
    opts = recipe.TrainOptions(
        steps=steps, batch=batch, lr=lr, max_minutes=max_minutes,
        checkpoint_every=checkpoint_every, threads=threads,
    )  # fmt: skip
    if test_only:
        model = _checkpoint_model(out)
    else:
        model = recipe.train(data, out, opts, resume=resume, on_log=_print_log)
    if export is not None:
        from tmrender.eval.mouth import load_mouth_reader

        digest = export_weights(model, data, export)
        console.print(f"exported {export} (sha256 {digest[:12]}...)", highlight=False)
        model = load_mouth_reader(export)  # the figures below are those of the shipped file
    from tmrender.data.corpus import list_clips

    test_clips = list_clips(data, "test")
    figures = {"split": "test", **recipe.evaluate_reader(model, test_clips, robustness=True)}
    stdout.print_json(json.dumps(figures))


def _checkpoint_model(out: Path):
    from tmrender.errors import UserInputError
    from tmrender.train.mouth_reader import load_training_checkpoint

    path = out / "checkpoint.pt"
    if not path.exists():
        raise UserInputError(f"no checkpoint in {out}; train first")
    return load_training_checkpoint(path)[0].eval()


def export_weights(model, data: Path, path: Path, val_clips: int = 10) -> str:
    """Write fp16 weights if they read the held-out train clips as well as fp32
    (|dr| < 1e-3), else fp32; record the SHA-256 in the folder's SHA256SUMS."""
    import tempfile

    from tmrender.data.corpus import list_clips
    from tmrender.eval.mouth import load_mouth_reader, record_checksum, save_mouth_reader
    from tmrender.train.mouth_reader import evaluate_reader

    held_out = list_clips(data, "train")[-val_clips:]
    reference = evaluate_reader(model, held_out)
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "half.safetensors"
        save_mouth_reader(model, probe, half=True)
        halved = evaluate_reader(load_mouth_reader(probe), held_out)
    half = all(abs(halved[k]["r"] - reference[k]["r"]) < 1e-3 for k in model.cfg.outputs)
    extra = {"dtype": "float16" if half else "float32", "held_out_figures": reference}
    digest = save_mouth_reader(model, path, half=half, extra=extra)
    record_checksum(path.parent / "SHA256SUMS", path, digest)
    return digest


def _print_log(row: dict) -> None:
    if "val" in row:
        figures = ", ".join(f"{k} r={v['r']:.4f} mae={v['mae']:.4f}" for k, v in row["val"].items())
        console.print(f"step {row['step']}: validation {figures}", highlight=False)
    else:
        console.print(
            f"step {row['step']}: loss {row['loss']:.5f} lr {row['lr']:.2e} ({row['seconds']} s)",
            highlight=False,
        )
