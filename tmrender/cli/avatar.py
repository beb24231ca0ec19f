"""`tmrender avatar`: draw one random avatar of the synthetic corpus as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tmrender.cli.app import app, console


@app.command(
    epilog=(
        "Examples:\n\n"
        "  tmrender avatar --seed 3 -o face.png\n\n"
        "  tmrender avatar --seed 42 -o big.png --size 1024\n\n"
        "  tmrender avatar --seed 3 -o textured.png --textured"
    )
)
def avatar(
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file to write.")],
    seed: Annotated[int, typer.Option(help="Appearance seed.")] = 0,
    size: Annotated[int, typer.Option(help="Image size in pixels (square).")] = 512,
    textured: Annotated[
        bool, typer.Option(help="Textured skin, hair, clothes and background (same face).")
    ] = False,
) -> None:
    """Draw one avatar (neutral pose, mouth closed), the kind the corpus animates."""
    from PIL import Image

    from tmrender.data.avatar import draw_avatar
    from tmrender.errors import UserInputError
    from tmrender.media.video import check_writable_output

    if not 32 <= size <= 4096:
        raise UserInputError(f"--size must be between 32 and 4096 pixels, got {size}")
    path = check_writable_output(output)
    try:
        Image.fromarray(draw_avatar(seed, size, textured)).save(path, format="PNG")
    except (OSError, ValueError) as err:
        raise UserInputError(f"cannot write {path}: {err}") from err
    what = ", textured" if textured else ""
    console.print(f"wrote {path} ({size}x{size}, seed {seed}{what})", highlight=False)
