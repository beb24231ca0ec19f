"""`tmrender bench`: benchmarks that print figures (speed, memory), never timed unit tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tmrender.cli.app import app, console, stdout

SUITES = ("decode", "write")


@app.command(
    epilog=(
        "Examples:\n\n"
        "  tmrender bench --suite decode --seconds 3600\n\n"
        "  tmrender bench --suite write --seconds 60 --seconds 600 --json"
    )
)
def bench(
    suite: Annotated[str, typer.Option(help=f"What to measure: {', '.join(SUITES)}.")] = "decode",
    seconds: Annotated[
        list[float] | None,
        typer.Option("--seconds", "-s", help="Audio length(s) to measure; repeat for a table."),
    ] = None,
    audio: Annotated[
        Path | None, typer.Option(help="decode: measure this file instead of generated MP3s.")
    ] = None,
    size: Annotated[int, typer.Option(help="write: frame size in pixels.")] = 128,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Measure speed and peak memory; each case runs in a fresh process."""
    from tmrender.errors import UserInputError
    from tmrender.eval import bench_io

    lengths = seconds or [60.0]
    if suite == "decode":
        rows = bench_io.bench_decode(lengths, audio)
    elif suite == "write":
        rows = bench_io.bench_write(lengths, size)
    else:
        raise UserInputError(f"unknown --suite {suite!r}; choose one of {', '.join(SUITES)}")
    print_rows(rows, as_json, title=f"tmrender bench --suite {suite}")


def print_rows(rows: list[dict], as_json: bool, title: str) -> None:
    """Print benchmark rows as JSON (stdout) or as a table."""
    if as_json:
        stdout.print_json(json.dumps(rows))
        return
    table = Table(title=title)
    for key in rows[0]:
        table.add_column(key, justify="right")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)
