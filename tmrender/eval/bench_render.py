"""Render benchmark: real-time factor, time to first frame, time per stage, peak RSS.

Each length runs in a fresh process (`python -m tmrender.eval.bench_render MODEL SECONDS
DEVICE FOLDER`), so peak RSS is that of one render of that length. The model is loaded
before the clock starts; the test audio and portrait are made before it too.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from tmrender.eval.bench_io import make_test_audio
from tmrender.eval.peak import peak_rss_mb, run_case


def render_case(model_spec: str, seconds: float, device: str, folder: str) -> dict:
    """Load the model, render `seconds` of test audio, report the figures."""
    from tmrender.data.avatar import draw_avatar
    from tmrender.models.registry import load_model
    from tmrender.render.pipeline import RenderStats, render_video

    folder = Path(folder)
    audio = make_test_audio(folder / f"speech-{seconds:g}.m4a", seconds)
    model, meta = load_model(model_spec, device)
    image = draw_avatar(seed=1, size=model.cfg.height)
    rss_loaded = peak_rss_mb()
    stats = RenderStats()
    start = time.perf_counter()
    render_video(model, image, audio, folder / f"out-{seconds:g}.mp4", stats=stats)
    wall = time.perf_counter() - start
    stages = {
        f"{k}_ms_per_s": round(1000 * v / stats.audio_seconds, 1)
        for k, v in stats.stage_seconds.items()
    }
    return {
        "model": meta["config"].name,
        "device": device,
        "audio_s": round(stats.audio_seconds, 2),
        "frames": stats.frames,
        "wall_s": round(wall, 2),
        "rtf": round(wall / stats.audio_seconds, 3),
        "first_frame_s": round(stats.first_frame_seconds, 3),
        "dit_ms_per_step": round(1000 * stats.stage_seconds["dit"] / max(stats.dit_steps, 1), 2),
        **stages,
        "rss_after_load_mb": round(rss_loaded, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def bench_render(model_spec: str, seconds_list: list[float], device: str) -> list[dict]:
    """One fresh process per length."""
    with tempfile.TemporaryDirectory() as tmp:
        return [run_case(__name__, model_spec, str(s), device, tmp) for s in seconds_list]


if __name__ == "__main__":
    spec, secs, dev, out = sys.argv[1:]
    print(json.dumps(render_case(spec, float(secs), dev, out)))
