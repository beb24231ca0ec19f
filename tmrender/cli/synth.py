"""`tmrender synth`: write clips of the synthetic talking-avatar corpus (tmrender.data.corpus)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from tmrender.cli.app import app, console


@app.command(
    epilog=(
        "Examples:\n\n"
        "  tmrender synth --out data --clips 200 --seconds 10 --split train --workers 2\n\n"
        "  tmrender synth --out data --clips 20 --seconds 30 --split test --seed 7\n\n"
        "  tmrender synth --out previews --clips 4 --size 256 --frames mp4\n\n"
        "  tmrender synth --out data_textured --clips 200 --seconds 10 --textured\n\n"
        "  tmrender synth --out data_textures --clips 100 --seconds 4 --textures-only"
    )
)
def synth(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Corpus folder; clips go to OUT/SPLIT/.")
    ],
    clips: Annotated[int, typer.Option(help="Number of clips to write.")] = 8,
    seconds: Annotated[float, typer.Option(help="Length of each clip in seconds.")] = 10.0,
    seed: Annotated[
        int, typer.Option(help="Corpus seed: the same seed gives identical clips.")
    ] = 0,
    split: Annotated[
        str, typer.Option(help="train or test (test uses held-out languages and voices).")
    ] = "train",
    size: Annotated[int, typer.Option(help="Frame size in pixels (square).")] = 128,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    frames: Annotated[
        str, typer.Option(help="Frame storage: mp4 (H.264 crf 10, with audio) or npy (exact).")
    ] = "mp4",
    textured: Annotated[
        bool,
        typer.Option(
            help="Avatars with textured skin, hair, clothes and background, lit and colour-cast"
            " (same speech, mouth and pose as without)."
        ),
    ] = False,
    textures_only: Annotated[
        bool,
        typer.Option(
            help="No avatars: procedural pictures and package photos under a moving camera,"
            " silent (for VAE training: train vae --extra-data)."
        ),
    ] = False,
) -> None:
    """Generate talking-avatar clips: frames, 16 kHz audio, per-frame mouth truth, metadata."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from tmrender.data import corpus
    from tmrender.errors import UserInputError

    if textured and textures_only:
        raise UserInputError("choose one of --textured and --textures-only")
    kind = "textures" if textures_only else "textured" if textured else "avatar"
    corpus.check_options(clips, seconds, size, workers, split, frames, kind)
    start = time.perf_counter()
    columns = (
        TextColumn("[bold]synth[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(split, total=clips)
        index = corpus.generate_corpus(
            out, split, clips, seconds, seed=seed, size=size, workers=workers, frame_format=frames,
            on_clip=lambda row: progress.update(task, advance=1, description=row["id"]),
            kind=kind,
        )  # fmt: skip
    wall = time.perf_counter() - start
    rate = clips * seconds / (wall / 60) / workers
    console.print(
        f"wrote {clips} clips of {seconds:g} s to {index.parent} in {wall:.1f} s "
        f"({rate:.0f} clip-seconds per wall-minute per worker)",
        highlight=False,
    )
