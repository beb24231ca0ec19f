"""`tmrender bench`: benchmarks that print figures (speed, memory), never timed unit tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tmrender.cli.app import app, stdout
from tmrender.cli.options import DeviceOpt, JsonOpt, ModelOpt
from tmrender.eval.bench import SUITES, BenchOptions

DEFAULTS = BenchOptions()


@app.command(
    epilog=(
        "Examples:\n\n"
        "  tmrender bench --preset tm-mini -s 60 -s 600     (untrained weights, speed only)\n\n"
        "  tmrender bench --preset wan2.1-14b-audio --device cuda -s 60   (random bf16 "
        "weights built on the GPU; stage profile, fps, memory)\n\n"
        "  tmrender bench --preset wan2.1-1.3b-audio --device cuda --trace docs/trace-1.3b   "
        "(GPU timeline of a 4-s render: PREFIX.json, PREFIX.png, decode/DiT overlap)\n\n"
        "  tmrender bench --preset wan2.1-1.3b-audio --device cuda --cuda-graphs --vae wan "
        "-s 20   (with Wan2.1's own VAE decoding on its own stream)\n\n"
        "  tmrender bench --model tm-mini -s 60 --json\n\n"
        "  tmrender bench --suite decode -s 3600            (streaming decode of a 60-min MP3)\n\n"
        "  tmrender bench --suite write -s 60 -s 600        (the video writer alone)\n\n"
        "  tmrender bench --suite live -s 30                (tmrender live on loopback: "
        "glass-to-glass latency, frame rate, server memory, say mode's A/V offset)"
    )
)
def bench(
    suite: Annotated[
        str, typer.Option(help=f"What to measure: {', '.join(SUITES)}.")
    ] = DEFAULTS.suite,
    model: ModelOpt = DEFAULTS.model,
    preset: Annotated[
        str | None,
        typer.Option("--preset", help="render: bench a preset with random weights."),
    ] = DEFAULTS.preset,
    seconds: Annotated[
        list[float] | None,
        typer.Option(
            "--seconds", "-s", help="Audio length(s) to measure; repeat for a table [default: 60]."
        ),
    ] = None,
    device: DeviceOpt = DEFAULTS.device,
    audio: Annotated[
        Path | None, typer.Option(help="decode: measure this file instead of generated MP3s.")
    ] = DEFAULTS.audio,
    size: Annotated[int, typer.Option(help="write: frame size in pixels.")] = DEFAULTS.size,
    compiled: Annotated[
        bool,
        typer.Option(
            "--compile", help="render on CUDA: fuse the DiT's elementwise ops (torch.compile)."
        ),
    ] = DEFAULTS.compiled,
    context: Annotated[
        str,
        typer.Option(
            help="render on CUDA: cache update per chunk, refresh (a forward) or last_step."
        ),
    ] = DEFAULTS.context,
    graphs: Annotated[
        bool,
        typer.Option(
            "--cuda-graphs",
            help="render on CUDA: replay the steady chunk step as a CUDA graph.",
        ),
    ] = DEFAULTS.graphs,
    vae: Annotated[
        str,
        typer.Option(
            help="render on CUDA: the presets' light VAE (mini) or Wan2.1's own VAE (wan), "
            "random weights either way.",
        ),
    ] = DEFAULTS.vae,
    trace: Annotated[
        str | None,
        typer.Option(
            help="render on CUDA: profile a short render, write PREFIX.json and PREFIX.png "
            "(kernels per CUDA stream) and print the decode/DiT overlap.",
            metavar="PREFIX",
        ),
    ] = DEFAULTS.trace,
    as_json: JsonOpt = False,
) -> None:
    """Measure speed and peak memory; each case runs in a fresh process."""
    from tmrender.eval.bench import run_bench

    opts = BenchOptions(
        suite=suite, model=model, preset=preset, seconds=tuple(seconds or ()), device=device,
        audio=audio, size=size, compiled=compiled, context=context, graphs=graphs, vae=vae,
        trace=trace,
    )  # fmt: skip
    if suite == "live":
        from tmrender.serve.measure import live_rows

        rows = live_rows(opts)
    else:
        rows = run_bench(opts)
    print_rows(rows, as_json, title=f"tmrender bench --suite {suite}")


def print_rows(rows: list[dict], as_json: bool, title: str) -> None:
    """Print benchmark rows as JSON (stdout) or as a table, one column per row."""
    if as_json:
        stdout.print_json(json.dumps(rows))
        return
    table = Table(title=title)
    table.add_column("figure")
    for i in range(len(rows)):
        table.add_column(f"run {i + 1}", justify="right")
    for key in rows[0]:
        table.add_row(key, *(str(row.get(key, "")) for row in rows))
    stdout.print(table)
