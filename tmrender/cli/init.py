"""`tmrender init`: a randomly initialised checkpoint of a preset, for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tmrender.cli.app import app, console


@app.command(
    epilog=(
        "Examples:\n\n"
        "  tmrender init --preset tm-mini -o runs/untrained.safetensors\n\n"
        "  tmrender init --preset wan2.1-1.3b-audio -o wan13.safetensors --seed 1"
    )
)
def init(
    preset: Annotated[str, typer.Option("--preset", "-p", help="Preset name (see `info`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write.")],
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random weights.")] = 0,
) -> None:
    """Write an UNTRAINED checkpoint (marked so in its metadata); videos from it are noise."""
    from tmrender.models.init import init_checkpoint

    params = init_checkpoint(preset, output, seed)
    console.print(
        f"wrote {output}: untrained {preset}, {params:,} parameters",
        highlight=False,
    )
