"""Options shared by several commands (one definition each, huggingface_hub style)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", help="Installed model name or .safetensors path (default: tm-mini)."
    ),
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto (CUDA if present), cpu, cuda or cuda:N.")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed: same seed, same video.")]
ModeOpt = Annotated[
    str,
    typer.Option(
        "--mode", help="auto (speaking/silence per chunk from voice activity), speaking, silence."
    ),
]
CropOpt = Annotated[
    str | None,
    typer.Option("--crop", help="Crop box x,y,w,h in image pixels (default: centre crop)."),
]
CrfOpt = Annotated[
    int, typer.Option("--crf", help="H.264 quality, 0 (lossless) to 51; lower is better.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Output .mp4 path.")]
