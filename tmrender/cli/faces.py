"""`tmrender faces IMAGE`: the faces in an image, largest first, with boxes and scores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tmrender.cli.app import app, console, stdout
from tmrender.cli.options import JsonOpt


@app.command(
    epilog=(
        "Examples:\n\n"
        "  tmrender faces photo.jpg\n\n"
        "  tmrender faces photo.jpg --json   (a list of {x, y, w, h, score, size_ok})"
    )
)
def faces(
    image: Annotated[Path, typer.Argument(help="A photo, painting or drawing (PNG, JPEG, ...).")],
    as_json: JsonOpt = False,
) -> None:
    """List the faces in an image, largest first: box x, y, w, h in pixels and the detector's
    score. Exit code 2 with one line when the image cannot be read, is larger than the pixel
    limit, or holds no face."""
    from tmrender.errors import UserInputError
    from tmrender.faces import MIN_FACE_PX, detect_faces, read_image

    found = detect_faces(read_image(image))
    if not found:
        raise UserInputError(f"no face found in {image}")
    rows = [{**face.as_dict(), "size_ok": face.w >= MIN_FACE_PX} for face in found]
    if as_json:
        stdout.print_json(json.dumps(rows))
        return
    table = Table(title=f"{len(rows)} face(s) in {image}")
    for column in ("#", "x", "y", "w", "h", "score", "note"):
        table.add_column(column, justify="right" if column != "note" else "left")
    for i, row in enumerate(rows, 1):
        note = "" if row["size_ok"] else f"too small (< {MIN_FACE_PX} px wide)"
        values = (i, row["x"], row["y"], row["w"], row["h"], f"{row['score']:.2f}", note)
        table.add_row(*map(str, values))
    stdout.print(table)
    if not rows[0]["size_ok"]:
        console.print(
            f"[yellow]warning:[/yellow] every face is under {MIN_FACE_PX} pixels wide: "
            "too small to animate",
            highlight=False,
        )
