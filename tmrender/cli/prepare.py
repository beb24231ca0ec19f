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
        "audio.wav, boxes.npy, mouth.npy, meta.json.\n\n"
        "By default (--face track) the face is found in the first frame and tracked; every "
        "frame is aligned to the model's framing (as `generate --face auto` frames a photo), "
        "mouth.npy gets the landmark mouth opening and width of each frame (what `tmrender "
        "eval` measures lip sync against), boxes.npy the lips' and the face's boxes. Where "
        "the face is lost the clip is cut; the summary says how many frames were dropped.\n\n"
        "A sidecar VIDEO.json "
        '({"face": \\[x0, y0, x1, y1]} in source pixels) or --crop (x,y,w,h, as in '
        "generate) gives a fixed face box instead (--face whole: the whole frame); the centre "
        "square of it is scaled to SIZE, the mouth box is estimated and mouth.npy holds NaN. "
        "Bad files are reported one line each and "
        "skipped. Exit code 0: all prepared; 3: some skipped; 2: none usable or bad options."
        "\n\nExamples:\n\n"
        "  tmrender prepare --videos talks/ --out corpus --split test\n\n"
        "  tmrender eval --data corpus --out out/real --baselines\n\n"
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
    face: Annotated[
        str,
        typer.Option(
            help="Without a sidecar or --crop: track the face and frame it as the model's "
            "portraits (track), or take the whole frame (whole)."
        ),
    ] = DEFAULTS.face,
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
        face=face,
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
            elif result.row.get("dropped"):
                console.print(
                    f"{result.clip_id}: face lost, {result.row['dropped']} frames dropped "
                    f"(kept {result.row['frames']})",
                    highlight=False,
                )
            progress.update(task, advance=1, description=result.clip_id)

        def on_found(count: int) -> None:
            progress.update(task, total=count)

        results = prepare_corpus(videos, opts, on_result=on_result, on_found=on_found)
    done = [r for r in results if r.row is not None]
    if not done:
        raise UserInputError(f"none of the {len(results)} files in {videos} could be prepared")
    seconds = sum(r.row["seconds"] for r in done)
    cut = [r.row for r in done if r.row.get("dropped")]
    dropped = sum(row["dropped"] for row in cut)
    console.print(
        f"prepared {len(done)} clips ({seconds:.1f} s) into {out / split} in "
        f"{time.perf_counter() - start:.1f} s; skipped {len(results) - len(done)}; "
        f"{dropped} frames dropped where the face was lost ({len(cut)} clips cut)",
        highlight=False,
    )
    if len(done) < len(results):
        raise typer.Exit(EXIT_SOME_SKIPPED)
