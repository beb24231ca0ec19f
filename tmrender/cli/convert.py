"""`tmrender convert`: a Wan2.1 release and a wav2vec2 folder -> one tmrender checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tmrender.cli.app import app, console


@app.command(
    epilog=(
        "Examples:\n\n"
        "  tmrender convert --wan Wan2.1-I2V-14B-480P --wav2vec2 wav2vec2-base-960h "
        "--preset wan2.1-14b-audio -o wan14b-audio.safetensors\n\n"
        "  tmrender convert --wan Wan2.1-T2V-1.3B-Diffusers --wav2vec2 wav2vec2-base-960h "
        "-o wan13-audio.safetensors"
    )
)
def convert(
    wan: Annotated[
        Path, typer.Option("--wan", help="Wan2.1 folder, original or diffusers layout.")
    ],
    wav2vec2: Annotated[
        Path, typer.Option("--wav2vec2", help="Local transformers wav2vec2 folder.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write.")],
    preset: Annotated[
        str | None,
        typer.Option("--preset", "-p", help="Check the dimensions against this preset."),
    ] = None,
    size: Annotated[int, typer.Option("--size", help="Output height and width.")] = 512,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the new audio layers.")] = 0,
) -> None:
    """Convert Wan2.1 + wav2vec2 into an audio-ready model (audio layers at zero, untrained)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from tmrender.convert.wan import convert_wan

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("converting", total=None)
        plan = convert_wan(
            wan,
            wav2vec2,
            output,
            preset=preset,
            size=size,
            seed=seed,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    dit = plan.config.dit
    encoders = [
        label
        for label, cfg in (("CLIP", plan.config.image_encoder), ("umT5", plan.config.text_encoder))
        if cfg is not None
    ]
    console.print(
        f"wrote {output}: {plan.layout} layout, DiT {dit.dim}x{dit.num_layers}"
        f"{', ' + ' + '.join(encoders) + ' encoders' if encoders else ''}, "
        f"{plan.config.height}x{plan.config.width}, audio layers untrained",
        highlight=False,
    )
