"""GPU timeline of a real render: kernel intervals per CUDA stream, a PNG, the overlap.

`trace_render` (CUDA only) profiles `render_video` with torch.profiler; everything else is
pure and works on a list of `KernelEvent`: the compact JSON, the timeline plot, and the
overlap figure (the fraction of the decode stream's busy time during which the DiT's
stream is busy too). The DiT runs on the default stream and the VAE decoder on a stream of
its own (`tmrender.render.pipeline`), so streams are classified by busy time: the busiest
stream is the DiT's, every other stream the decode side's.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tmrender.files import atomic_write

NAME_CHARS = 60  # kernel names are shortened to this many characters
COLOURS = {"dit": "tab:blue", "decode": "tab:orange"}


@dataclass(frozen=True)
class KernelEvent:
    """One GPU kernel: CUDA stream id, shortened name, start and duration in microseconds."""

    stream: int
    name: str
    start_us: float
    dur_us: float


def shorten_kernel_name(name: str, chars: int = NAME_CHARS) -> str:
    """Drop template arguments and parameter lists, keep the last `chars` characters."""
    short = re.split(r"[<(]", name, maxsplit=1)[0].strip() or name
    return short[-chars:]


def kernel_events_from_chrome_trace(trace: dict) -> list[KernelEvent]:
    """Kernel events of a torch.profiler Chrome trace (`export_chrome_trace`), by start."""
    events = [
        KernelEvent(int(e["args"]["stream"]), shorten_kernel_name(e["name"]), e["ts"], e["dur"])
        for e in trace.get("traceEvents", [])
        if e.get("cat") == "kernel" and "stream" in e.get("args", {})
    ]
    return sorted(events, key=lambda e: e.start_us)


def steady_window(events: list[KernelEvent], seconds: float) -> list[KernelEvent]:
    """The events inside a `seconds` window centred on the middle of the trace (steady
    state, away from start-up and the tail), clipped to it, times relative to its start."""
    if not events:
        return []
    first = min(e.start_us for e in events)
    last = max(e.start_us + e.dur_us for e in events)
    half = 0.5 * min(seconds * 1e6, last - first)
    lo, hi = 0.5 * (first + last) - half, 0.5 * (first + last) + half
    out = []
    for e in events:
        start, stop = max(e.start_us, lo), min(e.start_us + e.dur_us, hi)
        if stop > start:
            out.append(KernelEvent(e.stream, e.name, start - lo, stop - start))
    return out


def busy_intervals(events: list[KernelEvent], streams: set[int]) -> list[tuple[float, float]]:
    """Merged (start, stop) microsecond intervals during which any of `streams` runs a kernel."""
    spans = sorted((e.start_us, e.start_us + e.dur_us) for e in events if e.stream in streams)
    merged: list[tuple[float, float]] = []
    for start, stop in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return merged


def stream_roles(events: list[KernelEvent]) -> dict[int, str]:
    """Stream id -> "dit" (the busiest stream) or "decode" (every other stream)."""
    busy: dict[int, float] = {}
    for e in events:
        busy[e.stream] = busy.get(e.stream, 0.0) + e.dur_us
    dit = max(busy, key=busy.get) if busy else None
    return {s: "dit" if s == dit else "decode" for s in sorted(busy)}


def overlap_fraction(events: list[KernelEvent], roles: dict[int, str]) -> float | None:
    """Fraction of the decode streams' busy time during which the DiT stream is busy too
    (None when no decode kernel ran)."""
    decode = busy_intervals(events, {s for s, r in roles.items() if r == "decode"})
    dit = busy_intervals(events, {s for s, r in roles.items() if r == "dit"})
    total = sum(b - a for a, b in decode)
    if total == 0:
        return None
    both, j = 0.0, 0
    for start, stop in decode:
        while j < len(dit) and dit[j][1] <= start:
            j += 1
        k = j
        while k < len(dit) and dit[k][0] < stop:
            both += min(stop, dit[k][1]) - max(start, dit[k][0])
            k += 1
    return both / total


def trace_document(events: list[KernelEvent], roles: dict[int, str], title: str) -> dict:
    """The compact JSON: kernel names once in `names`, events as [stream, name index,
    start us, duration us] rounded to 0.1 us."""
    names = sorted({e.name for e in events})
    index = {n: i for i, n in enumerate(names)}
    return {
        "title": title,
        "streams": {str(s): r for s, r in roles.items()},
        "names": names,
        "events": [
            [e.stream, index[e.name], round(e.start_us, 1), round(e.dur_us, 1)] for e in events
        ],
        "overlap_fraction": overlap_fraction(events, roles),
    }


def plot_timeline(events: list[KernelEvent], roles: dict[int, str], title: str, png: Path):
    """One row per stream, kernels as bars (DiT blue, decode orange), time in ms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    streams = sorted(roles, key=lambda s: (roles[s] != "dit", s))
    fig, ax = plt.subplots(figsize=(12, 1.0 + 0.6 * len(streams)))
    for row, stream in enumerate(streams):
        bars = [(e.start_us / 1e3, e.dur_us / 1e3) for e in events if e.stream == stream]
        ax.broken_barh(bars, (row - 0.4, 0.8), color=COLOURS[roles[stream]])
    ax.set_yticks(range(len(streams)), [f"stream {s} ({roles[s]})" for s in streams])
    ax.set_ylim(len(streams) - 0.5, -0.5)
    ax.set(xlabel="time (ms)", title=title)
    fig.tight_layout()
    with atomic_write(png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_trace(events: list[KernelEvent], title: str, prefix: str) -> dict:
    """Write PREFIX.json and PREFIX.png of `events`; returns the figures and paths."""
    roles = stream_roles(events)
    doc = trace_document(events, roles, title)
    json_path, png_path = Path(f"{prefix}.json"), Path(f"{prefix}.png")
    with atomic_write(json_path) as tmp:
        tmp.write_text(json.dumps(doc, separators=(",", ":")))
    plot_timeline(events, roles, title, png_path)
    return {
        "trace_json": str(json_path),
        "trace_png": str(png_path),
        "kernels": len(events),
        "streams": doc["streams"],
        "decode_overlap_fraction": doc["overlap_fraction"],
    }


def trace_render(
    preset: str,
    device_name: str,
    prefix: str,
    seconds: float = 4.0,
    window_s: float = 1.5,
    compiled: bool = False,
    context: str = "refresh",
    graphs: bool = False,
    vae: str = "mini",
) -> dict:
    """CUDA only: build PRESET with random bf16 weights, warm up on 1 s of audio, profile
    a `seconds` render (CUDA kernels), keep `window_s` of steady state, write the trace.
    graphs: replay the steady chunk step as a CUDA graph (`RenderOptions.cuda_graphs`);
    vae: "mini" or "wan" (`tmrender.eval.bench_gpu.bench_config`)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from tmrender.data.avatar import draw_avatar
    from tmrender.eval.bench_gpu import bench_config
    from tmrender.eval.bench_io import make_test_audio
    from tmrender.models.fused import enable_fusion
    from tmrender.models.init import build_random_model
    from tmrender.render.pipeline import RenderOptions, render_video

    device = torch.device(device_name)
    cfg = bench_config(preset, context, vae)
    model = build_random_model(cfg, device, torch.bfloat16)
    image = draw_avatar(seed=1, size=cfg.height)
    if compiled:
        enable_fusion()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        options = RenderOptions(cuda_graphs=graphs)
        warm = make_test_audio(folder / "warm.m4a", 1.0)
        render_video(model, image, warm, folder / "w.mp4", options)
        audio = make_test_audio(folder / "speech.m4a", seconds)
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            render_video(model, image, audio, folder / "out.mp4", options)
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - start
        prof.export_chrome_trace(str(folder / "trace.json"))
        events = kernel_events_from_chrome_trace(json.loads((folder / "trace.json").read_text()))
    window = steady_window(events, window_s)
    title = f"{preset}, {cfg.width}x{cfg.height}, context {context}" + "".join(
        label for label, on in ((", fused", compiled), (", CUDA graphs", graphs),
                                (", Wan2.1 VAE", vae == "wan")) if on
    )  # fmt: skip
    return {
        "preset": preset,
        "profiled_wall_s": round(wall, 2),
        **write_trace(window, title, prefix),
    }
