"""`tmrender bench` as a library call: which benchmark a set of options runs, and its rows.

`run_bench(BenchOptions(...))` from Python is the same run as `tmrender bench ...` (the
command's defaults are `BenchOptions`'s). The suites themselves live in `bench_render`,
`bench_gpu`, `bench_io`, `trace` and `tmrender.serve.measure` (live, which the command
calls itself: serve is a higher layer); this module only
checks the options and dispatches, and imports them (and torch) when a benchmark runs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from tmrender.errors import UserInputError

SUITES = ("render", "decode", "write", "live")
DEFAULT_SECONDS = 60.0  # audio length when none is given
LIVE_SECONDS = 30.0  # a live session's, when none is given
TRACE_SECONDS = 4.0  # a trace's, when none is given


@dataclass(frozen=True)
class BenchOptions:
    """What to measure and how."""

    # what
    suite: str = "render"  # one of SUITES
    model: str | None = None  # render: a model name or path (default: the default model)
    preset: str | None = None  # render: a preset with random weights instead
    seconds: tuple[float, ...] = ()  # audio lengths, one row each; () for the default
    device: str = "auto"
    # decode / write
    audio: Path | None = None  # decode: this file instead of generated MP3s
    size: int = 128  # write: frame size in pixels
    # render on CUDA (presets)
    compiled: bool = False  # fuse the DiT's elementwise ops (torch.compile)
    context: str = "refresh"  # the sampler's cache update: refresh or last_step
    graphs: bool = False  # replay the steady chunk step as a CUDA graph
    vae: str = "mini"  # the presets' light VAE (mini) or Wan2.1's own (wan)
    trace: str | None = None  # profile a short render instead: PREFIX.json and PREFIX.png


def lengths(opts: BenchOptions) -> list[float]:
    """The audio lengths to measure: those given, else DEFAULT_SECONDS."""
    return list(opts.seconds or (DEFAULT_SECONDS,))


def run_bench(opts: BenchOptions) -> list[dict]:
    """The benchmark's rows, one per case; each case runs in a fresh process."""
    if opts.trace is not None:
        return [trace_row(opts)]
    if opts.suite == "render":
        return render_rows(opts)
    if opts.suite == "decode":
        from tmrender.eval.bench_io import bench_decode

        return bench_decode(lengths(opts), opts.audio)
    if opts.suite == "write":
        from tmrender.eval.bench_io import bench_write

        return bench_write(lengths(opts), opts.size)
    if opts.suite == "live":  # layer 7 (serve) runs it: `tmrender.serve.measure.live_rows`
        raise UserInputError("--suite live is run by tmrender.serve.measure.live_rows")
    raise UserInputError(f"unknown --suite {opts.suite!r}; choose one of {', '.join(SUITES)}")


def render_rows(opts: BenchOptions) -> list[dict]:
    """A preset on CUDA: the GPU bench (stage profile, fps, memory); else renders of a
    model file (or of a preset's random weights written to a temporary file)."""
    from tmrender.devices import resolve_device

    device = str(resolve_device(opts.device))
    if opts.preset is not None and device.startswith("cuda"):
        from tmrender.eval import bench_gpu

        bench_gpu.bench_config(opts.preset, opts.context, opts.vae)  # one line for bad options
        return bench_gpu.bench_gpu(
            opts.preset, lengths(opts), device, opts.compiled, opts.context, opts.graphs,
            opts.vae,
        )  # fmt: skip
    from tmrender.eval.bench_render import bench_render
    from tmrender.models.registry import resolve_model_path

    with tempfile.TemporaryDirectory() as tmp:
        spec = opts.model
        if opts.preset is not None:
            from tmrender.models.init import init_checkpoint

            spec = str(Path(tmp) / f"{opts.preset}.safetensors")
            init_checkpoint(opts.preset, spec)
        return bench_render(str(resolve_model_path(spec)), lengths(opts), device)


def trace_row(opts: BenchOptions) -> dict:
    """`trace`: check the options, then profile a render (`tmrender.eval.trace`) of the
    first length given, else TRACE_SECONDS."""
    from tmrender.devices import resolve_device

    prefix = opts.trace
    if opts.preset is None:
        raise UserInputError("--trace needs --preset (e.g. --preset wan2.1-1.3b-audio)")
    device = resolve_device(opts.device)
    if device.type != "cuda":
        raise UserInputError("--trace profiles CUDA kernels; it needs --device cuda")
    if not Path(prefix).resolve().parent.is_dir():
        raise UserInputError(f"--trace {prefix}: folder {Path(prefix).parent} does not exist")
    from tmrender.eval.bench_gpu import bench_config
    from tmrender.eval.trace import trace_render

    bench_config(opts.preset, opts.context, opts.vae)  # one clear line for bad options
    return trace_render(
        opts.preset, str(device), prefix, (opts.seconds or (TRACE_SECONDS,))[0],
        compiled=opts.compiled, context=opts.context, graphs=opts.graphs, vae=opts.vae,
    )  # fmt: skip
