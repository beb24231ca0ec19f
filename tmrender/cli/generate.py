"""`tmrender generate`: one portrait + one audio file -> a lip-synced MP4."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from tmrender.cli.app import app, console, warn
from tmrender.cli.options import (
    CrfOpt,
    DeviceOpt,
    ModelOpt,
    ModeOpt,
    OutputOpt,
    SeedOpt,
)
from tmrender.render.generate import GenerateOptions

DEFAULTS = GenerateOptions  # the command's defaults are the library's (class attributes)


@app.command(
    epilog=(
        "Examples:\n\n"
        "  tmrender generate --image face.png --audio speech.wav\n\n"
        "  tmrender generate -i photo.jpg -a talk.mp3 -o talk.mp4\n\n"
        "  tmrender generate -i group.jpg -a talk.mp3 --face 2 --no-paste-back\n\n"
        "  tmrender generate -i photo.jpg -a talk.mp3 --crop 200,80,600,600\n\n"
        "  tmrender generate --image face.png --audio pause.wav --mode silence --seed 7\n\n"
        "  tmrender generate -i face.png -a talk.wav --model wan.safetensors --device cuda "
        "--compile"
    )
)
def generate(
    image: Annotated[Path, typer.Option("--image", "-i", help="Portrait: PNG, JPEG, WebP, BMP.")],
    audio: Annotated[
        Path, typer.Option("--audio", "-a", help="Any audio ffmpeg reads, or a video's track.")
    ],
    output: OutputOpt = None,
    model: ModelOpt = DEFAULTS.model,
    seed: SeedOpt = DEFAULTS.seed,
    device: DeviceOpt = DEFAULTS.device,
    mode: ModeOpt = DEFAULTS.mode,
    crop: Annotated[
        str | None,
        typer.Option(
            "--crop",
            help="Crop box x,y,w,h in image pixels: render that box, scaled to the model "
            "(no face search, no paste-back).",
        ),
    ] = DEFAULTS.crop,
    face: Annotated[
        str,
        typer.Option(
            "--face",
            help="auto: a model-framed portrait renders as is, any other picture around its "
            "largest face, pasted back into the picture; N: the N-th face, largest first "
            "(as `tmrender faces IMAGE` lists them).",
        ),
    ] = DEFAULTS.face,
    paste_back: Annotated[
        bool,
        typer.Option(
            "--paste-back/--no-paste-back",
            help="Put the rendered face back into the picture, at the picture's size "
            "(even-rounded); --no-paste-back writes the aligned crop alone.",
        ),
    ] = DEFAULTS.paste_back,
    crf: CrfOpt = DEFAULTS.crf,
    devices: Annotated[
        str | None,
        typer.Option(
            "--devices",
            help="Two devices, DIT,VAE (e.g. cuda:0,cuda:1): the VAE decodes on the second.",
        ),
    ] = DEFAULTS.devices,
    compiled: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="Fuse the DiT's elementwise ops with torch.compile (GPUs; the first "
            "chunks compile, so the first frame comes later).",
        ),
    ] = DEFAULTS.compiled,
    prompt: Annotated[
        str | None,
        typer.Option(
            "--prompt",
            help="Text for models with a text encoder (converted Wan2.1); "
            'default "a person talking to the camera".',
        ),
    ] = DEFAULTS.prompt,
    deflicker: Annotated[
        bool,
        typer.Option(
            "--deflicker/--no-deflicker",
            help="Apply the model's frame post-processing over time, if it names any: "
            "re-timing within latents and the zero-lag filter.",
        ),
    ] = DEFAULTS.deflicker,
    cuda_graphs: Annotated[
        bool,
        typer.Option(
            "--cuda-graphs",
            help="On a GPU: replay the steady chunk step as one CUDA graph (fewer launches).",
        ),
    ] = DEFAULTS.cuda_graphs,
) -> None:
    """Render a talking-head video; by default written next to the audio as <stem>.mp4."""
    from tmrender.render.generate import prepare_generate

    # 1. Check every input, then load the model.
    opts = GenerateOptions(
        image=image, audio=audio, output=output, model=model, device=device, devices=devices,
        compiled=compiled, seed=seed, mode=mode, crop=crop, face=face, paste_back=paste_back,
        prompt=prompt, crf=crf,
        deflicker=deflicker, cuda_graphs=cuda_graphs,
    )  # fmt: skip
    job = prepare_generate(opts, on_warning=warn)
    # 2. Render with a progress bar.
    fps, estimate = job.fps, job.estimated_frames
    with _progress() as bar:
        task = bar.add_task("rendering", total=estimate, rtf="")
        start = time.perf_counter()

        def update(stats) -> None:
            rtf = (time.perf_counter() - start) / max(stats.frames / fps, 1e-9)
            total = stats.total_frames or estimate
            bar.update(task, completed=stats.frames, total=total, rtf=f"{rtf:.2f}x")

        stats = job.run(on_frames=update)
    console.print(
        f"wrote {job.output}: {stats.frames} frames, {stats.frames / fps:.2f} s of video in "
        f"{stats.wall_seconds:.2f} s ({stats.realtime_factor:.2f}x real time)",
        highlight=False,
    )


def _progress():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames  {task.fields[rtf]} real time"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
