"""`tmrender prepare`: real speaking videos -> a training corpus (tmrender.data.prepare)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from tmrender.cli.app import app, console, warn
from tmrender.data.prepare import PrepareOptions

DEFAULTS = PrepareOptions  # the command's defaults are the library's (class attributes)

EXIT_SOME_SKIPPED = 3  # as `tmrender batch`


@app.command(
    epilog=(
        "Every file under VIDEOS (sub-folders too) with a video and an audio track becomes a "
        "clip of OUT/SPLIT/ in the layout `tmrender synth` writes: 25 fps frames, 16 kHz mono "
        "audio.wav, boxes.npy, meta.json. The face box is read from a sidecar VIDEO.json "
        '({"face": \\[x0, y0, x1, y1]} in source pixels), else from --crop (x,y,w,h, as in '
        "generate), else it is the whole frame; the centre square of it is scaled to SIZE. "
        "The mouth box is estimated "
        "(the lower-middle of the face box) and there is no mouth, pose or phoneme truth "
        "(mouth.npy and pose.npy hold NaN). Bad files are reported one line each and "
        "skipped. Exit code 0: all prepared; 3: some skipped; 2: none usable or bad options."
        "\n\nExamples:\n\n"
        "  tmrender prepare --videos talks/ --out corpus --workers 2\n\n"
        "  tmrender prepare --videos held-out/ --out corpus --split test --size 256\n\n"
        "  tmrender prepare --videos studio/ --out corpus --crop 640,120,640,640 --frames npy"
    )
)
def prepare(
    videos: Annotated[
        Path, typer.Option("--videos", help="Folder of speaking videos (searched recursively).")
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Corpus folder; clips go to OUT/SPLIT/.")
    ],
    size: Annotated[int, typer.Option(help="Frame size in pixels (square).")] = DEFAULTS.size,
    crop: Annotated[
        str | None,
        typer.Option(
            help="Face box x,y,w,h in source pixels for videos without a sidecar "
            "\\[default: the whole frame]."
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="train or test.")] = DEFAULTS.split,
    workers: Annotated[
        int, typer.Option("--workers", "-w", help="Worker processes.")
    ] = DEFAULTS.workers,
    frames: Annotated[
        str, typer.Option(help="Frame storage: mp4 (H.264 crf 10, with audio) or npy (exact).")
    ] = DEFAULTS.frame_format,
) -> None:
    """Turn a folder of real speaking videos into a training corpus; bad files are skipped."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from tmrender.data.prepare import check_options, prepare_corpus
    from tmrender.errors import UserInputError
    from tmrender.media.image import CropBox

    opts = PrepareOptions(
        out=out,
        split=split,
        size=size,
        crop=CropBox.parse(crop) if crop is not None else None,
        frame_format=frames,
        workers=workers,
    )
    check_options(opts)
    start = time.perf_counter()
    columns = (
        TextColumn("[bold]prepare[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(split, total=None)

        def on_result(result) -> None:
            if result.error is not None:
                warn(f"skipped: {result.error}")
            progress.update(task, advance=1, description=result.clip_id)

        def on_found(count: int) -> None:
            progress.update(task, total=count)

        results = prepare_corpus(videos, opts, on_result=on_result, on_found=on_found)
    done = [r for r in results if r.row is not None]
    if not done:
        raise UserInputError(f"none of the {len(results)} files in {videos} could be prepared")
    seconds = sum(r.row["seconds"] for r in done)
    console.print(
        f"prepared {len(done)} clips ({seconds:.1f} s) into {out / split} in "
        f"{time.perf_counter() - start:.1f} s; skipped {len(results) - len(done)}",
        highlight=False,
    )
    if len(done) < len(results):
        raise typer.Exit(EXIT_SOME_SKIPPED)
