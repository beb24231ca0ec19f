"""GPU benchmark of the streaming engine for any preset, with random weights built on the
device (`tmrender bench --preset NAME --device cuda`).

Two parts per case, each case in a fresh process (`python -m tmrender.eval.bench_gpu
PRESET SECONDS DEVICE FOLDER`):

1. Stage profile: each stage of one chunk timed alone with CUDA events after a warm-up
   (DiT denoising step, KV-cache refresh, VAE decode of a chunk, audio encoder for one
   second of audio), the DiT's FLOPs per step counted by `torch.utils.flop_counter`, and
   the fraction of the GPU's dense bf16 peak that the DiT step reaches.
2. A real render (`render_video`, the same code path as `generate`) of SECONDS of test
   audio to MP4 after a 1-s warm-up render: sustained frames per second (frames after the
   first / time after the first), time to first frame, wall time, peak GPU memory.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from tmrender.eval.bench_io import make_test_audio
from tmrender.eval.peak import run_case

# Dense bf16 tensor-core peaks (FLOP/s) by device name fragment; the H100 SXM datasheet
# figure is 989.4 TFLOP/s without sparsity.
BF16_PEAK = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}
PROFILE_REPEATS = 5


def bench_config(preset: str, context: str = "refresh", vae: str = "mini"):
    """The ModelConfig a GPU bench builds: PRESET with the sampler's cache update `context`
    and, for vae="wan", Wan2.1's own VAE (same latent shape, far more decode work than the
    presets' light VAE, docs/PERFORMANCE.md: what a converted checkpoint decodes with)."""
    from tmrender.config import VAEConfig
    from tmrender.errors import UserInputError
    from tmrender.models.init import preset_config
    from tmrender.models.wan_vae import WAN21_LATENT_MEAN, WAN21_LATENT_STD

    base = preset_config(preset)
    cfg = replace(base, sampler=replace(base.sampler, context=context))
    if vae == "mini":
        return cfg
    if vae != "wan":
        raise UserInputError(f"unknown --vae {vae!r}; choose mini or wan")
    if (cfg.vae.latent_channels, cfg.vae.spatial_stride, cfg.vae.temporal_stride) != (16, 8, 4):
        raise UserInputError(f"--vae wan needs 16 latent channels at stride 8x4; {preset} differs")
    wan = VAEConfig(kind="wan", latent_mean=WAN21_LATENT_MEAN, latent_std=WAN21_LATENT_STD)
    return replace(cfg, vae=wan)


def bf16_peak(device: torch.device) -> float | None:
    """Dense bf16 peak of the GPU, or None when unknown."""
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK.items() if key in name), None)


def _timed(fn, repeats: int) -> float:
    """Mean seconds of `fn()` on the current CUDA stream, after one warm-up call."""
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000 / repeats


def stage_profile(model, image) -> dict:
    """Per-stage times (ms) of one chunk, DiT FLOPs per step and the fraction of peak."""
    from torch.utils.flop_counter import FlopCounterMode

    from tmrender.models.audio import audio_windows
    from tmrender.models.vae import StreamingDecoder
    from tmrender.render.pipeline import encode_reference

    cfg = model.cfg
    device = next(model.parameters()).device
    dtype = next(model.dit.parameters()).dtype
    window = cfg.audio_proj.window
    with torch.inference_mode():
        anchor = encode_reference(model, image)
        state = model.dit.start_stream(anchor)
        samples = (cfg.frames_per_chunk + 2 * window) * cfg.samples_per_frame
        wav = 0.1 * torch.randn(1, samples, device=device)
        feats = model.audio_encoder(wav)
        windows = audio_windows(feats, window, cfg.frames_per_latent, pad="none")
        tokens = model.audio_tokens(windows.to(dtype))
        shape = (1, cfg.vae.latent_channels, cfg.chunk_latent_frames)
        x = torch.randn(*shape, cfg.latent_height, cfg.latent_width, device=device, dtype=dtype)
        t = torch.full((1,), cfg.sampler.student_sigmas[0], device=device)
        state = model.dit.commit_chunk(x, tokens, state)  # a full window: anchor + prev
        decoder = StreamingDecoder(model.vae)
        decoder.decode(anchor)
        one_second = 0.1 * torch.randn(1, cfg.audio_encoder.sample_rate, device=device)
        step_s = _timed(lambda: model.dit.forward_chunk(x, t, tokens, state), PROFILE_REPEATS)
        stream = [state]  # each commit overwrites the window in place: chain the states

        def refresh() -> None:
            stream[0] = model.dit.commit_chunk(x, tokens, stream[0])

        refresh_s = _timed(refresh, PROFILE_REPEATS)
        state = stream[0]
        decode_s = _timed(lambda: decoder.decode(x), PROFILE_REPEATS)
        audio_s = _timed(lambda: model.audio_encoder(one_second), PROFILE_REPEATS)
        with FlopCounterMode(display=False) as counter:
            model.dit.forward_chunk(x, t, tokens, state)
        flops = counter.get_total_flops()
    peak = bf16_peak(device)
    frames = cfg.frames_per_chunk
    steps = len(cfg.sampler.student_sigmas)
    chunk_s = steps * step_s + refresh_s
    return {
        "tokens_per_chunk": cfg.tokens_per_latent_frame * cfg.chunk_latent_frames,
        "dit_step_ms": round(1000 * step_s, 2),
        "cache_refresh_ms": round(1000 * refresh_s, 2),
        "vae_decode_chunk_ms": round(1000 * decode_s, 2),
        "audio_encoder_ms_per_s": round(1000 * audio_s, 2),
        "dit_tflop_per_step": round(flops / 1e12, 2),
        "dit_tflops_achieved": round(flops / step_s / 1e12, 1),
        "dit_fraction_of_bf16_peak": None if peak is None else round(flops / step_s / peak, 3),
        "dit_only_fps": round(frames / chunk_s, 1),
        "dit_only_fps_commit_kv": round(frames / (steps * step_s), 1),
    }


