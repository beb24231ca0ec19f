"""`tmrender bench`: benchmarks that print figures (speed, memory), never timed unit tests."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tmrender.cli.app import app, stdout
from tmrender.cli.options import DeviceOpt, JsonOpt, ModelOpt

SUITES = ("render", "decode", "write")


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
        "  tmrender bench --suite write -s 60 -s 600        (the video writer alone)"
    )
)
def bench(
    suite: Annotated[str, typer.Option(help=f"What to measure: {', '.join(SUITES)}.")] = "render",
    model: ModelOpt = None,
    preset: Annotated[
        str | None,
        typer.Option("--preset", help="render: bench a preset with random weights."),
    ] = None,
    seconds: Annotated[
        list[float] | None,
        typer.Option("--seconds", "-s", help="Audio length(s) to measure; repeat for a table."),
    ] = None,
    device: DeviceOpt = "auto",
    audio: Annotated[
        Path | None, typer.Option(help="decode: measure this file instead of generated MP3s.")
    ] = None,
    size: Annotated[int, typer.Option(help="write: frame size in pixels.")] = 128,
    compiled: Annotated[
        bool,
        typer.Option(
            "--compile", help="render on CUDA: fuse the DiT's elementwise ops (torch.compile)."
        ),
    ] = False,
    context: Annotated[
        str,
        typer.Option(
            help="render on CUDA: cache update per chunk, refresh (a forward) or last_step."
        ),
    ] = "refresh",
    graphs: Annotated[
        bool,
        typer.Option(
            "--cuda-graphs",
            help="render on CUDA: replay the steady chunk step as a CUDA graph.",
        ),
    ] = False,
    vae: Annotated[
        str,
        typer.Option(
            help="render on CUDA: the presets' light VAE (mini) or Wan2.1's own VAE (wan), "
            "random weights either way.",
        ),
    ] = "mini",
    trace: Annotated[
        str | None,
        typer.Option(
            help="render on CUDA: profile a short render, write PREFIX.json and PREFIX.png "
            "(kernels per CUDA stream) and print the decode/DiT overlap.",
            metavar="PREFIX",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure speed and peak memory; each case runs in a fresh process."""
    from tmrender.errors import UserInputError
    from tmrender.eval import bench_io, bench_render

    lengths = seconds or [60.0]
    if trace is not None:
        rows = [_trace(preset, device, trace, compiled, context, seconds, graphs, vae)]
    elif suite == "render" and preset is not None and _is_cuda(device):
        from tmrender.devices import resolve_device
        from tmrender.eval import bench_gpu

        bench_gpu.bench_config(preset, context, vae)  # one clear line for bad options
        rows = bench_gpu.bench_gpu(
            preset, lengths, str(resolve_device(device)), compiled, context, graphs, vae
        )
    elif suite == "render":
        with tempfile.TemporaryDirectory() as tmp:
            spec = model
            if preset is not None:
                from tmrender.models.init import init_checkpoint

                spec = str(Path(tmp) / f"{preset}.safetensors")
                init_checkpoint(preset, spec)
            from tmrender.devices import resolve_device
            from tmrender.models.registry import resolve_model_path

            spec = str(resolve_model_path(spec))
            rows = bench_render.bench_render(spec, lengths, str(resolve_device(device)))
    elif suite == "decode":
        rows = bench_io.bench_decode(lengths, audio)
    elif suite == "write":
        rows = bench_io.bench_write(lengths, size)
    else:
        raise UserInputError(f"unknown --suite {suite!r}; choose one of {', '.join(SUITES)}")
    print_rows(rows, as_json, title=f"tmrender bench --suite {suite}")


def _trace(
    preset: str | None,
    device: str,
    prefix: str,
    compiled: bool,
    context: str,
    seconds: list[float] | None,
    graphs: bool = False,
    vae: str = "mini",
) -> dict:
    """`--trace`: check the options, then profile a render (tmrender.eval.trace)."""
    from tmrender.errors import UserInputError

    if preset is None:
        raise UserInputError("--trace needs --preset (e.g. --preset wan2.1-1.3b-audio)")
    if not _is_cuda(device):
        raise UserInputError("--trace profiles CUDA kernels; it needs --device cuda")
    if not Path(prefix).resolve().parent.is_dir():
        raise UserInputError(f"--trace {prefix}: folder {Path(prefix).parent} does not exist")
    from tmrender.devices import resolve_device
    from tmrender.eval.bench_gpu import bench_config
    from tmrender.eval.trace import trace_render

    bench_config(preset, context, vae)  # one clear line for bad options
    length = seconds[0] if seconds else 4.0
    return trace_render(
        preset, str(resolve_device(device)), prefix, length, compiled=compiled,
        context=context, graphs=graphs, vae=vae,
    )  # fmt: skip


def _is_cuda(device: str) -> bool:
    from tmrender.devices import resolve_device

    return resolve_device(device).type == "cuda"


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
