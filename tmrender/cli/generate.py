"""`tmrender generate`: one portrait + one audio file -> a lip-synced MP4."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from tmrender.cli.app import app, console, warn
from tmrender.cli.options import (
    MODES,
    CrfOpt,
    CropOpt,
    DeviceOpt,
    ModelOpt,
    ModeOpt,
    OutputOpt,
    SeedOpt,
)


@app.command(
    epilog=(
        "Examples:\n\n"
        "  tmrender generate --image face.png --audio speech.wav\n\n"
        "  tmrender generate -i photo.jpg -a talk.mp3 -o talk.mp4 --crop 200,80,600,600\n\n"
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
    model: ModelOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    mode: ModeOpt = "auto",
    crop: CropOpt = None,
    crf: CrfOpt = 18,
    devices: Annotated[
        str | None,
        typer.Option(
            "--devices",
            help="Two devices, DIT,VAE (e.g. cuda:0,cuda:1): the VAE decodes on the second.",
        ),
    ] = None,
    compiled: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="Fuse the DiT's elementwise ops with torch.compile (GPUs; the first "
            "chunks compile, so the first frame comes later).",
        ),
    ] = False,
    prompt: Annotated[
        str | None,
        typer.Option(
            "--prompt",
            help="Text for models with a text encoder (converted Wan2.1); "
            'default "a person talking to the camera".',
        ),
    ] = None,
    deflicker: Annotated[
        bool,
        typer.Option(
            "--deflicker/--no-deflicker",
            help="Apply the model's frame post-processing over time, if it names any: "
            "re-timing within latents and the zero-lag filter.",
        ),
    ] = True,
    cuda_graphs: Annotated[
        bool,
        typer.Option(
            "--cuda-graphs",
            help="On a GPU: replay the steady chunk step as one CUDA graph (fewer launches).",
        ),
    ] = False,
) -> None:
    """Render a talking-head video; by default written next to the audio as <stem>.mp4."""
    from tmrender.devices import split_devices
    from tmrender.errors import UserInputError
    from tmrender.models.conditioning import DEFAULT_PROMPT
    from tmrender.models.registry import load_model
    from tmrender.render.audio import open_audio
    from tmrender.render.image import CropBox, open_rgb
    from tmrender.render.pipeline import RenderOptions, render_video
    from tmrender.render.portrait import portrait_looks_like_avatar
    from tmrender.render.video import check_crf, check_writable_output

    if mode not in MODES:
        raise UserInputError(f"--mode must be one of {', '.join(MODES)}; got {mode!r}")
    check_crf(crf)
    output = output if output is not None else audio.with_name(f"{audio.stem}.mp4")
    if output.resolve() == audio.resolve():
        raise UserInputError(f"the output would overwrite the audio {audio}; choose -o")
    # 1. Check every input before the model is loaded.
    options = RenderOptions(
        seed=seed,
        mode=mode,
        crop=CropBox.parse(crop) if crop else None,
        prompt=DEFAULT_PROMPT if prompt is None else prompt,
        crf=crf,
        deflicker=deflicker,
        cuda_graphs=cuda_graphs,
    )
    info = open_audio(audio)
    open_rgb(image)
    check_writable_output(output)
    # 2. Load the model.
    vae_device = None
    if devices is not None:
        device, vae_device = split_devices(devices)
    net, meta = load_model(model, device, vae_device)
    if compiled:
        from tmrender.models.fused import enable_fusion

        enable_fusion()
    if not meta["trained"]:
        warn(f"{meta['path']} is an untrained model: the video will be noise")
    if prompt is not None and net.text_encoder is None:
        warn(f"{meta['path']} has no text encoder: --prompt is ignored")
    if not portrait_looks_like_avatar(image, options.crop):
        warn(
            f"{image} does not look like the drawn avatars the model learned from (a "
            "photograph?): it still renders, but expect a poor likeness and lip sync"
        )
    # 3. Render with a progress bar.
    fps = net.cfg.fps
    estimate = round((info.duration_hint or 0) * fps) or None
    with _progress() as bar:
        task = bar.add_task("rendering", total=estimate, rtf="")
        start = time.perf_counter()

        def update(stats) -> None:
            rtf = (time.perf_counter() - start) / max(stats.frames / fps, 1e-9)
            total = stats.total_frames or estimate
            bar.update(task, completed=stats.frames, total=total, rtf=f"{rtf:.2f}x")

        stats = render_video(net, image, info, output, options, on_frames=update)
    console.print(
        f"wrote {output}: {stats.frames} frames, {stats.frames / fps:.2f} s of video in "
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