def top_kernels(model, image, rows: int = 12) -> str:
    """The CUDA kernels that take the most time in one DiT step (torch.profiler table)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        stage_profile(model, image)
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows)


def gpu_case(
    preset: str,
    seconds: float,
    device_name: str,
    folder: str,
    compiled: bool = False,
    context: str = "refresh",
    graphs: bool = False,
    vae: str = "mini",
) -> dict:
    """Build PRESET with random bf16 weights on the GPU, profile it, render SECONDS.

    compiled: fuse the DiT's elementwise chains (`tmrender.models.fused`; compilation
    happens in the warm-up); context: the sampler's cache update, "refresh" (one more
    forward per chunk) or "last_step" (`commit_kv`); graphs: replay the steady chunk step
    as a CUDA graph (`RenderOptions.cuda_graphs`); vae: "mini" or "wan" (`bench_config`)."""
    from tmrender.data.avatar import draw_avatar
    from tmrender.models.fused import enable_fusion
    from tmrender.models.init import build_random_model
    from tmrender.render.pipeline import RenderOptions, RenderStats, render_video

    device = torch.device(device_name)
    folder = Path(folder)
    cfg = bench_config(preset, context, vae)
    tick = time.perf_counter()
    model = build_random_model(cfg, device, torch.bfloat16)
    torch.cuda.synchronize(device)
    build_s = time.perf_counter() - tick
    weights_gib = torch.cuda.memory_allocated(device) / 2**30
    image = draw_avatar(seed=1, size=cfg.height)
    if compiled:
        enable_fusion()
    stage_profile(model, image)  # warm-up (and compilation)
    profile = stage_profile(model, image)
    kernels_file = os.environ.get("TMRENDER_BENCH_KERNELS")  # a file to append the table to
    if kernels_file:
        with open(kernels_file, "a") as f:
            f.write(f"{preset} compiled={compiled}\n{top_kernels(model, image)}\n")
    warm = make_test_audio(folder / "warm.m4a", 1.0)
    options = RenderOptions(cuda_graphs=graphs)
    render_video(model, image, warm, folder / "warm.mp4", options)
    audio = make_test_audio(folder / f"speech-{seconds:g}.m4a", seconds)
    torch.cuda.reset_peak_memory_stats(device)
    stats = RenderStats()
    start = time.perf_counter()
    render_video(model, image, audio, folder / f"out-{seconds:g}.mp4", options, stats=stats)
    wall = time.perf_counter() - start
    first = stats.first_frame_seconds or 0.0
    return {
        "model": f"{preset} (random weights, bf16)",
        "fused": compiled,
        "context": context,
        "cuda_graphs": graphs,
        "vae": vae,
        "device": torch.cuda.get_device_name(device),
        "size": f"{cfg.width}x{cfg.height}",
        "parameters_b": round(sum(p.numel() for p in model.parameters()) / 1e9, 3),
        "build_s": round(build_s, 1),
        "weights_gib": round(weights_gib, 2),
        **profile,
        "audio_s": round(stats.audio_seconds, 2),
        "frames": stats.frames,
        "wall_s": round(wall, 2),
        "rtf": round(wall / stats.audio_seconds, 3),
        "first_frame_s": round(first, 3),
        "sustained_fps": round((stats.frames - 1) / max(wall - first, 1e-9), 1),
        "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
    }


def bench_gpu(
    preset: str,
    seconds_list: list[float],
    device: str,
    compiled: bool = False,
    context: str = "refresh",
    graphs: bool = False,
    vae: str = "mini",
) -> list[dict]:
    """One fresh process per length."""
    modes = (("compile", compiled), ("graphs", graphs), ("wanvae", vae == "wan"))
    flag = ",".join(m for m, on in modes if on) or "eager"
    with tempfile.TemporaryDirectory() as tmp:
        return [
            run_case(__name__, preset, str(s), device, tmp, flag, context) for s in seconds_list
        ]


if __name__ == "__main__":
    name, secs, dev, out, mode, ctx = sys.argv[1:]
    modes = mode.split(",")
    vae = "wan" if "wanvae" in modes else "mini"
    row = gpu_case(name, float(secs), dev, out, "compile" in modes, ctx, "graphs" in modes, vae)
    print(json.dumps(row))
